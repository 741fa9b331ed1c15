"""The result of a request: :class:`Route` and its :class:`Segment` parts (JSON contract: docs/json.md)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..network import Network
from ..reconstruction import Reconstruction


@dataclass(frozen=True)
class Segment:
    """One segment of a route: its trusted end nodes and its paths.

    Attributes
    ----------
    source, target : node id
    paths : tuple of tuples of node ids
        Ends included, in the order they were found.
    security : float
        Exact probability that the segment key (XOR of all its pieces, or
        with ``sharing="threshold"`` shared k-of-m over them) stays secret.
    """

    source: Hashable
    target: Hashable
    paths: tuple
    security: float

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "paths": [list(p) for p in self.paths],
            "security": self.security,
        }


@dataclass(frozen=True)
class Route:
    """The result of :func:`~qkdseg.api.route`; immutable. JSON contract: docs/json.md.

    Attributes
    ----------
    algorithm : str
    source, destination : node id
    segment_nodes : tuple
        ``(source, t1, ..., destination)``.
    segments : tuple of Segment
    security : float
        Exact end-to-end security of ``xor-all`` (probability, docs/model.md section 6).
    security_independent : float
        The textbook formula, which assumes no shared relay.
    consumed_bits : int
        Sum over paths of hops x ``block_bits`` (bits).
    key_consumption_rate : float
        ``consumed_bits`` / the network's total pool bits.
    block_bits : int
        Size B of one key piece (bits).
    blocked : bool
        No path at all (security 0, nothing consumed).
    options : dict
        The algorithm options used.
    reconstruction : Reconstruction or None
        The global keys at the requested level (docs/model.md section 4), present
        only when :func:`~qkdseg.api.route` was given ``epsilon``.
    sharing : str
        ``xor`` (a segment key is the XOR of its pieces) or ``threshold``
        (shared k-of-m over its ``m`` paths, ``k = m - tolerate``);
        ``security`` and the segments' securities are for this sharing.
    tolerate : int
        Lost paths a segment key survives (0 for ``xor``).
    level : dict or None
        ``smr-level`` only: what the route saved against the full route over the
        same chain (``epsilon``, ``met``, ``full_consumed_bits``,
        ``saved_bits``, ``full_security``; bits at the route's ``block_bits``).

    For ``msp`` the JSON also carries ``security_claimed``: the independence
    formula MSP's own analysis uses, next to the exact ``security``.
    """

    algorithm: str
    source: Hashable
    destination: Hashable
    segment_nodes: tuple
    segments: tuple
    security: float
    security_independent: float
    consumed_bits: int
    key_consumption_rate: float
    block_bits: int
    blocked: bool
    options: dict = field(default_factory=dict, compare=False)
    index_paths: tuple = field(default=(), repr=False, compare=False)
    reconstruction: Reconstruction | None = field(default=None, compare=False)
    level: dict | None = field(default=None, compare=False)
    sharing: str = "xor"
    tolerate: int = 0

    @property
    def paths(self) -> list[tuple]:
        """All paths, segment after segment."""
        return [p for seg in self.segments for p in seg.paths]

    def paths_frame(self, network: Network | None = None):
        """The paths as a pandas DataFrame, one row per path: ``segment`` and
        ``path`` (numbered from 1, as ``qkdseg route`` prints them), the
        segment's ``source`` and ``target``, ``nodes`` (ends included),
        ``relays`` (every relay, trusted ones included), ``hops`` and
        ``segment_security``; with ``network`` also ``psec``, the product of
        the relays' ``p``.

        >>> import qkdseg
        >>> net = qkdseg.example_network()
        >>> df = qkdseg.route(net, 0, 7).paths_frame(net)
        >>> list(df.columns), len(df) == len(qkdseg.route(net, 0, 7).paths)
        (['segment', 'path', 'source', 'target', 'nodes', 'relays', 'hops', 'segment_security', 'psec'], True)
        """
        import pandas as pd

        rows = []
        for j, seg in enumerate(self.segments, 1):
            for k, path in enumerate(seg.paths, 1):
                row = {"segment": j, "path": k, "source": seg.source, "target": seg.target, "nodes": tuple(path),
                       "relays": len(path) - 2, "hops": len(path) - 1, "segment_security": seg.security}
                if network is not None:
                    psec = 1.0
                    for v in path[1:-1]:
                        psec *= network.p(v)
                    row["psec"] = psec
                rows.append(row)
        cols = ["segment", "path", "source", "target", "nodes", "relays", "hops", "segment_security"]
        return pd.DataFrame(rows, columns=cols + (["psec"] if network is not None else []))

    def plot(self, network: Network, path, *, seed: int = 0, title: str | None = None):
        """Draw this route on ``network`` to an image file (``.png``, ``.svg`` or ``.pdf``), as ``qkdseg route
        --plot`` does: segment nodes marked, each segment's paths in one colour. Returns the file's path.

        >>> import qkdseg, tempfile, pathlib
        >>> net = qkdseg.example_network()
        >>> out = qkdseg.route(net, 0, 7).plot(net, pathlib.Path(tempfile.mkdtemp()) / "route.png")
        >>> out.suffix, out.stat().st_size > 0
        ('.png', True)
        """
        from ..plot import plot_route

        return plot_route(network, self, path, seed=seed, title=title)

    @property
    def hops(self) -> int:
        """Total hops over all paths."""
        return sum(len(p) - 1 for p in self.paths)

    @property
    def key_bits(self) -> int | None:
        """Key length at level epsilon, bits (``None`` without a reconstruction)."""
        return None if self.reconstruction is None else self.reconstruction.key_bits

    @property
    def consumed_bits_per_key_bit(self) -> float | None:
        """Consumed bits per delivered key bit (``None`` when no key bit is delivered)."""
        kb = self.key_bits
        return self.consumed_bits / kb if kb else None

    def metrics(self) -> dict[str, Any]:
        """The metrics of one request (docs/model.md section 6).

        ``security`` (end-to-end, exact, xor-all), ``consumed_bits``,
        ``key_consumption_rate`` (consumed / the network's pool bits), and
        ``blocked``; with a reconstruction also ``epsilon``, ``key_bits`` (key
        length at epsilon), ``global_keys`` and ``consumed_bits_per_key_bit``
        (``None`` when no key is delivered).

        >>> from qkdseg import example_network, route
        >>> m = route(example_network(), 0, 7, epsilon=0.8).metrics()
        >>> m["key_bits"], m["consumed_bits"], m["consumed_bits_per_key_bit"], m["blocked"]
        (100000, 1200000, 12.0, False)
        """
        out: dict[str, Any] = {
            "security": self.security,
            "consumed_bits": self.consumed_bits,
            "key_consumption_rate": self.key_consumption_rate,
            "blocked": self.blocked,
        }
        if self.reconstruction is not None:
            out.update(
                scheme=self.reconstruction.scheme,
                epsilon=self.reconstruction.epsilon,
                key_bits=self.key_bits,
                global_keys=self.reconstruction.n_keys,
                consumed_bits_per_key_bit=self.consumed_bits_per_key_bit,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of docs/json.md (node ids as in the input)."""
        out = self._base_dict()
        if self.algorithm == "msp":
            out["security_claimed"] = self.security_independent
        if self.reconstruction is not None:
            rec = self.reconstruction.to_dict()
            rec["consumed_bits_per_key_bit"] = self.consumed_bits_per_key_bit
            out["reconstruction"] = rec
        return out

    def _base_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "source": self.source,
            "destination": self.destination,
            "segment_nodes": list(self.segment_nodes),
            "segments": [s.to_dict() for s in self.segments],
            "security": self.security,
            "security_independent": self.security_independent,
            "consumed_bits": self.consumed_bits,
            "key_consumption_rate": self.key_consumption_rate,
            "block_bits": self.block_bits,
            "blocked": self.blocked,
            "options": dict(self.options),
            "sharing": self.sharing,
            "tolerate": self.tolerate,
            **({"level": dict(self.level)} if self.level is not None else {}),
        }
