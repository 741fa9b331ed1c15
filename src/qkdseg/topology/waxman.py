"""The Waxman-Salama generator of docs/model.md section 7, seeded and resampled until connected."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..errors import NetworkError
from ..network import DEFAULT_POOL_BITS, Network, check_count
from ._checks import check_common, check_real

#: Largest ``n`` :func:`waxman` takes: it draws all n(n-1)/2 pairs (O(n^2)
#: memory, about 2 GB at this size); :func:`~qkdseg.topology.waxman_large` is
#: the generator for more.
WAXMAN_MAX_NODES = 10_000


def waxman_draw(
    n: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    *,
    side_km: float = 100.0,
    max_tries: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The random part of :func:`waxman`: positions and links, redrawn until
    connected, from ``rng`` (advanced exactly as :func:`waxman` advances it).

    Returns
    -------
    pos : (n, 2) float array
        Positions in the unit square.
    edge_u, edge_v : int arrays
        Links ``u < v`` in lexicographic order.
    length_km : float array
        Link lengths, the square scaled to ``side_km`` (rounded to 1e-6 km).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    iu, ju = np.triu_indices(n, k=1)
    for _ in range(max_tries):
        pos = rng.random((n, 2))
        d = np.hypot(pos[iu, 0] - pos[ju, 0], pos[iu, 1] - pos[ju, 1])
        big_l = d.max()
        keep = rng.random(d.size) < beta * np.exp(-d / (alpha * big_l))
        eu, ev = iu[keep], ju[keep]
        adj = coo_matrix((np.ones(eu.size), (eu, ev)), shape=(n, n))
        if connected_components(adj, directed=False, return_labels=False) == 1:
            return pos, eu.astype(np.int64), ev.astype(np.int64), np.round(d[keep] * side_km, 6)
    raise NetworkError(
        f"waxman: no connected graph in {max_tries} draws (n={n}, alpha={alpha}, beta={beta}); "
        "raise alpha (mean degree grows about as n * alpha**2)"
    )


def waxman(
    n: int = 100,
    *,
    trusted: int = 10,
    p: float = 0.8,
    pool_bits: int = DEFAULT_POOL_BITS,
    trusted_p: float = 1.0,
    alpha: float = 0.15,
    beta: float = 0.5,
    seed: int = 0,
    side_km: float = 100.0,
    max_tries: int = 1000,
) -> Network:
    """Waxman-Salama random network in the unit square (docs/model.md section 7).

    Nodes are placed uniformly at random; nodes ``u, v`` at distance ``d`` are
    linked with probability ``beta * exp(-d / (alpha * L))``, ``L`` the largest
    distance between two nodes (networkx's ``waxman_graph(n, beta, alpha)``
    naming). The defaults give a mean degree of about 6.6 at n = 100. The graph
    is resampled until connected; every draw flows from ``seed``.

    ``trusted`` nodes, chosen uniformly at random, are trusted relays
    (``p = trusted_p``); all others have ``p``. Every link gets ``pool_bits``
    and ``length_km``, its Euclidean length with the unit square scaled to
    ``side_km`` x ``side_km`` (the paper gives no scale; lengths only matter
    for the ``length`` segment metric).

    Parameters
    ----------
    n : int
        Number of nodes.
    trusted : int
        Number of trusted relays, ``0 <= trusted <= n``.
    p : float
        Security probability of each untrusted relay.
    pool_bits : int
        Key pool of every link, bits.
    trusted_p : float
        Security probability of trusted relays (docs/model.md: 1.0).
    alpha, beta : float
        Waxman parameters (networkx naming: ``beta`` scales, ``alpha`` sets
        the distance decay).
    seed : int
        Master seed; the result is a pure function of the arguments.
    side_km : float
        Side of the square in km, for ``length_km``.

    Examples
    --------
    >>> net = waxman(30, trusted=3, p=0.9, seed=1)
    >>> net.n_nodes, len(net.trusted_nodes), net.summary()["connected"]
    (30, 3, True)
    """
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > WAXMAN_MAX_NODES:
        raise NetworkError(f"waxman: nodes={n} is more than {WAXMAN_MAX_NODES} (all pairs are drawn); use waxman_large")
    check_common("waxman", n, p=p, trusted_p=trusted_p, pool_bits=pool_bits, seed=seed, max_nodes=WAXMAN_MAX_NODES)
    check_count(trusted, "waxman: trusted")
    alpha, beta = check_real(alpha, "waxman: alpha"), check_real(beta, "waxman: beta")
    if n < 2:
        raise NetworkError(f"waxman: nodes={n} must be at least 2")
    if not 0 <= trusted <= n:
        raise NetworkError(f"waxman: trusted={trusted} must lie in [0, {n}]")
    for name, val in (("p", p), ("trusted_p", trusted_p)):
        if not 0.0 <= val <= 1.0:
            raise NetworkError(f"waxman: {name}={val} is outside [0, 1]")
    if pool_bits < 0:
        raise NetworkError(f"waxman: negative pool_bits={pool_bits}")
    if not (alpha > 0 and 0 < beta <= 1):
        raise NetworkError(f"waxman: need alpha > 0 and 0 < beta <= 1 (got alpha={alpha}, beta={beta})")
    rng = np.random.default_rng(seed)
    pos, eu, ev, lengths = waxman_draw(n, alpha, beta, rng, side_km=side_km, max_tries=max_tries)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(eu.tolist(), ev.tolist()))
    chosen = set(rng.choice(n, size=trusted, replace=False).tolist())
    for u, v, length in zip(eu.tolist(), ev.tolist(), lengths.tolist()):
        g.edges[u, v]["pool_bits"] = int(pool_bits)
        g.edges[u, v]["length_km"] = length
    for v in range(n):
        g.nodes[v]["pos"] = [round(float(pos[v, 0]), 6), round(float(pos[v, 1]), 6)]
        is_t = v in chosen
        g.nodes[v]["trusted"] = is_t
        g.nodes[v]["p"] = float(trusted_p if is_t else p)
    g.graph.update(
        {
            "name": f"waxman-n{n}-t{trusted}-p{p}-s{seed}",
            "generator": "waxman",
            "alpha": alpha,
            "beta": beta,
            "seed": seed,
            "side_km": side_km,
        }
    )
    return Network(g)


#: Mean degree :func:`waxman` gives at its defaults (n = 100, alpha = 0.15, beta = 0.5).
WAXMAN_MEAN_DEGREE = 6.6
