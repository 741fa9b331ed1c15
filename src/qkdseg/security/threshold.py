"""Exact security under threshold sharing (issue 40; docs/model.md section 4a).

With ``sharing = "threshold"`` and ``tolerate = T`` a segment's key is split
k-of-m with Shamir's scheme, ``k = m - T``, one share per path. The
adversary learns a share when it holds a relay of that path, so the segment
key stays secret iff fewer than ``k`` of the ``m`` paths have a compromised
relay, that is iff at least ``T + 1`` of them have all their relays safe.
``T = 0`` is XOR (``k = m``: one intact path suffices) and gives exactly
:func:`~qkdseg.security.exact_security`.

The global key stays secret iff every segment keeps ``T + 1`` intact paths
and every chain node is safe. Relays shared between paths (of one segment or
of several) make the paths dependent; the clauses they link are grouped into
components as for :func:`~qkdseg.security.exact_security`, and each is
evaluated exactly by conditioning on every state of its ``s`` shared relays
(``2^s`` states at once, as arrays) or, when it has fewer paths ``m`` than
shared relays (or more than ``max_shared`` of them), by a distribution over
the set of paths none of whose shared relays is compromised (``2^m``
states, at most :data:`MAX_THRESHOLD_PATH_STATES` paths). Given a state,
each path is intact independently with the product of its private relays'
``p`` (0 when one of its shared relays is compromised), and "at least
``need`` of a clause's paths intact" is the tail of a Poisson-binomial
distribution, computed by a small dynamic programme over the count (capped
at ``need``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidRequest, SecurityError
from .clauses import Segments, _checked, _clauses, _shared_relays
from .components import intact_distribution
from .exact import MAX_SHARED_RELAYS, _components, _exact_security

#: Most paths in one dependent component for the path-state method (2^m states, a few arrays of them).
MAX_THRESHOLD_PATH_STATES = 20


def check_tolerate(tolerate: object) -> int:
    """``tolerate`` as a non-negative whole number, or :class:`InvalidRequest` naming it."""
    if isinstance(tolerate, (bool, np.bool_)) or not isinstance(tolerate, (int, np.integer)) or tolerate < 0:
        raise InvalidRequest(f"tolerate={tolerate!r} must be a non-negative whole number (lost paths a part survives)")
    return int(tolerate)


def threshold_security(
    p: np.ndarray,
    segments: Segments,
    chain: Sequence[int] = (),
    *,
    tolerate: int = 0,
    max_shared: int = MAX_SHARED_RELAYS,
) -> float:
    """Exact probability that a global key stays secret when every segment's
    key is shared k-of-m over its ``m`` paths, ``k = m - tolerate``.

    Secret iff every chain node is safe and every segment keeps at least
    ``tolerate + 1`` paths whose relays are all safe (a segment of
    ``m <= tolerate`` paths never does: 0). Shared relays are handled
    exactly. ``tolerate = 0`` is :func:`~qkdseg.security.exact_security`.

    Examples
    --------
    Three paths through private relays of ``p = 0.5``: XOR needs one intact
    path (``1 - 0.5^3``), 2-of-3 sharing (``tolerate = 1``) two of them.

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, .5, 1])
    >>> seg = [[0, 1, 4], [0, 2, 4], [0, 3, 4]]
    >>> threshold_security(p, [seg]), threshold_security(p, [seg], tolerate=1)
    (0.875, 0.5)

    Every relay shared by two of three paths: any two paths together pass
    all three relays, so 2-of-3 needs all of them safe, ``0.5^3`` (the
    independence formula, which treats them as unshared, says 0.15625).

    >>> threshold_security(p, [[[0, 1, 2, 4], [0, 1, 3, 4], [0, 2, 3, 4]]], tolerate=1)
    0.125
    """
    t = check_tolerate(tolerate)
    if isinstance(max_shared, bool) or not isinstance(max_shared, (int, np.integer)) or max_shared < 0:
        raise InvalidRequest(f"max_shared={max_shared!r} must be a non-negative whole number")
    p = _checked(p, segments, chain)
    return _threshold_security(p, segments, chain, t, max_shared)


def _threshold_security(p: np.ndarray, segments: Segments, chain: Sequence[int] = (), tolerate: int = 0,
                        max_shared: int = MAX_SHARED_RELAYS) -> float:
    """:func:`threshold_security` without the argument checks."""
    if tolerate == 0:
        return _exact_security(p, segments, chain, max_shared)
    if not segments or any(len(seg) <= tolerate for seg in segments):
        return 0.0
    clauses, pmap = _clauses(p, segments, chain)
    needs = [tolerate + 1] * len(segments) + [1] * (len(clauses) - len(segments))
    shared_set = _shared_relays(clauses)
    total = 1.0
    for members in _components(clauses, shared_set):
        comp, comp_needs = [clauses[j] for j in members], [needs[j] for j in members]
        shared = sorted({v for seg in comp for relays in seg for v in relays if v in shared_set})
        n_paths = sum(len(seg) for seg in comp)
        if len(shared) <= max_shared and (len(shared) <= n_paths or n_paths > MAX_THRESHOLD_PATH_STATES):
            total *= _conditioned(pmap, comp, comp_needs, shared)
        elif n_paths <= MAX_THRESHOLD_PATH_STATES:
            total *= _path_states(pmap, comp, comp_needs, shared)
        else:
            raise SecurityError(
                f"exact security: {len(shared)} relays are shared between {n_paths} paths (limits {max_shared} "
                f"relays or {MAX_THRESHOLD_PATH_STATES} paths); use the montecarlo evaluator"
            )
    return float(min(1.0, max(0.0, total)))


def _conditioned(pmap: dict, clauses: list, needs: list[int], shared: list[int]) -> float:
    """Exact security of clauses linked by ``shared`` relays: every state of those relays at once."""
    bit = {v: k for k, v in enumerate(shared)}
    states = np.arange(1 << len(shared), dtype=np.int64)  # bit k set: shared relay k is safe
    weight = np.ones(states.size)
    for k, v in enumerate(shared):
        weight *= np.where((states >> k) & 1 == 1, pmap[v], 1.0 - pmap[v])
    for seg, need in zip(clauses, needs):
        probs = []
        for relays in seg:
            q = math.prod(pmap[v] for v in relays if v not in bit)
            mask = sum(1 << bit[v] for v in relays if v in bit)
            probs.append(np.where((states & mask) == mask, q, 0.0) if mask else q)
        weight = weight * at_least(probs, need)
    return float(weight.sum())


def _path_states(pmap: dict, clauses: list, needs: list[int], shared: list[int]) -> float:
    """Exact security of clauses linked by ``shared`` relays: a distribution over the set ``S`` of paths none of
    whose shared relays is compromised (``2^m`` states, :func:`~qkdseg.security.components.intact_distribution`);
    given ``S``, path ``i`` in ``S`` is intact with the product of its private relays' ``p``."""
    shared_set = set(shared)
    on_paths: dict[int, int] = {}
    q, clause_paths = [], []
    for seg in clauses:
        idx = []
        for relays in seg:
            for v in relays:
                if v in shared_set:
                    on_paths[v] = on_paths.get(v, 0) | (1 << len(q))
            idx.append(len(q))
            q.append(math.prod(pmap[v] for v in relays if v not in shared_set))
        clause_paths.append(idx)
    by_mask: dict[int, float] = {}
    for v in shared:  # relays on the same paths act as one: safe iff all are
        by_mask[on_paths[v]] = by_mask.get(on_paths[v], 1.0) * pmap[v]
    masks = np.fromiter(by_mask.keys(), dtype=np.int64, count=len(by_mask))
    dist = intact_distribution(len(q), masks, np.fromiter(by_mask.values(), dtype=np.float64, count=len(by_mask)))
    states = np.arange(dist.size, dtype=np.int64)
    for idx, need in zip(clause_paths, needs):
        dist = dist * at_least([np.where((states >> i) & 1 == 1, q[i], 0.0) for i in idx], need)
    return float(dist.sum())


def at_least(probs: Sequence, need: int):
    """P(at least ``need`` of independent events with probabilities ``probs`` occur).

    Each entry is a float or an array (one value per conditioning state); the
    count is tracked up to ``need`` (the last cell holds "``need`` or more").

    >>> at_least([0.5, 0.5, 0.5], 2)
    0.5
    """
    f = [1.0] + [0.0] * need
    for q in probs:
        for c in range(need, 0, -1):
            f[c] = f[c] + f[c - 1] * q if c == need else f[c] * (1.0 - q) + f[c - 1] * q
        f[0] = f[0] * (1.0 - q)
    return f[need]


def threshold_independent(p: np.ndarray, segments: Segments, chain: Sequence[int] = (), tolerate: int = 0) -> float:
    """The independence formula under threshold sharing: ``prod_j P(at least T + 1 of segment j's paths
    intact)`` with each path intact with the product of its relays' ``p`` (as if no relay were shared),
    times the chain nodes' ``p``. ``tolerate = 0`` is :func:`~qkdseg.security.independent_security`."""
    if not segments or any(len(seg) <= tolerate for seg in segments):
        return 0.0
    clauses, pmap = _clauses(p, segments, chain)
    needs = [tolerate + 1] * len(segments) + [1] * (len(clauses) - len(segments))
    return math.prod(at_least([math.prod(pmap[v] for v in relays) for relays in seg], need)
                     for seg, need in zip(clauses, needs))


def route_threshold_security(p: np.ndarray, segments: Segments, chain: Sequence[int],
                             tolerate: int) -> tuple[float, float, tuple[float, ...]]:
    """``(exact, independent, per-segment exact)`` of one route under threshold sharing (as
    :func:`~qkdseg.security.route_security` for XOR)."""
    exact = _threshold_security(p, segments, chain, tolerate)
    independent = threshold_independent(p, segments, chain, tolerate)
    return exact, independent, tuple(_threshold_security(p, [seg], (), tolerate) for seg in segments)
