"""``smr-level``'s successive search (issues 23 and 39; :mod:`qkdseg.routing.smr_level` states it).

Chains drawn as ``smr-exact`` draws them, each chain's value its cheapest subset of SMR's step-2
paths at the level (:func:`cheapest_subsets`), chains that a lower bound on their hops
(:meth:`LevelEvaluator.fewest_hops`) proves cannot beat a met value not routed. With numba the
whole search is one compiled call (:func:`qkdseg._kernels.level_successive_nb`, the same
decisions); a chain whose paths share a risky relay inside a segment, or SMR's step 1 meeting a
shared risky relay, sends the request to the search here (``tests/test_smr_level_saved.py``
holds both to the routes of the first version).
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np

from .. import _kernels
from ..network import NetworkArrays
from ..reconstruction.result import TOLERANCE
from ..security import exact_security
from .level_paths import HopRows, Rows, request_rows, split_paths
from .smr import STRICT_MARGIN, round_robin_paths, select_segment_nodes
from .smr_exact import _beats, candidate_relays, ordered_chains

#: With risky relays shared inside a segment, every subset is evaluated up to this many paths (else prefixes).
MAX_ENUMERATED = 12

_HOPS_THEN_F = operator.itemgetter(0, 1)


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
            merged = sorted(states + grown, key=_HOPS_THEN_F)
            states = []
            for st in merged:
                if not states or st[1] < states[-1][1]:
                    states.append(st)
        cands = [(h, 1.0 - f, sub) for h, f, sub in states if sub]  # hops strictly increasing: sorted
    else:
        if n <= MAX_ENUMERATED:
            subsets = (sub for k in range(1, n + 1) for sub in itertools.combinations(range(n), k))
        else:
            subsets = (tuple(range(k)) for k in range(1, n + 1))
        for sub in subsets:
            sec = exact_security(p, [[paths[i] for i in sub]])
            cands.append((sum(hops[i] for i in sub), sec, sub))
        cands.sort(key=lambda c: (c[0], -c[1]))
    return pareto_front(cands)


def pareto_front(cands: list[tuple[int, float, tuple]]) -> list[tuple[int, float, tuple]]:
    """Of ``(hops, security, subset)`` sorted by hops then falling security: those more secure than every one
    before them (the least-hop subset for each security reached)."""
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
    best = 1.0  # the full route's product, in the order the search's bound takes it
    for front in reversed(fronts):
        best *= front[-1][1]
    return least_hops_across(fronts, chain_sec, eps), chain_sec * best


def least_hops_across(fronts: list[list[tuple[int, float, tuple]]], chain_sec: float,
                      eps: float) -> tuple[int, float, tuple] | None:
    """One subset per segment from each frontier (hops increasing, security strictly increasing): the least
    total hops whose product of securities times ``chain_sec`` meets ``eps``, as ``(hops, product, subsets)``,
    or ``None``."""
    # the most each remaining segment can still add, to prune states that cannot reach eps
    tail = [1.0] * (len(fronts) + 1)
    for j in range(len(fronts) - 1, -1, -1):
        tail[j] = tail[j + 1] * fronts[j][-1][1]
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
            return None
    return next((s for s in states if _meets(s[1], eps)), None)


class LevelEvaluator:
    """A chain's value at the level, memoised: ``(1, -hops, security)`` when its route meets
    ``eps`` (cheapest subset), else ``(0, 0, full route's security)``."""

    def __init__(self, arrays, source, target, rn, rl, max_paths, eps, kernel, dist):
        self.a, self.s, self.t = arrays, source, target
        self.rows = dist.rows
        self.rn, self.rl = rn, rl
        self.max_paths, self.eps, self.kernel = max_paths, eps, kernel
        self.dist = dist  # node -> hop distances on the whole network (shared with the greedy search)
        self.bound = math.inf  # fewest hops of a chain met so far
        self.memo: dict[tuple, tuple] = {}
        self.routes: dict[tuple, tuple] = {}
        self.lower: dict[tuple, float] = {}  # chain -> fewest_hops
        self.seg_hops: dict[tuple, float] = {}  # (u, v, level needed) -> fewest hops of that segment
        self.limit = -1 if max_paths is None else int(max_paths)

    def __call__(self, chain: tuple, within: float | None = None) -> tuple:
        """The chain's value; with ``within`` (the hops of a met value the caller already
        holds), a chain that :meth:`fewest_hops` proves cannot meet ``eps`` in that many
        hops is not routed and gets the same value as a chain cut by :attr:`bound`: its
        true value is below the caller's either way, so no decision changes."""
        if chain not in self.memo:
            if within is not None and self.fewest_hops(chain) > within:
                self.routes[chain] = (None, None)
                self.memo[chain] = (0, 0, -1.0)
            else:
                self.memo[chain] = self._value(chain)
        return self.memo[chain]

    def _segment(self, u: int, v: int) -> tuple[np.ndarray, float]:
        """Segment ``(u, v)``'s A* bound (the least relay costs to ``v`` on the whole network,
        :func:`~qkdseg.routing.level_paths.cost_row`, kept per network) and least relay cost."""
        row = self.rows.cost(v)
        return row, float(row[u])

    def _chain_numba(self, chain: tuple) -> tuple:
        """The full route over ``chain`` and :func:`cheapest_subsets` of it in one compiled call
        (:func:`qkdseg._kernels.level_chain_nb`, the same arithmetic); a segment whose paths
        share a risky relay is left to :func:`cheapest_subsets`."""
        a = self.a
        nodes = [self.s, *chain, self.t]
        flat, starts, seg, status, hops, sec, full, masks = _kernels.level_chain_nb(
            a.indptr, a.indices, a.edge_of, a.cost, a.p, a.trusted, self.rn, self.rl, np.asarray(nodes, dtype=np.int64),
            self.limit, _bounds(self.rows, nodes), self.eps, TOLERANCE)
        paths = split_paths(flat, starts, seg, len(nodes) - 1)
        if status == 2:
            return (paths, *cheapest_subsets(a.p, a.trusted, paths, list(chain), self.eps))
        if status == 0:
            return paths, None, float(full)
        return paths, (int(hops), float(sec), _subsets(paths, masks)), float(full)

    def full_route(self, chain: tuple) -> list[list[list[int]]]:
        """SMR's step 2 over ``chain`` (the full route the saving is reported against)."""
        return full_route(self.a, [self.s, *chain, self.t], self.rn, self.rl, self.max_paths, self.kernel, self.rows)

    def fewest_hops(self, chain: tuple) -> float:
        if chain not in self.lower:
            self.lower[chain] = self._fewest_hops(chain)
        return self.lower[chain]

    def _fewest_hops(self, chain: tuple) -> float:
        """A lower bound on the hops of every subset of the chain's route that meets
        ``eps`` (inf: none can), before routing it.

        Segment ``(a, b)`` with ``k`` paths has at least ``k x hops(a, b)`` hops and a
        security at most ``1 - (1 - P)^k``, ``P = exp(-least relay cost a..b)`` bounding
        every path's ``Psec`` from above (shared relays only lower it: Harris), so
        meeting ``eps`` needs ``chain's p x (1 - (1 - P)^k) >= eps`` on each segment
        alone; and its ``k`` paths leave ``a`` and enter ``b`` by ``k`` different links
        (:meth:`_first_links`). The slacks cover the costs' rounding and float error.
        """
        a = self.a
        need = self.eps - TOLERANCE - 1e-9
        chain_sec = math.prod(float(a.p[v]) for v in chain)
        if need > 0.0 and chain_sec <= need:
            return math.inf
        x = need / chain_sec if need > 0.0 else 0.0
        slack = a.n_nodes * 2.0 ** -32 + 1e-9  # a path has < n relays, each cost rounded by <= 2^-33
        nodes = (self.s, *chain, self.t)
        total = 0.0
        for u, v in zip(nodes, nodes[1:]):
            key = (u, v, x)
            if key not in self.seg_hops:
                self.seg_hops[key] = self._segment_hops(u, v, x, slack)
            total += self.seg_hops[key]
        return total

    def _segment_hops(self, u: int, v: int, x: float, slack: float) -> float:
        d = float(self.dist[u][v])
        if not math.isfinite(d):
            return math.inf
        k = 1
        if x > 0.0:
            h = float(self._segment(u, v)[1])
            if h == math.inf:
                return math.inf
            ps = min(1.0, math.exp(-h + slack))
            if ps < 1.0:
                k = max(1, math.ceil(math.log1p(-x) / math.log1p(-ps) - 1e-9))
        return max(k * d, self._first_links(u, v, k), self._first_links(v, u, k))

    def _first_links(self, a_: int, b: int, k: int) -> float:
        """The least hops of ``k`` paths ``a_ -> b`` that leave ``a_`` by ``k`` different links:
        the sum of the ``k`` least ``1 + hops(w, b)`` over the neighbours ``w`` of ``a_`` a path
        can use (``b`` itself, or a relay not masked and of finite cost, over a link not removed).
        The paths of a full route never share a link (SMR's step 2 removes them), so every ``k``
        of them in one segment have at least this many hops."""
        a = self.a
        lo, hi = a.indptr[a_], a.indptr[a_ + 1]
        nb = a.indices[lo:hi]
        ok = ~self.rl[a.edge_of[lo:hi]] & ((nb == b) | (~self.rn[nb] & np.isfinite(a.cost[nb])))
        vals = self.dist[b][nb[ok]]
        if vals.size < k:
            return math.inf
        return float(k + np.sort(vals)[:k].sum())

    def paper_out_of_reach(self, within: float | None) -> bool:
        """Would SMR's step-1 chain surely not be routed (:meth:`__call__` with ``within``)? It is
        empty or starts with the trusted relay ``r`` of least ``hops(s, r) + hops(r, t)`` (smallest
        index), so its :meth:`fewest_hops` is at least its first segment's bound in the chain
        ``(r,)`` (a longer chain needs a higher level there) plus ``hops(r, t)`` (the triangle
        inequality). When that exceeds ``within``, step 1 need not be run at all."""
        if within is None:
            return False
        a, s, t = self.a, self.s, self.t
        score = self.dist[s] + self.dist[t]
        idx = np.flatnonzero(a.trusted & ~self.rn & np.isfinite(score))
        if idx.size == 0:
            return True
        r = int(idx[np.argmin(score[idx])])
        need = self.eps - TOLERANCE - 1e-9
        pr = float(a.p[r])
        if need > 0.0 and pr <= need:
            return True
        slack = a.n_nodes * 2.0 ** -32 + 1e-9
        key = (s, r, need / pr if need > 0.0 else 0.0)
        if key not in self.seg_hops:
            self.seg_hops[key] = self._segment_hops(s, r, key[2], slack)
        return self.seg_hops[key] + float(self.dist[r][t]) > within

    def _value(self, chain: tuple) -> tuple:
        a = self.a
        nodes = [self.s, *chain, self.t]
        if self.bound < math.inf:
            # every segment needs a path of at least its hop distance: a chain that cannot reach
            # the cheapest met so far is not routed (nor is any longer chain, by the triangle inequality)
            if sum(self.dist[x][y] for x, y in zip(nodes, nodes[1:])) > self.bound:
                self.routes[chain] = (None, None)
                return (0, 0, -1.0)
        if self.kernel == "numba":
            paths, best, full = self._chain_numba(chain)
        else:
            paths = self.full_route(chain)
            best, full = cheapest_subsets(a.p, a.trusted, paths, list(chain), self.eps)
        self.routes[chain] = (paths, best)
        if best is None:  # unmet: judged by the full route's security (a lower bound with shared risky relays)
            return (0, 0, full)
        self.bound = min(self.bound, best[0])
        return (1, -best[0], best[1])


def _met_hops(*values) -> float | None:
    """The fewest hops among the met values given (None: none met)."""
    hops = [-v[1] for v in values if v is not None and v[0] == 1]
    return min(hops) if hops else None


def _greedy(ev: LevelEvaluator, cands: list[int], dist: dict):
    """``smr-exact``'s greedy insertion (:func:`qkdseg.routing.smr_exact._greedy`), a trial
    bounded by the met value it must beat (the current chain's or the round's best so far)."""
    s, t = ev.s, ev.t
    chain: tuple = ()
    value = ev(chain)
    while True:
        ends = [s, *chain, t]
        trials = []
        for r in cands:
            if r in chain:
                continue
            detours = [dist[a][r] + dist[b][r] - dist[a][b] for a, b in zip(ends, ends[1:])]
            pos = min(range(len(detours)), key=detours.__getitem__)  # the first least, as np.argmin
            trials.append(chain[:pos] + (r,) + chain[pos:])
        # routed most promising first (fewest hops bound), each bounded by the best met so far (the
        # current chain's or a trial's of this round); the choice is then made in candidate order
        met = _met_hops(value)
        for i in sorted(range(len(trials)), key=lambda i: (ev.fewest_hops(trials[i]), i)):
            h = _met_hops(ev(trials[i], within=met))
            if h is not None and (met is None or h < met):
                met = h
        best_chain, best_value = None, None
        for trial in trials:
            v = ev(trial)
            if best_value is None or _beats(v, best_value):
                best_chain, best_value = trial, v
        if best_chain is None or not _beats(best_value, value):
            return chain, value
        chain, value = best_chain, best_value


def _subsets(paths: list[list[list[int]]], masks: np.ndarray) -> tuple:
    """Each segment's bit mask of its paths as the tuple of their indices."""
    masks = masks.tolist()
    return tuple(tuple(i for i in range(len(segment)) if masks[j] >> i & 1) for j, segment in enumerate(paths))


def _bounds(rows: Rows, nodes: list[int]) -> np.ndarray:
    """Each segment's A* bound: the least relay costs to its end on the whole network
    (:func:`~qkdseg.routing.level_paths.cost_row`, kept per network), one row per segment."""
    lbs = np.empty((len(nodes) - 1, rows.arrays.n_nodes))
    for j, v in enumerate(nodes[1:]):
        lbs[j] = rows.cost(v)
    return lbs


def full_route(arrays: NetworkArrays, nodes: list[int], rn: np.ndarray, rl: np.ndarray, max_paths: int | None,
               kernel: str, rows: Rows) -> list[list[list[int]]]:
    """SMR's step 2 over ``nodes`` (:func:`~qkdseg.routing.smr.round_robin_paths`; with numba its A*
    bounds taken from the network's rows, the paths are the same)."""
    if kernel != "numba":
        return round_robin_paths(arrays, nodes, max_paths=max_paths, removed_nodes=rn, removed_links=rl, kernel=kernel)
    a = arrays
    flat, starts, seg = _kernels.round_robin_lb_nb(
        a.indptr, a.indices, a.edge_of, a.cost, a.trusted, rn.copy(), rl.copy(), np.asarray(nodes, dtype=np.int64),
        -1 if max_paths is None else int(max_paths), _bounds(rows, nodes), np.ones(len(nodes) - 1, dtype=np.bool_))
    return split_paths(flat, starts, seg, len(nodes) - 1)


def successive(arrays: NetworkArrays, source: int, target: int, rn: np.ndarray, rl: np.ndarray, rows: Rows,
               cap: int | None, limit: int, max_paths: int | None, eps: float, kernel: str):
    """The successive search over the candidates (:func:`~qkdseg.routing.smr_exact.candidate_relays`,
    at most ``cap``): ``(candidates, chain, its full route, (hops, product, subsets) or None,
    securities, arrays, rows)``, the chain of the least value (:class:`LevelEvaluator`) among chain
    ``()``, SMR's step-1 chain and every ordered chain of the candidates (at most ``limit`` of
    them) or those of the greedy insertion. ``securities``:
    :func:`~qkdseg.security.route_security` of the full route and of the subsets where the
    compiled search had them (no shared risky relay), else None; ``arrays``: the chain and full
    route as arrays ``(chain, flat, starts, seg)``, or None; ``rows``: with numba, the hop and cost
    rows of the source, the target and the candidates with their ``slot`` (the network's, or
    :func:`~qkdseg.routing.level_paths.request_rows`), else None. With numba the search is one
    compiled call where it can be."""
    ends_rows = None
    if kernel == "numba":
        found, ends_rows = _compiled(arrays, source, target, rn, rl, rows, cap, limit, max_paths, eps)
        if found is not None:
            return (*found, ends_rows)
    return (*search_in_python(arrays, source, target, rn, rl, rows, cap, limit, max_paths, eps, kernel), ends_rows)


def search_in_python(arrays: NetworkArrays, source: int, target: int, rn: np.ndarray, rl: np.ndarray, rows: Rows,
                     cap: int | None, limit: int, max_paths: int | None, eps: float, kernel: str):
    """:func:`successive` with the chains evaluated one by one (:class:`LevelEvaluator`; with numba,
    one compiled call per chain): the first six of its results."""
    dist = HopRows(rows)
    cands, _ = candidate_relays(arrays, source, target, rn, kernel, cap, dist=dist)
    ev = LevelEvaluator(arrays, source, target, rn, rl, max_paths, eps, kernel, dist)
    best_chain: tuple = ()
    best = ev(best_chain)
    paper = () if ev.paper_out_of_reach(_met_hops(best)) else \
        tuple(select_segment_nodes(arrays, source, target, removed_nodes=rn, removed_links=rl, kernel=kernel)[1:-1])
    if paper and _beats(ev(paper, within=_met_hops(best)), best):
        best_chain, best = paper, ev(paper)
    if ordered_chains(len(cands)) <= limit:
        # every ordered chain, fewest hops of the chain's own legs first: once one meets the level,
        # the chains whose legs alone are longer are not routed at all (the evaluator's bound)
        chains = [c for k in range(1, len(cands) + 1) for c in itertools.permutations(cands, k)]
        legs = [sum(dist[x][y] for x, y in zip((source, *c), (*c, target))) for c in chains]
        for i in sorted(range(len(chains)), key=lambda i: (legs[i], i)):
            if _beats(ev(chains[i], within=_met_hops(best)), best):
                best_chain, best = chains[i], ev(chains[i])
    else:
        chain, value = _greedy(ev, cands, dist)
        if _beats(value, best):
            best_chain, best = chain, value
    return (cands, best_chain, *ev.routes[best_chain], (None, None), None)


def _compiled(arrays: NetworkArrays, source: int, target: int, rn: np.ndarray, rl: np.ndarray, rows: Rows,
              cap: int | None, limit: int, max_paths: int | None, eps: float):
    """:func:`successive` in one compiled call: ``(found, rows)``, found None where it needs the
    exact evaluator. On the network's rows (up to 2048 nodes), a node they lack is added and the
    call repeated; else on the rows of the request's ends."""
    a = arrays
    shared = rows.shared((source, target))
    network = shared is not None
    if not network:
        cands, _ = candidate_relays(arrays, source, target, rn, "numba", cap, dist=HopRows(rows))
        shared = request_rows(rows, [source, target, *cands])
    while True:
        hrows, crows, slot = shared
        status, cands, chain, flag, flat, starts, seg, masks, hops, sec, full, full_shared, chosen, sub_shared, node = \
            _kernels.level_successive_nb(
                a.indptr, a.indices, a.edge_of, a.cost, a.p, a.trusted, rn, rl, int(source), int(target),
                -1 if cap is None else int(cap), min(int(limit), 2**62), hrows, crows, slot if network else slot.copy(),
                network,
                -1 if max_paths is None else int(max_paths), eps, TOLERANCE, STRICT_MARGIN)
        if status != 2:
            break
        shared = rows.shared((int(node),))
    if status == 0:
        return None, shared
    paths = split_paths(flat, starts, seg, chain.size + 1)
    secs = (None if full_shared else float(full), None if sub_shared or flag != 1 else float(chosen))
    plan = (int(hops), float(sec), _subsets(paths, masks)) if flag == 1 else None
    return (cands.tolist(), tuple(chain.tolist()), paths, plan, secs, (chain, flat, starts, seg)), shared
