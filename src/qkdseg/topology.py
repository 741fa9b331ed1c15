"""Topologies: file formats, generators, real networks and the built-in example.

- :func:`read_network` / :func:`write_network`: networkx node-link JSON (both
  the ``links`` and the ``edges`` key are accepted), GraphML and GML.
- :func:`waxman`: the Waxman-Salama generator of MODEL.md section 7, seeded and
  resampled until connected.
- :func:`waxman_large`: the same model for 10^4-10^6 nodes (KD-tree, degree
  kept constant; docs/performance.md).
- :func:`load_topohub`: the real topologies shipped by the ``topohub`` package
  (Internet Topology Zoo, SNDlib, ...), with a seeded trusted-relay rule.
- :func:`example_network`: a tiny network for the docs and doctests.
- :func:`load`: one entry point for a CLI argument (a path, ``example``, or
  ``topohub:GROUP/NAME[?trusted=K&p=P&seed=S&placement=random|degree]``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import networkx as nx
import numpy as np

from .errors import NetworkError, TopologyFileError
from .network import DEFAULT_POOL_BITS, Network

#: Names accepted by :func:`load` besides files and topohub keys.
BUILTIN = ("example",)

_FORMATS = {".json": "json", ".graphml": "graphml", ".xml": "graphml", ".gml": "gml"}


# -- files ---------------------------------------------------------------------
def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("json", "graphml", "gml"):
            raise TopologyFileError(f"{path}: unknown format {fmt!r} (use json, graphml or gml)")
        return fmt
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise TopologyFileError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r} (use .json, .graphml or .gml)"
        ) from None


def _graph_from_node_link(data: Any, where: str) -> nx.Graph:
    if not isinstance(data, dict):
        raise TopologyFileError(f"{where}: expected a node-link JSON object, got {type(data).__name__}")
    if "nodes" not in data or not isinstance(data["nodes"], list):
        raise TopologyFileError(f"{where}: missing list field 'nodes'")
    key = "links" if "links" in data else "edges" if "edges" in data else None
    if key is None:
        raise TopologyFileError(f"{where}: missing list field 'links' (or 'edges')")
    if not isinstance(data[key], list):
        raise TopologyFileError(f"{where}: field {key!r} must be a list")
    g = nx.Graph()
    g.graph.update(data.get("graph") or {})
    for k, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise TopologyFileError(f"{where}: nodes[{k}] has no field 'id'")
        nid = node["id"]
        if isinstance(nid, (list, dict)):
            raise TopologyFileError(f"{where}: nodes[{k}]: id {nid!r} is not a scalar")
        if nid in g:
            raise NetworkError(f"{where}: node {nid!r}: duplicate id")
        g.add_node(nid, **{a: v for a, v in node.items() if a != "id"})
    for k, link in enumerate(data[key]):
        if not isinstance(link, dict) or "source" not in link or "target" not in link:
            raise TopologyFileError(f"{where}: {key}[{k}] needs fields 'source' and 'target'")
        u, v = link["source"], link["target"]
        for end in (u, v):
            if isinstance(end, (list, dict)) or end not in g:
                raise NetworkError(f"{where}: link ({u!r}, {v!r}): node {end!r} is not declared")
        if u == v:
            raise NetworkError(f"{where}: link ({u!r}, {v!r}): self-loop")
        if g.has_edge(u, v):
            raise NetworkError(f"{where}: link ({u!r}, {v!r}): duplicate link")
        g.add_edge(u, v, **{a: w for a, w in link.items() if a not in ("source", "target", "key")})
    return g


def read_network(
    path: str | Path,
    *,
    fmt: str | None = None,
    default_p: float | None = None,
    default_pool_bits: int = DEFAULT_POOL_BITS,
) -> Network:
    """Read a network from node-link JSON, GraphML or GML.

    Node ids are kept exactly as in the file (integers stay integers in JSON;
    GraphML ids are strings by that format's definition; GML uses the integer
    ``id`` field).

    Parameters
    ----------
    path : str or Path
        The file. The format follows the suffix unless ``fmt`` is given.
    fmt : {"json", "graphml", "gml"}, optional
    default_p : float, optional
        ``p`` for untrusted nodes that have none (else such nodes are an error).
    default_pool_bits : int
        Pool of links without ``pool_bits``, bits.

    Raises
    ------
    TopologyFileError
        The file is missing, unreadable or malformed (the message names it).
    NetworkError
        The network violates the model (the message names file and culprit).
    """
    path = Path(path)
    kind = _format_of(path, fmt)
    if not path.is_file():
        raise TopologyFileError(f"{path}: no such file")
    where = str(path)
    try:
        if kind == "json":
            with path.open("r", encoding="utf-8") as fh:
                g = _graph_from_node_link(json.load(fh), where)
        elif kind == "graphml":
            g = nx.read_graphml(path)
            _check_simple(g, where)
        else:
            g = nx.read_gml(path, label=None)
            _check_simple(g, where)
    except (TopologyFileError, NetworkError):
        raise
    except json.JSONDecodeError as err:
        raise TopologyFileError(f"{where}: malformed JSON at line {err.lineno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TopologyFileError(f"{where}: cannot read: {err}") from None
    except Exception as err:  # networkx parsers raise many kinds on bad input
        raise TopologyFileError(f"{where}: malformed {kind}: {err}") from None
    name = g.graph.get("name") or path.stem
    try:
        return Network(g, default_p=default_p, default_pool_bits=default_pool_bits, name=str(name))
    except NetworkError as err:
        raise NetworkError(f"{where}: {err}") from None


def _check_simple(g: nx.Graph, where: str) -> None:
    if g.is_multigraph():
        counts = Counter(tuple(sorted(map(str, e[:2]))) for e in g.edges)
        for (u, v), c in counts.items():
            if c > 1:
                raise NetworkError(f"{where}: link ({u!r}, {v!r}): duplicate link")
    if g.is_directed():
        raise TopologyFileError(f"{where}: the graph is directed; QKD links are undirected")


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_network(network: Network, path: str | Path, *, fmt: str | None = None) -> Path:
    """Write ``network`` as node-link JSON (key ``links``), GraphML or GML.

    Returns the path written. JSON output is canonical: the same network gives
    byte-identical files.
    """
    path = Path(path)
    kind = _format_of(path, fmt)
    g = network.graph
    try:
        if kind == "json":
            data = nx.node_link_data(g, edges="links")
            data = _json_safe(data)
            data["graph"].setdefault("name", network.name)
            path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        else:
            h = nx.Graph()
            h.graph.update({k: v for k, v in g.graph.items() if isinstance(v, (str, int, float, bool))})
            for v, d in g.nodes(data=True):
                h.add_node(v, **_flat_attrs(d))
            for u, v, d in g.edges(data=True):
                h.add_edge(u, v, **_flat_attrs(d))
            if kind == "graphml":
                nx.write_graphml(h, path)
            else:
                nx.write_gml(h, path, stringizer=str)
    except OSError as err:
        raise TopologyFileError(f"{path}: cannot write: {err}") from None
    return path


def _flat_attrs(d: dict) -> dict:
    """GraphML/GML take scalars only; positions become ``x``/``y``."""
    out = {}
    for k, v in d.items():
        v = _json_safe(v)
        if k == "pos" and isinstance(v, list) and len(v) == 2:
            out["x"], out["y"] = float(v[0]), float(v[1])
        elif isinstance(v, (str, int, float, bool)):
            out[k] = v
    return out


# -- generators ----------------------------------------------------------------
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
    """Waxman-Salama random network in the unit square (MODEL.md section 7).

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
        Security probability of trusted relays (MODEL.md: 1.0).
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
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
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
    g = nx.Graph()
    pos_r = np.round(pos, 6).tolist()
    g.add_nodes_from(
        (v, {"pos": pos_r[v], "trusted": bool(chosen[v]), "p": float(trusted_p if chosen[v] else p)}) for v in range(m)
    )
    lengths = np.round(d * side_km, 6).tolist()
    g.add_edges_from(
        (u, v, {"pool_bits": int(pool_bits), "length_km": length})
        for (u, v), length in zip(pairs.tolist(), lengths)
    )
    g.graph.update(
        {
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
    )
    return Network(g)


def example_network() -> Network:
    """The built-in example: 10 nodes, trusted relays 3 and 4, untrusted p = 0.8.

    ::

            1       5       8
           / \\     / \\     / \\
          0   T3---+   T4---+   7      (each diamond: two one-relay routes)
           \\ /     \\ /     \\ /
            2       6       9

    Links: 0-1, 0-2, 1-3, 2-3, 3-5, 3-6, 5-4, 6-4, 4-8, 4-9, 8-7, 9-7, each
    with a 100 kb pool and a length in km. A request 0 -> 7 is the natural
    demonstration: SMR segments it at both trusted relays.

    Examples
    --------
    >>> net = example_network()
    >>> net.n_nodes, net.n_links, net.trusted_nodes
    (10, 12, [3, 4])
    """
    pos = {0: (0, 0), 1: (1, 1), 2: (1, -1), 3: (2, 0), 4: (4, 0), 5: (3, 1), 6: (3, -1), 7: (6, 0), 8: (5, 1), 9: (5, -1)}
    g = nx.Graph(name="example")
    for v in sorted(pos):
        trusted = v in (3, 4)
        g.add_node(v, trusted=trusted, p=1.0 if trusted else 0.8, pos=[float(c) for c in pos[v]])
    for u, v in [(0, 1), (0, 2), (1, 3), (2, 3), (3, 5), (3, 6), (5, 4), (6, 4), (4, 8), (4, 9), (8, 7), (9, 7)]:
        g.add_edge(u, v, pool_bits=DEFAULT_POOL_BITS, length_km=round(25.0 * math.dist(pos[u], pos[v]), 3))
    return Network(g, name="example")


# -- topohub -------------------------------------------------------------------
def topohub_names(group: str | None = None) -> list[str]:
    """Keys of the topologies shipped by ``topohub`` (e.g. ``topozoo/Abilene``)."""
    from importlib.resources import files

    try:
        import topohub
    except ImportError:  # pragma: no cover - topohub is a core dependency
        return []
    root = files(topohub) / "data"
    out: list[str] = []
    groups = [group] if group else sorted(p.name for p in root.iterdir() if p.is_dir())
    for grp in groups:
        base = root / grp
        if not base.is_dir():
            continue
        stack = [(base, grp)]
        while stack:
            d, prefix = stack.pop()
            for entry in d.iterdir():
                if entry.is_dir():
                    stack.append((entry, f"{prefix}/{entry.name}"))
                elif entry.name.endswith(".json"):
                    out.append(f"{prefix}/{entry.name[:-5]}")
    return sorted(out)


def _choose_trusted(g: nx.Graph, count: int, placement: str, seed: int) -> set:
    nodes = list(g.nodes)
    if placement == "random":
        rng = np.random.default_rng(seed)
        return {nodes[i] for i in rng.choice(len(nodes), size=count, replace=False).tolist()}
    if placement == "degree":
        order = sorted(range(len(nodes)), key=lambda i: (-g.degree(nodes[i]), i))
        return {nodes[i] for i in order[:count]}
    raise NetworkError(f"topohub: unknown placement {placement!r} (use random or degree)")


def load_topohub(
    key: str,
    *,
    trusted: int | float = 0.1,
    p: float = 0.8,
    pool_bits: int = DEFAULT_POOL_BITS,
    trusted_p: float = 1.0,
    placement: str = "random",
    seed: int = 0,
) -> Network:
    """Load a real topology from the ``topohub`` package by key.

    Trusted-relay rule (documented in docs/topologies.md): ``trusted`` is a
    count (int) or a fraction of the nodes (float < 1, rounded half up, at
    least one node when the fraction is positive). With
    ``placement="random"`` (default) those nodes are drawn uniformly with
    ``numpy.random.default_rng(seed)`` over the nodes in file order; with
    ``placement="degree"`` the highest-degree nodes are taken, ties broken by
    file order. All other nodes are untrusted relays with ``p``. Link lengths
    (topohub's ``dist``, km) become ``length_km``. Node ids are topohub's
    integer ids; the city names stay in the ``name`` attribute.

    Examples
    --------
    >>> net = load_topohub("topozoo/Abilene", trusted=2, seed=0)
    >>> net.n_nodes, net.n_links, len(net.trusted_nodes)
    (11, 14, 2)
    """
    try:
        import topohub
    except ImportError:  # pragma: no cover
        raise TopologyFileError("topohub is not installed: pip install topohub") from None
    key = key.removeprefix("topohub:")
    try:
        data = topohub.get(key)
    except (KeyError, RuntimeError, ValueError):
        raise TopologyFileError(f"topohub:{key}: no such topology (see `qkdseg topology list`)") from None
    g = nx.Graph(name=key)
    for node in data["nodes"]:
        nid = node["id"]
        nid = int(nid) if isinstance(nid, str) and nid.lstrip("-").isdigit() else nid
        attrs = {k: v for k, v in node.items() if k != "id"}
        g.add_node(nid, **attrs)
    ids = {str(v): v for v in g.nodes}
    for e in data["edges"]:
        u, v = ids[str(e["source"])], ids[str(e["target"])]
        if u == v or g.has_edge(u, v):
            continue  # topohub has none, but a real map may; keep the simple graph
        g.add_edge(u, v, pool_bits=int(pool_bits), length_km=e.get("dist"))
    n = g.number_of_nodes()
    if isinstance(trusted, float) and not float(trusted).is_integer() or (isinstance(trusted, float) and trusted < 1):
        if not 0.0 <= trusted < 1.0:
            raise NetworkError(f"topohub:{key}: trusted fraction {trusted} is outside [0, 1)")
        count = int(math.floor(trusted * n + 0.5))
        if trusted > 0:
            count = max(count, 1)
    else:
        count = int(trusted)
    if not 0 <= count <= n:
        raise NetworkError(f"topohub:{key}: trusted={count} must lie in [0, {n}]")
    for name, val in (("p", p), ("trusted_p", trusted_p)):
        if not 0.0 <= val <= 1.0:
            raise NetworkError(f"topohub:{key}: {name}={val} is outside [0, 1]")
    chosen = _choose_trusted(g, count, placement, seed)
    for v in g.nodes:
        g.nodes[v]["trusted"] = v in chosen
        g.nodes[v]["p"] = float(trusted_p if v in chosen else p)
    g.graph.update({"source": "topohub", "key": key, "trusted_rule": placement, "seed": seed})
    return Network(g, name=key)


_QUERY_TYPES = {"trusted": float, "p": float, "seed": int, "placement": str, "pool_bits": int, "trusted_p": float}


def load(spec: str | Path, *, default_p: float | None = None) -> Network:
    """Load a network from a CLI-style spec.

    ``spec`` is a file path, a built-in name (``example``) or
    ``topohub:GROUP/NAME`` with optional query parameters, e.g.
    ``topohub:topozoo/Abilene?trusted=3&p=0.9&seed=2&placement=degree``.
    """
    text = str(spec)
    if text in BUILTIN:
        return example_network()
    if text.startswith("topohub:"):
        key, _, query = text.partition("?")
        kwargs: dict[str, Any] = {}
        for field, value in parse_qsl(query, keep_blank_values=True):
            if field not in _QUERY_TYPES:
                raise TopologyFileError(f"{text}: unknown parameter {field!r} (use {', '.join(_QUERY_TYPES)})")
            try:
                val = _QUERY_TYPES[field](value)
            except ValueError:
                raise TopologyFileError(f"{text}: parameter {field}={value!r} is not a valid {_QUERY_TYPES[field].__name__}") from None
            if field == "trusted" and float(val).is_integer() and val >= 1:
                val = int(val)
            kwargs[field] = val
        return load_topohub(key, **kwargs)
    return read_network(text, default_p=default_p)


def node_positions(network: Network, seed: int = 0) -> dict[Hashable, tuple[float, float]]:
    """Positions from the file (``pos``, or ``x``/``y``) or else a seeded layout."""
    g = network.graph
    pos: dict[Hashable, tuple[float, float]] = {}
    for v, d in g.nodes(data=True):
        if isinstance(d.get("pos"), (list, tuple)) and len(d["pos"]) == 2:
            pos[v] = (float(d["pos"][0]), float(d["pos"][1]))
        elif d.get("x") is not None and d.get("y") is not None:
            pos[v] = (float(d["x"]), float(d["y"]))
        elif d.get("Longitude") is not None and d.get("Latitude") is not None:
            pos[v] = (float(d["Longitude"]), float(d["Latitude"]))
    if len(pos) == g.number_of_nodes():
        return pos
    return {v: (float(x), float(y)) for v, (x, y) in nx.spring_layout(g, seed=seed).items()}
