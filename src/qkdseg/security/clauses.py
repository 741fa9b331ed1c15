"""A route as clauses, the evaluators' argument checks, and the product formula.

A *clause* is one segment's paths, each as the tuple of its risky relays
(``p < 1``); the chain becomes one more single-path clause. The global key
stays secret iff every clause keeps a path whose relays are all safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequest

Path = Sequence[int]
Segments = Sequence[Sequence[Path]]


def _clauses(p: np.ndarray, segments: Segments, chain: Sequence[int]) -> tuple[list[list[tuple]], dict]:
    """Segments as lists of relay tuples (risky relays only, p < 1, in path
    order, each once); the chain becomes one more single-path segment.

    Also returns ``{relay: p}`` for those relays, read from ``p`` with one
    gather (the hot loops then use Python floats).
    """
    flat = [v for seg in segments for path in seg for v in path[1:-1]]
    flat.extend(chain)
    pmap = dict(zip(flat, p[flat].tolist())) if flat else {}
    out = []
    for seg in segments:
        clause = []
        for path in seg:
            relays = tuple(v for v in path[1:-1] if pmap[v] < 1.0)
            if len(set(relays)) != len(relays):
                relays = tuple(dict.fromkeys(relays))
            clause.append(relays)
        out.append(clause)
    risky_chain = tuple(dict.fromkeys(v for v in chain if pmap[v] < 1.0))
    if risky_chain:
        out.append([risky_chain])
    return out, pmap


def _checked(p: Any, segments: Any, chain: Any) -> np.ndarray:
    """The checks of the public evaluators: ``p`` a 1-d array of probabilities
    in [0, 1] (NaN is not one) at every relay and chain node, ``segments``
    lists of paths of node indices, relay and chain indices whole numbers
    within ``p`` (path ends are not relays and are never read). Returns
    ``p`` as a float array. Raises :class:`InvalidRequest` naming the fault."""
    try:
        arr = p if isinstance(p, np.ndarray) and p.dtype == np.float64 else np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"p must be an array of probabilities, got {type(p).__name__}") from None
    if arr.ndim != 1:
        raise InvalidRequest(f"p must be a 1-d array of probabilities, got shape {arr.shape}")
    try:
        flat = [v for seg in segments for path in seg for v in path[1:-1]]  # relays: the ends are never read
        flat.extend(chain)
    except TypeError:
        raise InvalidRequest("segments must be lists of paths (lists of node indices), chain a list of node indices") from None
    if not flat:
        return arr
    for v in flat:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise InvalidRequest(f"node index {v!r} must be a whole number")
    idx = np.asarray(flat, dtype=np.int64) if max(flat) < 2**63 and min(flat) >= -(2**63) else None
    if idx is None or idx.min() < 0 or idx.max() >= arr.size:
        bad = next(v for v in flat if not 0 <= v < arr.size)
        raise InvalidRequest(f"node index {bad} is out of range (p has {arr.size} nodes)")
    vals = arr[idx]
    ok = (vals >= 0.0) & (vals <= 1.0)
    if not ok.all():
        k = int(flat[int(np.flatnonzero(~ok)[0])])
        raise InvalidRequest(f"p[{k}]={float(arr[k])!r} must be a probability in [0, 1]")
    return arr


def _product_formula(pmap: dict, clauses: list[list[tuple]]) -> float:
    total = 1.0
    for seg in clauses:
        miss = 1.0
        for relays in seg:
            miss *= (1.0 - math.prod([pmap[v] for v in relays])) if relays else 0.0
        total *= 1.0 - miss
    return total


def _shared_relays(clauses: list[list[tuple]]) -> set:
    """The relays that occur on more than one path (of any clause)."""
    seen: set = set()
    shared: set = set()
    for seg in clauses:
        for relays in seg:
            for v in relays:
                if v in seen:
                    shared.add(v)
                else:
                    seen.add(v)
    return shared
