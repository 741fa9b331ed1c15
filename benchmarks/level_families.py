"""``python -m benchmarks.level_families [--requests 200] [--duration 10] [--replications 3] [--quick]``

Where ``smr-level``'s gain over ``disjoint`` holds (issue 39 item 3): per
network family and link-rate model, with the current ``smr-level`` search.

1. **Static** (one request at a time on full pools, as ``qkdseg reproduce``):
   epsilon-key bits per consumed bit, ``sum(key bits) / sum(consumed bits)``
   over each algorithm's served requests, of ``smr-level`` and of
   ``disjoint-subset`` (the fewest-hop subset of ``disjoint``'s own paths
   meeting the level; :func:`qkdseg.experiments.level.cheapest_subset`) over
   ``disjoint``'s full route (key bits from the ``paper`` reconstruction), with
   95% bootstrap intervals (requests resampled, 1000 times, seed 0); and the
   share of the requests both serve where a segment chain makes ``smr-level``
   cheaper than the subset. Families: the paper's 100-node Waxman (alpha
   0.15, beta 0.5, 10 trusted relays; a fresh network per request, seeds
   ``trial_seed(0, t)`` and pairs as ``qkdseg reproduce``), a sparse
   150-node Waxman (alpha 0.1, beta 0.4, 15 trusted) and a dense 60-node one
   (alpha 0.4, beta 0.6, 6 trusted), both drawn the same way, and the Topology
   Zoo's Uninett2010 and TataNld (``load_topohub(key, trusted=0.1, p=0.8,
   seed=0)``, random pairs in the largest component). Untrusted relays at p = 0.8.
2. **Under load**: ``run_load_sweep`` at 640 requests/s, 10 kb keys at
   epsilon 0.9, ``--duration`` s, ``--replications`` replications (the trace
   seeds of ``qkdseg simulate --seed 0``), for ``disjoint``, ``smr-level``,
   ``smr`` and ``least-loaded``: served keys of ``smr-level`` over
   ``disjoint`` (mean of the per-replication ratios, and their range), and
   every algorithm's blocking ratio, on the quick start's network
   (``waxman(100, trusted=10, p=0.8, seed=7)``, links 100 kb/s), the same
   with ``--rates physics`` (docs/model.md 8a), Waxman seeds 1 and 2, and
   TataNld.

Writes ``benchmarks/level_families.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np

import qkdseg
from qkdseg.api import route_indices
from qkdseg.experiments.level import cheapest_subset
from qkdseg.experiments.simulation import run_load_sweep
from qkdseg.experiments.spec import trial_seed
from qkdseg.experiments.trials import request_pair
from qkdseg.reconstruction import paper_key_counts
from qkdseg.topology.physics import apply_physics_rates

from .__main__ import machine

EPSILONS = (0.5, 0.9)
WAXMAN = {"paper: Waxman n=100, alpha 0.15, beta 0.5, T=10": dict(n=100, trusted=10),
          "sparse: Waxman n=150, alpha 0.1, beta 0.4, T=15": dict(n=150, trusted=15, alpha=0.1, beta=0.4),
          "dense: Waxman n=60, alpha 0.4, beta 0.6, T=6": dict(n=60, trusted=6, alpha=0.4, beta=0.6)}
ZOO = ("topozoo/Uninett2010", "topozoo/TataNld")


def _requests(label: str, count: int):
    """``(network, s, d)`` per request of a family."""
    if label in WAXMAN:
        kw = dict(WAXMAN[label])
        n = kw.pop("n")
        for t in range(count):
            seed = trial_seed(0, t)
            yield qkdseg.waxman(n, p=0.8, seed=seed, **kw), *request_pair(seed, n)
        return
    net = qkdseg.load_topohub(label, trusted=0.1, p=0.8, seed=0)
    a = net.arrays
    comp = max(nx.connected_components(net.graph), key=len)
    members = np.array(sorted(a.index[v] for v in comp))
    rng = np.random.default_rng([0, 2])
    for _ in range(count):
        s, d = (int(x) for x in rng.choice(members, size=2, replace=False))
        yield net, s, d


def static_rows(label: str, count: int) -> list[dict]:
    rows = []
    for net, s, d in _requests(label, count):
        a = net.arrays
        full = route_indices(a, s, d, "disjoint")
        paths = [list(q) for q in full.index_paths[0]] if not full.blocked else []
        counts = paper_key_counts(a.p, [paths], [], EPSILONS) if paths else [0] * len(EPSILONS)
        for eps, c in zip(EPSILONS, counts):
            r = route_indices(a, s, d, "smr-level", epsilon=eps)
            met = not r.blocked and r.level["met"]
            sub = cheapest_subset(a.p, paths, eps) if paths else None
            rows.append({"eps": eps, "full_key": c * full.block_bits, "full_used": full.consumed_bits if c else 0,
                         "sub_key": full.block_bits if sub else 0,
                         "sub_used": sum(len(q) - 1 for q in sub[0]) * full.block_bits if sub else 0,
                         "lvl_key": r.block_bits if met else 0, "lvl_used": r.consumed_bits if met else 0,
                         "segments": len(r.segments)})
    return rows


def _ratio(d, num: str, den: str = "full") -> float:
    return (d[f"{num}_key"].sum() / d[f"{num}_used"].sum()) / (d[f"{den}_key"].sum() / d[f"{den}_used"].sum())


def _boot(d, num: str, rng) -> tuple[float, float]:
    n = len(d)
    vals = []
    for _ in range(1000):
        b = d.iloc[rng.integers(0, n, n)]
        if b["full_used"].sum() > 0 and b[f"{num}_used"].sum() > 0:
            vals.append(_ratio(b, num))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def static_table(labels, count: int) -> list[str]:
    import pandas as pd

    lines = ["## 1. Static: epsilon-key bits per consumed bit over `disjoint`'s full route", "",
             f"{count} requests per family; served counts out of {count}; 95% bootstrap intervals in brackets. "
             "Bits saved: 1 - (bits consumed) / (bits of `disjoint`'s full route), summed over the requests that `disjoint`, "
             "the subset and `smr-level` all serve. \"chain cheaper\": requests served by both `smr-level` and `disjoint-subset` where `smr-level` consumes "
             "fewer bits (only a segment chain can do that).", "",
             "| family | ε | served disjoint / subset / smr-level | disjoint-subset / disjoint | smr-level / disjoint "
             "| bits saved on the requests all three serve: subset / smr-level | chain cheaper |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        t0 = time.perf_counter()
        df = pd.DataFrame(static_rows(label, count))
        for eps in EPSILONS:
            d = df[df["eps"] == eps]
            rng = np.random.default_rng(0)
            served = [int((d[f"{k}_key"] > 0).sum()) for k in ("full", "sub", "lvl")]
            if min(served) == 0:
                lines.append(f"| {label} | {eps:g} | {' / '.join(map(str, served))} | - | - | - | - |")
                continue
            both = d[(d["sub_key"] > 0) & (d["lvl_key"] > 0)]
            cheaper = both["lvl_used"] < both["sub_used"]
            three = both[both["full_key"] > 0]
            saved = [1 - three[f"{k}_used"].sum() / three["full_used"].sum() for k in ("sub", "lvl")]
            lo_s, hi_s = _boot(d, "sub", rng)
            lo_l, hi_l = _boot(d, "lvl", rng)
            lines.append(f"| {label} | {eps:g} | {' / '.join(map(str, served))} | {_ratio(d, 'sub'):.2f}x "
                         f"[{lo_s:.2f}, {hi_s:.2f}] | {_ratio(d, 'lvl'):.2f}x [{lo_l:.2f}, {hi_l:.2f}] | "
                         f"{100 * saved[0]:.1f}% / {100 * saved[1]:.1f}% | {int(cheaper.sum())} of {len(both)} ({100 * cheaper.mean():.1f}%) |")
        print(label, f"{time.perf_counter() - t0:.1f} s", flush=True)
    return lines + [""]


def _networks():
    quick = qkdseg.waxman(100, trusted=10, p=0.8, seed=7)
    phys = qkdseg.waxman(100, trusted=10, p=0.8, seed=7)
    span = apply_physics_rates(phys)
    return [("quick start: waxman(100, trusted=10, p=0.8, seed=7), links 100 kb/s", quick),
            (f"the same, --rates physics ({span['min'] / 1000:.1f}-{span['max'] / 1000:.1f} kb/s)", phys),
            ("waxman(100, trusted=10, p=0.8, seed=1)", qkdseg.waxman(100, trusted=10, p=0.8, seed=1)),
            ("waxman(100, trusted=10, p=0.8, seed=2)", qkdseg.waxman(100, trusted=10, p=0.8, seed=2)),
            ("topozoo/TataNld (trusted 10%, p = 0.8, seed 0)", qkdseg.load_topohub("topozoo/TataNld", trusted=0.1, p=0.8,
                                                                                    seed=0))]


def load_table(duration: float, replications: int, workers: int | None) -> list[str]:
    algs = ("disjoint", "smr-level", "smr", "least-loaded")
    lines = ["## 2. Under load: 640 requests/s, 10 kb keys at ε = 0.9", "",
             f"{replications} replications of {duration:g} s per network (trace seeds `trial_seed(0, r)`), pools 100 kb. "
             "Served keys of `smr-level` over `disjoint`: the mean of the per-replication ratios (their range). "
             "Blocking ratio: blocked / requests, mean over replications.", "",
             "| network | requests per run | smr-level / disjoint served | blocking disjoint | smr-level | smr "
             "| least-loaded |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, net in _networks():
        t0 = time.perf_counter()
        df, _ = run_load_sweep(net, [640.0], duration=duration, replications=replications, algorithms=algs,
                               key_bits=10_000, epsilon=0.9, seed=0, workers=workers, progress=False)
        w = df.pivot(index="replication", columns="algorithm", values="served")
        ratio = w["smr-level"] / w["disjoint"]
        block = df.groupby("algorithm")["blocking"].mean()
        lines.append(f"| {label} | {df['requests'].mean():.0f} | {ratio.mean():.2f}x ({ratio.min():.2f}-{ratio.max():.2f}) | "
                     + " | ".join(f"{block[a]:.3f}" for a in algs) + " |")
        print(label, f"{time.perf_counter() - t0:.1f} s", flush=True)
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.level_families")
    ap.add_argument("--requests", type=int, default=200, help="static requests per family (default 200)")
    ap.add_argument("--duration", type=float, default=10.0, help="simulated seconds per load run (default 10)")
    ap.add_argument("--replications", type=int, default=3, help="load runs per network (default 3)")
    ap.add_argument("--workers", type=int, default=None, help="processes for the load runs (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="20 requests, 1 replication of 2 s")
    ap.add_argument("--out", default="benchmarks/level_families.md")
    args = ap.parse_args(argv)
    count, duration, reps = (20, 2.0, 1) if args.quick else (args.requests, args.duration, args.replications)
    started = time.perf_counter()
    lines = ["# Where smr-level's gain over disjoint holds", "",
             f"Command: `python -m benchmarks.level_families {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
             f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "", machine(), "",
             "The current `smr-level` search (src/qkdseg/routing/smr_level.py at this commit). What each number means: "
             "the module docstring of benchmarks/level_families.py.", ""]
    lines += static_table([*WAXMAN, *ZOO], count)
    lines += load_table(duration, reps, args.workers)
    lines += [f"Wall time {time.perf_counter() - started:.0f} s; load average after: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg())]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
