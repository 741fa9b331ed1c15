"""MSP: multiple stochastic paths (Wen et al., Sci. China F 52(1), 2009), docs/model.md section 3.

Only the abstract of the original is public; this is the model's **[choice]**,
documented in docs/baselines.md. No segments: every path runs from the source
to the destination, and the key is the XOR of all pieces.

Walk rule
---------
One path is a *self-avoiding random walk with backtracking* (a randomised
depth-first search) on the residual network:

1. Before the walk, hop distances ``h(v)`` to the destination are computed
   by breadth-first search over the usable part of the network (links not
   removed; relays neither removed nor with ``p = 0``; the source and the
   destination themselves never relay).
2. The walk starts at the source with every other node unvisited. At node
   ``u`` the candidates are the unvisited neighbours ``v`` reachable over a
   usable link, usable as relays (or ``v`` the destination), with finite
   ``h(v)``. The next hop is drawn among them with probability proportional
   to ``exp(-beta * h(v))`` (``beta = 0``: uniform; large ``beta``: close
   to a shortest-hop walk). Reaching the destination ends the walk.
3. With no candidate the walk *backtracks* one node; the node it leaves stays
   visited, so the walk never re-enters a dead end. Back at the source with
   no candidate: no path. Each forward step and each backtrack counts as
   one step; a walk longer than ``max_steps`` steps gives up (no path).
   Without the cap it ends within ``2 n`` steps.

After each path its untrusted relays and its links are removed (trusted
relays stay usable, as in SMR); walks repeat until one finds no path or
``max_paths`` paths exist. With ``shared_relays`` only the links are
removed: the paths are link-disjoint and may share untrusted relays (the
"traditional multipath" whose independence formula over-claims; the exact
security counts the sharing). Every draw comes from one
``numpy.random.default_rng(seed)``: the same seed gives the same paths.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..errors import InvalidRequest
from ..network import NetworkArrays
from .paths import successive_paths
from .registry import register
from .smr import request_masks

#: Default bias of the walk towards the destination.
DEFAULT_BETA = 1.0


def _hops_to(arrays: NetworkArrays, target: int, usable_node: np.ndarray, rl: np.ndarray) -> list[float]:
    """Hop distance of every node to ``target`` over usable links, through
    usable relays (breadth-first search over the CSR lists; ``inf`` where
    unreachable)."""
    indptr, indices, edge_of = arrays._csr_lists
    usable = usable_node.tolist()
    removed = rl.tolist()
    dist = [math.inf] * arrays.n_nodes
    dist[target] = 0.0
    frontier = [target]
    while frontier:
        nxt = []
        for u in frontier:
            du = dist[u] + 1.0
            for k in range(indptr[u], indptr[u + 1]):
                v = indices[k]
                if usable[v] and dist[v] == math.inf and not removed[edge_of[k]]:
                    dist[v] = du
                    nxt.append(v)
        frontier = nxt
    return dist


def random_walk_path(
    arrays: NetworkArrays,
    source: int,
    target: int,
    rn: np.ndarray,
    rl: np.ndarray,
    rng: np.random.Generator,
    *,
    beta: float = DEFAULT_BETA,
    max_steps: int | None = None,
) -> list[int] | None:
    """One self-avoiding random walk with backtracking (the module's rule).

    The weighted draw is ``Generator.choice(k, p=w / w.sum())`` written out
    (cumulative sum, one ``rng.random()``, ``searchsorted``), which consumes
    and returns exactly what ``choice`` would, without its per-call checks.
    """
    usable_arr = ~rn & (arrays.p > 0.0)
    usable_arr[source] = False
    usable_arr[target] = False
    dist = _hops_to(arrays, target, usable_arr, rl)
    usable = usable_arr.tolist()
    removed = rl.tolist()
    indptr, indices, edge_of = arrays._csr_lists
    visited = [False] * arrays.n_nodes
    visited[source] = True
    stack = [source]
    steps = 0
    limit = math.inf if max_steps is None else max_steps
    inf = math.inf
    while stack:
        if steps >= limit:
            return None
        u = stack[-1]
        cand = [
            v
            for k in range(indptr[u], indptr[u + 1])
            if not removed[edge_of[k]]
            and not visited[v := indices[k]]
            and (v == target or (usable[v] and dist[v] != inf))
        ]
        steps += 1
        if not cand:
            stack.pop()
            continue
        if len(cand) > 1:
            d = np.array([dist[v] for v in cand])
            w = np.exp(-beta * (d - d.min()))
            cdf = (w / w.sum()).cumsum()
            cdf /= cdf[-1]
            v = cand[int(cdf.searchsorted(rng.random(), side="right"))]
        else:
            v = cand[0]
        stack.append(v)
        if v == target:
            return stack
        visited[v] = True
    return None


def _msp_numba(arrays, source, target, rn, rl, rng, max_paths, beta, max_steps, first_block=None,
               keep=None) -> list[list[int]]:
    """The walks compiled (:func:`qkdseg._kernels.msp_walks_nb`), on the same ``rng.random()`` stream.

    The uniforms are drawn ahead in one block (``rng.random(k)`` yields the
    same values as ``k`` calls of ``rng.random()``); if the walks need more,
    the block is extended from the same generator and the walks run again.
    """
    n = arrays.n_nodes
    wtab = np.exp(-beta * np.arange(n + 1, dtype=np.float64))
    uniforms = rng.random(4 * n + 64 if first_block is None else first_block)
    mp = -1 if max_paths is None else int(max_paths)
    ms = -1 if max_steps is None else int(max_steps)
    while True:
        nodes, starts, _, ok = _kernels.msp_walks_nb(
            arrays.indptr, arrays.indices, arrays.edge_of, arrays.p, arrays.trusted if keep is None else keep,
            rn.copy(), rl.copy(),
            int(source), int(target), wtab, uniforms, mp, ms,
        )
        if ok:
            flat = nodes.tolist()
            bounds = starts.tolist()
            return [flat[a:b] for a, b in zip(bounds, bounds[1:])]
        uniforms = np.concatenate([uniforms, rng.random(uniforms.size)])


@register(
    "msp",
    "Multiple stochastic paths (Wen et al. 2009): seeded self-avoiding random walks biased to the destination",
    {
        "max_paths": "number of paths (default: unlimited)",
        "seed": "seed of numpy default_rng (default 0)",
        "beta": f"bias to the destination: next hop drawn with weight exp(-beta * hops to destination) (default {DEFAULT_BETA:g})",
        "max_steps": "steps (moves + backtracks) per walk before it gives up (default: unlimited, at most 2n)",
        "shared_relays": "keep untrusted relays usable after each path (only its links are removed), so paths may "
                         "share relays; their exact security counts it (default False)",
    },
)
def msp(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    max_paths: int | None = None,
    seed: int = 0,
    beta: float = DEFAULT_BETA,
    max_steps: int | None = None,
    shared_relays: bool = False,
    kernel: str | None = None,
):
    """MSP on node indices; returns ``(segment_nodes, paths)`` with one segment.

    ``kernel`` (not a routing option: the registry's callers use the
    default) picks the compiled walks or the Python reference; both give the
    same paths for the same seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidRequest(f"seed={seed!r} must be a non-negative integer")
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating)) or not math.isfinite(beta) or beta < 0:
        raise InvalidRequest(f"beta={beta!r} must be a finite number >= 0")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1):
        raise InvalidRequest(f"max_steps={max_steps!r} must be a positive integer or None")
    if not isinstance(shared_relays, (bool, np.bool_)):
        raise InvalidRequest(f"shared_relays={shared_relays!r} must be true or false")
    # which relays stay usable after a path: the trusted ones, or (shared_relays) every one
    keep = np.ones_like(arrays.trusted) if shared_relays else arrays.trusted
    rn, rl = request_masks(arrays, source, target, removed_links)
    rn = rn.copy()
    rl = rl.copy()
    rng = np.random.default_rng(seed)
    if _kernels.resolve_kernel(kernel) == "numba":
        return [source, target], [_msp_numba(arrays, source, target, rn, rl, rng, max_paths, float(beta), max_steps,
                                             keep=keep)]
    paths = successive_paths(
        arrays, lambda n, m: random_walk_path(arrays, source, target, n, m, rng, beta=float(beta), max_steps=max_steps),
        rn, rl, keep, max_paths)
    return [source, target], [paths]
