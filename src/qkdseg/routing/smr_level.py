"""``smr-level``: the requested level at the least key (issues 23 and 39; not in the paper).

Every other algorithm keeps adding paths until none is left, although a
request only needs its level ``epsilon``. ``smr-level`` chooses the segment
chain *and* the subset of its paths that deliver one global key meeting
``epsilon`` for the fewest consumed bits (``hops x B``: one ``B``-bit piece
per path per hop), so the consumed bits per ``epsilon``-key are least.
Two searches (docs/algorithms.md states both spaces): the successive search
below (``search="successive"``, the first version's routes), then, by
default (``search="wide"``), :func:`~qkdseg.routing.level_wide.wide_search`
over the ``k`` least paths by hops and by security of every segment of
every chain of the candidate relays and their subsets, whose route is
taken only when it has fewer hops (so never more bits, never a refusal
where the successive search serves). The successive search:

1. **Chains** are drawn as ``smr-exact`` draws them
   (:mod:`qkdseg.routing.smr_exact`): no segment node (``disjoint``'s
   chain), SMR's step-1 chain, and the trusted relays closest by detour
   (``candidates``), every ordered chain when there are at most
   ``exhaustive``, else greedy insertion; a chain's value is its cost at the
   level instead of its security. A chain is not routed when a lower bound on
   its hops at the level (:meth:`_LevelEvaluator.fewest_hops`) exceeds a met
   value it would have to beat; that changes no comparison, so the routes are
   those of the first version (``tests/smr_level_reference.py``).
2. **Paths** of a chain are SMR's step 2 over it (round-robin ExDijkstra,
   :func:`~qkdseg.routing.smr.round_robin_paths`): the full route. Its
   *subsets* are searched, not only its prefixes: per segment the least-hop
   subset for every reachable security (an exact 0/1 knapsack over the
   paths' hops when they share no risky relay; with shared risky relays every
   subset of up to :data:`MAX_ENUMERATED` paths is evaluated exactly, else
   only the ExDijkstra prefixes), then across segments the least total hops
   whose product of segment securities times the chain's ``p`` meets
   ``epsilon`` (:func:`~qkdseg.reconstruction.meets`).
3. The cheapest chain wins (ties: the more secure, then the earlier chain).
   When no chain's full route meets ``epsilon``, the most secure full route
   is returned unchanged: every reconstruction then finds no key, and the
   caller refuses the request without spending anything.

The product across segments is the exact security when no risky relay is
shared between segments and a lower bound otherwise (Harris' inequality,
as in :mod:`qkdseg.reconstruction`), so a route accepted on it meets
``epsilon`` exactly; the exact security of the route returned is checked
once more. Every piece of the route then feeds the one key, so ``xor-all``,
``paper``, ``optimal`` and ``reuse`` all deliver at least one key at
``epsilon`` from it (``tests/test_smr_level.py``).

Why one key: any reconstruction that builds ``k`` keys from disjoint pieces
spends on each at least the least cost of one key, so no route's bits per
information-theoretic key are below this one's on the same paths.

Besides ``(segment_nodes, paths)`` it returns what it saved:
``{"full_hops", "full_security", "met"}`` of the full route over the same
chain; :func:`qkdseg.route` reports it as ``Route.level``.
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np

from .. import _kernels
from ..errors import InvalidRequest
from ..network import NetworkArrays
from ..reconstruction.result import TOLERANCE
from ..security import exact_security, route_security
from .level_paths import HopRows, network_rows
from .level_wide import DEFAULT_K, wide_search
from .registry import register
from .smr import request_masks, round_robin_paths, select_segment_nodes
from .smr_exact import _beats, candidate_relays, ordered_chains

#: Default cap on the candidate segment nodes (closest by detour first).
DEFAULT_CANDIDATES = 4
#: Default largest number of ordered chains searched exhaustively (3 candidates give 16).
DEFAULT_EXHAUSTIVE = 16
#: Values of the ``search`` option: the wide search (issue 39, the default) and the first one.
SEARCHES = ("wide", "successive")
#: Largest ``k`` (2k least paths per segment, plus the full route's, at most 16 in all).
MAX_K = 8
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

    def _bounds(self, nodes: list[int]) -> np.ndarray:
        """Each segment's A* bound (:meth:`_segment`), one row per segment."""
        lbs = np.empty((len(nodes) - 1, self.a.n_nodes))
        for j, (u, v) in enumerate(zip(nodes, nodes[1:])):
            lbs[j] = self._segment(u, v)[0]
        return lbs

    def _round_robin(self, nodes: list[int]) -> list[list[list[int]]]:
        """:func:`~qkdseg.routing.smr.round_robin_paths` with numba, its A* bounds taken from
        the network's rows (:meth:`_segment`); the paths are the same."""
        a = self.a
        flat, starts, seg = _kernels.round_robin_lb_nb(
            a.indptr, a.indices, a.edge_of, a.cost, a.trusted, self.rn.copy(), self.rl.copy(),
            np.asarray(nodes, dtype=np.int64), self.limit, self._bounds(nodes), np.ones(len(nodes) - 1, dtype=np.bool_))
        return _split(flat, starts, seg, len(nodes) - 1)

    def _chain_numba(self, chain: tuple) -> tuple:
        """The full route over ``chain`` and :func:`cheapest_subsets` of it in one compiled call
        (:func:`qkdseg._kernels.level_chain_nb`, the same arithmetic); a segment whose paths
        share a risky relay is left to :func:`cheapest_subsets`."""
        a = self.a
        nodes = [self.s, *chain, self.t]
        flat, starts, seg, status, hops, sec, full, masks = _kernels.level_chain_nb(
            a.indptr, a.indices, a.edge_of, a.cost, a.p, a.trusted, self.rn, self.rl, np.asarray(nodes, dtype=np.int64),
            self.limit, self._bounds(nodes), self.eps, TOLERANCE)
        paths = _split(flat, starts, seg, len(nodes) - 1)
        if status == 2:
            return (paths, *cheapest_subsets(a.p, a.trusted, paths, list(chain), self.eps))
        if status == 0:
            return paths, None, float(full)
        masks = masks.tolist()
        subs = tuple(tuple(i for i in range(len(segment)) if masks[j] >> i & 1) for j, segment in enumerate(paths))
        return paths, (int(hops), float(sec), subs), float(full)

    def full_route(self, chain: tuple) -> list[list[list[int]]]:
        """SMR's step 2 over ``chain`` (the full route the saving is reported against)."""
        nodes = [self.s, *chain, self.t]
        if self.kernel == "numba":
            return self._round_robin(nodes)
        return round_robin_paths(self.a, nodes, max_paths=self.max_paths, removed_nodes=self.rn,
                                 removed_links=self.rl, kernel=self.kernel)

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
        alone. The slacks cover the costs' rounding and float error.
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
        return k * d

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


def _split(flat: np.ndarray, starts: np.ndarray, seg: np.ndarray, nseg: int) -> list[list[list[int]]]:
    """A compiled step 2's flat paths as lists per segment."""
    paths: list[list[list[int]]] = [[] for _ in range(nseg)]
    flat, bounds = flat.tolist(), starts.tolist()
    for i, j in enumerate(seg.tolist()):
        paths[j].append(flat[bounds[i]:bounds[i + 1]])
    return paths


def _met_hops(*values) -> float | None:
    """The fewest hops among the met values given (None: none met)."""
    hops = [-v[1] for v in values if v is not None and v[0] == 1]
    return min(hops) if hops else None


def _greedy(ev: _LevelEvaluator, cands: list[int], dist: dict, arrays: NetworkArrays, kernel: str):
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


def _check(epsilon, candidates, exhaustive, search, k) -> float:
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
    if search not in SEARCHES:
        raise InvalidRequest(f"search={search!r} must be one of {', '.join(SEARCHES)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidRequest(f"k={k!r} must be a whole number from 1 to {MAX_K}")
    return float(epsilon)


@register(
    "smr-level",
    "The requested level at the least key: segment chain and path subset with the fewest consumed bits per epsilon-key",
    {
        "epsilon": "the requested security level (the request's epsilon, or the key service's level; required)",
        "max_paths": "paths per segment of the full routes it draws from (default: unlimited)",
        "candidates": f"trusted relays tried, closest by detour first (default {DEFAULT_CANDIDATES}; None: all)",
        "exhaustive": f"search every ordered chain when there are at most this many (default {DEFAULT_EXHAUSTIVE}); else greedy",
        "search": "'wide' (default: also the k least paths by hops and by security of every segment of every chain "
                  "of the candidates, and their subsets; never more bits) or 'successive' (step-2 paths only)",
        "k": f"least paths per segment by each metric in the wide search (default {DEFAULT_K}; 1 to {MAX_K})",
    },
)
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
    search: str = "wide",
    k: int = DEFAULT_K,
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
    eps = _check(epsilon, candidates, exhaustive, search, k)
    k = int(k)
    kernel = _kernels.resolve_kernel(kernel)
    rn, rl = request_masks(arrays, source, target, removed_links)
    rows = network_rows(arrays, kernel)
    dist = HopRows(rows)
    cands, _ = candidate_relays(arrays, source, target, rn, kernel, candidates, dist=dist)
    ev = _LevelEvaluator(arrays, source, target, rn, rl, max_paths, eps, kernel, dist)
    best_chain: tuple = ()
    best = ev(best_chain)
    paper = tuple(select_segment_nodes(arrays, source, target, removed_nodes=rn, removed_links=rl, kernel=kernel)[1:-1])
    if paper and _beats(ev(paper, within=_met_hops(best)), best):
        best_chain, best = paper, ev(paper)
    if ordered_chains(len(cands)) <= exhaustive:
        # every ordered chain, fewest hops of the chain's own legs first: once one meets the level,
        # the chains whose legs alone are longer are not routed at all (the evaluator's bound)
        chains = [c for k in range(1, len(cands) + 1) for c in itertools.permutations(cands, k)]
        legs = [sum(dist[x][y] for x, y in zip((source, *c), (*c, target))) for c in chains]
        for i in sorted(range(len(chains)), key=lambda i: (legs[i], i)):
            if _beats(ev(chains[i], within=_met_hops(best)), best):
                best_chain, best = chains[i], ev(chains[i])
    else:
        chain, value = _greedy(ev, cands, dist, arrays, kernel)
        if _beats(value, best):
            best_chain, best = chain, value
    nodes = [source, *best_chain, target]
    paths, plan = ev.routes[best_chain]
    chosen = None if plan is None else [[seg[i] for i in sorted(sub)] for seg, sub in zip(paths, plan[2])]
    if chosen is not None and not _meets(route_security(arrays.p, chosen, list(best_chain))[0], eps):
        chosen = None  # pragma: no cover - the product is a lower bound (Harris)
    if search == "wide":
        below = math.inf if chosen is None else plan[0]
        extra = {(x, y): seg for x, y, seg in zip(nodes, nodes[1:], paths)}
        found = wide_search(rows, source, target, rn, rl, eps, cands, k, below, extra)
        if found is not None and _meets(route_security(arrays.p, found[1], list(found[0]))[0], eps):
            if found[0] != best_chain:
                best_chain, paths = found[0], ev.full_route(found[0])
            nodes, chosen = [source, *best_chain, target], found[1]
    full_hops = sum(len(p) - 1 for seg in paths for p in seg)
    full_sec = route_security(arrays.p, paths, list(best_chain))[0] if paths and all(paths) else 0.0
    info = {"full_hops": full_hops, "full_security": full_sec, "met": chosen is not None}
    return nodes, paths if chosen is None else chosen, info
