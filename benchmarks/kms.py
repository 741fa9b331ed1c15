"""``python -m benchmarks.kms [--seconds 8] [--pairs 1,4,16] [--out benchmarks/kms_results.md]``.

Full key deliveries through the ETSI GS QKD 014 key service on loopback over
mutual TLS, with durability on (SQLite ``synchronous=FULL``): each delivery is
``enc_keys`` (one 256-bit key) by a master SAE, then ``dec_keys`` of that key
by its slave. 1, 4 and 16 SAE pairs run concurrently, each pair on its own
thread with keep-alive connections (``requests`` sessions, as the real
clients use).

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
    from qkdseg.kms.config import KmsConfig, write_config
    from qkdseg.kms.pki import make_pki
    from qkdseg.kms.store import load_or_make_storage_key

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
    load_or_make_storage_key(root / "storage.key")
    return root


def floor_app():
    """The floor: ETSI 014 routes that return random bytes, with no routing and no storage."""
    import base64

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from qkdseg.kms.app import JSONResponse, _caller

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

    from qkdseg.kms.app import PeerCertH11Protocol
    from qkdseg.kms.config import load_config
    from qkdseg.kms.server import _server_class, tls_context

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


def run_load(port: int, root: Path, pairs: int, seconds: float, warmup: float = 1.0, server_pid: int | None = None) -> dict:
    """``pairs`` threads, each delivering keys between its own two SAEs for ``seconds``; returns rate and latencies.

    With ``server_pid``, also the server's and this (client) process's CPU
    time per delivery, ms, over the whole run, warm-up included.
    """
    ca = str(root / "pki" / "ca.crt")
    base = f"https://127.0.0.1:{port}/api/v1/keys"
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    go = threading.Barrier(pairs + 1)
    stop_at = [0.0]
    measure_from = [0.0]
    total = [0]

    def worker(i: int) -> None:
        m, s = f"S{2 * i:02d}", f"S{2 * i + 1:02d}"
        ms, ss = requests.Session(), requests.Session()
        ms.cert = (str(root / "pki" / f"{m}.crt"), str(root / "pki" / f"{m}.key"))
        ss.cert = (str(root / "pki" / f"{s}.crt"), str(root / "pki" / f"{s}.key"))
        mine = []
        done = 0
        go.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            r = ms.post(f"{base}/{s}/enc_keys", json={"number": 1, "size": 256}, verify=ca, timeout=30)
            if r.status_code != 200:
                with lock:
                    errors[0] += 1
                continue
            kid = r.json()["keys"][0]["key_ID"]
            r2 = ss.get(f"{base}/{m}/dec_keys", params={"key_ID": kid}, verify=ca, timeout=30)
            t1 = time.perf_counter()
            if r2.status_code != 200:
                with lock:
                    errors[0] += 1
                continue
            done += 1
            if t0 >= measure_from[0]:
                mine.append(t1 - t0)
        with lock:
            lat.extend(mine)
            total[0] += done

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(pairs)]
    for t in threads:
        t.start()
    s0, c0 = (cpu_seconds(server_pid) if server_pid else float("nan")), time.process_time()
    now = time.perf_counter()
    measure_from[0] = now + warmup
    stop_at[0] = now + warmup + seconds
    go.wait()
    for t in threads:
        t.join()
    s1, c1 = (cpu_seconds(server_pid) if server_pid else float("nan")), time.process_time()
    lat.sort()
    return {
        "pairs": pairs,
        "deliveries": len(lat),
        "rate": len(lat) / seconds,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "errors": errors[0],
        "server_cpu_ms": 1000 * (s1 - s0) / max(1, total[0]),
        "client_cpu_ms": 1000 * (c1 - c0) / max(1, total[0]),
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
                svc = run_load(kport, root, pairs, args.seconds, server_pid=kms.pid)
                flo = run_load(fport, root, pairs, args.seconds, server_pid=floor.pid)
                rows.append((svc, flo))
                print(f"{pairs:>3} pairs: service {svc['rate']:7.1f}/s p50 {svc['p50_ms']:6.2f} ms p99 {svc['p99_ms']:6.2f} ms"
                      f" ({svc['errors']} errors) | floor {flo['rate']:7.1f}/s p50 {flo['p50_ms']:6.2f} ms "
                      f"p99 {flo['p99_ms']:6.2f} ms | ratio {svc['rate'] / flo['rate']:.2f} | server CPU per delivery "
                      f"{svc['server_cpu_ms']:.3f} ms (floor {flo['server_cpu_ms']:.3f}); client CPU "
                      f"{svc['client_cpu_ms']:.3f} ms (floor {flo['client_cpu_ms']:.3f})", flush=True)
                if args.dashboard:
                    viewer = Viewer(durl)
                    viewer.start()
                    dsh = run_load(kport2, root2, pairs, args.seconds, server_pid=kms2.pid)
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
        f"{platform.python_version()}; `python -m benchmarks.kms --seconds {args.seconds:g} --pairs {args.pairs}`.",
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
        "The clients are one Python process (a thread per pair, `requests` over TLS): about 1.4 ms of its CPU per "
        "delivery with one pair, more with several threads (GIL contention). Against the floor, which answers faster, "
        "the client process is the bottleneck, so the floor's deliveries/s measure the client, not the server stack; "
        "the server CPU per delivery is the comparison that holds.",
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
