"""``python -m benchmarks.dashboard [--n 1600] [--repeats 5]``: what the operator dashboard costs the key service.

Runs ``n`` deliveries (``enc_keys`` of one 256-bit key, then ``dec_keys``;
16 SAE pairs at once) straight on :class:`qkdseg.kms.KeyService` over the
benchmark network of :mod:`benchmarks.kms`, without HTTP, alternately:

- **alone**: the service as ``qkdseg kms serve`` runs it without a dashboard;
- **watched**: with a :class:`qkdseg.kms.monitor.Monitor` observing it, its
  push loop running, and one live viewer that takes every event from its
  queue and encodes it as the event stream does.

Prints the medians over ``repeats`` of the process CPU time and the wall
time per delivery, and their ratio watched / alone. CPU time is the
measure: the event loop is single-threaded, so the dashboard's CPU is what
it takes from the key service (wall time mostly waits on fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from qkdseg.server.monitor import Monitor
from qkdseg.kms.server import open_service

from .kms import make_service
from .profile_kms import deliveries


async def _watched(svc, n: int) -> int:
    mon = Monitor(svc)
    q = mon.subscribe()
    sent = 0

    async def viewer() -> None:
        nonlocal sent
        while True:
            event, text = await q.get()  # encoded once by the monitor, as the event stream writes it
            sent += len(text)

    tasks = [asyncio.ensure_future(mon.run()), asyncio.ensure_future(viewer())]
    try:
        await deliveries(svc, n)
    finally:
        mon.close()
        for t in tasks:
            t.cancel()
    return sent


def measure(svc, n: int, watched: bool) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    if watched:
        asyncio.run(_watched(svc, n))
    else:
        asyncio.run(deliveries(svc, n))
    return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1600, help="deliveries per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        svc = open_service(make_service(Path(tmp) / "svc"))
        try:
            asyncio.run(deliveries(svc, 64))  # warm-up: numba kernels, first pools
            res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for watched in (False, True):
                    res[watched].append(measure(svc, args.n, watched))
        finally:
            svc.close()
    med = {w: (statistics.median(c for c, _ in r), statistics.median(t for _, t in r)) for w, r in res.items()}
    print(f"{args.n} deliveries x {args.repeats} repeats, 16 pairs, no HTTP; medians per delivery:")
    print(f"  alone:   CPU {1000 * med[False][0]:.3f} ms, wall {1000 * med[False][1]:.3f} ms")
    print(f"  watched: CPU {1000 * med[True][0]:.3f} ms, wall {1000 * med[True][1]:.3f} ms")
    print(f"  ratio watched / alone: CPU {med[True][0] / med[False][0]:.3f}, wall {med[True][1] / med[False][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
