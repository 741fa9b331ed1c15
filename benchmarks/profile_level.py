"""cProfile of ``smr-level`` at 100 nodes: ``python -m benchmarks.profile_level [N_REQUESTS]``.

The requests of ``python -m benchmarks.level`` on its 100-node network (``waxman(100,
trusted=10, p=0.8, seed=1)``, epsilon 0.9, the first N of its seeded pairs, default 1000): one
pass with the profiler, on a fresh process (what a segment's candidates cost the first time
included, as in that benchmark), then the median CPU time per request of ``smr`` and
``smr-level`` without it, interleaved, on the same pairs a second time. Prints the top entries
by internal time; benchmarks/PROFILE.md records its output before and after issue 39's speed-up.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time

import numpy as np

from qkdseg.routing import get_algorithm
from qkdseg.topology import waxman


def main(count: int = 1000) -> str:
    arrays = waxman(100, trusted=10, p=0.8, seed=1).arrays
    removed = arrays.pool_bits <= 0
    rng = np.random.default_rng(0)
    pairs = [tuple(int(x) for x in rng.choice(arrays.n_nodes, size=2, replace=False)) for _ in range(count)]
    smr, level = get_algorithm("smr").func, get_algorithm("smr-level").func
    smr(arrays, *pairs[0], removed_links=removed)
    level(arrays, *pairs[0], removed_links=removed, epsilon=0.9)  # loads the compiled kernels
    prof = cProfile.Profile()
    prof.enable()
    for s, d in pairs:
        level(arrays, s, d, removed_links=removed, epsilon=0.9)
    prof.disable()
    cpu: dict[str, list[float]] = {"smr": [], "smr-level": []}
    for s, d in pairs:
        for name, run in (("smr", lambda: smr(arrays, s, d, removed_links=removed)),
                          ("smr-level", lambda: level(arrays, s, d, removed_links=removed, epsilon=0.9))):
            t = time.process_time()
            run()
            cpu[name].append(time.process_time() - t)
    base, mine = statistics.median(cpu["smr"]), statistics.median(cpu["smr-level"])
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    return (f"{count} requests; CPU median per request without the profiler (second pass): smr {base * 1e3:.3f} ms, "
            f"smr-level {mine * 1e3:.3f} ms ({mine / base:.2f}x)\n" + "\n".join(lines[2:]))


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
