"""``python -m benchmarks.kms [--seconds 8] [--pairs 1,4,16] [--out benchmarks/kms_results.md]``.

Full key deliveries through the ETSI GS QKD 014 key service on loopback over
mutual TLS, with durability on (SQLite ``synchronous=FULL``): each delivery is
``enc_keys`` (one 256-bit key) by a master SAE, then ``dec_keys`` of that key
by its slave. 1, 4 and 16 SAE pairs run concurrently, each pair on its own
thread with keep-alive connections (``requests`` sessions, as the real
clients use), the threads spread over ``--client-procs`` processes (default
4): one client process's GIL would cap the floor near 500 deliveries/s.

In the same run, the **floor**: a bare ETSI 014 handler on the same server
stack (Starlette on uvicorn, the same TLS context and client-certificate
protocol), which returns random bytes with no routing and no storage.

The network: a seeded 100-node Waxman network (10 trusted relays, p = 0.9),
every link with a 10 Mb pool refilled at 10 Mb/s so that the benchmark
measures the service, not the network's key rate **[choice]**; 32 SAEs on
distinct random nodes; default security level 0.5.

Prints, per pair count: deliveries/s, p50 and p99 latency (ms) of a whole
delivery, the same for the floor, and the ratio; writes a Markdown table.

With ``--dashboard``, a second service (same network, its own directory)
runs with the operator dashboard (``--dashboard-port 0``) and one live
viewer reading its event stream, measured in the same run: the dashboard's
cost to the key service.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent


def make_service(root: Path, n_saes: int = 32) -> Path:
    """A service directory on the benchmark network (see the module docstring)."""
    import qkdseg
    from qkdseg.server.config import KmsConfig, write_config
    from qkdseg.server.pki import make_pki
    from qkdseg.server.storagekey import init_keys

    root.mkdir(parents=True, exist_ok=True)
    net = qkdseg.waxman(100, trusted=10, p=0.9, seed=3)
    g = net.graph.copy()
    for u, v in g.edges:
        g.edges[u, v]["pool_bits"] = 10_000_000
        g.edges[u, v]["rate_bps"] = 10_000_000
    qkdseg.write_network(qkdseg.Network(g, name="bench"), root / "net.json")
    nodes = np.random.default_rng(0).choice(net.n_nodes, n_saes, replace=False)
    ids = net.nodes
    saes = {f"S{i:02d}": str(ids[int(v)]) for i, v in enumerate(nodes)}
    cfg = KmsConfig(network=str(root / "net.json"), saes=saes, security_level=0.5, _dir=root)
    write_config(root, cfg.check())
    make_pki(root / "pki", list(saes), cfg.kme_id)
    init_keys(cfg)
    return root


def floor_app():
    """The floor: ETSI 014 routes that return random bytes, with no routing and no storage."""
    import base64

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from qkdseg.server.http import JSONResponse
    from qkdseg.server.frontend import _caller

    async def status(request: Request):
        _caller(request)
        return JSONResponse({"source_KME_ID": "K", "target_KME_ID": "K"})

    async def enc_keys(request: Request):
        _caller(request)
        await request.body()
        return JSONResponse({"keys": [{"key_ID": str(uuid.uuid4()), "key": base64.b64encode(secrets.token_bytes(32)).decode()}]})

    async def dec_keys(request: Request):
        _caller(request)
        await request.body()
        kid = request.query_params.get("key_ID", "")
        return JSONResponse({"keys": [{"key_ID": kid, "key": base64.b64encode(secrets.token_bytes(32)).decode()}]})

    return Starlette(routes=[
        Route("/api/v1/keys/{sae}/status", status, methods=["GET"]),
        Route("/api/v1/keys/{sae}/enc_keys", enc_keys, methods=["GET", "POST"]),
        Route("/api/v1/keys/{sae}/dec_keys", dec_keys, methods=["GET", "POST"]),
    ])


def serve_floor(directory: str) -> None:
    """Run the floor server on a free port of 127.0.0.1 (prints the URL like ``qkdseg kms serve``)."""
    import socket

    import uvicorn

    from qkdseg.server.http import PeerCertH11Protocol
    from qkdseg.server.config import load_config
    from qkdseg.kms.server import _server_class
    from qkdseg.server.tls import tls_context

    cfg = load_config(directory)
    ctx = tls_context(cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(floor_app(), http=PeerCertH11Protocol, ssl_context_factory=lambda c, d: ctx,
                            ssl_certfile=str(cfg.path(cfg.cert)), access_log=False, log_level="warning")
    print(f"floor: ETSI GS QKD 014 on https://127.0.0.1:{sock.getsockname()[1]}/api/v1/keys/", flush=True)
    _server_class()(config).run(sockets=[sock])


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "on https://127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split("/")[0])
                import socket

                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return proc, port
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(port: int, root: Path, pair_ids: list[int], warmup: float, seconds: float, start_at: float) -> tuple:
    """Threads for ``pair_ids`` delivering keys from ``start_at`` (Unix time) for ``warmup + seconds``.

    Returns (latencies of the measured deliveries, errors, all deliveries, this process's CPU seconds).
    """
    ca = str(root / "pki" / "ca.crt")
    base = f"https://127.0.0.1:{port}/api/v1/keys"
    lat: list[float] = []
    errors = [0]
    total = [0]
    lock = threading.Lock()
    measure_from, stop_at = start_at + warmup, start_at + warmup + seconds

    def worker(i: int) -> None:
        m, s = f"S{2 * i:02d}", f"S{2 * i + 1:02d}"
        ms, ss = requests.Session(), requests.Session()
        ms.cert = (str(root / "pki" / f"{m}.crt"), str(root / "pki" / f"{m}.key"))
        ss.cert = (str(root / "pki" / f"{s}.crt"), str(root / "pki" / f"{s}.key"))
        mine = []
        done = 0
        time.sleep(max(0.0, start_at - time.time()))
        while True:
            t0 = time.time()
            if t0 >= stop_at:
                break
            r = ms.post(f"{base}/{s}/enc_keys", json={"number": 1, "size": 256}, verify=ca, timeout=30)
            if r.status_code != 200:
                with lock:
                    errors[0] += 1
                continue
            kid = r.json()["keys"][0]["key_ID"]
            r2 = ss.get(f"{base}/{m}/dec_keys", params={"key_ID": kid}, verify=ca, timeout=30)
            t1 = time.time()
            if r2.status_code != 200:
                with lock:
                    errors[0] += 1
                continue
            done += 1
            if t0 >= measure_from:
                mine.append(t1 - t0)
        with lock:
            lat.extend(mine)
            total[0] += done

    c0 = time.process_time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in pair_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], total[0], time.process_time() - c0


def run_load(port: int, root: Path, pairs: int, seconds: float, warmup: float = 1.0, server_pid: int | None = None,
             procs: int = 1) -> dict:
    """``pairs`` threads, each delivering keys between its own two SAEs for ``seconds``; returns rate and latencies.

    With ``procs`` > 1 the pairs are spread over that many client processes
    (a GIL of their own each). With ``server_pid``, also the server's and the
    clients' CPU time per delivery, ms, over the whole run, warm-up included.
    """
    procs = max(1, min(procs, pairs))
    chunks = [list(range(pairs))[k::procs] for k in range(procs)]
    s0 = cpu_seconds(server_pid) if server_pid else float("nan")
    if procs == 1:
        parts = [_drive(port, root, chunks[0], warmup, seconds, time.time() + 0.05)]
    else:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as ex:
            start_at = time.time() + 3.0  # time for the processes to start and import
            parts = list(ex.map(_drive, [port] * procs, [root] * procs, chunks, [warmup] * procs,
                                [seconds] * procs, [start_at] * procs))
    s1 = cpu_seconds(server_pid) if server_pid else float("nan")
    lat = sorted(x for part in parts for x in part[0])
    total = sum(part[2] for part in parts)
    return {
        "pairs": pairs,
        "procs": procs,
        "deliveries": len(lat),
        "rate": len(lat) / seconds,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "errors": sum(part[1] for part in parts),
        "server_cpu_ms": 1000 * (s1 - s0) / max(1, total),
        "client_cpu_ms": 1000 * sum(part[3] for part in parts) / max(1, total),
    }


class Viewer(threading.Thread):
    """One dashboard viewer: reads the server-sent events of ``url`` and counts them, until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.bytes = url, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        with requests.get(self.url + "api/events", stream=True, timeout=30) as r:
            for line in r.iter_lines():
                if self.stop.is_set():
                    break
                self.bytes += len(line)
                if line.startswith(b"event:"):
                    self.events += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point (after 1 s of warm-up)")
    ap.add_argument("--pairs", default="1,4,16")
    ap.add_argument("--out", default=str(HERE / "kms_results.md"))
    ap.add_argument("--dashboard", action="store_true", help="also measure a service with its dashboard and a viewer")
    ap.add_argument("--client-procs", type=int, default=4,
                    help="client processes the pairs are spread over (at most one per pair; 1: threads of this "
                         "process, whose GIL then caps the floor near 500/s)")
    ap.add_argument("--floor-server", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.floor_server:
        serve_floor(args.floor_server)
        return 0
    pair_counts = [int(x) for x in args.pairs.split(",")]
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_service(Path(tmp) / "svc")
        qkdseg_bin = str(Path(sys.executable).with_name("qkdseg"))
        kms, kport = start([qkdseg_bin, "kms", "serve", str(root), "--port", "0"], Path(tmp) / "kms.log")
        floor, fport = start([sys.executable, "-m", "benchmarks.kms", "--floor-server", str(root)], Path(tmp) / "floor.log")
        procs = [kms, floor]
        dash_rows = []
        try:
            if args.dashboard:
                root2 = make_service(Path(tmp) / "svc-dash")
                dlog = Path(tmp) / "kms-dash.log"
                kms2, kport2 = start([qkdseg_bin, "kms", "serve", str(root2), "--port", "0", "--dashboard-port", "0"],
                                     dlog)
                procs.append(kms2)
                durl = next(line.split("dashboard on ")[1].split()[0] for line in dlog.read_text().splitlines()
                            if "dashboard on http" in line)
            for pairs in pair_counts:  # interleaved: service, floor (and service with dashboard), at each pair count
                svc = run_load(kport, root, pairs, args.seconds, server_pid=kms.pid, procs=args.client_procs)
                flo = run_load(fport, root, pairs, args.seconds, server_pid=floor.pid, procs=args.client_procs)
                rows.append((svc, flo))
                print(f"{pairs:>3} pairs: service {svc['rate']:7.1f}/s p50 {svc['p50_ms']:6.2f} ms p99 {svc['p99_ms']:6.2f} ms"
                      f" ({svc['errors']} errors) | floor {flo['rate']:7.1f}/s p50 {flo['p50_ms']:6.2f} ms "
                      f"p99 {flo['p99_ms']:6.2f} ms | ratio {svc['rate'] / flo['rate']:.2f} | server CPU per delivery "
                      f"{svc['server_cpu_ms']:.3f} ms (floor {flo['server_cpu_ms']:.3f}); client CPU "
                      f"{svc['client_cpu_ms']:.3f} ms (floor {flo['client_cpu_ms']:.3f})", flush=True)
                if args.dashboard:
                    viewer = Viewer(durl)
                    viewer.start()
                    dsh = run_load(kport2, root2, pairs, args.seconds, server_pid=kms2.pid, procs=args.client_procs)
                    viewer.stop.set()
                    dsh["events"] = viewer.events
                    dash_rows.append((svc, dsh))
                    print(f"{pairs:>3} pairs: service with dashboard and a viewer {dsh['rate']:7.1f}/s p50 "
                          f"{dsh['p50_ms']:6.2f} ms p99 {dsh['p99_ms']:6.2f} ms ({viewer.events} events seen) | "
                          f"ratio to the service alone {dsh['rate'] / svc['rate']:.2f}", flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    lines = [
        "# Key service benchmark (`python -m benchmarks.kms`)",
        "",
        f"{_dt.date.today().isoformat()}, {platform.node() or 'host'}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; `python -m benchmarks.kms --seconds {args.seconds:g} --pairs {args.pairs}"
        f"{' --dashboard' if args.dashboard else ''} --client-procs {args.client_procs}`.",
        "Full deliveries (enc_keys then dec_keys, one 256-bit key) on loopback over mutual TLS, durability on "
        "(SQLite synchronous=FULL); clients and server share the machine. "
        f"1-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it.",
        "",
        "| pairs | deliveries/s | p50 ms | p99 ms | errors | floor deliveries/s | floor p50 ms | floor p99 ms | ratio "
        "| server CPU ms/delivery | floor server CPU ms/delivery | client CPU ms/delivery (service, floor) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for svc, flo in rows:
        lines.append(f"| {svc['pairs']} | {svc['rate']:.1f} | {svc['p50_ms']:.2f} | {svc['p99_ms']:.2f} | {svc['errors']} | "
                     f"{flo['rate']:.1f} | {flo['p50_ms']:.2f} | {flo['p99_ms']:.2f} | {svc['rate'] / flo['rate']:.2f} | "
                     f"{svc['server_cpu_ms']:.3f} | {flo['server_cpu_ms']:.3f} | "
                     f"{svc['client_cpu_ms']:.3f}, {flo['client_cpu_ms']:.3f} |")
    lines += [
        "",
        f"The clients run in {args.client_procs} process(es) (`--client-procs`; at most one per pair), a thread "
        "per pair, `requests` over TLS: about 1.5-1.7 ms of client CPU per delivery. With one client process its "
        "GIL caps the floor near 500/s (2.0-2.4 ms of client CPU per delivery with 4 or more threads), so the floor "
        "then measures the client; the server CPU per delivery is the comparison that holds either way.",
    ]
    if dash_rows:
        lines += [
            "",
            "With the operator dashboard (`--dashboard`): a second service on the same network with "
            "`--dashboard-port 0` and one viewer reading its event stream, in the same run.",
            "",
            "| pairs | deliveries/s | p50 ms | p99 ms | errors | events seen | ratio to the service alone "
            "| server CPU ms/delivery (alone: see above) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for svc, dsh in dash_rows:
            lines.append(f"| {dsh['pairs']} | {dsh['rate']:.1f} | {dsh['p50_ms']:.2f} | {dsh['p99_ms']:.2f} | "
                         f"{dsh['errors']} | {dsh['events']} | {dsh['rate'] / svc['rate']:.2f} | "
                         f"{dsh['server_cpu_ms']:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
