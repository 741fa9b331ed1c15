"""Demand sets of a placement problem (docs/placement.md, "Demands").

A demand is an unordered pair of distinct nodes with a positive weight,
routed from its smaller-index node to the other **[choice]**. Four kinds:

- ``all``: every pair, weight 1;
- ``sample:N``: ``N`` distinct pairs drawn uniformly without replacement
  (seeded), weight 1 (all pairs when ``N`` is at least their number);
- ``gravity``: every pair, weight ``m_s * m_d`` with ``m`` the node
  attribute ``population`` when every node has one, else its degree
  **[choice]**;
- a file: CSV lines ``source,destination[,weight]`` (``#`` comments, an
  optional header line ``source,destination,weight``) or a JSON list of
  ``{"source": ..., "destination": ..., "weight": ...}``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, NodeNotFound
from ..network import Network

#: Largest number of demands a placement problem takes (memory: 3 boolean
#: matrices of demands x nodes).
MAX_DEMANDS = 2_000_000


@dataclass(frozen=True, eq=False)
class Demands:
    """Weighted demands on node indices.

    Attributes
    ----------
    src, dst : numpy.ndarray of int64
        Node indices, ``src < dst``.
    weight : numpy.ndarray of float64
        Positive weights (unnormalised).
    spec : str
        How they were made (``all``, ``sample:500``, ``gravity`` or the file).
    """

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    spec: str

    def __len__(self) -> int:
        return int(self.src.size)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "count": len(self), "total_weight": float(self.weight.sum())}


def _all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i.astype(np.int64), j.astype(np.int64)


def _make(src, dst, weight, spec) -> Demands:
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    if src.size == 0:
        raise InvalidRequest(f"demands {spec!r}: no demand (the network needs at least 2 nodes)")
    if src.size > MAX_DEMANDS:
        raise InvalidRequest(f"demands {spec!r}: {src.size} demands, more than {MAX_DEMANDS}; use sample:N")
    for a in (src, dst, weight):
        a.setflags(write=False)
    return Demands(src, dst, weight, spec)


def make_demands(network: Network, spec: str = "all", *, seed: int = 0) -> Demands:
    """The demands named by ``spec`` (see the module doc) on ``network``.

    >>> from qkdseg import example_network
    >>> d = make_demands(example_network(), "sample:5", seed=1)
    >>> len(d), d.spec, bool((d.src < d.dst).all())
    (5, 'sample:5', True)
    """
    count = check_spec(spec)
    a = network.arrays
    n = a.n_nodes
    if spec == "all":
        s, d = _all_pairs(n)
        return _make(s, d, np.ones(s.size), spec)
    if count is not None:
        s, d = _all_pairs(n)
        if count < s.size:
            rng = np.random.default_rng([seed, 11])
            pick = np.sort(rng.choice(s.size, size=count, replace=False))
            s, d = s[pick], d[pick]
        return _make(s, d, np.ones(s.size), spec)
    if spec == "gravity":
        s, d = _all_pairs(n)
        mass = _masses(network)
        return _make(s, d, mass[s] * mass[d], spec)
    return _from_file(network, Path(spec))


def check_spec(spec) -> int | None:
    """A demands spec checked without its network (``all``, ``gravity``, ``sample:N`` with N >= 1, or an existing
    file): N of ``sample:N``, else ``None``; :class:`InvalidRequest` naming a bad one."""
    if not isinstance(spec, str) or not spec:
        raise InvalidRequest(f"demands={spec!r}: use all, sample:N, gravity or a file")
    if spec.startswith("sample:"):
        text = spec.partition(":")[2]
        try:
            count = int(text)
        except ValueError:
            raise InvalidRequest(f"demands {spec!r}: N in sample:N must be a whole number") from None
        if count < 1:
            raise InvalidRequest(f"demands {spec!r}: N in sample:N must be at least 1")
        return count
    if spec not in ("all", "gravity") and not Path(spec).is_file():
        raise InvalidRequest(f"demands {spec!r}: not all, sample:N, gravity or an existing file")
    return None


def _masses(network: Network) -> np.ndarray:
    a = network.arrays
    g = network.graph
    pops = [g.nodes[v].get("population") for v in a.node_ids]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in pops):
        return np.array(pops, dtype=np.float64)
    return np.diff(a.indptr).astype(np.float64)


def _node(network: Network, raw, where: str, *, text: bool) -> int:
    try:
        v = network.resolve(str(raw)) if text else network.check_node(raw)
    except NodeNotFound as err:
        raise InvalidRequest(f"{where}: {err}") from None
    except TypeError:
        raise InvalidRequest(f"{where}: node {raw!r} is not a valid node id") from None
    return network.arrays.index[v]


def _weight(raw, where: str) -> float:
    try:
        w = float(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{where}: weight {raw!r} is not a number") from None
    if isinstance(raw, bool) or not math.isfinite(w) or w <= 0:
        raise InvalidRequest(f"{where}: weight {raw!r} must be a positive finite number")
    return w


def _from_file(network: Network, path: Path) -> Demands:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"{path}: cannot read: {err}") from None
    rows: list[tuple[int, int, float, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
        if not isinstance(data, list):
            raise InvalidRequest(f"{path}: expected a JSON list of demands")
        for k, item in enumerate(data):
            where = f"{path}: demand {k}"
            if not isinstance(item, dict) or "source" not in item or "destination" not in item:
                raise InvalidRequest(f"{where}: expected an object with 'source' and 'destination'")
            s = _node(network, item["source"], where, text=False)
            d = _node(network, item["destination"], where, text=False)
            rows.append((s, d, _weight(item.get("weight", 1.0), where), where))
    else:
        for lineno, rec in enumerate(csv.reader(text.splitlines()), 1):
            fields = [f.strip() for f in rec]
            if not fields or not any(fields) or fields[0].startswith("#"):
                continue
            if lineno == 1 and fields[:2] == ["source", "destination"]:
                continue
            where = f"{path}:{lineno}"
            if len(fields) not in (2, 3):
                raise InvalidRequest(f"{where}: expected source,destination[,weight], got {len(fields)} fields")
            s = _node(network, fields[0], where, text=True)
            d = _node(network, fields[1], where, text=True)
            rows.append((s, d, _weight(fields[2], where) if len(fields) == 3 else 1.0, where))
    merged: dict[tuple[int, int], float] = {}
    for s, d, w, where in rows:
        if s == d:
            raise InvalidRequest(f"{where}: source and destination are the same node")
        key = (min(s, d), max(s, d))
        merged[key] = merged.get(key, 0.0) + w
    if not merged:
        raise InvalidRequest(f"{path}: no demand in the file")
    keys = sorted(merged)
    return _make([k[0] for k in keys], [k[1] for k in keys], [merged[k] for k in keys], str(path))


def demand_ids(network: Network, demands: Demands) -> list[tuple[Hashable, Hashable, float]]:
    """``(source id, destination id, weight)`` of every demand."""
    ids = network.arrays.node_ids
    return [(ids[s], ids[d], w) for s, d, w in zip(demands.src.tolist(), demands.dst.tolist(), demands.weight.tolist())]
