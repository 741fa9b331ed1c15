"""``python -m benchmarks.placement [--budget 10] [--repeats 1] [--out benchmarks/placement.md]``.

The performance target of issue 11: greedy placement with k = 10 on a
100-node Waxman network (``waxman(100, trusted=0, p=0.8, seed=1)``, the
paper's parameters, no trusted relay to start with) over all 4,950 pairs, in
at most 60 s on the 2-core machine.

In one process, after a warm-up that compiles the kernels:

1. **Baseline**: one evaluation of the objective the straightforward way,
   every demand routed by :func:`qkdseg.api.route_indices` (median of
   ``--eval-repeats``). A greedy that re-evaluated every candidate on every
   demand would cost ``k x candidates`` of these; the line says how many.
2. **Greedy** (``lazy=celf``, the default) and ``lazy=bound`` (the plain
   greedy's choice): wall time, process CPU time (both threads), demand
   routings, and the ratio of wall time to one baseline evaluation.

The machine is shared: the load average is printed before and after each
timed run, beside the times. Numba's thread count is ``NUMBA_NUM_THREADS``
(default: every core).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qkdseg import example_network, place
from qkdseg.api import route_indices
from qkdseg.placement import make_demands
from qkdseg.topology import waxman

from .__main__ import machine


def _full_evaluation(net, demands) -> float:
    a = net.arrays
    w = demands.weight / demands.weight.sum()
    sec = [route_indices(a, s, d, "smr").security for s, d in zip(demands.src.tolist(), demands.dst.tolist())]
    return float(np.dot(w, sec))


def _timed(fn):
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0, load0, os.getloadavg()[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="greedy runs per mode (median)")
    ap.add_argument("--eval-repeats", type=int, default=3)
    ap.add_argument("--modes", default="celf,bound")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here (Markdown)")
    args = ap.parse_args(argv)

    place(example_network(), 2)  # compile (cached on disk after the first run)
    place(example_network(), 2, lazy="bound")
    net = waxman(args.nodes, trusted=0, p=0.8, seed=args.seed)
    dem = make_demands(net, "all")
    n_cand = net.n_nodes - len(net.trusted_nodes)
    lines = [
        "# Placement benchmark (issue 11)",
        "",
        f"`python -m benchmarks.placement --budget {args.budget} --nodes {args.nodes} --seed {args.seed} "
        f"--repeats {args.repeats}`, {_dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}; NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}.",
        "",
        f"Network: `waxman({args.nodes}, trusted=0, p=0.8, seed={args.seed})`, {net.n_links} links; "
        f"demands: all {len(dem)} pairs; candidates: {n_cand}.",
        "",
    ]
    base = []
    for _ in range(args.eval_repeats):
        val, wall, cpu, l0, l1 = _timed(lambda: _full_evaluation(net, dem))
        base.append(wall)
    t_full = statistics.median(base)
    naive = args.budget * n_cand
    lines += [
        f"Baseline, one evaluation of the objective with every demand routed by `route_indices`: "
        f"median {t_full:.3f} s over {args.eval_repeats} (objective {val:.6f}, load {l0:.2f} -> {l1:.2f}). "
        f"A greedy re-evaluating every candidate on every demand: {naive} evaluations, about {naive * t_full:.0f} s.",
        "",
        "| lazy | wall s (median) | CPU s | demand routings | wall / one baseline evaluation | load before -> after | objective | nodes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        runs = [_timed(lambda: place(net, args.budget, lazy=mode)) for _ in range(args.repeats)]
        walls = [r[1] for r in runs]
        r, wall, cpu, l0, l1 = sorted(runs, key=lambda x: x[1])[len(runs) // 2]
        lines.append(
            f"| {mode} | {statistics.median(walls):.1f} | {cpu:.1f} | {r.routings} | {wall / t_full:.1f} | "
            f"{l0:.2f} -> {l1:.2f} | {r.value:.6f} | {', '.join(map(str, r.nodes))} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
