"""The exact and the independent evaluators, and :func:`route_security` (docs/model.md sections 2 and 5).

Without shared relays the paths are independent and the product formula is
exact. Otherwise :func:`exact_security` groups the clauses that share relays
into independent components and evaluates each exactly
(:mod:`qkdseg.security.components`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidRequest, SecurityError
from .clauses import Segments, _checked, _clauses, _product_formula, _shared_relays
from .components import _component_security

#: Largest number of shared relays :func:`exact_security` enumerates (2^s states).
MAX_SHARED_RELAYS = 22


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
    shared_set = _shared_relays(clauses)
    s = len(shared_set)
    if s == 0:
        return _product_formula(pmap, clauses)
    if s > max_shared:
        raise SecurityError(
            f"exact security: {s} relays are shared between paths (limit {max_shared}); use the montecarlo evaluator"
        )
    total = 1.0
    for members in _components(clauses, shared_set):
        comp = [clauses[j] for j in members]
        comp_shared = sorted({v for seg in comp for relays in seg for v in relays if v in shared_set})
        if not comp_shared:
            total *= _product_formula(pmap, comp)
        else:
            total *= _component_security(p, comp, comp_shared)
    return float(min(1.0, max(0.0, total)))


def _components(clauses: list[list[tuple]], shared_set: set) -> list[list[int]]:
    """The clauses' indices in dependent components: clauses that share a relay are in one (union-find),
    each component in clause order, the components in the order of their first clause."""
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
    return list(groups.values())


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
    shared = bool(_shared_relays(clauses))
    per_clause = [_product_formula(pmap, [c]) for c in clauses]
    independent = math.prod(per_clause)
    if not shared:
        return independent, independent, tuple(per_clause[: len(segments)])
    exact = exact_security(p, segments, chain)
    return exact, independent, tuple(exact_security(p, [seg]) for seg in segments)
