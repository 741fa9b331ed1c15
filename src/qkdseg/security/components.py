"""The exact security of clauses that shared relays link into one dependent component.

Two exact methods; :func:`_component_security` takes the cheaper for the
component's ``s`` shared relays and ``m`` paths: conditioning on every state
of the shared relays (``2^s`` states at once, as arrays), or a distribution
over which paths are still intact, updated relay group by relay group
(``2^m`` states, compiled with numba when installed).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels

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


def intact_distribution(m: int, masks, probs) -> np.ndarray:
    """The distribution over the set ``S`` of intact paths (bit ``i``: path ``i``), from "all"
    ``m`` paths, one relay group at a time: a group on the paths ``masks[g]``, safe with
    ``probs[g]``, keeps ``S`` or moves it to ``S & ~masks[g]``."""
    size = 1 << m
    states = np.arange(size, dtype=np.int64)
    dist = np.zeros(size)
    dist[size - 1] = 1.0
    for mask, pg in zip(masks.tolist(), probs.tolist()):
        moved = np.bincount(states & ~mask, weights=dist * (1.0 - pg), minlength=size)
        dist = dist * pg + moved
    return dist


def _path_state_numpy(m: int, masks, probs, q, cmasks) -> float:
    size = 1 << m
    states = np.arange(size, dtype=np.int64)
    dist = intact_distribution(m, masks, probs)
    # miss[S] = prod_{i in S} (1 - q_i), built subset by subset
    miss = np.ones(size)
    for i in range(m):
        half = 1 << i
        miss[half : 2 * half] = miss[:half] * (1.0 - q[i])
    value = dist.copy()
    for cm in cmasks.tolist():
        value *= 1.0 - miss[states & cm]
    return value.sum()
