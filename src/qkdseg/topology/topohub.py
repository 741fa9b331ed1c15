"""Real topologies shipped by the ``topohub`` package (Internet Topology Zoo,
SNDlib, ...), with a seeded trusted-relay rule."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from ..errors import NetworkError, TopologyFileError
from ..network import DEFAULT_POOL_BITS, MAX_POOL_BITS, Network, check_count, check_probability
from ._checks import MAX_SEED


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
    if not isinstance(key, str):
        raise TopologyFileError(f"topohub: key must be a string like 'topozoo/Abilene', got {type(key).__name__}")
    where = f"topohub:{key.removeprefix('topohub:')}"
    if isinstance(trusted, bool) or not isinstance(trusted, (int, float, np.integer, np.floating)) or not math.isfinite(trusted):
        raise NetworkError(f"{where}: trusted={trusted!r} must be a count or a fraction")
    check_probability(p, f"{where}: p")
    check_probability(trusted_p, f"{where}: trusted_p")
    check_count(pool_bits, f"{where}: pool_bits", maximum=MAX_POOL_BITS)
    check_count(seed, f"{where}: seed", maximum=MAX_SEED)
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
