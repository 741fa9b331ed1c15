"""``python -m benchmarks.network [--seconds 8] [--pairs 1,4,16] [--big 100] [--out benchmarks/network_results.md]``.

Full deliveries (``enc_keys`` at the master's node, ``dec_keys`` at the
slave's) over mutual TLS with every process on this machine: the network of
node processes (``qkdseg net up``) on the example network, and in the same
run the centralized ``qkdseg kms serve`` on the same network, SAEs and load
as the reference. Per load (concurrent SAE pairs, masters at node 0 and
slaves at node 7, level 0.5): deliveries per second, p50 and p99 of one
delivery. Then the resident memory of each node process, and the time of
``net up`` on a ``--big``-node Waxman network.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))


def _run(*args, timeout=600):
    r = subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"qkdseg {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def _port() -> int:
    import socket

    while True:
        p = random.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


def _load(master_url, slave_url, pki: Path, pairs: int, seconds: float) -> dict:
    import httpx

    from qkdseg.net.wire import client_context

    lat: list[float] = []
    stop = 0.0
    errors = [0]
    lock = threading.Lock()

    import socket

    def client(name):
        ctx = client_context(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")
        tr = httpx.HTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        return httpx.Client(transport=tr, timeout=60)

    def worker(i, once=False):
        m, s = client(f"M{i}"), client(f"S{i}")
        mine = []
        while once or time.monotonic() < stop:
            t = time.perf_counter()
            r = m.post(f"{master_url}/api/v1/keys/S{i}/enc_keys", json={"number": 1})
            if r.status_code != 200:
                with lock:
                    errors[0] += 1
                if once:
                    break
                continue
            kid = r.json()["keys"][0]["key_ID"]
            r2 = s.post(f"{slave_url}/api/v1/keys/M{i}/dec_keys", json={"key_IDs": [{"key_ID": kid}]})
            if r2.status_code == 200 and r2.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]:
                mine.append(time.perf_counter() - t)
            else:
                with lock:
                    errors[0] += 1
            if once:
                break
        m.close()
        s.close()
        with lock:
            lat.extend(mine)

    with concurrent.futures.ThreadPoolExecutor(pairs) as ex:  # one delivery per pair first, untimed (warm-up)
        list(ex.map(lambda i: worker(i, once=True), range(pairs)))
    lat.clear()
    errors[0] = 0
    stop = time.monotonic() + seconds
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(pairs) as ex:
        list(ex.map(worker, range(pairs)))
    wall = time.monotonic() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    return {"deliveries": len(lat), "rate": len(lat) / wall, "p50_ms": 1e3 * q[49], "p99_ms": 1e3 * q[98],
            "errors": errors[0]}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.network")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--pairs", default="1,4,16")
    ap.add_argument("--big", type=int, default=100, help="nodes of the Waxman network for the net-up timing (0: skip)")
    ap.add_argument("--out", default="benchmarks/network_results.md")
    a = ap.parse_args(argv)
    loads = [int(x) for x in a.pairs.split(",")]
    n = max(loads)
    saes = [f"M{i}=0" for i in range(n)] + [f"S{i}=7" for i in range(n)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the network of processes
        d = tmp / "net"
        _run("net", "init", str(d), "--network", "example", *[x for s in saes for x in ("--sae", s)],
             "--security-level", "0.5", "--port", str(_port()))
        t = time.monotonic()
        _run("net", "up", str(d), "--detach")
        up_small = time.monotonic() - t
        try:
            st = json.loads(_run("net", "status", str(d), "--format", "json").stdout)
            addr = {r["node"]: r["address"] for r in st if r["role"] == "node"}
            for p in loads:
                rows.append(("network", p, _load(f"https://{addr['0']}", f"https://{addr['7']}", d / "pki", p,
                                                 a.seconds)))
            rss = {r["node"]: _rss_mb(r["pid"]) for r in st if r["role"] == "node"}
            ctrl_rss = next(_rss_mb(r["pid"]) for r in st if r["role"] == "controller")
        finally:
            _run("net", "down", str(d))
        # the centralized reference
        k = tmp / "kms"
        _run("kms", "init", str(k), "--network", "example", *[x for s in saes for x in ("--sae", s)],
             "--security-level", "0.5")
        port = _port()
        log = open(tmp / "kms.log", "wb")
        proc = subprocess.Popen([QKDSEG, "kms", "serve", str(k), "--port", str(port)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while b"ETSI GS QKD 014 on" not in (tmp / "kms.log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("kms serve did not start")
                time.sleep(0.1)
            url = f"https://127.0.0.1:{port}"
            for p in loads:
                rows.append(("kms serve", p, _load(url, url, k / "pki", p, a.seconds)))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        big = None
        if a.big:
            b = tmp / "big"
            topo = tmp / "big.json"
            _run("topology", "generate", "waxman", "--nodes", str(a.big), "--seed", "1", "-o", str(topo))
            ids = json.loads(topo.read_text())["nodes"]
            _run("net", "init", str(b), "--network", str(topo), "--sae", f"A={ids[0]['id']}",
                 "--sae", f"B={ids[-1]['id']}", "--port", str(_port()))
            t = time.monotonic()
            _run("net", "up", str(b), "--detach", "--timeout", "300")
            big = time.monotonic() - t
            st = json.loads(_run("net", "status", str(b), "--format", "json").stdout)
            big_rss = [_rss_mb(r["pid"]) for r in st if r["role"] == "node"]
            _run("net", "down", str(b))
    ref = {p: r for kind, p, r in rows if kind == "kms serve"}
    lines = [
        "# Benchmark: the network of node processes against the centralized key service",
        "",
        f"`python -m benchmarks.network {' '.join(argv or sys.argv[1:])}` on {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Full deliveries (enc_keys + dec_keys), "
        f"example network, level 0.5, masters at node 0, slaves at node 7, {a.seconds:g} s per load.",
        "",
        "| service | pairs | deliveries | deliveries/s | p50 ms | p99 ms | errors | rate / kms serve | p99 / kms serve |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, p, r in rows:
        rr = ref.get(p)
        lines.append(f"| {kind} | {p} | {r['deliveries']} | {r['rate']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['errors']} | {r['rate'] / rr['rate']:.2f} | {r['p99_ms'] / rr['p99_ms']:.2f} |")
    lines += ["", f"`net up` of the example network (11 processes): {up_small:.1f} s. Resident memory per node "
                  f"process after the load: median {statistics.median(rss.values()):.0f} MB, max "
                  f"{max(rss.values()):.0f} MB; controller {ctrl_rss:.0f} MB."]
    if big is not None:
        lines += ["", f"`net up` of a {a.big}-node Waxman network ({a.big + 1} processes): {big:.1f} s; resident "
                      f"memory per node process: median {statistics.median(big_rss):.0f} MB, max {max(big_rss):.0f} MB."]
    text = "\n".join(lines) + "\n"
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
