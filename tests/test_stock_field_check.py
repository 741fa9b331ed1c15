"""Independent field check of issue 34 (key stocks), written from the docs alone.

Sources: docs/network.md ("Key stocks", the ETSI 014 parts, spare keys, `net status`), docs/kms.md ("Key
stocks", Tables 9-13, `kms init`, `kms.toml`), docs/deploy.md (the `qkdseg_stock_*` metrics), docs/model.md
section 8c, the README and ``--help``. It does not read the implementation nor tests/test_stock.py or
tests/test_net_stock.py. It drives the ``qkdseg`` command as an operator would and talks ETSI GS QKD 014 with
its own client (httpx, mutual TLS with the SAE certificates ``net init`` / ``kms init`` write under
``DIR/pki/``).

1. A network (the ``example`` topology, SAEs A at node 0, B and D at node 7, C at node 4) with one stock
   (``net init --stock A:B --stock-keys 48:120``): ``stored_key_count`` watched from the start up to HIGH;
   stocked keys fetched at the master's node and at the slave's (identical, fetchable once, ``key_extension``
   with ``qkdseg_security`` and ``qkdseg_from_stock``); the check's own ``enc_keys`` latency, p50/p99 over 200
   requests, of the stocked pair A:B against the unstocked A:D (same nodes, same route), interleaved in the
   same run. The controller refuses refill plans that are not the stock's (403 for an unstocked pair, 400 for
   another size, level, or more than HIGH keys): bodies made from the refill plan A's node sent, read from the
   controller's capture (``QKDSEG_ALLOW_CAPTURE``; the docs do not list the plan's fields).
2. ``kill -9`` of the controller and of relays 1, 3 (the trusted segment node on every route) and 8: the stock
   serves until it runs out, then a JSON 503; the processes restarted (``controller serve``, ``node serve``):
   ``stored_key_count`` rises to HIGH again.
3. 8 concurrent clients on the stocked pair; over the whole module no key_ID is returned twice by ``enc_keys``
   and no key bytes appear under two key_IDs.
4. ``kms init --stock`` / ``kms serve``: fill, ``status``, serving (both directions), misses, the ``qkdseg_stock_*``
   metrics, expiry after ``key_ttl_s`` (expired unused, refilled) and the fresh ``key_ttl_s`` of an issued key.
5. Bad stock configuration (flags of ``net init`` and ``kms init``; ``[stock]`` in ``kms.toml``): one line, exit 2.

The numbers it measures are printed as ``CHECK34 ...`` lines (run with ``-s`` to see them). Every process it
starts is stopped at the end, also on failure (``net down``, then SIGKILL of whatever is left).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_net import _read_capture  # the controller capture's reader
from test_net_field_check import alive, free_port  # free_port: a port free on 127.0.0.1 .. 127.0.0.11
from timing import scaled

QKDSEG = os.environ.get("QKDSEG", str(Path(sys.executable).with_name("qkdseg")))
LEVEL = 0.5
LOW, HIGH = 48, 120          # the network's stock A:B
KLOW, KHIGH, KTTL = 8, 32, 15.0  # the kms stock A:B and its key_ttl_s
NET_SAES = {"A": "0", "B": "7", "C": "4", "D": "7"}  # D at B's node: A:D takes A:B's route, unstocked
KILLED_RELAYS = ("1", "3", "8")  # 3: the trusted segment node on every 0 -> 7 route; 1 and 8 untrusted relays on it
NOT_FOUND = "one or more keys specified are not found on KME"
STOCK_METRICS = (
    "qkdseg_stock_keys", "qkdseg_stock_target_keys", "qkdseg_stock_hits_total", "qkdseg_stock_misses_total",
    "qkdseg_stock_keys_served_total", "qkdseg_stock_refill_runs_total", "qkdseg_stock_refill_failures_total",
    "qkdseg_stock_keys_refilled_total", "qkdseg_stock_keys_expired_unused_total",
)

# every key enc_keys returned in this module: (service, key_ID, bytes)
LEDGER: list[tuple[str, str, bytes]] = []
LEDGER_LOCK = threading.Lock()


def report(what: str, **values) -> None:
    print(f"CHECK34 {what}: " + json.dumps(values, sort_keys=True), flush=True)


def run(args, timeout=180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([QKDSEG, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env)


def metrics_base(n: int) -> int:
    """A port P with P .. P + n - 1 free on 127.0.0.1 (net up --metrics-port-base: the controller, then the nodes)."""
    for _ in range(100):
        p = random.randint(45000, 60000 - n)
        if all(_bindable("127.0.0.1", p + i) for i in range(n)):
            return p
    raise RuntimeError("no free block of ports")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def tls_client(ca: Path, cert: Path, key: Path, timeout: float = 30.0) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=ctx, timeout=timeout)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def record(service: str, keys: list[dict], size: int = 256) -> None:
    with LEDGER_LOCK:
        for k in keys:
            raw = base64.b64decode(k["key"], validate=True)
            assert len(raw) * 8 == size, (k, size)
            LEDGER.append((service, k["key_ID"], raw))


def scrape(url: str) -> dict[str, float]:
    """Prometheus text: ``name{labels}`` -> value."""
    out = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def one_line_exit_2(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("qkdseg: error:"), repr(r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    for n in needles:
        assert n in err, (n, err)
    return err


class Etsi:
    """The check's own ETSI 014 client of one SAE at one KME."""

    def __init__(self, pki: Path, sae: str, host: str):
        self.sae, self.base = sae, f"https://{host}/api/v1/keys"
        self.http = tls_client(pki / "ca.crt", pki / f"{sae}.crt", pki / f"{sae}.key")

    def status(self, slave: str) -> httpx.Response:
        return self.http.get(f"{self.base}/{slave}/status")

    def count(self, slave: str) -> int:
        r = self.status(slave)
        assert r.status_code == 200, r.text
        return r.json()["stored_key_count"]

    def enc(self, slave: str, **body) -> httpx.Response:
        return self.http.post(f"{self.base}/{slave}/enc_keys", json=body or {"number": 1})

    def dec(self, master: str, ids: list[str]) -> httpx.Response:
        return self.http.post(f"{self.base}/{master}/dec_keys", json={"key_IDs": [{"key_ID": i} for i in ids]})


def fetch_all(slave: Etsi, master: str, keys: list[dict]) -> None:
    """The slave fetches every key (identical bytes), then each again: 400, the unknown key's answer."""
    for i in range(0, len(keys), 50):
        chunk = keys[i:i + 50]
        r = slave.dec(master, [k["key_ID"] for k in chunk])
        assert r.status_code == 200, r.text
        got = {k["key_ID"]: k["key"] for k in r.json()["keys"]}
        assert got == {k["key_ID"]: k["key"] for k in chunk}
    for k in keys[:5] + keys[-5:]:
        r = slave.dec(master, [k["key_ID"]])
        assert r.status_code == 400 and r.json()["message"] == NOT_FOUND, r.text


def take_from_stock(master: Etsi, slave: str, number: int, service: str) -> tuple[dict, dict]:
    """``number`` keys from a full stock: the container and its extension, each key (and the container) marked
    `"qkdseg_from_stock": true`, each key's `qkdseg_security` at least the stock's level."""
    r = master.enc(slave, number=number)
    assert r.status_code == 200, r.text
    c = r.json()
    ext = c["key_container_extension"]
    report(f"{service} stocked container", key_container_extension=ext, key_extension=c["keys"][0]["key_extension"])
    record(service, c["keys"])
    assert ext.get("qkdseg_from_stock") is True, ext
    for k in c["keys"]:
        assert k["key_extension"].get("qkdseg_from_stock") is True, k
        assert LEVEL <= k["key_extension"]["qkdseg_security"] <= 1.0, k
    return c, ext


def eight_clients(pki: Path, master_host: str, slave_host: str, rounds: int) -> list[dict]:
    """8 concurrent SAE A clients, each asking ``rounds`` times for one key for B (every answer 200), each fetching
    its keys at B's KME (identical, once): every key they got."""

    def client(_):
        a, b = Etsi(pki, "A", master_host), Etsi(pki, "B", slave_host)
        got = []
        for _ in range(rounds):
            r = a.enc("B", number=1)
            assert r.status_code == 200, r.text
            got += r.json()["keys"]
        fetch_all(b, "A", got)
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        return [k for f in [ex.submit(client, i) for i in range(8)] for k in f.result()]


def wait_for(pred, bound: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + scaled(bound)
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {scaled(bound):.0f} s: {what}"
        time.sleep(step)


# -- the network -------------------------------------------------------------------------------------------------
class Net:
    def __init__(self, d: Path, port: int, env: dict, mbase: int):
        self.dir, self.port, self.env, self.mbase = d, port, env, mbase
        self.names = json.loads((d / "nodes.json").read_text())
        self.addr = {nid: f"127.0.0.{2 + i}:{port}" for i, nid in enumerate(self.names)}
        self.extra: list[subprocess.Popen] = []
        self.a_at_0 = Etsi(d / "pki", "A", self.addr["0"])
        self.b_at_7 = Etsi(d / "pki", "B", self.addr["7"])
        self.d_at_7 = Etsi(d / "pki", "D", self.addr["7"])
        n0 = d / "nodes" / self.names["0"]
        self.operator = tls_client(n0 / "ca.crt", n0 / "node.crt", n0 / "node.key")  # a node's certificate

    def health(self, node: str) -> dict:
        r = self.operator.get(f"https://{self.addr[node]}/health")
        assert r.status_code == 200, r.text
        return r.json()

    def metrics(self, node: str) -> dict[str, float]:
        i = list(self.names).index(node)
        return scrape(f"http://127.0.0.1:{self.mbase + 1 + i}/metrics")

    def status_rows(self) -> list[dict]:
        r = run(["net", "status", str(self.dir), "--format", "json"], timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def start(self, *args: str) -> subprocess.Popen:
        with open(self.dir / "logs" / f"check34-{len(self.extra)}.log", "w") as log:
            p = subprocess.Popen([QKDSEG, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.extra.append(p)
        return p


@pytest.fixture(scope="module")
def net():
    base = Path(tempfile.mkdtemp(prefix="chk34-net-"))
    d = base / "deploy"
    port = free_port()
    mbase = metrics_base(11)
    # the controller's capture (docs/network.md, test only): every body it receives, so that the refill plans A's node
    # sends can be read (their fields are not listed in the docs)
    env = {**os.environ, "QKDSEG_ALLOW_CAPTURE": "1", "QKDSEG_CAPTURE_FILE": str(base / "capture.bin")}
    obj, seen, samples, stop = None, set(), [], threading.Event()
    try:
        saes = [a for s, n in NET_SAES.items() for a in ("--sae", f"{s}={n}")]
        r = run(["net", "init", str(d), "--network", "example", *saes, "--security-level", str(LEVEL),
                 "--port", str(port), "--stock", "A:B", "--stock-keys", f"{LOW}:{HIGH}"])
        assert r.returncode == 0, r.stdout + r.stderr
        a = Etsi(d / "pki", "A", f"127.0.0.2:{port}")

        def sampler():  # watch stored_key_count from the moment net up starts
            while not stop.is_set():
                try:
                    r = a.status("B")
                    if r.status_code == 200:
                        samples.append((time.monotonic(), r.json()["stored_key_count"]))
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

        th = threading.Thread(target=sampler, daemon=True)
        t0 = time.monotonic()
        th.start()
        r = run(["net", "up", str(d), "--detach", "--metrics-port-base", str(mbase), "--timeout", "300"],
                timeout=400, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        report("net up", seconds=round(time.monotonic() - t0, 1), load=os.getloadavg()[0])
        obj = Net(d, port, env, mbase)
        obj.capture = base / "capture.bin"
        obj.samples, obj.stop_sampler, obj.t0 = samples, stop, t0
        seen |= set(json.loads((d / "run" / "pids.json").read_text()).values())
        yield obj
    finally:
        stop.set()
        try:
            run(["net", "down", str(d)], timeout=150)
        except subprocess.TimeoutExpired:
            pass
        left = [p for p in seen if alive(p)]
        if obj is not None:
            for p in obj.extra:
                if p.poll() is None:
                    left.append(p.pid)
                    p.kill()
                p.wait(timeout=30)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.environ.get("CHK34_KEEP"):
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes still alive after net down: {left}"


def test_net_stock_fills_to_high_after_start_and_status_says_so(net):
    """docs/network.md "Key stocks": below LOW A's node asks for refill runs until HIGH; `status` answers
    stored_key_count = the stock at A's node, status_extension.qkdseg_stock its keys, target, watermarks, level,
    size. docs/kms.md Table 9: the 11 required fields."""
    wait_for(lambda: net.a_at_0.count("B") >= HIGH, 120, "the stock A:B to reach HIGH")
    net.stop_sampler.set()
    net.samples.append((time.monotonic(), net.a_at_0.count("B")))
    counts = [c for _, c in net.samples]
    first_full = next((t for t, c in net.samples if c >= HIGH), None)
    report("net fill", samples=len(counts), first=counts[:1], distinct=sorted(set(counts)),
           full_after_s=None if first_full is None else round(first_full - net.t0, 1))
    assert all(c <= HIGH for c in counts), counts  # refilled up to HIGH, never beyond, with no other traffic
    r = net.a_at_0.status("B")
    st = r.json()
    required = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
                "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count"}
    assert required <= set(st), st
    assert st["master_SAE_ID"] == "A" and st["slave_SAE_ID"] == "B" and st["stored_key_count"] == HIGH
    stock = st["status_extension"]["qkdseg_stock"]
    assert stock["keys"] == HIGH and stock["target"] == HIGH, stock
    assert (stock["low"], stock["high"], stock["level"], stock["size"]) == (LOW, HIGH, LEVEL, 256), stock
    # the unstocked pair A:D says nothing of a stock
    st_d = net.a_at_0.status("D").json()
    assert "qkdseg_stock" not in st_d.get("status_extension", {}), st_d
    # evidence that the stock was relayed after the start (not present before): the refills' counters at A's node
    h = net.health("0")["stock"]["A:B"]
    report("net health A:B after fill", **h)
    assert h["keys"] == HIGH and h["target"] == HIGH and h["misses"] == 0 and h["hits"] == 0
    # the rise was watched (a count below HIGH seen after the start), or the counters show the keys refilled
    assert min(counts, default=HIGH) < HIGH or h.get("keys_refilled", 0) >= HIGH, (counts[:5], h)
    # net status --format json: a node of a stocked pair's SAE has `stock`
    rows = {r["node"]: r for r in net.status_rows() if r["role"] == "node"}
    assert "stock" in rows["0"] and "stock" in rows["7"], {k: sorted(v) for k, v in rows.items()}
    assert "stock" not in rows["4"], rows["4"]


def test_net_stocked_keys_identical_fetched_once_marked_from_stock(net):
    """docs/network.md: served as spare keys are, each key `"qkdseg_from_stock": true` in its key_extension;
    docs/kms.md: each key with its own exact security (`qkdseg_security`), the container `qkdseg_from_stock`."""
    wait_for(lambda: net.a_at_0.count("B") >= HIGH, 60, "a full stock")
    c, ext = take_from_stock(net.a_at_0, "B", 4, "net")
    for k in c["keys"]:  # at the stock's level; at most the route's exact security (`qkdseg route example`)
        assert k["key_extension"]["qkdseg_security"] <= 0.884736 + 1e-9, k
    # docs/kms.md "Key stocks": the container's `qkdseg_route` is null for keys from stock; docs/network.md says the
    # network serves them "as spare keys are", whose `qkdseg_route` is `{"spare": true, ...}`. Either is accepted.
    route = ext.get("qkdseg_route")
    assert route is None or route.get("spare") is True, route
    assert net.a_at_0.count("B") == HIGH - 4  # still above LOW: no refill (hysteresis)
    fetch_all(net.b_at_7, "A", c["keys"])
    # a request of another size, or a higher level, is not the stock's and says nothing of it
    r = net.a_at_0.enc("B", number=1, size=512)
    assert r.status_code == 200, r.text
    record("net", r.json()["keys"], 512)
    assert "qkdseg_from_stock" not in r.json()["key_container_extension"], r.json()
    assert all("qkdseg_from_stock" not in k["key_extension"] for k in r.json()["keys"])
    fetch_all(net.b_at_7, "A", r.json()["keys"])
    # a miss: more keys than the stock holds -> served on demand, says from_stock false
    before = net.health("0")["stock"]["A:B"]["misses"]
    r = net.a_at_0.enc("B", number=128)
    assert r.status_code == 200, r.text
    record("net", r.json()["keys"])
    assert r.json()["key_container_extension"].get("qkdseg_from_stock") is False, r.json()["key_container_extension"]
    assert net.health("0")["stock"]["A:B"]["misses"] == before + 1
    fetch_all(net.b_at_7, "A", r.json()["keys"])


def test_net_latency_stocked_against_unstocked_in_the_same_run(net):
    """The check's own enc_keys latency, 200 requests of one key each for A:B (stocked) and A:D (unstocked, same
    nodes and route), interleaved."""
    wait_for(lambda: net.a_at_0.count("B") >= LOW, 60, "the stock at LOW or above")
    lat = {"stocked": [], "unstocked": []}
    kinds = {"stocked": {"stock": 0, "miss": 0}, "unstocked": {"relayed": [], "spare": []}}
    keys = {"B": [], "D": []}
    for _ in range(200):
        for name, slave in (("stocked", "B"), ("unstocked", "D")):
            t = time.perf_counter()
            r = net.a_at_0.enc(slave, number=1)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            lat[name].append(dt)
            c = r.json()
            keys[slave] += c["keys"]
            ext = c["key_container_extension"]
            if name == "stocked":
                kinds[name]["stock" if ext.get("qkdseg_from_stock") else "miss"] += 1
            else:
                assert "qkdseg_from_stock" not in ext, ext
                route = ext.get("qkdseg_route") or {}
                kinds[name]["spare" if route.get("spare") or not route.get("relays") else "relayed"].append(dt)
    record("net", keys["B"])
    record("net", keys["D"])
    s = {n: {"p50_ms": round(pct(v, 50) * 1e3, 1), "p99_ms": round(pct(v, 99) * 1e3, 1),
             "mean_ms": round(sum(v) / len(v) * 1e3, 1), "n": len(v)} for n, v in lat.items()}
    rel = kinds["unstocked"]["relayed"]
    s["unstocked_relayed_only"] = {"p50_ms": round(pct(rel, 50) * 1e3, 1), "p99_ms": round(pct(rel, 99) * 1e3, 1),
                                   "n": len(rel)} if rel else None
    s["stocked_from_stock"] = kinds["stocked"]["stock"]
    s["stocked_misses"] = kinds["stocked"]["miss"]
    s["unstocked_from_spare_keys"] = len(kinds["unstocked"]["spare"])
    report("net latency (enc_keys, 1 key, 200 each, interleaved)", load=os.getloadavg()[0], **s)
    fetch_all(net.b_at_7, "A", keys["B"])
    fetch_all(net.d_at_7, "A", keys["D"])
    assert kinds["stocked"]["stock"] >= 190, kinds["stocked"]  # the stock keeps up with one client
    assert s["stocked"]["p50_ms"] < s["unstocked_relayed_only"]["p50_ms"], s


def test_net_8_concurrent_clients_on_the_stocked_pair(net):
    wait_for(lambda: net.a_at_0.count("B") >= LOW, 90, "the stock back above LOW")
    allkeys = eight_clients(net.dir / "pki", net.addr["0"], net.addr["7"], rounds=10)
    record("net", allkeys)
    ids = [k["key_ID"] for k in allkeys]
    assert len(ids) == 80 and len(set(ids)) == 80
    from_stock = sum(1 for k in allkeys if k["key_extension"].get("qkdseg_from_stock"))
    report("net 8 clients", keys=len(ids), from_stock=from_stock)


def test_net_controller_refuses_refill_plans_that_are_not_the_stocks(net):
    """docs/network.md "Refill runs": `POST /control/v1/plans` with `"refill": true`: the controller checks the pair
    is stocked (403), the size and level are the stock's and `number` at most HIGH (400). Sent with node 0's
    certificate (A's node); only refusals are sent, never a valid run."""
    ctrl = json.loads((net.dir / "controller" / "net.json").read_text())["address"]
    sent = [json.loads(body) for head, body in _read_capture(net.capture)
            if head.get("dir") == "request" and head.get("path") == "/control/v1/plans"]
    refills = [b for b in sent if b.get("refill") is True]
    report("net refill plan as A's node sent it", body=refills[0] if refills else None)
    assert refills and refills[0]["master"] == "A" and refills[0]["slave"] == "B", sent[:3]
    assert refills[0]["number"] <= HIGH and refills[0]["level_source"] == "stock", refills[0]

    def plan(**over):
        return net.operator.post(f"https://{ctrl}/control/v1/plans", json={**refills[0], **over})

    before = net.a_at_0.count("B")
    got = {name: plan(**over) for name, over in (
        ("unstocked pair A:D", {"slave": "D"}), ("another size", {"size": 512}), ("another level", {"level": 0.9}),
        ("number over HIGH", {"number": HIGH + 1}))}
    report("net refill plan refusals", **{k: [r.status_code, r.text[:200]] for k, r in got.items()})
    assert got["unstocked pair A:D"].status_code == 403, got["unstocked pair A:D"].text
    for k in ("another size", "another level", "number over HIGH"):
        assert got[k].status_code == 400, (k, got[k].text)
    assert net.a_at_0.count("B") == before


def test_net_controller_and_relays_killed_stock_serves_then_503_then_refills(net):
    """docs/network.md "Key stocks": a dead controller or dead relays do not stop it until the stock runs out
    (then the JSON 503 of today); `status` is answered by A's node alone; refill runs resume."""
    wait_for(lambda: net.a_at_0.count("B") >= LOW, 120, "the stock at LOW or above before the kills")
    rows = net.status_rows()
    victims = {("controller" if r["role"] == "controller" else r["node"]): r["pid"] for r in rows
               if r["role"] == "controller" or r["node"] in KILLED_RELAYS}
    assert len(victims) == 1 + len(KILLED_RELAYS) and all(victims.values()), victims
    failures0 = net.health("0")["stock"]["A:B"]
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    for pid in victims.values():
        wait_for(lambda pid=pid: not alive(pid), 10, f"pid {pid} to die")
    c0 = net.a_at_0.count("B")  # A's node answers status alone, the controller dead
    served, end = [], None
    t = time.monotonic()
    for _ in range(c0 + 30):
        r = net.a_at_0.enc("B", number=1)
        if r.status_code != 200:
            end = r
            break
        c = r.json()
        assert c["key_container_extension"].get("qkdseg_from_stock") is True, c
        served += c["keys"]
    drain_s = time.monotonic() - t
    record("net", served)
    fetch_all(net.b_at_7, "A", served)  # B's node is alive: every stocked key it was issued is there
    assert end is not None, f"{len(served)} keys served with the controller dead and no 503"
    body = end.json()
    report("net outage", stock_at_kill=c0, served_from_stock=len(served), drain_s=round(drain_s, 2),
           end_status=end.status_code, end_body=body, end_content_type=end.headers.get("content-type"))
    assert end.status_code == 503 and isinstance(body.get("message"), str) and body["message"], (end.status_code, body)
    assert "application/json" in end.headers.get("content-type", "")
    assert len(served) >= c0 >= LOW, (len(served), c0)
    assert net.a_at_0.count("B") == 0
    r = net.a_at_0.enc("B", number=1)
    assert r.status_code == 503, r.text
    h = net.health("0")["stock"]["A:B"]
    report("net health A:B while the controller is dead", **h)
    assert h["keys"] == 0
    # bring them back the way an operator would: controller serve CTRLDIR, node serve NODEDIR
    t = time.monotonic()
    net.start("controller", "serve", str(net.dir / "controller"))
    for n in KILLED_RELAYS:
        net.start("node", "serve", str(net.dir / "nodes" / net.names[n]))
    seen = []

    def refilled():
        seen.append(net.a_at_0.count("B"))
        return seen[-1] >= HIGH

    wait_for(refilled, 180, f"the stock refilled after the restarts (counts seen: {sorted(set(seen))})", step=0.5)
    report("net refill after restart", seconds=round(time.monotonic() - t, 1), counts_seen=sorted(set(seen)),
           failures_before=failures0.get("refill_failures"), health=net.health("0")["stock"]["A:B"])
    r = net.a_at_0.enc("B", number=2)
    assert r.status_code == 200 and r.json()["key_container_extension"].get("qkdseg_from_stock") is True, r.text
    record("net", r.json()["keys"])
    fetch_all(net.b_at_7, "A", r.json()["keys"])


def test_net_stock_metrics_at_the_master_and_the_slave(net):
    """docs/deploy.md: qkdseg_stock_* with `pair` = MASTER:SLAVE at a node of a stocked pair (the slave's node:
    the copies it holds)."""
    wait_for(lambda: net.a_at_0.count("B") >= LOW, 120, "the stock at LOW or above")
    m0, m7 = net.metrics("0"), net.metrics("7")
    lab = '{pair="A:B"}'
    missing = {n: [name for name in STOCK_METRICS if name + lab not in m] for n, m in (("0", m0), ("7", m7))}
    report("net metrics", node0={k: v for k, v in m0.items() if "stock" in k},
           node7={k: v for k, v in m7.items() if "stock" in k})
    assert not missing["0"] and not missing["7"], missing
    count = net.a_at_0.count("B")
    assert m0["qkdseg_stock_keys" + lab] == count and m0["qkdseg_stock_target_keys" + lab] == HIGH
    assert m7["qkdseg_stock_keys" + lab] >= count  # every stocked key A's node can serve is held at B's node
    assert m0["qkdseg_stock_hits_total" + lab] >= 200 and m0["qkdseg_stock_misses_total" + lab] >= 1
    assert m0["qkdseg_stock_refill_failures_total" + lab] >= 1  # the outage above
    assert m0["qkdseg_stock_keys_refilled_total" + lab] >= 2 * HIGH


# -- kms serve ---------------------------------------------------------------------------------------------------
class Kms:
    def __init__(self, d: Path, proc: subprocess.Popen, port: int, mport: int, t0: float):
        self.dir, self.proc, self.port, self.mport, self.t0 = d, proc, port, mport, t0
        host = f"127.0.0.1:{port}"
        self.a, self.b = (Etsi(d / "pki", s, host) for s in ("A", "B"))

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.mport}/metrics")

    def refill_records(self) -> list[dict]:
        """The audited refill runs (docs/kms.md: `"event": "stock refill"` records with their key ids)."""
        recs = (json.loads(line) for line in (self.dir / "audit.jsonl").read_text().splitlines())
        return [r for r in recs if r.get("event") == "stock refill"]

    def refill_times(self) -> dict[str, float]:
        """key_ID -> time of its refill run's record."""
        return {i: r["time"] for r in self.refill_records() for i in r.get("key_ids", [])}

    def stable_stock(self, need_s: float) -> None:
        """Wait until the stock is full and the refill runs that made it are recent enough that none of its keys
        expires within ``need_s`` (its keys expire together, ``key_ttl_s`` after their run)."""

        def ok():
            count = self.a.count("B")
            if count < KHIGH:
                return False
            runs = sorted(self.refill_runs(), reverse=True)
            got, oldest = 0, None
            for t, n in runs:
                got, oldest = got + n, t
                if got >= count:
                    break
            return oldest is not None and time.time() - oldest <= KTTL - need_s

        wait_for(ok, KTTL + 30, f"a full kms stock that lasts {need_s} s", step=0.2)

    def refill_runs(self) -> list[tuple[float, int]]:
        return [(r["time"], len(r.get("key_ids", []))) for r in self.refill_records()]


@pytest.fixture(scope="module")
def kms():
    base = Path(tempfile.mkdtemp(prefix="chk34-kms-"))
    d = base / "kms"
    proc = None
    try:
        r = run(["kms", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7", "--sae", "C=4",
                 "--security-level", str(LEVEL), "--stock", "A:B", "--stock-keys", f"{KLOW}:{KHIGH}",
                 "--key-ttl", str(KTTL)])
        assert r.returncode == 0, r.stdout + r.stderr
        t0 = time.monotonic()
        proc = subprocess.Popen([QKDSEG, "kms", "serve", str(d), "--port", "0", "--metrics-port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        found: dict[str, int] = {}

        def reader():
            for line in proc.stdout:
                lines.append(line)
                m = re.search(r"ETSI GS QKD 014 on https://127\.0\.0\.1:(\d+)/", line)
                if m:
                    found["port"] = int(m.group(1))
                m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
                if m:
                    found["mport"] = int(m.group(1))

        threading.Thread(target=reader, daemon=True).start()
        wait_for(lambda: ("port" in found and "mport" in found) or proc.poll() is not None, 240, "kms serve's URLs")
        assert "port" in found and "mport" in found, "".join(lines)
        k = Kms(d, proc, found["port"], found["mport"], t0)
        report("kms serve up", seconds=round(time.monotonic() - t0, 1), load=os.getloadavg()[0])
        yield k
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        if os.environ.get("CHK34_KEEP"):
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)


def test_kms_stock_fills_status_and_metrics(kms):
    """docs/kms.md "Key stocks" and Table 9; docs/deploy.md: the qkdseg_stock_* metrics."""
    seen = []

    def full():
        seen.append(kms.a.count("B"))
        return seen[-1] >= KHIGH

    wait_for(full, 60, "the kms stock to reach HIGH")
    report("kms fill", counts_seen=sorted(set(seen)), after_s=round(time.monotonic() - kms.t0, 1))
    st = kms.a.status("B").json()
    stock = st["status_extension"]["qkdseg_stock"]
    assert st["stored_key_count"] == stock["keys"] == KHIGH, st
    assert (stock["target"], stock["low"], stock["high"], stock["level"], stock["size"]) == (
        KHIGH, KLOW, KHIGH, LEVEL, 256), stock
    assert "qkdseg_stock" not in kms.a.status("C").json().get("status_extension", {})  # A:C: no stock
    m = kms.metrics()
    lab = '{pair="A:B"}'
    missing = [n for n in STOCK_METRICS if n + lab not in m]
    report("kms metrics", **{k: v for k, v in m.items() if "stock" in k})
    assert not missing, missing
    assert m["qkdseg_stock_target_keys" + lab] == KHIGH
    assert m["qkdseg_stock_keys_refilled_total" + lab] >= KHIGH and m["qkdseg_stock_refill_runs_total" + lab] >= 1


def test_kms_serves_from_stock_both_directions_and_counts_a_miss(kms):
    kms.stable_stock(need_s=6.0)
    lab = '{pair="A:B"}'
    m0 = kms.metrics()
    c, ext = take_from_stock(kms.a, "B", 3, "kms")
    assert ext.get("qkdseg_route", "absent") is None, ext  # docs/kms.md: `qkdseg_route` is null
    fetch_all(kms.b, "A", c["keys"])
    # kms serve: a stock A:B serves B:A requests too
    r = kms.b.enc("A", number=1)
    assert r.status_code == 200, r.text
    record("kms", r.json()["keys"])
    assert r.json()["key_container_extension"].get("qkdseg_from_stock") is True, r.json()
    fetch_all(kms.a, "B", r.json()["keys"])
    # another size: says nothing of the stock
    r = kms.a.enc("B", number=1, size=512)
    assert r.status_code == 200 and "qkdseg_from_stock" not in r.json()["key_container_extension"], r.text
    record("kms", r.json()["keys"], 512)
    fetch_all(kms.b, "A", r.json()["keys"])
    # a miss: more keys than the stock holds
    n = kms.a.count("B") + 5
    r = kms.a.enc("B", number=n)
    assert r.status_code == 200, r.text
    record("kms", r.json()["keys"])
    assert r.json()["key_container_extension"].get("qkdseg_from_stock") is False, r.json()["key_container_extension"]
    fetch_all(kms.b, "A", r.json()["keys"])
    m1 = kms.metrics()
    assert m1["qkdseg_stock_hits_total" + lab] - m0["qkdseg_stock_hits_total" + lab] == 2
    assert m1["qkdseg_stock_misses_total" + lab] - m0["qkdseg_stock_misses_total" + lab] == 1
    assert m1["qkdseg_stock_keys_served_total" + lab] - m0["qkdseg_stock_keys_served_total" + lab] == 4


def test_kms_8_concurrent_clients(kms):
    wait_for(lambda: kms.a.count("B") >= KLOW, 60, "the kms stock above LOW")
    host = f"127.0.0.1:{kms.port}"
    allkeys = eight_clients(kms.dir / "pki", host, host, rounds=8)
    record("kms", allkeys)
    assert len({k["key_ID"] for k in allkeys}) == 64


def test_kms_issued_stock_key_gets_a_fresh_key_ttl(kms):
    """docs/kms.md: an issued key gets a fresh key_ttl_s when it leaves the stock (model.md 8c): a key that waited
    in stock is fetched by its slave after its age passed key_ttl_s but within key_ttl_s of its issue. The control:
    a key issued at the same moment and not fetched within key_ttl_s + 4 s is gone (the expiry is that prompt)."""
    wait_for(lambda: kms.a.count("B") >= 1, 60, "a stocked key")
    late = 4.0
    for _ in range(40):
        t_issue = time.time()
        r = kms.a.enc("B", number=1)
        assert r.status_code == 200, r.text
        k = r.json()["keys"][0]
        record("kms", [k])
        born = kms.refill_times().get(k["key_ID"])  # None: a spare key left by a request relayed on demand
        age = None if born is None else t_issue - born
        if r.json()["key_container_extension"].get("qkdseg_from_stock") and age and late + 1 <= age <= KTTL - 2:
            break
        fetch_all(kms.b, "A", [k])
        time.sleep(1.0)
    else:
        pytest.fail("no stocked key of a suitable age in 40 tries")
    r = kms.a.enc("B", number=1, size=512)  # the control: not from stock, its key_ttl_s counted from now
    assert r.status_code == 200, r.text
    control = r.json()["keys"][0]
    t_control = time.time()
    record("kms", [control], 512)
    fetch_at = born + KTTL + late  # past the stocked key's expiry counted from its refill; < KTTL after its issue
    time.sleep(max(0.0, fetch_at - time.time()))
    r = kms.b.dec("A", [k["key_ID"]])
    after_issue = time.time() - t_issue
    time.sleep(max(0.0, t_control + KTTL + late - time.time()))
    rc = kms.b.dec("A", [control["key_ID"]])
    report("kms fresh ttl", age_at_issue_s=round(age, 1), fetched_after_issue_s=round(after_issue, 1),
           key_ttl_s=KTTL, status=r.status_code, control_status=rc.status_code)
    assert rc.status_code == 400 and rc.json()["message"] == NOT_FOUND, rc.text
    assert r.status_code == 200 and r.json()["keys"][0]["key"] == k["key"], r.text


def test_kms_stocked_keys_expire_unused_and_the_stock_is_refilled(kms):
    """docs/kms.md: stocked keys expire after key_ttl_s, counted as expired unused; below LOW runs follow."""
    lab = '{pair="A:B"}'
    m0 = kms.metrics()
    seen = []

    def expired_and_refilled():
        m = kms.metrics()
        seen.append(kms.a.count("B"))
        return (m["qkdseg_stock_keys_expired_unused_total" + lab] > m0["qkdseg_stock_keys_expired_unused_total" + lab]
                and m["qkdseg_stock_refill_runs_total" + lab] > m0["qkdseg_stock_refill_runs_total" + lab]
                and seen[-1] >= KLOW and m)

    m1 = wait_for(expired_and_refilled, KTTL + 30, "stocked keys expired unused and refilled", step=0.5)
    report("kms expiry", expired_unused=(m0["qkdseg_stock_keys_expired_unused_total" + lab],
                                         m1["qkdseg_stock_keys_expired_unused_total" + lab]),
           refill_runs=(m0["qkdseg_stock_refill_runs_total" + lab], m1["qkdseg_stock_refill_runs_total" + lab]),
           counts_seen=sorted(set(seen)))
    expire = [json.loads(x) for x in (kms.dir / "audit.jsonl").read_text().splitlines() if '"expire"' in x]
    assert expire, "no expire record in the audit"


# -- bad configuration -------------------------------------------------------------------------------------------
def test_bad_stock_configuration_is_one_line_exit_2(tmp_path):
    base = ["--network", "example", "--sae", "A=0", "--sae", "B=7"]
    cases = [
        (["net", "init", str(tmp_path / "n1"), *base, "--stock", "A:X"], ("--stock", "X")),
        (["net", "init", str(tmp_path / "n2"), *base, "--stock", "A:B", "--stock-keys", "20:10"], ("--stock-keys",)),
        (["net", "init", str(tmp_path / "n3"), *base, "--stock", "A:B", "--stock-level", "1.5"], ("--stock-level",)),
        (["net", "init", str(tmp_path / "n4"), *base, "--stock", "A:B", "--stock-size", "100"], ("--stock-size",)),
        (["kms", "init", str(tmp_path / "k1"), *base, "--stock", "Z:B"], ("--stock", "Z")),
        (["kms", "init", str(tmp_path / "k2"), *base, "--stock", "A:B", "--stock-keys", "9:3"], ("--stock-keys",)),
        (["kms", "init", str(tmp_path / "k3"), *base, "--stock", "A:B", "--stock-level", "0"], ("--stock-level",)),
        (["kms", "init", str(tmp_path / "k4"), *base, "--stock", "A:B", "--stock-size", "8192"], ("--stock-size",)),
    ]
    good = tmp_path / "good"
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(run, args) for args, _ in cases]
        fgood = ex.submit(run, ["kms", "init", str(good), *base, "--stock", "A:B"])
        results = [f.result() for f in futs]
        rg = fgood.result()
    lines = [one_line_exit_2(r, *needles) for r, (_, needles) in zip(results, cases)]
    assert rg.returncode == 0, rg.stderr
    # [stock] in kms.toml: kms serve stops with one line naming the file and the field (docs/kms.md, kms.toml)
    toml = (good / "kms.toml").read_text()
    edits = [("low = 16", "low = 70", ("low", "high")), ('"A:B"', '"A:Q"', ("pairs",))]
    for old, new, fields in edits:
        assert old in toml, (old, toml)
        (good / "kms.toml").write_text(toml.replace(old, new))
        r = run(["kms", "serve", str(good), "--port", "0"], timeout=120)
        err = one_line_exit_2(r, "kms.toml", "stock")
        lines.append(err)
        assert any(f in err for f in fields), (fields, err)
    report("bad configuration", lines=lines)


def test_no_key_issued_twice_across_the_module():
    """Over everything above: no key_ID returned twice by enc_keys, no key bytes under two key_IDs."""
    ids = [i for _, i, _ in LEDGER]
    assert len(ids) == len(set(ids)), [x for x in ids if ids.count(x) > 1][:5]
    by_bytes: dict[bytes, str] = {}
    for _, i, raw in LEDGER:
        assert by_bytes.setdefault(raw, i) == i, f"the same key bytes under {by_bytes[raw]} and {i}"
    report("ledger", keys=len(LEDGER), net=sum(1 for s, *_ in LEDGER if s == "net"),
           kms=sum(1 for s, *_ in LEDGER if s == "kms"))
    assert len(LEDGER) > 500
