"""How far is the paper's greedy reconstruction from the optimum?

Over N random requests (default 1000), each on a freshly drawn seeded Waxman
network (docs/model.md section 7: 100 nodes, 10 trusted relays, untrusted p=0.8,
random source/destination), route with an algorithm (default SMR) and
reconstruct the pieces with ``paper`` and ``optimal`` at each level epsilon
in {0.5, 0.7, 0.9}. Prints, per epsilon: how often optimal delivers more
global keys than paper, by how much (keys and percent), how often the
integer program hit a cap, and the time it took.

    .venv/bin/python benchmarks/optimal_vs_paper.py            # 1000 requests
    .venv/bin/python benchmarks/optimal_vs_paper.py --requests 200 --algorithm msp --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np

from qkdseg import route, waxman
from qkdseg.reconstruction import optimal, paper


def run(requests: int, seed: int, algorithm: str, epsilons: list[float], nodes: int, trusted: int, p: float, time_limit: float) -> dict:
    rng = np.random.default_rng(seed)
    rows = {eps: [] for eps in epsilons}
    blocked = 0
    t_paper = t_opt = 0.0
    for trial in range(requests):
        net_seed = int(rng.integers(2**31))
        net = waxman(nodes, trusted=trusted, p=p, seed=net_seed)
        s, d = (int(x) for x in rng.choice(nodes, size=2, replace=False))
        r = route(net, s, d, algorithm=algorithm)
        if r.blocked:
            blocked += 1
        segs = [[list(x) for x in seg] for seg in r.index_paths]
        chain = net.indices_of(r.segment_nodes[1:-1])
        for eps in epsilons:
            t0 = time.perf_counter()
            a = paper(net.arrays.p, segs, chain, eps, r.block_bits)
            t1 = time.perf_counter()
            b = optimal(net.arrays.p, segs, chain, eps, r.block_bits, time_limit=time_limit)
            t2 = time.perf_counter()
            t_paper += t1 - t0
            t_opt += t2 - t1
            rows[eps].append(
                {
                    "trial": trial,
                    "network_seed": net_seed,
                    "source": s,
                    "destination": d,
                    "segments": len(segs),
                    "pieces": sum(len(x) for x in segs),
                    "paper": a.n_keys,
                    "optimal": b.n_keys,
                    "proven": bool(b.optimal),
                    "status": b.status,
                    "seconds": t2 - t1,
                }
            )
    summary = {}
    for eps, rs in rows.items():
        gains = [x["optimal"] - x["paper"] for x in rs]
        beats = [x for x in rs if x["optimal"] > x["paper"]]
        paper_keys = sum(x["paper"] for x in rs)
        opt_keys = sum(x["optimal"] for x in rs)
        summary[eps] = {
            "requests": len(rs),
            "optimal_beats_paper": len(beats),
            "optimal_below_paper": sum(g < 0 for g in gains),
            "mean_extra_keys_when_better": float(np.mean([g for g in gains if g > 0])) if beats else 0.0,
            "max_extra_keys": max(gains) if gains else 0,
            "mean_relative_gain_when_better": float(np.mean([(x["optimal"] - x["paper"]) / max(x["paper"], 1) for x in beats])) if beats else 0.0,
            "paper_from_zero": sum(1 for x in beats if x["paper"] == 0),
            "total_keys_paper": paper_keys,
            "total_keys_optimal": opt_keys,
            "total_gain_percent": 100.0 * (opt_keys - paper_keys) / paper_keys if paper_keys else float("nan"),
            "gain_histogram": dict(sorted(Counter(gains).items())),
            "not_proven": sum(1 for x in rs if not x["proven"]),
            "max_optimal_seconds": max(x["seconds"] for x in rs) if rs else 0.0,
        }
    return {
        "config": {
            "requests": requests,
            "seed": seed,
            "algorithm": algorithm,
            "nodes": nodes,
            "trusted": trusted,
            "p": p,
            "epsilons": epsilons,
            "time_limit": time_limit,
        },
        "blocked": blocked,
        "seconds_paper": t_paper,
        "seconds_optimal": t_opt,
        "summary": summary,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--algorithm", default="smr")
    ap.add_argument("--epsilon", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--trusted", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.8)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--json", help="also write every row to this file")
    args = ap.parse_args()
    out = run(args.requests, args.seed, args.algorithm, args.epsilon, args.nodes, args.trusted, args.p, args.time_limit)
    c = out["config"]
    print(
        f"optimal vs paper: {c['requests']} requests, {c['algorithm']}, Waxman n={c['nodes']} "
        f"trusted={c['trusted']} p={c['p']}, seed {c['seed']} ({out['blocked']} blocked)"
    )
    print(f"time: paper {out['seconds_paper']:.1f} s, optimal {out['seconds_optimal']:.1f} s in all")
    for eps, s in out["summary"].items():
        print(
            f"eps={eps:g}: optimal > paper in {s['optimal_beats_paper']}/{s['requests']} requests "
            f"({100.0 * s['optimal_beats_paper'] / s['requests']:.1f}%), "
            f"by {s['mean_extra_keys_when_better']:.2f} keys on average (max {s['max_extra_keys']}, "
            f"mean relative +{100 * s['mean_relative_gain_when_better']:.0f}%, {s['paper_from_zero']} where paper had 0); "
            f"total keys {s['total_keys_paper']} -> {s['total_keys_optimal']} "
            f"(+{s['total_gain_percent']:.1f}%); optimal < paper: {s['optimal_below_paper']}; "
            f"not proven optimal: {s['not_proven']}; slowest optimal {s['max_optimal_seconds']:.2f} s"
        )
        print(f"        extra keys histogram {s['gain_histogram']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
