"""``python -m benchmarks.level [--quick] [--sim-duration 3600] [--out benchmarks/level.md]``.

What ``smr-level`` (issue 23) costs against ``smr``, in one process:

1. **Time per request**, interleaved request by request (the algorithm
   functions on the frozen arrays, what ``route`` calls; which one runs
   first rotates): median ms and the ratio of the medians, at epsilon 0.9,
   on the benchmark network of ``python -m benchmarks`` (``waxman(100,
   trusted=10, p=0.8, seed=1)``) and on ``waxman_large(1000, trusted=100,
   p=0.8, seed=1)``. ``smr-level`` with its default wide search (issue 39)
   and with ``search="successive"`` (the search of issue 23). Targets of
   issue 39: the wide search at most 3x ``smr`` at 100 nodes and at most
   5 ms at 1,000 nodes. Rows and candidate paths are kept per network, so
   the first requests on a network pay for them (the warm-up is one request).
   Also the median CPU time (``time.process_time``) and its ratio: on a
   shared machine a longer call is descheduled more often, which inflates
   the wall-time ratio. The first ``smr-level`` (before its chains were
   bounded; ``tests/smr_level_reference.py``, same routes) is timed in the
   same loop, for the before/after ratio.
2. **The simulator's benchmark** (:mod:`benchmarks.sim`: 50 requests/s,
   256-bit keys at 0.9, pools 100 kb, links 100 kb/s, seed 0) for ``smr``
   and ``smr-level`` on the same trace over ``--sim-duration`` simulated
   seconds: wall time and the share spent routing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qkdseg.experiments.runner import warm_up
from qkdseg.routing import get_algorithm
from qkdseg.sim import Simulation, poisson_requests
from qkdseg.topology import waxman, waxman_large

from .__main__ import machine

EPSILON = 0.9
#: (label, algorithm, options) timed side by side.
TIMED = [("smr", "smr", {}), ("smr-level", "smr-level", {"epsilon": EPSILON}),
         ("smr-level (successive)", "smr-level", {"epsilon": EPSILON, "search": "successive"})]


def _reference():
    """The first smr-level (tests/smr_level_reference.py, what the equality test compares
    against), timed beside the current one for the before/after ratio; None without tests/."""
    path = Path(__file__).resolve().parent.parent / "tests" / "smr_level_reference.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("smr_level_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.smr_level


def timing(arrays, pairs, budget: float) -> list[dict]:
    funcs = [(label, get_algorithm(name).func, opts) for label, name, opts in TIMED]
    ref = _reference()
    if ref is not None:
        funcs.append(("smr-level (first version)", ref, {"epsilon": EPSILON}))
    removed = arrays.pool_bits <= 0
    for _, f, o in funcs:  # warm-up (numba cache load)
        f(arrays, *pairs[0], removed_links=removed, **o)
    times: dict[str, list[float]] = {name: [] for name, _, _ in funcs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in funcs}
    start = time.perf_counter()
    for i, (s, d) in enumerate(pairs):
        k = i % len(funcs)
        for name, f, o in funcs[k:] + funcs[:k]:
            c, t = time.process_time(), time.perf_counter()
            f(arrays, s, d, removed_links=removed, **o)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        if time.perf_counter() - start > budget and len(times["smr"]) >= 5:
            break
    base, cbase = statistics.median(times["smr"]), statistics.median(cpu["smr"])
    # CPU time too: on a shared machine a longer call is descheduled more often, which inflates wall ratios
    return [dict(what=name, median_ms=1e3 * statistics.median(t), ratio=statistics.median(t) / base, requests=len(t),
                 cpu_ms=1e3 * statistics.median(cpu[name]), cpu_ratio=statistics.median(cpu[name]) / cbase)
            for name, t in times.items()]


def sim_run(algorithm: str, duration: float) -> dict:
    net = waxman(100, trusted=10, p=0.8, seed=1)
    req = poisson_requests(net, 50.0, duration, seed=0)
    warm_up((algorithm,))
    t0 = time.perf_counter()
    sim = Simulation(net, req, algorithm, interval=60.0).run()
    wall = time.perf_counter() - t0
    served = int((sim.outcome == 1).sum())
    return {"algorithm": algorithm, "requests": len(req), "served": served, "seconds": wall,
            "routing_seconds": sim.stats["routing_seconds"], "mean_consumed_bits": float(sim.consumed[sim.outcome == 1].mean())}


def report_head(title: str, module: str, argv) -> list[str]:
    """A report's first lines: title, command, date, load average, machine."""
    return [f"# {title}", "", f"Command: `python -m {module} {' '.join(argv or sys.argv[1:])}`",
            f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average before: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", "", machine(), ""]


def write_report(lines: list[str], out: str) -> None:
    """Write a report with the load average after the run."""
    lines += ["", "Load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg())]
    Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.level")
    ap.add_argument("--quick", action="store_true", help="fewer requests, 60 s of simulated time")
    ap.add_argument("--sim-duration", type=float, default=None, help="simulated seconds of the sim benchmark (default 3600)")
    ap.add_argument("--pairs", type=int, default=1000, help="requests per network (default 1000)")
    ap.add_argument("--out", default="benchmarks/level.md")
    args = ap.parse_args(argv)
    ap_pairs = args.pairs
    n_pairs, budget = (100, 10.0) if args.quick else (ap_pairs, 60.0)
    sim_duration = args.sim_duration if args.sim_duration is not None else (60.0 if args.quick else 3600.0)
    rng = np.random.default_rng(0)
    lines = report_head("smr-level against smr", "benchmarks.level", argv) + [
             f"## Time per request (epsilon {EPSILON}, interleaved, median)", "",
             "| network | algorithm | requests | median ms (wall) | ratio to smr | median ms (CPU) | CPU ratio to smr |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, net in (("waxman(100, trusted=10, p=0.8, seed=1)", waxman(100, trusted=10, p=0.8, seed=1)),
                       ("waxman_large(1000, trusted=100, p=0.8, seed=1)", waxman_large(1000, trusted=100, p=0.8, seed=1))):
        a = net.arrays
        pairs = [tuple(int(x) for x in rng.choice(a.n_nodes, size=2, replace=False)) for _ in range(n_pairs)]
        for row in timing(a, pairs, budget):
            lines.append(f"| {label} | {row['what']} | {row['requests']} | {row['median_ms']:.3f} | {row['ratio']:.2f} | "
                         f"{row['cpu_ms']:.3f} | {row['cpu_ratio']:.2f} |")
            print(label, row, flush=True)
    lines += ["", f"## The simulator's benchmark, {sim_duration:g} s simulated at 50 requests/s (same trace)", "",
              "| algorithm | requests | served | wall s | routing share | bits per served key |",
              "|---|---:|---:|---:|---:|---:|"]
    for alg in ("smr", "smr-level"):
        r = sim_run(alg, sim_duration)
        print(r, flush=True)
        lines.append(f"| {alg} | {r['requests']} | {r['served']} | {r['seconds']:.2f} | "
                     f"{r['routing_seconds'] / r['seconds']:.0%} | {r['mean_consumed_bits']:.0f} |")
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
