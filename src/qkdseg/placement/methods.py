"""Placement methods: greedy (lazy), greedy + swap, exact, and the baselines.

Every method returns the chosen node indices in order; the objective after
each addition is measured by the same :class:`~qkdseg.placement.engine.Engine`
for all of them (docs/placement.md).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import networkx as nx
import numpy as np

from ..errors import InvalidRequest
from .engine import Engine

#: ``lazy`` modes of greedy: ``celf`` (stale gains, also capped by the
#: bound; the classic lazy greedy, exact only for submodular objectives),
#: ``bound`` (only the sound bound: always the plain greedy's choice),
#: ``none`` (every candidate evaluated every round).
LAZY_MODES = ("celf", "bound", "none")

#: Improvement (objective units) a swap must bring to be taken.
SWAP_MARGIN = 1e-12

#: Called with the number of steps done (a progress bar's ``update``).
Progress = Callable[[int], None]


def _noop(_n: int = 1) -> None:
    return None


def _bounds(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on each node's gain ``(objective, tie-break)`` if added now.

    Sound whatever the objective's shape: a demand ``v`` cannot change keeps
    its value, one it can change reaches at most security 1.
    """
    slack = engine.weight * (1.0 - engine.sec)
    sec_bound = slack @ engine.rel  # sum over changeable demands of w * (1 - sec)
    if engine.objective == "security":
        return sec_bound, np.zeros(engine.n)
    if engine.objective == "worst":
        cur = engine.value
        kept = np.where(engine.rel, np.inf, engine.vals[:, None]).min(axis=0)
        return np.minimum(kept, 1.0) - cur, sec_bound
    return np.full(engine.n, np.inf), sec_bound


def greedy(engine: Engine, budget: int, *, lazy: str = "celf", progress: Progress = _noop) -> list[int]:
    """Add ``budget`` nodes one at a time, each the one with the best score.

    Ties: the larger tie-break value, then the smaller node index. With
    ``lazy="bound"`` or ``"none"`` the choice is exactly the plain greedy's;
    ``"celf"`` also skips a node whose gain in an earlier round is below the
    best gain found this round, which is exact only for submodular
    objectives (docs/placement.md says when this one is not).
    """
    if lazy not in LAZY_MODES:
        raise InvalidRequest(f"lazy={lazy!r}: use {', '.join(LAZY_MODES)}")
    chosen: list[int] = []
    stale: dict[int, tuple[float, float]] = {}
    for _round in range(budget):
        cur = engine.score()
        cands = [int(v) for v in engine.candidates if not engine.trusted[v]]
        if not cands:
            break
        if lazy == "none":
            best = max(cands, key=lambda v: (_gain(engine.evaluate_add(v), cur), -v))
        else:
            b1, b2 = _bounds(engine)
            heap = []
            for v in cands:
                bound = (float(b1[v]), float(b2[v]))
                if lazy == "celf" and v in stale:
                    bound = min(bound, stale[v])
                heapq.heappush(heap, (-bound[0], -bound[1], v))
            best, best_gain = -1, (-math.inf, -math.inf)
            while heap:
                nb1, nb2, v = heap[0]
                if (-nb1, -nb2) < best_gain or ((-nb1, -nb2) == best_gain and v > best):
                    break  # no node left can beat (or tie with a smaller index) the best
                heapq.heappop(heap)
                g = _gain(engine.evaluate_add(v), cur)
                stale[v] = g
                if g > best_gain or (g == best_gain and v < best):
                    best, best_gain = v, g
        engine.add(best)
        stale.pop(best, None)
        chosen.append(best)
        progress(1)
    return chosen


def _gain(score: tuple[float, float], cur: tuple[float, float]) -> tuple[float, float]:
    return (score[0] - cur[0], score[1] - cur[1])


def swap(engine: Engine, budget: int, *, lazy: str = "celf", max_passes: int = 5, progress: Progress = _noop) -> list[int]:
    """Greedy, then swap local search: for each chosen node in turn, the
    best replacement by a node not chosen; taken when it raises the
    objective by more than :data:`SWAP_MARGIN`. Passes repeat until one
    changes nothing or ``max_passes`` is reached. A replacement takes the
    replaced node's place in the order."""
    chosen = greedy(engine, budget, lazy=lazy, progress=progress)
    for _pass in range(max_passes):
        improved = False
        for pos in range(len(chosen)):
            u = chosen[pos]
            cur = engine.score()
            rec = engine.remove(u)
            best, best_score = -1, (-math.inf, -math.inf)
            for v in engine.candidates.tolist():
                if engine.trusted[v] or v == u:
                    continue
                sc = engine.evaluate_add(v)
                if sc > best_score:
                    best, best_score = v, sc
            if best >= 0 and best_score[0] > cur[0] + SWAP_MARGIN:
                engine.add(best)
                chosen[pos] = best
                improved = True
            else:
                engine.undo(rec)
        progress(0)
        if not improved:
            break
    return chosen


def exact(engine: Engine, budget: int, *, max_placements: int = 200_000, progress: Progress = _noop) -> list[int]:
    """The best ``budget``-subset of the candidates by enumeration (depth
    first, each step incremental). Ties: the larger tie-break value, then
    the lexicographically first subset. Returned in index order."""
    cands = [int(v) for v in engine.candidates]
    total = math.comb(len(cands), budget)
    if total > max_placements:
        raise InvalidRequest(
            f"exact: C({len(cands)}, {budget}) = {total} placements, more than max_placements={max_placements}"
        )
    if budget == 0:
        return []
    best: list = [(-math.inf, -math.inf), None]
    prefix: list[int] = []

    def dfs(start: int) -> None:
        left = budget - len(prefix)
        if left == 1:
            for v in cands[start:]:
                sc = engine.evaluate_add(v)
                if sc > best[0]:
                    best[0], best[1] = sc, prefix + [v]
            progress(len(cands) - start)
            return
        for i in range(start, len(cands) - left + 1):
            rec = engine.add(cands[i])
            prefix.append(cands[i])
            dfs(i + 1)
            prefix.pop()
            engine.undo(rec)

    dfs(0)
    for v in best[1]:
        engine.add(v)
    return list(best[1])


# -- baselines: a ranking of the candidates, added in that order -----------------
def _rank(scores: dict[int, float], cands: list[int]) -> list[int]:
    return sorted(cands, key=lambda v: (-scores[v], v))


def rank_random(engine: Engine, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 17])
    return [int(v) for v in rng.permutation(engine.candidates)]


def rank_degree(engine: Engine, seed: int) -> list[int]:
    deg = np.diff(engine.arrays.indptr)
    return _rank({int(v): float(deg[v]) for v in engine.candidates}, engine.candidates.tolist())


def _index_graph(engine: Engine) -> nx.Graph:
    a = engine.arrays
    g = nx.Graph()
    g.add_nodes_from(range(a.n_nodes))
    g.add_edges_from(zip(a.edge_u.tolist(), a.edge_v.tolist()))
    return g


def rank_betweenness(engine: Engine, seed: int) -> list[int]:
    b = nx.betweenness_centrality(_index_graph(engine))
    return _rank(b, engine.candidates.tolist())


def rank_closeness(engine: Engine, seed: int) -> list[int]:
    c = nx.closeness_centrality(_index_graph(engine))
    return _rank(c, engine.candidates.tolist())


def rank_kcenter(engine: Engine, seed: int) -> list[int]:
    """Farthest-first (Gonzalez) on hop distances: the first centre is the
    candidate of least eccentricity, then each next one the candidate
    farthest from every centre so far, the network's own trusted relays
    counting as centres **[choice]**. Unreachable counts as n hops."""
    from scipy.sparse.csgraph import shortest_path

    a = engine.arrays
    n = a.n_nodes
    dist = shortest_path(a.hop_matrix, unweighted=True, directed=False)
    dist[np.isinf(dist)] = n
    cands = engine.candidates.tolist()
    centres = np.flatnonzero(a.trusted).tolist()
    order: list[int] = []
    left = list(cands)
    while left:
        if not centres:
            ecc = dist[left].max(axis=1)
            pick = left[int(np.argmin(ecc))]
        else:
            near = dist[np.ix_(left, centres)].min(axis=1)
            pick = left[int(np.argmax(near))]
        order.append(pick)
        centres.append(pick)
        left.remove(pick)
    return order


BASELINES = {
    "random": rank_random,
    "degree": rank_degree,
    "betweenness": rank_betweenness,
    "closeness": rank_closeness,
    "k-center": rank_kcenter,
}


def ranked(engine: Engine, budget: int, order: list[int], *, progress: Progress = _noop) -> list[int]:
    """Add the first ``budget`` nodes of ``order``."""
    chosen = order[:budget]
    for v in chosen:
        engine.add(v)
        progress(1)
    return chosen
