"""``python -m benchmarks.network [--seconds 30] [--pairs 16] [--open-seconds 30] [--rate 5] [--big 100]
[--out benchmarks/network_results.md]``.

Full deliveries (``enc_keys`` at the master's node, ``dec_keys`` at the
slave's) over mutual TLS with every process on this machine, on the example
network (masters M0.. at node 0, slaves S0.. at node 7, level 0.5), in one
run for three services with the same pairs:

- the network of node processes (``qkdseg net up``), keys relayed on demand;
- the same network with every pair stocked (``net init --stock Mi:Si``,
  default watermarks 16:64; docs/network.md "Key stocks");
- the centralized ``qkdseg kms serve`` on demand, the reference.

Measured two ways (issue 34): **latency at an open-loop load**
(``--open-pairs`` pairs each sending Poisson requests at ``--rate`` per
second for ``--open-seconds``: the p50 and p99 of ``enc_keys``, timed from
the request's scheduled start, so that a client's own queue counts); and
**throughput in a closed loop** (per load of ``--pairs``, one request at a
time per pair, for ``--seconds``: deliveries per second, p50 and p99 of a
whole delivery). A stocked network is measured once its stocks are full
(each time). Then the resident memory of each node process, and the time of
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
LOW, HIGH = 16, 64  # net init's default watermarks (--stock-keys)


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


def _clients(pki: Path):
    """``client(sae)``: one HTTPS client per SAE, shared by the threads (TCP_NODELAY; its connections kept alive and
    reused, a new one only while all are busy: as an SAE application would)."""
    import socket

    import httpx

    from qkdseg.net.wire import client_context

    have: dict = {}
    lock = threading.Lock()

    def client(name: str):
        with lock:
            if name not in have:
                ctx = client_context(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")
                tr = httpx.HTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
                have[name] = httpx.Client(transport=tr, timeout=60)
            return have[name]

    return client


def _quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    if len(xs) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(xs, n=100)
    return 1e3 * q[49], 1e3 * q[98]


def _deliver(client, master_url: str, slave_url: str, i: int) -> tuple[bool, bool | None]:
    """One delivery of pair ``i``: ``(the slave got the master's key, it came from stock)``."""
    r = client(f"M{i}").post(f"{master_url}/api/v1/keys/S{i}/enc_keys", json={"number": 1})
    if r.status_code != 200:
        return False, None
    body = r.json()
    k = body["keys"][0]
    r2 = client(f"S{i}").post(f"{slave_url}/api/v1/keys/M{i}/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]}]})
    ok = r2.status_code == 200 and r2.json()["keys"][0]["key"] == k["key"]
    return ok, body.get("key_container_extension", {}).get("qkdseg_from_stock")


def _closed(master_url, slave_url, pki: Path, pairs: int, seconds: float) -> dict:
    """One request at a time per pair for ``seconds``: deliveries/s, p50/p99 of a whole delivery."""
    client = _clients(pki)
    lat: list[float] = []
    errors, stocked = [0], [0]
    lock = threading.Lock()
    stop = [0.0]

    def worker(i, once=False):
        mine, bad, hits = [], 0, 0
        while once or time.monotonic() < stop[0]:
            t = time.perf_counter()
            ok, from_stock = _deliver(client, master_url, slave_url, i)
            if ok:
                mine.append(time.perf_counter() - t)
                hits += bool(from_stock)
            else:
                bad += 1
            if once:
                break
        with lock:
            lat.extend(mine)
            errors[0] += bad
            stocked[0] += hits

    with concurrent.futures.ThreadPoolExecutor(pairs) as ex:  # one delivery per pair first, untimed (warm-up)
        list(ex.map(lambda i: worker(i, once=True), range(pairs)))
    lat.clear()
    errors[0] = stocked[0] = 0
    stop[0] = time.monotonic() + seconds
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(pairs) as ex:
        list(ex.map(worker, range(pairs)))
    wall = time.monotonic() - t0
    p50, p99 = _quantiles(lat)
    return {"deliveries": len(lat), "rate": len(lat) / wall, "p50_ms": p50, "p99_ms": p99, "errors": errors[0],
            "from_stock": stocked[0]}


def _open(master_url, slave_url, pki: Path, pairs: int, rate: float, seconds: float, seed: int = 1) -> dict:
    """``pairs`` pairs each sending Poisson requests at ``rate``/s for ``seconds`` (arrival times drawn first, from
    ``seed``): p50/p99 of ``enc_keys`` from each request's scheduled time; each key fetched after (not timed)."""
    client = _clients(pki)
    rng = random.Random(seed)
    arrivals = []
    for i in range(pairs):
        t = rng.expovariate(rate)
        while t < seconds:
            arrivals.append((t, i))
            t += rng.expovariate(rate)
    arrivals.sort()
    lat, errors, stocked, late = [], [0], [0], [0]
    lock = threading.Lock()

    def one(t0: float, i: int) -> None:
        r = client(f"M{i}").post(f"{master_url}/api/v1/keys/S{i}/enc_keys", json={"number": 1})
        took = time.perf_counter() - t0
        ok = r.status_code == 200
        if ok:
            body = r.json()
            k = body["keys"][0]
            r2 = client(f"S{i}").post(f"{slave_url}/api/v1/keys/M{i}/dec_keys",
                                      json={"key_IDs": [{"key_ID": k["key_ID"]}]})
            ok = r2.status_code == 200 and r2.json()["keys"][0]["key"] == k["key"]
        with lock:
            if ok:
                lat.append(took)
                stocked[0] += bool(body.get("key_container_extension", {}).get("qkdseg_from_stock"))
            else:
                errors[0] += 1

    for i in range(pairs):  # warm-up: each pair's connections open (one delivery, untimed)
        _deliver(client, master_url, slave_url, i)
    start = time.perf_counter() + 0.5
    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        for t, i in arrivals:
            wait = start + t - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.005:
                late[0] += 1
            ex.submit(one, start + t, i)
    p50, p99 = _quantiles(lat)
    return {"requests": len(arrivals), "served": len(lat), "p50_ms": p50, "p99_ms": p99, "errors": errors[0],
            "from_stock": stocked[0], "late_submits": late[0]}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_stocks(master_url: str, pki: Path, pairs: int, high: int, timeout: float = 180.0) -> float:
    """Wait until every pair's stock holds ``high`` keys (``status``' ``stored_key_count``); returns the seconds."""
    client = _clients(pki)
    t0 = time.monotonic()
    todo = set(range(pairs))
    while todo:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"stocks not full after {timeout:.0f} s: pairs {sorted(todo)}")
        for i in sorted(todo):
            r = client(f"M{i}").get(f"{master_url}/api/v1/keys/S{i}/status")
            if r.status_code == 200 and r.json()["stored_key_count"] >= high:
                todo.discard(i)
        time.sleep(0.5)
    return time.monotonic() - t0


def _measure(kind, master_url, slave_url, pki, a, loads, out, stocked=False) -> None:
    """Both measurements of one service, appended to ``out`` as ``(kind, what, load, result)``: a stocked network
    first waits until its stocks are full (HIGH, after ``net up``), then, before each closed loop, until none is
    below LOW (a stock between LOW and HIGH is not refilled: docs/kms.md "Key stocks")."""
    n = max(loads + [a.open_pairs])
    if stocked:
        out.append((kind, "fill", a.open_pairs, {"seconds": _wait_stocks(master_url, pki, n, HIGH)}))
    load = os.getloadavg()[0]
    out.append((kind, "open", a.open_pairs, {"load": load, **_open(master_url, slave_url, pki, a.open_pairs, a.rate,
                                                                     a.open_seconds)}))
    for p in loads:
        if stocked:
            _wait_stocks(master_url, pki, n, LOW)
        load = os.getloadavg()[0]
        out.append((kind, "closed", p, {"load": load, **_closed(master_url, slave_url, pki, p, a.seconds)}))


def _network(tmp: Path, name: str, saes: list[str], stock: list[str]):
    """``net init`` + ``net up`` of the example network; returns ``(dir, addresses, seconds of net up)``."""
    d = tmp / name
    _run("net", "init", str(d), "--network", "example", *[x for s in saes for x in ("--sae", s)],
         "--security-level", "0.5", "--port", str(_port()), *[x for p in stock for x in ("--stock", p)])
    t = time.monotonic()
    _run("net", "up", str(d), "--detach")
    up = time.monotonic() - t
    st = json.loads(_run("net", "status", str(d), "--format", "json").stdout)
    return d, st, up


def _load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.network")
    ap.add_argument("--seconds", type=float, default=30.0, help="closed loop: seconds per load")
    ap.add_argument("--pairs", default="16", help="closed loop: the loads (concurrent pairs), comma-separated")
    ap.add_argument("--open-pairs", type=int, default=16)
    ap.add_argument("--rate", type=float, default=5.0, help="open loop: Poisson requests per second per pair")
    ap.add_argument("--open-seconds", type=float, default=30.0)
    ap.add_argument("--big", type=int, default=100, help="nodes of the Waxman network for the net-up timing (0: skip)")
    ap.add_argument("--out", default="benchmarks/network_results.md")
    a = ap.parse_args(argv)
    loads = [int(x) for x in a.pairs.split(",")]
    n = max(loads + [a.open_pairs])
    saes = [f"M{i}=0" for i in range(n)] + [f"S{i}=7" for i in range(n)]
    rows: list = []
    load_before = _load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind, stock in (("network", []), ("network, stocked", [f"M{i}:S{i}" for i in range(n)])):
            d, st, up = _network(tmp, kind.replace(", ", "-"), saes, stock)
            try:
                addr = {r["node"]: r["address"] for r in st if r["role"] == "node"}
                _measure(kind, f"https://{addr['0']}", f"https://{addr['7']}", d / "pki", a, loads, rows, bool(stock))
                if stock:
                    stocks = json.loads(_run("net", "status", str(d), "--format", "json").stdout)
                    node0 = next(r for r in stocks if r.get("node") == "0").get("stock", {})
                    rows.append((kind, "refills", n, {
                        "runs": sum(s["refill_runs"] for s in node0.values()),
                        "keys": sum(s["keys_refilled"] for s in node0.values()),
                        "failures": sum(s["refill_failures"] for s in node0.values()),
                        "misses": sum(s["misses"] for s in node0.values())}))
                else:
                    up_small = up
                    rss = {r["node"]: _rss_mb(r["pid"]) for r in st if r["role"] == "node"}
                    ctrl_rss = next(_rss_mb(r["pid"]) for r in st if r["role"] == "controller")
            finally:
                _run("net", "down", str(d))
        k = tmp / "kms"  # the centralized reference
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
            _measure("kms serve", url, url, k / "pki", a, loads, rows)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        load_after = _load_avg()
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
    text = report(rows, a, argv, load_before, load_after)
    text += (f"\n`net up` of the example network (11 processes): {up_small:.1f} s. Resident memory per node process "
             f"after the load (on demand): median {statistics.median(rss.values()):.0f} MB, max "
             f"{max(rss.values()):.0f} MB; controller {ctrl_rss:.0f} MB.\n")
    if big is not None:
        text += (f"\n`net up` of a {a.big}-node Waxman network ({a.big + 1} processes): {big:.1f} s; resident memory "
                 f"per node process: median {statistics.median(big_rss):.0f} MB, max {max(big_rss):.0f} MB.\n")
    Path(a.out).write_text(text)
    print(text)


def report(rows: list, a, argv, load_before: str, load_after: str) -> str:
    """The Markdown of a run: the open-loop latency table, the closed-loop table, the stocks' refills."""
    def get(kind, what, load):
        return next((r for k, w, p, r in rows if (k, w, p) == (kind, what, load)), None)

    lines = [
        "# Benchmark: the network of node processes (on demand, and stocked) against the centralized key service",
        "",
        f"`{' '.join(['python -m benchmarks.network', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}; load average (1/5/15 min) {load_before} before, "
        f"{load_after} after. Example network, level 0.5, masters M0.. at node 0, slaves S0.. at node 7, one key "
        "per request. \"network, stocked\": every pair stocked (watermarks 16:64); the open loop starts with its stocks "
        "full, each closed loop with none below LOW.",
        "",
        f"## Latency at an open-loop load: {a.open_pairs} pairs, Poisson {a.rate:g}/s each "
        f"({a.open_pairs * a.rate:g}/s in all), {a.open_seconds:g} s",
        "",
        "enc_keys latency from each request's scheduled start (each key then fetched by its slave, not timed). "
        "\"load at start\": the machine's 1-minute load average when the measurement began (other jobs share it).",
        "",
        "| service | load at start | requests | served | from stock | errors | enc_keys p50 ms | enc_keys p99 ms | "
        "p99 / kms serve |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref = get("kms serve", "open", a.open_pairs)
    for kind in ("network", "network, stocked", "kms serve"):
        r = get(kind, "open", a.open_pairs)
        if r is None:
            continue
        lines.append(f"| {kind} | {r['load']:.1f} | {r['requests']} | {r['served']} | {r['from_stock']} | {r['errors']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms'] / ref['p99_ms']:.2f} |")
    lines += ["", f"## Throughput in a closed loop (one request at a time per pair), {a.seconds:g} s per load", "",
              "Whole deliveries (enc_keys + dec_keys).", "",
              "| service | load at start | pairs | deliveries | deliveries/s | from stock | p50 ms | p99 ms | errors | "
              "rate / kms serve |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("network", "network, stocked", "kms serve"):
        for k, w, p, r in rows:
            if (k, w) != (kind, "closed"):
                continue
            rr = get("kms serve", "closed", p)
            lines.append(f"| {kind} | {r['load']:.1f} | {p} | {r['deliveries']} | {r['rate']:.1f} | {r['from_stock']} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['rate'] / rr['rate']:.2f} |")
    fill = [r for k, w, p, r in rows if w == "fill"]
    ref = [r for k, w, p, r in rows if w == "refills"]
    if fill and ref:
        lines += ["", f"Stocks: filled from empty after `net up` in {fill[0]['seconds']:.1f} s; over the whole run the "
                      f"master's node made {ref[0]['runs']} refill runs ({ref[0]['keys']} keys, {ref[0]['failures']} "
                      f"failed or empty), {ref[0]['misses']} requests missed their stock (relayed on demand)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
