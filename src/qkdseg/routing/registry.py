"""One registry, ``name -> algorithm``, used by the API, the CLI and the sweeps.

An algorithm is a pure function over the frozen network::

    func(arrays, source, target, *, removed_links, **options)
        -> (segment_nodes, paths)

with node indices: ``segment_nodes = [source, t1, ..., target]`` and
``paths[j]`` the list of paths (node-index lists) of segment ``j``. Adding an
algorithm is one module plus one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UnknownAlgorithm


@dataclass(frozen=True)
class Algorithm:
    """A registered routing algorithm.

    Attributes
    ----------
    name : str
    func : callable
    description : str
        One line for ``qkdseg algorithms``.
    options : dict
        Option name -> one-line description (with its default).
    pool_aware : bool
        Its routes depend on how full the pools are (``arrays.pool_bits``
        against ``arrays.capacity_bits``), not only on which links can pay:
        the simulator then never reuses a route across pool levels.
    tolerates : bool
        It takes ``tolerate`` (threshold sharing, docs/model.md section 4a) as a
        keyword and picks its paths for it (``smr-level``: a level met with
        k-of-m segment keys); :func:`qkdseg.route` passes it only when ``T > 0``.
    """

    name: str
    func: Callable
    description: str
    options: dict = field(default_factory=dict)
    pool_aware: bool = False
    tolerates: bool = False


ALGORITHMS: dict[str, Algorithm] = {}


def register(name: str, description: str, options: dict | None = None, *, pool_aware: bool = False,
             tolerates: bool = False):
    """Decorator adding a routing function to :data:`ALGORITHMS`."""

    def wrap(func: Callable) -> Callable:
        ALGORITHMS[name] = Algorithm(name, func, description, dict(options or {}), pool_aware, tolerates)
        return func

    return wrap


def get_algorithm(name: str) -> Algorithm:
    """Look up an algorithm, with a clear error listing the known names."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UnknownAlgorithm(f"unknown algorithm {name!r} (known: {', '.join(sorted(ALGORITHMS))})") from None
