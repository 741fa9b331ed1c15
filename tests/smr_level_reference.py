"""The first ``smr-level`` (commit a69399d), frozen as the reference of
``tests/test_smr_level.py``'s equality test: the optimised
:mod:`qkdseg.routing.smr_level` (chains bounded before they are routed,
issue 23's benchmark) must return exactly what this returns. Not registered.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from qkdseg import _kernels
from qkdseg.errors import InvalidRequest
from qkdseg.network import NetworkArrays
from qkdseg.reconstruction.result import TOLERANCE
from qkdseg.security import exact_security, route_security
from qkdseg.routing.smr import _distances, request_masks, round_robin_paths, select_segment_nodes
from qkdseg.routing.smr_exact import _beats, _greedy, candidate_relays, ordered_chains

#: Default cap on the candidate segment nodes (closest by detour first).
DEFAULT_CANDIDATES = 4
#: Default largest number of ordered chains searched exhaustively (3 candidates give 16).
DEFAULT_EXHAUSTIVE = 16
#: With risky relays shared inside a segment, every subset is evaluated up to this many paths (else prefixes).
MAX_ENUMERATED = 12


def _meets(sec: float, eps: float) -> bool:
    return sec >= eps - TOLERANCE


def segment_frontier(p: np.ndarray, trusted: np.ndarray, paths: list[list[int]]) -> list[tuple[int, float, tuple]]:
    """The least-hop subsets of one segment's paths: ``(hops, exact security, path indices)``,
    hops increasing and security strictly increasing (each the most secure at its hops).

    No risky relay (``p < 1``) in two paths: the paths are independent and a
    0/1 knapsack over the hops is exact. Otherwise every subset is evaluated
    by :func:`~qkdseg.security.exact_security` when there are at most
    :data:`MAX_ENUMERATED` paths, else the prefixes (ExDijkstra order) only.
    """
    relays = [path[1:-1] for path in paths]
    flat = [v for rel in relays for v in rel]
    pr = p[flat].tolist() if flat else []
    risky = [v for v, x in zip(flat, pr) if x < 1.0]
    shared = len(set(risky)) < len(risky)
    hops = [len(path) - 1 for path in paths]
    n = len(paths)
    cands: list[tuple[int, float, tuple]] = []
    if not shared:
        # Pareto states (hops, prod(1 - Psec) over the subset, subset) of a 0/1 knapsack, path by path
        psec, k = [], 0
        for rel in relays:
            psec.append(math.prod(pr[k:k + len(rel)]))
            k += len(rel)
        states: list[tuple[int, float, tuple]] = [(0, 1.0, ())]
        for i in range(n):
            grown = [(h + hops[i], f * (1.0 - psec[i]), sub + (i,)) for h, f, sub in states]
            merged = sorted(states + grown, key=lambda x: (x[0], x[1]))
            states = []
            for st in merged:
                if not states or st[1] < states[-1][1]:
                    states.append(st)
        cands = [(h, 1.0 - f, sub) for h, f, sub in states if sub]
    else:
        if n <= MAX_ENUMERATED:
            subsets = (sub for k in range(1, n + 1) for sub in itertools.combinations(range(n), k))
        else:
            subsets = (tuple(range(k)) for k in range(1, n + 1))
        for sub in subsets:
            sec = exact_security(p, [[paths[i] for i in sub]])
            cands.append((sum(hops[i] for i in sub), sec, sub))
    cands.sort(key=lambda c: (c[0], -c[1]))
    out: list[tuple[int, float, tuple]] = []
    for c in cands:
        if not out or c[1] > out[-1][1]:
            out.append(c)
    return out


def cheapest_subsets(p: np.ndarray, trusted: np.ndarray, paths: list[list[list[int]]], chain: list[int],
                     eps: float) -> tuple[tuple[int, float, tuple] | None, float]:
    """The least total hops over one subset per segment whose product of segment
    securities times ``prod p(chain)`` meets ``eps``: ``(hops, that product, subsets)``,
    or ``None`` when even every path is not enough; and the product for every path
    (the full route's security, exact without risky relays shared between segments)."""
    if not paths or any(len(seg) == 0 for seg in paths):
        return None, 0.0
    chain_sec = math.prod(float(p[v]) for v in chain)
    fronts = [segment_frontier(p, trusted, seg) for seg in paths]
    # the most each remaining segment can still add, to prune states that cannot reach eps
    tail = [1.0] * (len(fronts) + 1)
    for j in range(len(fronts) - 1, -1, -1):
        tail[j] = tail[j + 1] * fronts[j][-1][1]
    full = chain_sec * tail[0]
    states: list[tuple[int, float, tuple]] = [(0, chain_sec, ())]
    for j, front in enumerate(fronts):
        new = [(h + fh, sec * fs, subs + (fsub,)) for h, sec, subs in states for fh, fs, fsub in front
               if _meets(sec * fs * tail[j + 1], eps)]
        new.sort(key=lambda s: (s[0], -s[1]))
        states = []
        for s in new:
            if not states or s[1] > states[-1][1]:
                states.append(s)
        if not states:
            return None, full
    for s in states:
        if _meets(s[1], eps):
            return s, full
    return None, full


class _LevelEvaluator:
    """A chain's value at the level, memoised: ``(1, -hops, security)`` when its route meets
    ``eps`` (cheapest subset), else ``(0, 0, full route's security)``."""

    def __init__(self, arrays, source, target, rn, rl, max_paths, eps, kernel, dist):
        self.a, self.s, self.t = arrays, source, target
        self.rn, self.rl = rn, rl
        self.max_paths, self.eps, self.kernel = max_paths, eps, kernel
        self.dist = dist  # node -> hop distances on the whole network (shared with the greedy search)
        self.bound = math.inf  # fewest hops of a chain met so far
        self.memo: dict[tuple, tuple] = {}
        self.routes: dict[tuple, tuple] = {}

    def __call__(self, chain: tuple) -> tuple:
        if chain not in self.memo:
            self.memo[chain] = self._value(chain)
        return self.memo[chain]

    def _value(self, chain: tuple) -> tuple:
        a = self.a
        nodes = [self.s, *chain, self.t]
        if self.bound < math.inf:
            # every segment needs a path of at least its hop distance: a chain that cannot reach
            # the cheapest met so far is not routed (nor is any longer chain, by the triangle inequality)
            for v in nodes[:-1]:
                if v not in self.dist:
                    self.dist[v] = _distances(a, v, "hops", self.kernel)
            if sum(self.dist[x][y] for x, y in zip(nodes, nodes[1:])) > self.bound:
                self.routes[chain] = (None, None)
                return (0, 0, -1.0)
        paths = round_robin_paths(a, nodes, max_paths=self.max_paths, removed_nodes=self.rn, removed_links=self.rl,
                                  kernel=self.kernel)
        best, full = cheapest_subsets(a.p, a.trusted, paths, list(chain), self.eps)
        self.routes[chain] = (paths, best)
        if best is None:  # unmet: judged by the full route's security (a lower bound with shared risky relays)
            return (0, 0, full)
        self.bound = min(self.bound, best[0])
        return (1, -best[0], best[1])


def _check(epsilon, candidates, exhaustive) -> float:
    if epsilon is None:
        raise InvalidRequest("smr-level needs a security level: give epsilon (the request's level)")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer))
                                   or candidates < 0):
        raise InvalidRequest(f"candidates={candidates!r} must be a non-negative integer or None")
    if isinstance(exhaustive, bool) or not isinstance(exhaustive, (int, np.integer)) or exhaustive < 0:
        raise InvalidRequest(f"exhaustive={exhaustive!r} must be a non-negative integer")
    return float(epsilon)


def smr_level(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    epsilon: float | None = None,
    max_paths: int | None = None,
    candidates: int | None = DEFAULT_CANDIDATES,
    exhaustive: int = DEFAULT_EXHAUSTIVE,
    kernel: str | None = None,
):
    """``smr-level`` on node indices; returns ``(segment_nodes, paths, info)``.

    ``info = {"full_hops", "full_security", "met"}``: the hops and exact
    security of the full route over the chosen chain (what ``smr-exact``
    with that chain would consume), and whether the level is met.

    Examples
    --------
    >>> from qkdseg import example_network, route
    >>> net = example_network()
    >>> r = route(net, 0, 7, "smr-level", epsilon=0.5)
    >>> r.consumed_bits, route(net, 0, 7, "smr-exact").consumed_bits, r.level["saved_bits"]
    (600000, 1200000, 600000)
    >>> round(r.security, 6) >= 0.5, r.reconstruction.n_keys
    (True, 1)
    """
    eps = _check(epsilon, candidates, exhaustive)
    kernel = _kernels.resolve_kernel(kernel)
    rn, rl = request_masks(arrays, source, target, removed_links)
    cands, dist = candidate_relays(arrays, source, target, rn, kernel, candidates)
    ev = _LevelEvaluator(arrays, source, target, rn, rl, max_paths, eps, kernel, dist)
    best_chain: tuple = ()
    best = ev(best_chain)
    paper = tuple(select_segment_nodes(arrays, source, target, removed_nodes=rn, removed_links=rl, kernel=kernel)[1:-1])
    if paper and _beats(ev(paper), best):
        best_chain, best = paper, ev(paper)
    if ordered_chains(len(cands)) <= exhaustive:
        # every ordered chain, fewest hops of the chain's own legs first: once one meets the level,
        # the chains whose legs alone are longer are not routed at all (the evaluator's bound)
        chains = [c for k in range(1, len(cands) + 1) for c in itertools.permutations(cands, k)]
        for v in cands:
            if v not in dist:
                dist[v] = _distances(arrays, v, "hops", kernel)
        legs = [sum(dist[x][y] for x, y in zip((source, *c), (*c, target))) for c in chains]
        for i in sorted(range(len(chains)), key=lambda i: (legs[i], i)):
            if _beats(ev(chains[i]), best):
                best_chain, best = chains[i], ev(chains[i])
    else:
        chain, value = _greedy(ev, cands, dist, arrays, kernel)
        if _beats(value, best):
            best_chain, best = chain, value
    nodes = [source, *best_chain, target]
    paths, plan = ev.routes[best_chain]
    full_hops = sum(len(p) - 1 for seg in paths for p in seg)
    full_sec = route_security(arrays.p, paths, list(best_chain))[0] if paths and all(paths) else 0.0
    info = {"full_hops": full_hops, "full_security": full_sec, "met": plan is not None}
    if plan is None:
        return nodes, paths, info
    chosen = [[seg[i] for i in sorted(sub)] for seg, sub in zip(paths, plan[2])]
    if not _meets(route_security(arrays.p, chosen, list(best_chain))[0], eps):  # pragma: no cover - Harris
        return nodes, paths, info
    return nodes, chosen, info

