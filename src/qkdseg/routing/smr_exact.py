"""``smr-exact``: SMR's segments chosen by the exact security of the full route.

SMR's step 1 judges a segment node by two paths per side, but step 2 then
routes every path it can find; a segment that runs short of paths drags the
product down, and the paper's choice can end below ``disjoint`` (the same
paths with no segment). ``smr-exact`` keeps step 2 exactly as SMR's
(:func:`~qkdseg.routing.smr.round_robin_paths`) and chooses the segment
nodes by the value of the route step 2 would build, computed in full:

1. **Candidates.** The trusted relays other than the request's ends that
   both ends reach, in order of detour ``hops(s, r) + hops(r, d)`` (ties:
   smallest index; the first is the node SMR's step 1 tries first), capped
   at ``candidates`` (default :data:`DEFAULT_CANDIDATES`; ``None``: all).
2. **Incumbent.** No segment node at all (the ``disjoint`` route) and, when
   it has any, SMR's own step-1 chain are evaluated first; the better one
   is kept.
3. **Search.** If the candidates admit at most ``exhaustive`` ordered
   chains (default :data:`DEFAULT_EXHAUSTIVE` = 16, i.e. up to three
   candidates), every ordered chain of distinct candidates is evaluated.
   Otherwise greedily: starting from no segment node, each round tries every
   unused candidate, inserted between the consecutive chain nodes ``a, b``
   where its hop detour ``hops(a, r) + hops(r, b) - hops(a, b)`` is smallest,
   and keeps the best insertion while it is strictly better (by more than
   :data:`~qkdseg.routing.smr.STRICT_MARGIN`).
4. The best of the incumbent and the search wins; a later chain replaces an
   earlier one only when strictly better, so ties keep the earlier (shorter,
   closer) chain.

The value of a chain is the exact end-to-end security of its full route
(``objective="security"``, the default) or, with ``objective="keys"``, the
number of ``B``-bit global keys the paper's reconstruction builds at
``keys_epsilon`` (ties broken by security). "No segment" is always
evaluated and only a strictly better chain replaces it, so ``smr-exact`` is
never below ``disjoint`` on the same request, and never below ``smr``.

With numba, a chain's route and its security are one compiled call
(:func:`qkdseg._kernels.route_security_nb`, step 2's kernel plus the product
formula); a chain whose paths share a risky relay (trusted relays with
``p < 1``) is evaluated by :func:`qkdseg.security.exact_security` instead.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .. import _kernels
from ..errors import InvalidRequest
from ..network import NetworkArrays
from ..security import exact_security
from ..security.threshold import _threshold_security
from .registry import register
from .smr import STRICT_MARGIN, _distances, request_masks, round_robin_paths, select_segment_nodes

#: Default cap on the candidate segment nodes (closest by detour first).
DEFAULT_CANDIDATES = 8
#: Default largest number of ordered chains searched exhaustively (3 candidates give 16).
DEFAULT_EXHAUSTIVE = 16
#: Values of the ``objective`` option.
OBJECTIVES = ("security", "keys")


def ordered_chains(k: int) -> int:
    """Number of ordered chains of distinct elements from ``k``, the empty one
    included: ``sum_j k! / (k - j)!``.

    >>> [ordered_chains(k) for k in range(5)]
    [1, 2, 5, 16, 65]
    """
    return sum(math.perm(k, j) for j in range(k + 1))


class _Evaluator:
    """The value of the full route over ``[source, *chain, target]``, memoised."""

    def __init__(self, arrays, source, target, rn, rl, max_paths, objective, keys_epsilon, kernel, tolerate=0):
        self.tolerate = tolerate
        self.a, self.s, self.t = arrays, source, target
        self.rn, self.rl = rn, rl
        self.max_paths = max_paths
        self.limit = -1 if max_paths is None else int(max_paths)
        self.objective, self.eps = objective, keys_epsilon
        self.kernel = kernel
        self.mark = np.zeros(arrays.n_nodes, dtype=np.bool_)
        self.memo: dict[tuple, tuple] = {}

    def __call__(self, chain: tuple) -> tuple:
        if chain not in self.memo:
            self.memo[chain] = self._value(chain)
        return self.memo[chain]

    def _value(self, chain: tuple) -> tuple:
        a = self.a
        nodes = [self.s, *chain, self.t]
        if self.objective == "security" and self.kernel == "numba" and not self.tolerate:
            sec, shared = _kernels.route_security_nb(
                a.indptr, a.indices, a.edge_of, a.cost, a.p, a.trusted, self.rn, self.rl,
                np.asarray(nodes, dtype=np.int64), self.limit, self.mark,
            )
            if not shared:
                return (float(sec),)
        paths = round_robin_paths(a, nodes, max_paths=self.max_paths, removed_nodes=self.rn, removed_links=self.rl,
                                  kernel=self.kernel)
        if self.tolerate:
            return _threshold_value(a.p, paths, list(chain), self.tolerate, self.objective, self.eps)
        sec = exact_security(a.p, paths, list(chain))
        if self.objective == "security":
            return (sec,)
        if sec == 0.0:
            return (0, 0.0)
        from ..reconstruction import paper_key_counts

        return (paper_key_counts(a.p, paths, list(chain), (self.eps,))[0], sec)


def _threshold_value(p, paths, chain: list, tolerate: int, objective: str, eps: float) -> tuple:
    """A chain's value under k-of-m sharing (``tolerate = T``): the exact security of its full route (with
    ``objective="keys"``: its one ``xor-all`` key at ``eps``, then security); below every route that can carry
    the sharing (-1) when a segment has ``m <= T`` paths."""
    if not paths or any(len(seg) <= tolerate for seg in paths):
        return (-1.0,) if objective == "security" else (-1, -1.0)
    sec = _threshold_security(p, paths, chain, tolerate)
    return (sec,) if objective == "security" else (int(sec >= eps - 1e-12), sec)


def _beats(x: tuple, y: tuple) -> bool:
    """``x`` strictly better than ``y``: integer parts first, the security
    (last) by more than :data:`STRICT_MARGIN`."""
    if x[:-1] != y[:-1]:
        return x[:-1] > y[:-1]
    return x[-1] > y[-1] + STRICT_MARGIN


def _check(candidates, objective, keys_epsilon, exhaustive) -> None:
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 0):
        raise InvalidRequest(f"candidates={candidates!r} must be a non-negative integer or None")
    if objective not in OBJECTIVES:
        raise InvalidRequest(f"objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
    if isinstance(keys_epsilon, bool) or not isinstance(keys_epsilon, (int, float, np.floating)) or not 0.0 <= keys_epsilon <= 1.0:
        raise InvalidRequest(f"keys_epsilon={keys_epsilon!r} must be a probability in [0, 1]")
    if isinstance(exhaustive, bool) or not isinstance(exhaustive, (int, np.integer)) or exhaustive < 0:
        raise InvalidRequest(f"exhaustive={exhaustive!r} must be a non-negative integer")


def candidate_relays(arrays: NetworkArrays, source: int, target: int, rn: np.ndarray, kernel: str,
                     cap: int | None = DEFAULT_CANDIDATES, dist: dict | None = None) -> tuple[list[int], dict[int, np.ndarray]]:
    """The candidate segment nodes in search order, and the hop distances
    computed (node -> array, for ``source`` and ``target``; into ``dist`` when given).

    Trusted relays not masked in ``rn`` with finite hop distance to both
    ends, sorted by ``hops(source, r) + hops(r, target)`` then index; the
    first ``cap`` (all when ``cap`` is None).
    """
    if dist is None:
        dist = {source: _distances(arrays, source, "hops", kernel), target: _distances(arrays, target, "hops", kernel)}
    score = dist[source] + dist[target]
    ok = arrays.trusted & ~rn & np.isfinite(score)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((idx, score[idx]))]
    if cap is not None:
        order = order[:cap]
    return [int(v) for v in order], dist


def _greedy(ev: _Evaluator, cands: list[int], dist: dict, arrays: NetworkArrays, kernel: str):
    s, t = ev.s, ev.t
    chain: tuple = ()
    value = ev(chain)
    while True:
        ends = [s, *chain, t]
        for v in ends:
            if v not in dist:
                dist[v] = _distances(arrays, v, "hops", kernel)
        best_chain, best_value = None, None
        for r in cands:
            if r in chain:
                continue
            detours = [dist[a][r] + dist[b][r] - dist[a][b] for a, b in zip(ends, ends[1:])]
            pos = int(np.argmin(detours))
            trial = chain[:pos] + (r,) + chain[pos:]
            v = ev(trial)
            if best_value is None or _beats(v, best_value):
                best_chain, best_value = trial, v
        if best_chain is None or not _beats(best_value, value):
            return chain, value
        chain, value = best_chain, best_value


@register(
    "smr-exact",
    "SMR with segment nodes chosen by the exact security of the full route (never below disjoint or smr)",
    {
        "max_paths": "paths per segment (default: unlimited)",
        "candidates": f"trusted relays tried, closest by detour first (default {DEFAULT_CANDIDATES}; None: all)",
        "objective": "'security' (default: exact end-to-end security) or 'keys' (global keys at keys_epsilon)",
        "keys_epsilon": "security level of the 'keys' objective (default 0.9)",
        "exhaustive": f"search every ordered chain when there are at most this many (default {DEFAULT_EXHAUSTIVE}); else greedy",
    },
    tolerates=True,
)
def smr_exact(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    max_paths: int | None = None,
    candidates: int | None = DEFAULT_CANDIDATES,
    objective: str = "security",
    keys_epsilon: float = 0.9,
    exhaustive: int = DEFAULT_EXHAUSTIVE,
    kernel: str | None = None,
    tolerate: int = 0,
):
    """``smr-exact`` on node indices; returns ``(segment_nodes, paths)``.

    Parameters
    ----------
    arrays : NetworkArrays
    source, target : int
        Node indices.
    removed_links : array of bool, optional
        Links not to use (pools below the block size).
    max_paths : int, optional
        Paths per segment in step 2 (default: unlimited).
    candidates : int or None
        How many trusted relays to try, closest by detour first.
    objective : {"security", "keys"}
        What a chain is judged by: the exact security of its full route, or
        the number of global keys of one block each that the paper's
        reconstruction builds at ``keys_epsilon`` (then security).
    keys_epsilon : float
        The level of the ``keys`` objective, in [0, 1].
    exhaustive : int
        Search every ordered chain of candidates when there are at most
        this many (:func:`ordered_chains`); otherwise greedy insertion.
    kernel : str, optional
        ``"numba"`` or ``"python"`` (default: numba when installed); same result.
    tolerate : int
        ``T > 0`` (``route(..., sharing="threshold")``): a chain is judged by
        its full route's security with k-of-m segment keys, and a chain with a
        segment of ``m <= T`` paths comes after every chain that can carry them.

    Examples
    --------
    >>> from qkdseg import example_network, route
    >>> net = example_network()
    >>> round(route(net, 0, 7, "smr-exact").security, 6) >= round(route(net, 0, 7, "disjoint").security, 6)
    True
    """
    _check(candidates, objective, keys_epsilon, exhaustive)
    kernel = _kernels.resolve_kernel(kernel)
    rn, rl = request_masks(arrays, source, target, removed_links)
    ev = _Evaluator(arrays, source, target, rn, rl, max_paths, objective, float(keys_epsilon), kernel, int(tolerate))
    best_chain: tuple = ()
    best = ev(best_chain)
    paper = tuple(select_segment_nodes(arrays, source, target, removed_nodes=rn, removed_links=rl, kernel=kernel)[1:-1])
    if paper and _beats(ev(paper), best):
        best_chain, best = paper, ev(paper)
    cands, dist = candidate_relays(arrays, source, target, rn, kernel, candidates)
    if ordered_chains(len(cands)) <= exhaustive:
        for k in range(1, len(cands) + 1):
            for chain in itertools.permutations(cands, k):
                if _beats(ev(chain), best):
                    best_chain, best = chain, ev(chain)
    else:
        chain, value = _greedy(ev, cands, dist, arrays, kernel)
        if _beats(value, best):
            best_chain, best = chain, value
    nodes = [source, *best_chain, target]
    paths = round_robin_paths(arrays, nodes, max_paths=max_paths, removed_nodes=rn, removed_links=rl, kernel=kernel)
    return nodes, paths
