"""Security of a set of segment paths (docs/model.md sections 2 and 5).

A route is described by its segments, each a list of paths (node-index lists,
ends included), and by its *chain*: the interior segment nodes
``t1..t(k-1)`` that relay the global key. The global key stays secret iff

    every chain node is uncompromised, and
    in every segment, at least one path has all its relays uncompromised.

Relays are the interior nodes of a path. Every node ``v`` is compromised
independently with probability ``1 - p[v]``; nodes with ``p = 1`` never are.

Three evaluators, all pure functions:

- :func:`exact_security`: exact for any paths, shared relays included. It
  conditions on the relays that occur in more than one path (``2^s`` states,
  enumerated as arrays); given those, every path is independent.
- :func:`independent_security`: the textbook product formula, which assumes
  no relay is shared. When paths of one segment share a relay it
  over-estimates security (Harris-FKG); a relay shared *between* segments
  (ANDed events) can make it under-estimate instead.
- :func:`montecarlo_security`: samples compromised sets, vectorised and
  seeded, and reports a 95% Wilson confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels
from .errors import InvalidRequest, SecurityError

Path = Sequence[int]
Segments = Sequence[Sequence[Path]]

#: Largest number of shared relays :func:`exact_security` enumerates (2^s states).
MAX_SHARED_RELAYS = 22


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


def independent_security(p: np.ndarray, segments: Segments, chain: Sequence[int] = ()) -> float:
    """Textbook security: ``prod_j (1 - prod_P (1 - Psec(P))) * prod_chain p``.

    Exact only when no relay is shared between paths (docs/model.md section 2).

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments : list of lists of paths
        Node-index paths per segment, ends included.
    chain : list of int
        Interior segment nodes (they relay the global key).

    Returns
    -------
    float
        Probability in [0, 1]; 0 when some segment has no path.
    """
    p = _checked(p, segments, chain)
    if not segments:
        return 0.0
    clauses, pmap = _clauses(p, segments, chain)
    return _product_formula(pmap, clauses)


def exact_security(
    p: np.ndarray,
    segments: Segments,
    chain: Sequence[int] = (),
    *,
    max_shared: int = MAX_SHARED_RELAYS,
) -> float:
    """Exact probability that the global key stays secret.

    Without shared relays the paths are independent and the textbook formula
    is exact. Otherwise the clauses (segments, and the chain) that share
    relays are grouped into independent components, and each component is
    evaluated by the cheaper of two exact methods: conditioning on its ``s``
    shared relays (``2^s`` states at once, as arrays), or a distribution over
    which of its ``m`` paths are still intact, updated relay group by relay
    group (``2^m`` states, compiled with numba when installed).

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments : list of lists of paths
        Node-index paths per segment, ends included.
    chain : list of int
        Interior segment nodes (they relay the global key).
    max_shared : int
        Refuse more shared relays than this (cost grows as ``2^s``).

    Returns
    -------
    float
        Probability in [0, 1]; 0 when some segment has no path.

    Raises
    ------
    SecurityError
        When more than ``max_shared`` relays are shared.

    Examples
    --------
    Two paths through one shared relay 1 (p = 0.5) and private relays 2, 3
    (p = 0.5): secret iff 1 is safe and 2 or 3 is, ``0.5 * 0.75``.

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, .5, 1])
    >>> exact_security(p, [[[0, 1, 2, 4], [0, 1, 3, 4]]])
    0.375
    >>> independent_security(p, [[[0, 1, 2, 4], [0, 1, 3, 4]]])
    0.4375
    """
    if isinstance(max_shared, bool) or not isinstance(max_shared, (int, np.integer)) or max_shared < 0:
        raise InvalidRequest(f"max_shared={max_shared!r} must be a non-negative whole number")
    p = _checked(p, segments, chain)
    return _exact_security(p, segments, chain, max_shared)


def _exact_security(p: np.ndarray, segments: Segments, chain: Sequence[int] = (), max_shared: int = MAX_SHARED_RELAYS) -> float:
    """:func:`exact_security` without the argument checks (callers pass valid
    routes: the reconstruction evaluator's inner loops)."""
    if not segments or any(len(seg) == 0 for seg in segments):
        return 0.0
    clauses, pmap = _clauses(p, segments, chain)
    seen: set = set()
    shared_set: set = set()
    for seg in clauses:
        for relays in seg:
            for v in relays:
                if v in seen:
                    shared_set.add(v)
                else:
                    seen.add(v)
    s = len(shared_set)
    if s == 0:
        return _product_formula(pmap, clauses)
    if s > max_shared:
        raise SecurityError(
            f"exact security: {s} relays are shared between paths (limit {max_shared}); use the montecarlo evaluator"
        )
    # clauses that share a relay are dependent: union-find them into components
    parent = list(range(len(clauses)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for j, seg in enumerate(clauses):
        for relays in seg:
            for v in relays:
                if v in shared_set:
                    if v in owner:
                        a, b = find(owner[v]), find(j)
                        if a != b:
                            parent[max(a, b)] = min(a, b)
                    else:
                        owner[v] = j
    groups: dict[int, list[int]] = {}
    for j in range(len(clauses)):
        groups.setdefault(find(j), []).append(j)
    total = 1.0
    for members in groups.values():
        comp = [clauses[j] for j in members]
        comp_shared = sorted({v for seg in comp for relays in seg for v in relays if v in shared_set})
        if not comp_shared:
            total *= _product_formula(pmap, comp)
        else:
            total *= _component_security(p, comp, comp_shared)
    return float(min(1.0, max(0.0, total)))


def route_security(p: np.ndarray, segments: Segments, chain: Sequence[int] = ()) -> tuple[float, float, tuple[float, ...]]:
    """``(exact, independent, per-segment exact)`` of one route, in one pass.

    The same numbers as :func:`exact_security` (whole route and each segment
    alone) and :func:`independent_security`, computed from one gather of the
    relays' ``p`` when no relay is shared (the usual case); otherwise each
    is computed by those functions.

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, .5, 1])
    >>> route_security(p, [[[0, 1, 4], [0, 2, 4]], [[4, 3, 0]]])
    (0.375, 0.375, (0.75, 0.5))
    """
    if not segments or any(len(seg) == 0 for seg in segments):
        return 0.0, 0.0, tuple(0.0 for _ in segments)
    clauses, pmap = _clauses(p, segments, chain)
    seen: set = set()
    shared = False
    for seg in clauses:
        for relays in seg:
            for v in relays:
                if v in seen:
                    shared = True
                seen.add(v)
    per_clause = [_product_formula(pmap, [c]) for c in clauses]
    independent = math.prod(per_clause)
    if not shared:
        return independent, independent, tuple(per_clause[: len(segments)])
    exact = exact_security(p, segments, chain)
    return exact, independent, tuple(exact_security(p, [seg]) for seg in segments)


#: Largest number of paths in one dependent component for the path-state method (2^m states).
MAX_PATH_STATES = 24


def _component_security(p: np.ndarray, clauses: list[list[tuple[int, ...]]], shared: list[int]) -> float:
    """Exact security of clauses that are linked by the ``shared`` relays."""
    s = len(shared)
    m = sum(len(seg) for seg in clauses)
    # relays with the same set of paths act as one relay (safe iff all are)
    shared_set = set(shared)
    path_sets: dict[int, int] = {}
    k = 0
    for seg in clauses:
        for relays in seg:
            for v in relays:
                if v in shared_set:
                    path_sets[v] = path_sets.get(v, 0) | (1 << k)
            k += 1
    by_mask: dict[int, float] = {}
    for v in shared:
        by_mask[path_sets[v]] = by_mask.get(path_sets[v], 1.0) * float(p[v])
    g = len(by_mask)
    if m <= MAX_PATH_STATES and g * (1 << m) <= s * m * (1 << s):
        return _path_state_security(p, clauses, shared_set, by_mask)
    return _conditioned_security(p, clauses, shared)


def _conditioned_security(p: np.ndarray, clauses: list[list[tuple[int, ...]]], shared: list[int]) -> float:
    """Condition on every state of the ``s`` shared relays (``2^s`` at once)."""
    s = len(shared)
    bit = {v: k for k, v in enumerate(shared)}
    states = np.arange(1 << s, dtype=np.int64)  # bit k set: shared relay k is secure
    weight = np.ones(states.size)
    for k, v in enumerate(shared):
        on = (states >> k) & 1
        weight *= np.where(on == 1, p[v], 1.0 - p[v])
    total = weight
    for seg in clauses:
        miss = np.ones(states.size)
        for relays in seg:
            q = math.prod(float(p[v]) for v in relays if v not in bit)
            mask = sum(1 << bit[v] for v in relays if v in bit)
            alive = (states & mask) == mask
            miss = miss * np.where(alive, 1.0 - q, 1.0)
        total = total * (1.0 - miss)
    return float(total.sum())


def _path_state_security(
    p: np.ndarray, clauses: list[list[tuple[int, ...]]], shared: set, by_mask: dict[int, float]
) -> float:
    """Distribution over the set of intact paths, one shared relay group at a time.

    State ``S`` (bit i: path i has no compromised shared relay) starts at
    "all paths"; a group of shared relays on paths ``M``, safe with
    probability ``q``, keeps ``S`` with ``q`` and moves it to ``S & ~M``
    otherwise. At the end path ``i`` of ``S`` is intact with the product
    ``r_i`` of its private relays, and the clauses are independent.
    """
    q_priv = []
    clause_masks = []
    k = 0
    for seg in clauses:
        cm = 0
        for relays in seg:
            q_priv.append(math.prod(float(p[v]) for v in relays if v not in shared))
            cm |= 1 << k
            k += 1
        clause_masks.append(cm)
    m = k
    masks = np.fromiter(by_mask.keys(), dtype=np.int64, count=len(by_mask))
    probs = np.fromiter(by_mask.values(), dtype=np.float64, count=len(by_mask))
    q = np.asarray(q_priv, dtype=np.float64)
    cmasks = np.asarray(clause_masks, dtype=np.int64)
    if _kernels.HAVE_NUMBA and _kernels.default_kernel() == "numba":
        return float(_kernels.path_state_security_nb(m, masks, probs, q, cmasks))
    return float(_path_state_numpy(m, masks, probs, q, cmasks))


def _path_state_numpy(m: int, masks, probs, q, cmasks) -> float:
    size = 1 << m
    states = np.arange(size, dtype=np.int64)
    dist = np.zeros(size)
    dist[size - 1] = 1.0
    for mask, pg in zip(masks.tolist(), probs.tolist()):
        moved = np.bincount(states & ~mask, weights=dist * (1.0 - pg), minlength=size)
        dist = dist * pg + moved
    # miss[S] = prod_{i in S} (1 - q_i), built subset by subset
    miss = np.ones(size)
    for i in range(m):
        half = 1 << i
        miss[half : 2 * half] = miss[:half] * (1.0 - q[i])
    value = dist.copy()
    for cm in cmasks.tolist():
        value *= 1.0 - miss[states & cm]
    return value.sum()


@dataclass(frozen=True)
class SecurityEstimate:
    """A Monte Carlo estimate of the global key's security.

    Attributes
    ----------
    value : float
        Fraction of sampled compromise states in which the key stays secret.
    ci_low, ci_high : float
        95% Wilson score interval.
    samples : int
        Number of sampled compromise states.
    seed : int
        Seed of ``numpy.random.default_rng`` that drew them.
    """

    value: float
    ci_low: float
    ci_high: float
    samples: int
    seed: int

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.ci_low, self.ci_high], "samples": self.samples, "seed": self.seed}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    phat = successes / n
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def montecarlo_security(
    p: np.ndarray,
    segments: Segments,
    chain: Sequence[int] = (),
    *,
    samples: int = 100_000,
    seed: int = 0,
    chunk: int = 1 << 16,
) -> SecurityEstimate:
    """Estimate the security by sampling compromise states (vectorised).

    Each sample draws every relevant relay's state at once; a path survives
    when none of its relays is compromised (the states are bit-packed, 64
    relays a word, and tested against each path's relay mask), a segment
    when one of its paths survives.

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments, chain
        As for :func:`exact_security`.
    samples : int
        Number of compromise states to draw.
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same estimate.
    chunk : int
        Samples drawn per block (bounds memory).
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 0 < samples <= 10**12:
        raise InvalidRequest(f"montecarlo: samples={samples!r} must be a positive whole number (at most 10**12)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidRequest(f"montecarlo: seed={seed!r} must be a non-negative whole number")
    p = _checked(p, segments, chain)
    if not segments or any(len(seg) == 0 for seg in segments):
        lo, hi = wilson_interval(0, samples)
        return SecurityEstimate(0.0, lo, hi, samples, seed)
    clauses, _ = _clauses(p, segments, chain)
    relays = sorted({v for seg in clauses for r in seg for v in r})
    col = {v: k for k, v in enumerate(relays)}
    paths = [r for seg in clauses for r in seg]
    seg_of = np.repeat(np.arange(len(clauses)), [len(seg) for seg in clauses])
    # bit-packed: each sample's compromised relays become ceil(R/64) words;
    # a path is alive iff its relay mask meets none of them
    words = max(1, (len(relays) + 63) // 64)
    path_masks = np.zeros((len(paths), words), dtype=np.uint64)
    for j, r in enumerate(paths):
        for v in r:
            k = col[v]
            path_masks[j, k // 64] |= np.uint64(1) << np.uint64(k % 64)
    clause_paths = [np.flatnonzero(seg_of == j) for j in range(len(clauses))]
    prob = np.array([p[v] for v in relays], dtype=np.float64)
    rng = np.random.default_rng(seed)
    secret = 0
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        seg_ok = np.ones(m, dtype=bool)
        if relays:
            compromised = rng.random((m, len(relays))) >= prob
            packed = np.packbits(compromised, axis=1, bitorder="little")
            pad = words * 8 - packed.shape[1]
            if pad:
                packed = np.concatenate([packed, np.zeros((m, pad), dtype=np.uint8)], axis=1)
            bits = packed.view("<u8")  # (m, words): relay k is bit k % 64 of word k // 64
            for idx in clause_paths:
                ok = np.zeros(m, dtype=bool)
                for j in idx.tolist():
                    hit = np.zeros(m, dtype=bool)
                    for w in range(words):
                        if path_masks[j, w]:
                            hit |= (bits[:, w] & path_masks[j, w]) != 0
                    ok |= ~hit
                seg_ok &= ok
        secret += int(seg_ok.sum())
        done += m
    lo, hi = wilson_interval(secret, samples)
    return SecurityEstimate(secret / samples, lo, hi, samples, seed)


#: Name -> evaluator returning a float probability.
EVALUATORS = {
    "exact": exact_security,
    "independent": independent_security,
    "montecarlo": lambda p, segments, chain=(), **kw: montecarlo_security(p, segments, chain, **kw).value,
}
