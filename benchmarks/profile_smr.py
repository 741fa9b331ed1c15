"""cProfile of SMR at 100 nodes: ``python -m benchmarks.profile_smr [N_REQUESTS]``.

Prints the top entries by internal time for N requests (default 300) on the
100-node Waxman network of the benchmark; benchmarks/PROFILE.md records its
output before and after the performance work.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time

import numpy as np

from qkdseg.routing.smr import smr
from qkdseg.topology import waxman


def main(count: int = 300) -> str:
    net = waxman(100, trusted=10, p=0.8, seed=1)
    arrays = net.arrays
    removed = arrays.pool_bits <= 0
    rng = np.random.default_rng(0)
    pairs = [tuple(int(x) for x in rng.choice(100, 2, replace=False)) for _ in range(count)]
    for s, d in pairs[:20]:
        smr(arrays, s, d, removed_links=removed)
    t = time.perf_counter()
    for s, d in pairs:
        smr(arrays, s, d, removed_links=removed)
    per = (time.perf_counter() - t) / count
    prof = cProfile.Profile()
    prof.enable()
    for s, d in pairs:
        smr(arrays, s, d, removed_links=removed)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    return f"{count} requests, {per * 1e3:.3f} ms per request without the profiler\n" + "\n".join(lines[2:])


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
