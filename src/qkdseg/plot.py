"""Drawing a route on its topology (matplotlib, no ``plt.show`` here)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .network import Network
from .topology import node_positions

if TYPE_CHECKING:  # the route type only: Route.plot (api) calls plot_route
    from .api import Route


def plot_route(network: Network, route: Route, path: str | Path, *, seed: int = 0, title: str | None = None) -> Path:
    """Draw ``route`` over ``network`` and save it (format from the suffix).

    Untrusted relays are grey circles, trusted relays green squares, the
    segment nodes large gold stars with labels beside them; each segment's
    paths share a colour, each path its own line style (the legend names both).
    Numbers carry thousands separators. Positions come from the file (``pos``
    or ``x``/``y``), else from a seeded spring layout.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import networkx as nx

    g = network.graph
    pos = node_positions(network, seed=seed)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#cccccc", width=0.8)
    untrusted = [v for v in g if not g.nodes[v]["trusted"]]
    trusted = [v for v in g if g.nodes[v]["trusted"]]
    nx.draw_networkx_nodes(g, pos, nodelist=untrusted, node_size=40, node_color="#9e9e9e", ax=ax, label="untrusted relay")
    nx.draw_networkx_nodes(
        g, pos, nodelist=trusted, node_size=90, node_color="#2e7d32", node_shape="s", ax=ax, label="trusted relay"
    )
    cmap = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (8, 2, 1, 2, 1, 2)), (0, (1, 4))]
    for j, seg in enumerate(route.segments):
        colour = cmap(j % 10)
        for k, p in enumerate(seg.paths):
            edges = list(zip(p, p[1:]))
            nx.draw_networkx_edges(
                g, pos, edgelist=edges, edge_color=[colour], width=2.6, style=styles[k % len(styles)], ax=ax
            )
        ax.plot([], [], color=colour, lw=2.6,
                label=f"segment {j + 1}: {seg.source}\u2192{seg.target}, {_count(len(seg.paths), 'path')}")
    most = max((len(seg.paths) for seg in route.segments), default=0)
    for k in range(min(most, len(styles)) if most > 1 else 0):
        more = f" (and {', '.join(str(i + 1) for i in range(k + len(styles), most, len(styles)))})" \
            if k + len(styles) < most else ""
        ax.plot([], [], color="#333333", lw=1.8, ls=styles[k], label=f"path {k + 1}{more} of a segment")
    seg_nodes = list(route.segment_nodes)
    nx.draw_networkx_nodes(
        g, pos, nodelist=seg_nodes, node_size=260, node_color="#ffb300", node_shape="*", ax=ax, label="segment node"
    )
    for v in seg_nodes:  # beside the star, not on it
        ax.annotate(str(v), pos[v], xytext=(7, 5), textcoords="offset points", fontsize=9, fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
    status = "blocked" if route.blocked else f"security {route.security:.4f}, {route.consumed_bits:,} bits consumed"
    ax.set_title(title or f"{route.algorithm}: {route.source} \u2192 {route.destination} ({status})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7.5, frameon=False, handlelength=4)  # off the graph
    ax.set_axis_off()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def _count(n: int, noun: str) -> str:
    """``1 path``, ``6 paths``, ``1,200 paths``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
