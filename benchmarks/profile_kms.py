"""``python -m benchmarks.profile_kms [--n 2000]``: where the key service's time goes, without HTTP.

Runs ``n`` deliveries (``enc_keys`` of one 256-bit key, then ``dec_keys``)
straight on :class:`qkdseg.kms.KeyService` over the benchmark network of
:mod:`benchmarks.kms`, under cProfile, and prints the top entries by
cumulative and by own time, plus the mean time per delivery with and without
the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from qkdseg.kms.server import open_service
from qkdseg.server.etsi import Caller

from .kms import make_service


async def deliveries(svc, n: int, pairs: int = 16) -> None:
    async def pair(i: int) -> None:
        m, s = Caller(f"S{2 * i:02d}", "m"), Caller(f"S{2 * i + 1:02d}", "s")
        for _ in range(n // pairs):
            req = svc.parse_key_request(1, 256, None, None, None)
            out = await svc.enc_keys(m, s.sae, req)
            await svc.dec_keys(s, m.sae, [out["keys"][0]["key_ID"]])

    await asyncio.gather(*(pair(i) for i in range(pairs)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_service(Path(tmp) / "svc")
        svc = open_service(root)
        try:
            asyncio.run(deliveries(svc, 64))  # warm-up: numba kernels, first pools
            t = time.perf_counter()
            prof = cProfile.Profile()
            prof.enable()
            asyncio.run(deliveries(svc, args.n))
            prof.disable()
            wall = time.perf_counter() - t
            print(f"{args.n} deliveries in {wall:.2f} s under cProfile: {1000 * wall / args.n:.3f} ms each; "
                  f"{svc.committer.transactions} transactions so far")
            st = pstats.Stats(prof)
            st.sort_stats("cumulative").print_stats(args.top)
            st.sort_stats("tottime").print_stats(args.top)
        finally:
            svc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
