"""The Waxman model for 10^4-10^6 nodes (KD-tree, degree kept constant; docs/performance.md)."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from ..errors import NetworkError
from ..network import DEFAULT_POOL_BITS, Network, check_count, network_from_records
from ._checks import check_common, check_real
from .waxman import WAXMAN_MEAN_DEGREE

#: Largest ``n`` :func:`waxman_large` takes (about 1 GB of memory per 10^6 nodes).
WAXMAN_LARGE_MAX_NODES = 10_000_000


def waxman_large(
    n: int = 10_000,
    *,
    trusted: int | None = None,
    p: float = 0.8,
    pool_bits: int = DEFAULT_POOL_BITS,
    trusted_p: float = 1.0,
    mean_degree: float = WAXMAN_MEAN_DEGREE,
    beta: float = 0.5,
    cutoff: float = 1e-3,
    seed: int = 0,
    side_km: float = 100.0,
) -> Network:
    """Waxman network for 10^4-10^6 nodes, built with a KD-tree (docs/performance.md).

    :func:`waxman` draws all ``n(n-1)/2`` pairs, which is O(n^2) time and
    memory. Here nodes are uniform in the unit square and ``u, v`` at distance
    ``d`` are linked with probability ``beta * exp(-d / a)``, where the decay
    length ``a = sqrt(mean_degree / (2 pi beta n))`` is scaled with ``n`` so
    that the mean degree stays that of the paper's 100-node networks
    (``n beta 2 pi a^2`` in the plane; the border lowers it a little).
    Keeping :func:`waxman`'s ``alpha * L`` fixed instead would give a mean
    degree growing like ``n``. Only pairs closer than ``a * ln(1 / cutoff)``
    are drawn (``scipy.spatial.cKDTree.query_pairs``): links that would have
    had probability below ``cutoff * beta``; with the default ``cutoff =
    1e-3`` that drops about 0.8% of the expected links, all of them long.

    The graph is not resampled until connected (at a mean degree of 6.6 a
    large random geometric graph always has some isolated nodes): the
    largest connected component is kept and renumbered ``0..n'-1`` in the
    order of the original indices, so ``n' <= n`` (about 0.2% fewer nodes).
    ``trusted`` relays (default ``n' // 10``, the paper's 10 per 100 nodes)
    are drawn uniformly from it. Attributes as for :func:`waxman`.

    Examples
    --------
    >>> net = waxman_large(2000, seed=1)
    >>> net.n_nodes > 1950, net.summary()["connected"], len(net.trusted_nodes) == net.n_nodes // 10
    (True, True, True)
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    check_common("waxman_large", n, p=p, trusted_p=trusted_p, pool_bits=pool_bits, seed=seed, max_nodes=WAXMAN_LARGE_MAX_NODES)
    if trusted is not None:
        check_count(trusted, "waxman_large: trusted")
    mean_degree = check_real(mean_degree, "waxman_large: mean_degree")
    beta, cutoff = check_real(beta, "waxman_large: beta"), check_real(cutoff, "waxman_large: cutoff")
    if n < 2:
        raise NetworkError(f"waxman_large: nodes={n} must be at least 2")
    for name, val in (("p", p), ("trusted_p", trusted_p)):
        if not 0.0 <= val <= 1.0:
            raise NetworkError(f"waxman_large: {name}={val} is outside [0, 1]")
    if not (mean_degree > 0 and 0 < beta <= 1 and 0 < cutoff < 1):
        raise NetworkError(
            f"waxman_large: need mean_degree > 0, 0 < beta <= 1, 0 < cutoff < 1 "
            f"(got {mean_degree}, {beta}, {cutoff})"
        )
    if pool_bits < 0:
        raise NetworkError(f"waxman_large: negative pool_bits={pool_bits}")
    if mean_degree > n - 1:
        raise NetworkError(f"waxman_large: mean_degree={mean_degree:g} is more than nodes - 1 = {n - 1} (a node has at "
                           "most that many neighbours)")
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    # Number nodes along a serpentine over a grid of cells, so that nodes close
    # in the plane are close in memory: the kernels' arrays are then read with
    # far fewer cache misses (about 3x faster BFS at 100k nodes).
    cells = max(1, int(math.sqrt(n) / 4))
    row = np.minimum((pos[:, 1] * cells).astype(np.int64), cells - 1)
    col = np.minimum((pos[:, 0] * cells).astype(np.int64), cells - 1)
    col = np.where(row % 2 == 0, col, cells - 1 - col)
    pos = pos[np.lexsort((pos[:, 0], col, row))]
    a = math.sqrt(mean_degree / (2.0 * math.pi * beta * n))
    radius = a * math.log(1.0 / cutoff)
    pairs = cKDTree(pos).query_pairs(radius, output_type="ndarray")
    # Lexicographic order of (i, j), i < j, by one sort of the key i * n + j
    # (5x faster than lexsort on the ~150 candidate pairs per node).
    key = pairs[:, 0].astype(np.int64) * n + pairs[:, 1]
    key.sort()
    pairs = np.empty((key.size, 2), dtype=pairs.dtype)
    pairs[:, 0], pairs[:, 1] = key // n, key % n
    d = np.hypot(*(pos[pairs[:, 0]] - pos[pairs[:, 1]]).T)
    keep = rng.random(d.size) < beta * np.exp(-d / a)
    pairs, d = pairs[keep], d[keep]
    adj = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    giant = np.bincount(label).argmax()
    inside = label == giant
    new_id = np.cumsum(inside) - 1
    sel = inside[pairs[:, 0]]
    pairs, d = new_id[pairs[sel]], d[sel]
    pos = pos[inside]
    m = int(inside.sum())
    count = m // 10 if trusted is None else int(trusted)
    if not 0 <= count <= m:
        raise NetworkError(f"waxman_large: trusted={count} must lie in [0, {m}]")
    chosen = np.zeros(m, dtype=bool)
    chosen[rng.choice(m, size=count, replace=False)] = True
    pos_r = np.round(pos, 6).tolist()
    lengths = np.round(d * side_km, 6).tolist()
    graph_attrs = {
        "name": f"waxman-large-n{m}-t{count}-p{p}-s{seed}",
        "generator": "waxman_large",
        "mean_degree_target": mean_degree,
        "decay": a,
        "beta": beta,
        "cutoff": cutoff,
        "seed": seed,
        "side_km": side_km,
        "requested_nodes": n,
    }
    nodes = [
        {"pos": pos_r[v], "trusted": bool(chosen[v]), "p": float(trusted_p if chosen[v] else p)} for v in range(m)
    ]
    links = [{"pool_bits": int(pool_bits), "length_km": length} for length in lengths]
    ids = list(range(m))
    # The array form straight from the records (the networkx graph is built only if asked for).
    net = network_from_records(
        ids, dict(zip(ids, ids)), nodes, pairs[:, 0], pairs[:, 1], links, graph_attrs=graph_attrs, name=graph_attrs["name"]
    )
    if net is not None:
        return net
    # Values the fast path does not take (it then names nothing): let Network validate and name the fault.
    g = nx.Graph()
    g.add_nodes_from(enumerate(nodes))
    g.add_edges_from((u, v, attrs) for (u, v), attrs in zip(pairs.tolist(), links))
    g.graph.update(graph_attrs)
    return Network(g)
