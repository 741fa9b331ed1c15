"""``python -m benchmarks.level_search [--networks 4] [--requests 40] [--out benchmarks/level_search.md]``.

What ``smr-level``'s wide search (issue 39, the default) gains over its successive search
(``search="successive"``, the routes of issue 23), request by request on the same networks:
for every request and level (0.5, 0.7, 0.9), both searches on the same frozen arrays. Per
network family:

- request-levels, those the successive search serves (meets the level), those the wide
  search serves, and the *newly served* (refused by the successive search, served by the
  wide one; the wide search never refuses what the successive one serves);
- among the request-levels both serve: how many the wide search serves with fewer bits, the
  bits saved in total (per cent of the successive search's bits on those request-levels, and
  on the ones it makes cheaper) and the largest saving on one request-level.

Families (seeded; ``--networks`` of each): sparse 30-node Waxman networks (``alpha=0.28``,
4 trusted relays), dense 60-node ones (``alpha=0.4``, 6 trusted), 120-node ones (12
trusted), all with ``p = 0.8`` and trusted relays at 1, and the topohub network
``sndlib/germany50`` with 5 trusted relays drawn per seed (offline, shipped with topohub).
Requests: distinct pairs drawn with ``numpy.random.default_rng(seed)``. Bits are hops (the
same ``B`` for both searches).
"""

from __future__ import annotations

import argparse

import numpy as np

from qkdseg import load
from qkdseg.routing import get_algorithm
from qkdseg.topology import waxman

from .level import report_head, write_report

LEVELS = (0.5, 0.7, 0.9)
FAMILIES = {
    "Waxman 30 nodes, sparse (alpha 0.28, 4 trusted)": lambda seed: waxman(30, trusted=4, p=0.8, alpha=0.28, seed=seed),
    "Waxman 60 nodes, dense (alpha 0.4, 6 trusted)": lambda seed: waxman(60, trusted=6, p=0.8, alpha=0.4, seed=seed),
    "Waxman 120 nodes (alpha 0.15, 12 trusted)": lambda seed: waxman(120, trusted=12, p=0.8, seed=seed),
    "topohub sndlib/germany50 (5 trusted)": lambda seed: load(f"topohub:sndlib/germany50?trusted=5&p=0.8&seed={seed}"),
}


def _hops(out) -> int | None:
    """Hops of a met route, None when the level is not met (or there is no path)."""
    _, paths, info = out
    if not info["met"] or not paths or any(len(seg) == 0 for seg in paths):
        return None
    return sum(len(p) - 1 for seg in paths for p in seg)


def family(make, networks: int, requests: int) -> dict:
    f = get_algorithm("smr-level").func
    row = {"levels": 0, "old": 0, "new": 0, "newly": 0, "both": 0, "cheaper": 0, "old_bits": 0, "saved": 0,
           "cheaper_bits": 0, "best": 0.0}
    for seed in range(1, networks + 1):
        a = make(seed).arrays
        rng = np.random.default_rng(seed)
        for _ in range(requests):
            s, d = (int(x) for x in rng.choice(a.n_nodes, size=2, replace=False))
            for eps in LEVELS:
                old = _hops(f(a, s, d, epsilon=eps, search="successive"))
                new = _hops(f(a, s, d, epsilon=eps))
                row["levels"] += 1
                if old is not None and (new is None or new > old):
                    raise AssertionError(f"the wide search is worse on {s}->{d} at {eps}: {new} against {old} hops")
                row["old"] += old is not None
                row["new"] += new is not None
                row["newly"] += old is None and new is not None
                if old is not None:
                    row["both"] += 1
                    row["old_bits"] += old
                    row["saved"] += old - new
                    if new < old:
                        row["cheaper"] += 1
                        row["cheaper_bits"] += old
                        row["best"] = max(row["best"], (old - new) / old)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.level_search")
    ap.add_argument("--networks", type=int, default=4, help="networks per family (seeds 1..N, default 4)")
    ap.add_argument("--requests", type=int, default=40, help="requests per network (default 40), each at 0.5, 0.7, 0.9")
    ap.add_argument("--out", default="benchmarks/level_search.md")
    args = ap.parse_args(argv)
    lines = report_head("smr-level: the wide search against the successive one", "benchmarks.level_search", argv) + [
             f"{args.networks} networks per family, {args.requests} requests per network, each at levels "
             f"{', '.join(map(str, LEVELS))}. Served: the route meets the level. Bits: hops x B, the same B.", "",
             "| family | request-levels | served (successive) | served (wide) | newly served | served by both, "
             "fewer bits | bits saved (of both-served) | bits saved (of those made cheaper) | largest saving |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, make in FAMILIES.items():
        r = family(make, args.networks, args.requests)
        share = r["saved"] / r["old_bits"] if r["old_bits"] else 0.0
        within = r["saved"] / r["cheaper_bits"] if r["cheaper_bits"] else 0.0
        lines.append(f"| {label} | {r['levels']} | {r['old']} | {r['new']} | {r['newly']} | "
                     f"{r['cheaper']} of {r['both']} ({r['cheaper'] / max(1, r['both']):.1%}) | {share:.1%} | "
                     f"{within:.1%} | {r['best']:.1%} |")
        print(lines[-1], flush=True)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
