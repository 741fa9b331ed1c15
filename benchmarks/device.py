"""``python -m benchmarks.device [--seconds 8] [--pairs 4] [--procs 2]``: the device feed's cost to the key service.

The same key deliveries as :mod:`benchmarks.kms` (``enc_keys`` of one 256-bit
key by a master SAE, then ``dec_keys`` by its slave, over mutual TLS with
``synchronous=FULL``), in one run against two services on the same network:

- ``emulated``: ``link_source = "emulated"`` (the links' ``rate_bps``);
- ``device``: ``link_source = "device"``, every link fed by ``qkdseg device
  serve`` (its own process) over ETSI 014: the service's fetch loops call the
  emulator while the deliveries run.

The network is :mod:`benchmarks.kms`'s 100-node Waxman network with 16 SAE
pairs, but every link's pool is 16384 bits (64 device keys of 256 bits) so
that the device feed must keep refilling during the run; the links' rate
is 10 Mb/s in both (the emulator's device buffers too). Prints
deliveries/s, p50/p99 latency and the refusals of each, and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .kms import run_load, start

POOL = 16384


def make(root: Path, link_source: str, n_saes: int = 32) -> Path:
    import qkdseg
    from qkdseg.server.config import KmsConfig, write_config
    from qkdseg.devices.emulator import init_devices
    from qkdseg.server.pki import make_pki
    from qkdseg.server.storagekey import init_keys
    from qkdseg.topology import load

    root.mkdir(parents=True, exist_ok=True)
    net = qkdseg.waxman(100, trusted=10, p=0.9, seed=3)
    g = net.graph.copy()
    for u, v in g.edges:
        g.edges[u, v]["pool_bits"] = POOL
        g.edges[u, v]["rate_bps"] = 10_000_000
    qkdseg.write_network(qkdseg.Network(g, name="bench"), root / "net.json")
    nodes = np.random.default_rng(0).choice(net.n_nodes, n_saes, replace=False)
    ids = net.nodes
    saes = {f"S{i:02d}": str(ids[int(v)]) for i, v in enumerate(nodes)}
    cfg = KmsConfig(network=str(root / "net.json"), saes=saes, security_level=0.5, _dir=root)
    if link_source == "device":
        _, cfg.device_links = init_devices(root / "devices", load(str(root / "net.json")), str(root / "net.json"))
        cfg.link_source = "device"
    write_config(root, cfg.check())
    make_pki(root / "pki", list(saes), cfg.kme_id)
    init_keys(cfg)
    return root


def _wait_full(root: Path, links: int, timeout: float = 120.0) -> float:
    """Seconds until every link holds a full pool of device keys (the initial fill)."""
    import sqlite3
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            db = sqlite3.connect(f"file:{root / 'kms.sqlite3'}?mode=ro", uri=True)
            rows = db.execute("SELECT k, SUM(nbytes - used) FROM device_keys WHERE state='held' GROUP BY k").fetchall()
            db.close()
        except sqlite3.Error:
            rows = []
        if len(rows) == links and all(8 * b >= POOL for _, b in rows):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError("the pools did not fill from the devices")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args(argv)
    import sys

    qkdseg_bin = str(Path(sys.executable).with_name("qkdseg"))
    tmp = Path(tempfile.mkdtemp(prefix="qkdseg-bench-device-"))
    procs = []
    out = {}
    try:
        for mode in ("emulated", "device"):
            root = make(tmp / mode, mode)
            if mode == "device":
                dev, _ = start([qkdseg_bin, "device", "serve", str(root / "devices")], root / "device.log")
                procs.append(dev)
            srv, port = start([qkdseg_bin, "kms", "serve", str(root), "--port", "0"], root / "server.log")
            procs.append(srv)
            fill = None
            if mode == "device":
                from qkdseg.topology import load

                fill = _wait_full(root, load(str(root / "net.json")).arrays.n_links)
            res = run_load(port, root, args.pairs, args.seconds, server_pid=srv.pid, procs=args.procs)
            res["fill_s"] = fill
            out[mode] = res
            srv.terminate()
            srv.wait(timeout=60)
        for mode, r in out.items():
            fill = f", initial fill {r['fill_s']:.1f} s" if r["fill_s"] is not None else ""
            print(f"{mode:9s} {r['rate']:7.1f} deliveries/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                  f"refused {r['errors']}  server CPU {r['server_cpu_ms']:.2f} ms/delivery{fill}")
        print(f"device / emulated: {out['device']['rate'] / out['emulated']['rate']:.3f} of the deliveries/s "
              f"({args.pairs} pairs, {args.seconds:g} s each, {args.procs} client processes)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except Exception:  # noqa: BLE001
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
