"""``python -m benchmarks.sim [--duration 3600] [--rate 50] [--workers 1] [--out benchmarks/sim_results.md]``.

The time-dynamic engine (:mod:`qkdseg.sim`) on its issue's workload: one
hour of simulated time at 50 requests/s (about 180,000 requests) on a
100-node Waxman network (``qkdseg.waxman(100, trusted=10, p=0.8, seed=1)``,
pools 100 kb, links 100 kb/s, 256-bit keys at epsilon 0.9, ttl 0), for
smr, msp, disjoint, single and smr-level (issue 23; its level is the
keys' 0.9), all on the same arrival trace (seed 0).

For each algorithm: wall time, requests per second, and the share of the
time spent routing (``route_indices`` + reconstruction, on cache misses)
against the engine's own bookkeeping (refills, masks, the cache, debits,
records). Then the engine choice, measured in the same process on the same
trace (smr, ``--engine-seconds`` of simulated time):

- ``heap``: :class:`qkdseg.sim.Simulation`'s own event loop (a heap of
  expiries beside the sorted arrivals; what the engine uses);
- ``simpy``: the same bookkeeping driven by a SimPy environment (one
  process for the arrivals, one for the samples), checked to give the same
  requests table;
- ``no cache``: the heap loop with the route cache off (every try routes).

Writes a Markdown report with the machine, the load average and the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import qkdseg
from qkdseg.experiments.runner import warm_up
from qkdseg.sim import Simulation, poisson_requests

ALGORITHMS = ("smr", "msp", "disjoint", "single", "smr-level")


def _network():
    return qkdseg.waxman(100, trusted=10, p=0.8, seed=1)


def run_one(args: tuple) -> dict:
    """One algorithm on the benchmark trace: wall time and the engine's own split."""
    algorithm, rate, duration, cache = args
    net = _network()
    req = poisson_requests(net, rate, duration, seed=0)
    warm_up((algorithm,))
    t0 = time.perf_counter()
    sim = Simulation(net, req, algorithm, interval=60.0, cache=cache).run()
    wall = time.perf_counter() - t0
    served = int((sim.outcome == 1).sum())
    return {"algorithm": algorithm, "requests": len(req), "served": served, "seconds": wall,
            "routing_seconds": sim.stats["routing_seconds"], "route_calls": sim.stats["route_calls"]}


class SimpyDriven(Simulation):
    """The same bookkeeping, events scheduled by SimPy (ttl 0: arrivals and samples)."""

    def run_simpy(self) -> "SimpyDriven":
        import simpy

        assert self.ttl == 0.0
        env = simpy.Environment()
        times, samples = self.requests.t, self.sample_times

        def arrivals():
            for j in range(len(times)):
                t = float(times[j])
                yield env.timeout(t - env.now)
                self._arrive(j, t)
                self._next = j + 1

        def sampler():
            for t in samples:
                yield env.timeout(float(t) - env.now)
                self._sample(float(t))

        env.process(sampler())  # first: a sample goes before an arrival at the same instant
        env.process(arrivals())
        env.run()
        self._refill(self.horizon)
        self.t = self.horizon
        return self


def engine_choice(rate: float, seconds: float) -> list[dict]:
    net = _network()
    req = poisson_requests(net, rate, seconds, seed=0)
    warm_up(("smr",))
    rows = []
    ref = None
    for name in ("heap", "simpy", "heap", "simpy", "no cache"):
        t0 = time.perf_counter()
        if name == "simpy":
            sim = SimpyDriven(net, req, "smr", interval=60.0).run_simpy()
        else:
            sim = Simulation(net, req, "smr", interval=60.0, cache=name != "no cache").run()
        wall = time.perf_counter() - t0
        df = sim.requests_frame()
        if ref is None:
            ref = df
        same = df.equals(ref)
        rows.append({"engine": name, "requests": len(req), "seconds": wall, "routing_seconds": sim.stats["routing_seconds"],
                     "same": same})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sim", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0, help="simulated seconds (default 3600)")
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    ap.add_argument("--workers", type=int, default=1, help="algorithms run in this many processes (default 1)")
    ap.add_argument("--engine-seconds", type=float, default=600.0, help="simulated seconds of the engine comparison")
    ap.add_argument("--out", default="benchmarks/sim_results.md")
    a = ap.parse_args(argv)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    jobs = [(alg, a.rate, a.duration, True) for alg in ALGORITHMS]
    if a.workers > 1:
        warm_up(ALGORITHMS)
        with ProcessPoolExecutor(a.workers) as pool:
            rows = list(pool.map(run_one, jobs))
    else:
        rows = [run_one(j) for j in jobs]
    total = time.perf_counter() - t0
    eng = engine_choice(a.rate, a.engine_seconds)
    load1 = os.getloadavg()
    import numba

    lines = [
        "# Time-dynamic engine benchmark",
        "",
        f"- Command: `{' '.join(['python -m benchmarks.sim', *(sys.argv[1:] if argv is None else argv)])}`",
        f"- Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"numpy {np.__version__}, numba {numba.__version__}; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end "
        "(the machine is shared: the load is other processes)",
        f"- Workload: `qkdseg.waxman(100, trusted=10, p=0.8, seed=1)`, {a.duration:g} s at {a.rate:g} requests/s "
        "(seed 0), pools 100 kb, links 100 kb/s, 256-bit keys at epsilon 0.9, ttl 0, reconstruction `paper`",
        f"- Algorithms in {a.workers} process(es): **{total:.1f} s in all** (wall)",
        "",
        "| algorithm | requests | served | seconds | requests/s | routing share | bookkeeping share | route calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = r["routing_seconds"] / r["seconds"]
        lines.append(f"| {r['algorithm']} | {r['requests']} | {r['served']} | {r['seconds']:.2f} | "
                     f"{r['requests'] / r['seconds']:.0f} | {share:.0%} | {1 - share:.0%} | {r['route_calls']} |")
    base = min(r["seconds"] for r in eng if r["engine"] == "heap")
    lines += [
        "",
        f"Engine choice (smr, {a.engine_seconds:g} s at {a.rate:g} requests/s, same trace, same process; "
        "`ratio` = seconds / the best heap run; `same` = identical requests table to the first run):",
        "",
        "| engine | requests | seconds | requests/s | routing seconds | ratio | same |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in eng:
        lines.append(f"| {r['engine']} | {r['requests']} | {r['seconds']:.2f} | {r['requests'] / r['seconds']:.0f} | "
                     f"{r['routing_seconds']:.2f} | {r['seconds'] / base:.2f}x | {r['same']} |")
    text = "\n".join(lines) + "\n"
    Path(a.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
