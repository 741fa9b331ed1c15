"""``python -m benchmarks [--quick] [--sizes 100,1000,...] [--out benchmarks/results.md]``.

For each network size and each registered algorithm: median wall time per
request (the algorithm function on the frozen arrays, what ``route`` calls),
and for SMR also the whole public ``qkdseg.route`` call, interleaved request
by request with the straightforward networkx SMR of :mod:`benchmarks.nx_baseline`
on the same pairs (skipped where too slow). Peak memory: ``tracemalloc``'s
peak of Python allocations during the timed requests (numba's own arrays
are not traced) and the process's peak RSS so far. Then exact security of 16
overlapping paths and Monte Carlo relay samples per second. Writes a
Markdown report with the machine, the command and the date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import qkdseg
from qkdseg import _kernels
from qkdseg.routing import ALGORITHMS
from qkdseg.routing.smr import request_masks  # noqa: F401  (imported for the profile script)
from qkdseg.security import exact_security, montecarlo_security
from qkdseg.topology import waxman, waxman_large

from .nx_baseline import nx_smr

#: Requests per (size, algorithm) and a time budget (s) that may cut them short.
PLAN = {100: (400, 20.0), 1000: (200, 20.0), 10_000: (40, 30.0), 100_000: (12, 60.0)}
#: Largest size where the networkx baseline runs, and its request count.
NX_PLAN = {100: 200, 1000: 40, 10_000: 4}


def network_for(n: int):
    """100 nodes: the paper's generator; larger: the KD-tree generator (degree kept)."""
    if n <= 100:
        return waxman(n, trusted=10, p=0.8, seed=1)
    return waxman_large(n, p=0.8, seed=1)


def _pairs(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [tuple(int(x) for x in rng.choice(n, 2, replace=False)) for _ in range(k)]


def _timed(func, pairs, budget):
    times = []
    start = time.perf_counter()
    for s, d in pairs:
        t = time.perf_counter()
        func(s, d)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return times


def _peak_traced(func, pairs):
    tracemalloc.start()
    for s, d in pairs:
        func(s, d)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_size(n: int, quick: bool) -> list[dict]:
    t0 = time.perf_counter()
    net = network_for(n)
    build = time.perf_counter() - t0
    arrays = net.arrays
    removed = arrays.pool_bits <= 0
    count, budget = PLAN[n]
    if quick:
        count, budget = max(3, count // 10), budget / 5
    pairs = _pairs(net.n_nodes, count)
    rows = []
    for name, algo in ALGORITHMS.items():
        def call(s, d, f=algo.func):
            return f(arrays, s, d, removed_links=removed)

        call(*pairs[0])  # warm-up (numba cache load)
        times = _timed(call, pairs, budget)
        peak = _peak_traced(call, pairs[: min(5, len(pairs))])
        rows.append(dict(n=net.n_nodes, links=net.n_links, what=name, median_ms=1e3 * statistics.median(times),
                         requests=len(times), peak_kib=peak / 1024, rss_mib=_rss_mib(), build_s=build))
    # the public API, interleaved with the networkx baseline on the same pairs
    ids = arrays.node_ids
    g = net.graph
    api_t, nx_t = [], []
    nx_count = NX_PLAN.get(n, 0) if not quick else min(NX_PLAN.get(n, 0), 10)
    qkdseg.route(net, ids[pairs[0][0]], ids[pairs[0][1]], algorithm="smr")
    start = time.perf_counter()
    for k, (s, d) in enumerate(pairs):
        t = time.perf_counter()
        qkdseg.route(net, ids[s], ids[d], algorithm="smr")
        api_t.append(time.perf_counter() - t)
        if k < nx_count:
            t = time.perf_counter()
            nx_smr(g, ids[s], ids[d])
            nx_t.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget + (60 if nx_count else 0) and len(api_t) >= 3:
            break
    peak = _peak_traced(lambda s, d: qkdseg.route(net, ids[s], ids[d]), pairs[:5])
    row = dict(n=net.n_nodes, links=net.n_links, what="route(smr) API", median_ms=1e3 * statistics.median(api_t),
               requests=len(api_t), peak_kib=peak / 1024, rss_mib=_rss_mib(), build_s=build)
    if nx_t:
        paired = api_t[: len(nx_t)]
        row["nx_ms"] = 1e3 * statistics.median(nx_t)
        row["ratio"] = statistics.median(nx_t) / statistics.median(paired)
        row["nx_requests"] = len(nx_t)
        row["nx_peak_kib"] = _peak_traced(lambda s, d: nx_smr(g, ids[s], ids[d]), pairs[:3]) / 1024
    rows.append(row)
    smr_row = next(r for r in rows if r["what"] == "smr")
    if nx_t:
        smr_row["nx_ms"] = row["nx_ms"]
        smr_row["ratio"] = row["nx_ms"] / smr_row["median_ms"]
    return rows


def overlapping_case(n_paths: int = 16, pool: int = 20, per_path: int = 4, seed: int = 5):
    """``n_paths`` paths of one segment, ``per_path`` relays each from ``pool`` relays (p = 0.8)."""
    rng = np.random.default_rng(seed)
    n = pool + 2
    p = np.full(n, 0.8)
    p[[0, n - 1]] = 1.0
    paths = [[0, *rng.choice(np.arange(1, pool + 1), per_path, replace=False).tolist(), n - 1] for _ in range(n_paths)]
    return p, [paths]


def bench_security(quick: bool) -> dict:
    p, segs = overlapping_case()
    shared = len({v for path in segs[0] for v in path[1:-1]})
    exact_security(p, segs)
    reps = 20 if quick else 200
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        value = exact_security(p, segs)
        times.append(time.perf_counter() - t)
    samples = 200_000 if quick else 2_000_000
    relays = shared
    mc_t = []
    for rep in range(3):
        t = time.perf_counter()
        est = montecarlo_security(p, segs, samples=samples, seed=rep)
        mc_t.append(time.perf_counter() - t)
    return dict(exact_ms=1e3 * statistics.median(times), exact_value=value, shared=shared,
                mc_samples=samples, mc_rate=samples * relays / statistics.median(mc_t), mc_value=est.value)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import networkx
    import scipy

    nb = "not installed"
    if _kernels.HAVE_NUMBA:
        import numba

        nb = numba.__version__
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; numpy {np.__version__}, "
            f"scipy {scipy.__version__}, networkx {networkx.__version__}, numba {nb}; "
            f"kernel {_kernels.default_kernel()}; load average at start {os.getloadavg()[0]:.2f}")


def report(rows, sec, args, started, wall) -> str:
    out = ["# Benchmark results", ""]
    out += [f"- Command: `python -m benchmarks {' '.join(sys.argv[1:])}`".rstrip(), f"- Date: {started} (UTC), {wall:.0f} s",
            f"- Machine: {machine()}", ""]
    out += ["Median wall time per request (random source/destination pairs, seeded). `ratio` = networkx",
            "baseline median / qkdseg median on the same pairs, run interleaved in the same process",
            "(`route(smr) API` row: the whole public call, security evaluation included). Peak: tracemalloc",
            "peak of Python allocations over 5 requests (numba's arrays are not traced); RSS: process peak so far.", ""]
    out += ["| nodes | links | algorithm | median ms | requests | networkx SMR ms | ratio | peak KiB | peak RSS MiB |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nxm = f"{r['nx_ms']:.2f}" if "nx_ms" in r else "skipped"
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
        out.append(f"| {r['n']} | {r['links']} | {r['what']} | {r['median_ms']:.3f} | {r['requests']} | {nxm} | "
                   f"{ratio} | {r['peak_kib']:.0f} | {r['rss_mib']:.0f} |")
    nxp = [r for r in rows if "nx_peak_kib" in r]
    if nxp:
        out += ["", "networkx baseline peak (tracemalloc, 3 requests): "
                + ", ".join(f"{r['n']} nodes {r['nx_peak_kib']:.0f} KiB" for r in nxp)]
    out += ["", "## Security evaluation", "",
            f"- Exact security of 16 overlapping paths (one segment, 4 relays each from 20 relays of p = 0.8, "
            f"{sec['shared']} relays shared): median {sec['exact_ms']:.3f} ms (value {sec['exact_value']:.12f}).",
            f"- Monte Carlo on the same paths: {sec['mc_rate']:.3g} relay samples/s "
            f"({sec['mc_samples']} samples x {sec['shared']} relays; estimate {sec['mc_value']:.5f}).", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000,100000")
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.md")))
    args = ap.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        print(f"[benchmarks] {n} nodes ...", flush=True)
        rows += bench_size(n, args.quick)
        for r in rows[-len(ALGORITHMS) - 1:]:
            print(f"  {r['what']:>16}: {r['median_ms']:.3f} ms" + (f"  (networkx {r['nx_ms']:.2f} ms, {r['ratio']:.1f}x)" if "ratio" in r else ""), flush=True)
    sec = bench_security(args.quick)
    print(f"[benchmarks] exact 16 paths {sec['exact_ms']:.3f} ms; Monte Carlo {sec['mc_rate']:.3g} relay samples/s")
    text = report(rows, sec, args, started, time.perf_counter() - t0)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"[benchmarks] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
