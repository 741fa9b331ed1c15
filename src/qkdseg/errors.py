"""The exception tree of qkdseg.

Every error names the offending node, link, file, field or value, so that the
command line can print it as one line and exit with status 2.

::

    QkdsegError                      base of everything raised on purpose
     +-- NetworkError (ValueError)   an invalid network: bad p, negative pool,
     |                               self-loop, duplicate node or link id
     +-- TopologyFileError           a missing, unreadable or malformed file
     +-- NodeNotFound (KeyError)     a node id that is not in the network
     +-- InvalidRequest (ValueError) a request that makes no sense, such as
     |                               source == destination, or a bad option
     +-- UnknownAlgorithm (KeyError) a name missing from a registry
     +-- NoPath                      no usable path between two nodes
     +-- SecurityError               an evaluation that cannot be done exactly
     |                               within its limits
     +-- KeyMaterialShort            a link pool holds too few key bits for a
                                     request (nothing was debited)

A request for which no path exists is *not* an error at the level of
:func:`qkdseg.route`: it returns a result with ``blocked=True``. ``NoPath`` is
raised only by the single-path helper :func:`qkdseg.exdijkstra`.
"""

from __future__ import annotations


class QkdsegError(Exception):
    """Base class of every error qkdseg raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class NetworkError(QkdsegError, ValueError):
    """The network violates the model (docs/model.md section 1)."""


class TopologyFileError(QkdsegError):
    """A topology file is missing, unreadable or malformed."""


class NodeNotFound(QkdsegError, KeyError):
    """A node id is not in the network."""


class InvalidRequest(QkdsegError, ValueError):
    """A routing or evaluation request is invalid."""


class UnknownAlgorithm(QkdsegError, KeyError):
    """A name is not in the algorithm (or evaluator) registry."""


class NoPath(QkdsegError):
    """No usable path exists between two nodes."""


class SecurityError(QkdsegError):
    """An exact security evaluation exceeds its limits."""


class KeyMaterialShort(QkdsegError):
    """A request needs more key material than a link pool holds.

    Raised by :meth:`qkdseg.keys.KeyStore.reserve` before any pool changes.
    ``shortfalls`` maps each short link to ``(needed, level)`` in bits.
    """

    def __init__(self, message: str, shortfalls: dict | None = None):
        super().__init__(message)
        self.shortfalls = dict(shortfalls or {})


def env_number(name: str, default: float, kind: type = float):
    """The positive number in the environment variable ``name`` (a server's tuning, read when its module is
    imported, inside the command), ``default`` when unset; :class:`InvalidRequest` naming the variable otherwise."""
    import math
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"environment variable {name}={raw!r}: must be a {'whole ' if kind is int else ''}number "
                             "above 0")
    return value
