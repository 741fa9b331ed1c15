"""The issue's independent timing check, as a script: ``qkdseg.read_network``
once, then ``qkdseg.route(net, s, d, algorithm="smr")`` on random pairs,
interleaved in one process with the straightforward networkx SMR of
``benchmarks/nx_baseline.py``. Prints medians and their ratio.

    python -m benchmarks.api_vs_networkx [--nodes 100] [--pairs 300] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import qkdseg

from .nx_baseline import nx_smr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.json"
        qkdseg.write_network(qkdseg.waxman(args.nodes, trusted=args.nodes // 10, p=0.8, seed=args.seed), path)
        net = qkdseg.read_network(path)
    g = net.graph
    rng = np.random.default_rng(args.seed)
    nodes = list(g.nodes)
    pairs = [tuple(rng.choice(len(nodes), 2, replace=False).tolist()) for _ in range(args.pairs)]
    qkdseg.route(net, nodes[0], nodes[1])  # load compiled kernels
    api, base = [], []
    for s, d in pairs:
        t = time.perf_counter()
        qkdseg.route(net, nodes[s], nodes[d], algorithm="smr")
        api.append(time.perf_counter() - t)
        t = time.perf_counter()
        nx_smr(g, nodes[s], nodes[d])
        base.append(time.perf_counter() - t)
    ma, mb = statistics.median(api), statistics.median(base)
    print(f"nodes={args.nodes} pairs={args.pairs} seed={args.seed}")
    print(f"qkdseg.route (smr)      median {ma * 1e3:.3f} ms")
    print(f"networkx SMR (baseline) median {mb * 1e3:.3f} ms")
    print(f"ratio                   {mb / ma:.1f}x")


if __name__ == "__main__":
    main()
