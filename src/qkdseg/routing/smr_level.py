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
   its hops at the level
   (:meth:`~qkdseg.routing.level_successive.LevelEvaluator.fewest_hops`)
   exceeds a met value it would have to beat, nor SMR's step 1 run when its
   chain could not be routed; that changes no comparison, so the routes are
   those of the first version (``tests/smr_level_reference.py``).
2. **Paths** of a chain are SMR's step 2 over it (round-robin ExDijkstra,
   :func:`~qkdseg.routing.smr.round_robin_paths`): the full route. Its
   *subsets* are searched, not only its prefixes: per segment the least-hop
   subset for every reachable security (an exact 0/1 knapsack over the
   paths' hops when they share no risky relay; with shared risky relays every
   subset of up to :data:`~qkdseg.routing.level_successive.MAX_ENUMERATED` paths is evaluated exactly, else
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

With numba each search is one compiled call
(:func:`qkdseg._kernels.level_successive_nb`, :func:`qkdseg._kernels.level_wide_nb`: the same
decisions, so the same routes, ``tests/test_smr_level_saved.py``) on the rows and candidates kept
per network (:mod:`qkdseg.routing.level_paths`); the searches in Python
(:mod:`qkdseg.routing.level_successive`, :func:`~qkdseg.routing.level_wide.wide_search`) serve
the python kernel and the requests whose paths share a risky relay.

Besides ``(segment_nodes, paths)`` it returns what it saved:
``{"full_hops", "full_security", "met"}`` of the full route over the same
chain; :func:`qkdseg.route` reports it as ``Route.level``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..errors import InvalidRequest
from ..network import NetworkArrays
from ..security import route_security
from .level_paths import network_rows
from .level_successive import _meets, full_route, successive
from .level_threshold import threshold_search
from .level_wide import DEFAULT_K, wide_search, wide_search_compiled
from .registry import register
from .smr import request_masks

#: Default cap on the candidate segment nodes (closest by detour first).
DEFAULT_CANDIDATES = 4
#: Default largest number of ordered chains searched exhaustively (3 candidates give 16).
DEFAULT_EXHAUSTIVE = 16
#: Values of the ``search`` option: the wide search (issue 39, the default) and the first one.
SEARCHES = ("wide", "successive")
#: Largest ``k`` (2k least paths per segment, plus the full route's, at most 16 in all).
MAX_K = 8

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
    tolerates=True,
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
    tolerate: int = 0,
):
    """``smr-level`` on node indices; returns ``(segment_nodes, paths, info)``.

    ``info = {"full_hops", "full_security", "met"}``: the hops and exact
    security of the full route over the chosen chain (what ``smr-exact``
    with that chain would consume), and whether the level is met.

    ``tolerate = T > 0`` (``route(..., sharing="threshold")``): the level is
    met with each segment key shared k-of-m over its chosen paths, ``k = m -
    T`` (:mod:`qkdseg.routing.level_threshold`; ``search`` and ``k`` do not
    apply there).

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
    if tolerate:
        return threshold_search(arrays, source, target, rn, rl, rows, candidates, exhaustive, max_paths, eps,
                                int(tolerate), kernel)
    cands, best_chain, paths, plan, (full_sec, sec), flat, ends_rows = successive(
        arrays, source, target, rn, rl, rows, candidates, exhaustive, max_paths, eps, kernel)
    nodes = [source, *best_chain, target]
    chosen = None if plan is None else [[seg[i] for i in sorted(sub)] for seg, sub in zip(paths, plan[2])]
    if chosen is not None and sec is None:
        sec = route_security(arrays.p, chosen, list(best_chain))[0]
    if chosen is not None and not _meets(sec, eps):
        chosen = None  # pragma: no cover - the product is a lower bound (Harris)
    if search == "wide":
        below = math.inf if chosen is None else plan[0]
        if ends_rows is not None:
            found = wide_search_compiled(rows, source, target, rn, rl, eps, cands, k, below, ends_rows,
                                         flat or _flat(best_chain, paths))
        else:
            extra = {(x, y): seg for x, y, seg in zip(nodes, nodes[1:], paths)}
            found = wide_search(rows, source, target, rn, rl, eps, cands, k, below, extra)
        if found is not None and _meets(route_security(arrays.p, found[1], list(found[0]))[0], eps):
            if found[0] != best_chain:
                best_chain, paths = found[0], full_route(arrays, [source, *found[0], target], rn, rl, max_paths, kernel, rows)
                full_sec = None
            nodes, chosen = [source, *best_chain, target], found[1]
    full_hops = sum(len(p) - 1 for seg in paths for p in seg)
    if full_sec is None:
        full_sec = route_security(arrays.p, paths, list(best_chain))[0] if paths and all(paths) else 0.0
    info = {"full_hops": full_hops, "full_security": full_sec, "met": chosen is not None}
    return nodes, paths if chosen is None else chosen, info


def _flat(chain: tuple, paths: list[list[list[int]]]) -> tuple:
    """A chain and its route as the compiled searches' arrays ``(chain, flat, starts, seg)``."""
    flat = [v for seg in paths for q in seg for v in q]
    starts = np.cumsum([0] + [len(q) for seg in paths for q in seg])
    seg = [j for j, segment in enumerate(paths) for _ in segment]
    return (np.asarray(chain, dtype=np.int64), np.asarray(flat, dtype=np.int64), starts.astype(np.int64),
            np.asarray(seg, dtype=np.int64))
