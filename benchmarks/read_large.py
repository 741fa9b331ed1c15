"""Reading a large node-link JSON network, then routing one SMR request.

Three readers of the same file, interleaved in one process, each followed by
one ``route(..., algorithm="smr")`` on the network it returned (so building
the array form counts):

- ``qkdseg.read_network``: the array form straight from the parsed file;
- the general path ``read_network`` takes for unusual files (a networkx graph
  validated by ``qkdseg.Network``; what every file took before);
- the baseline: ``json.load`` plus networkx's own ``node_link_graph``
  (reading only: networkx has no SMR, so its route column is empty).

Prints medians and the ratios against the baseline's read time.

    python -m benchmarks.read_large [--nodes 100000] [--repeat 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import networkx as nx
import numpy as np

import qkdseg
from qkdseg.network import Network
from qkdseg.topology import waxman_large, write_network
from qkdseg.topology.nodelink import _graph_from_node_link


def general_path(path: Path) -> Network:
    with path.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    g = _graph_from_node_link(data, str(path))
    return Network(g, name=str(g.graph.get("name") or path.stem))


def networkx_reader(path: Path) -> nx.Graph:
    with path.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    return nx.node_link_graph(data, edges="links")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.json"
        net = waxman_large(args.nodes, seed=args.seed)
        write_network(net, path)
        ids = net.nodes
        rng = np.random.default_rng(args.seed)
        s, d = (ids[i] for i in rng.choice(len(ids), 2, replace=False).tolist())
        qkdseg.route(net, s, d)  # load the compiled kernels outside the timings
        size_mb = path.stat().st_size / 1e6
        times: dict[str, list[tuple[float, float]]] = {"qkdseg.read_network": [], "general path": [], "networkx node_link_graph": []}
        for _ in range(args.repeat):
            for label, reader in (
                ("qkdseg.read_network", qkdseg.read_network),
                ("general path", general_path),
                ("networkx node_link_graph", networkx_reader),
            ):
                t0 = time.perf_counter()
                got = reader(path)
                t1 = time.perf_counter()
                if isinstance(got, Network):
                    r = qkdseg.route(got, s, d, algorithm="smr")
                    assert not r.blocked
                t2 = time.perf_counter()
                times[label].append((t1 - t0, t2 - t1))
                del got
    base = statistics.median(t for t, _ in times["networkx node_link_graph"])
    print(f"nodes={net.n_nodes} links={net.n_links} file={size_mb:.1f} MB request {s}->{d} repeat={args.repeat} seed={args.seed}")
    print(f"{'reader':26s} {'read s':>8s} {'route s':>8s} {'total s':>8s} {'read vs networkx':>17s}")
    for label, rows in times.items():
        read = statistics.median(t for t, _ in rows)
        route = statistics.median(r for _, r in rows)
        total = statistics.median(t + r for t, r in rows)
        route_txt = f"{route:8.3f}" if route > 1e-6 else f"{'-':>8s}"
        print(f"{label:26s} {read:8.3f} {route_txt} {total:8.3f} {base / read:16.2f}x")


if __name__ == "__main__":
    main()
