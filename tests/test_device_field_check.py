"""Independent field check of "Link keys from devices" (docs/kms.md), written from the docs alone.

Real processes on loopback, started and stopped here: `qkdseg kms init DIR --link-source device`,
`qkdseg device serve DIR/devices` (the QKD device emulator) and `qkdseg kms serve DIR` fed by it. The
ETSI GS QKD 014 client is this file's own (plain `requests` with the SAE certificates of DIR/pki); it
uses no qkdseg Python code. What is checked, and the doc sentence behind each check, is in each test.

The tests share one module-scoped set-up and run in file order: the status and deliveries, the device
keys' bookkeeping while the emulator runs, a `kill -9` of the emulator during deliveries, its restart,
and a clean stop with the final bookkeeping over both lives of the emulator; then careless inputs.

Doc ambiguities met while writing it (also noted where they matter):
- The DB columns of `device_keys` other than `used` and the states (`held`, `used`, `skipped`) are not
  documented ("read by the tests"), nor the one that maps a row to its link. We read the key id from a
  column `key_id`, the key's size from `nbytes` and its link from `k` (the link's index, as in
  "`k` = the link's index in the network file's order" for the certificate names), and fail with the
  table's real columns if they differ. The fetch order is taken from the emulator's keys.jsonl
  (documented: end a's enc_keys answers, in order), not from a DB column.
- "a key used up has state `used` and its bytes erased": we read "erased" as the stored blob being
  empty or all zero bytes.
- The device state after a kill: the table says "does not answer (stopped, killed, unreachable) ->
  `unreachable`"; a call cut in flight by the kill could read as another state, so we require every
  link to reach `unreachable` at some point, not that it is the only state seen.
- The 503 of the key service when the held keys run out: the docs quote "not enough key material";
  we require the 503 with a JSON `message`, and that the message says "key material".
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))
MASTER, SLAVE = "SAE_M", "SAE_S"  # at nodes 0 and 7 of `example`: the route crosses all 12 links
MASTER_NODE, SLAVE_NODE = "0", "7"
LEVEL = "0.5"  # the example network's best 0-7 route has exact security 0.884736 (docs/kms.md)
START_TIMEOUT = 40.0
HTTP_TIMEOUT = 10.0


# ----------------------------------------------------------------------------------------------------
# processes


class Proc:
    """One server process in its own process group, its stdout+stderr in a file."""

    def __init__(self, name: str, args: list[str], logdir: Path):
        self.name = name
        self.out = logdir / f"{name}.out"
        n = 1
        while self.out.exists():
            n += 1
            self.out = logdir / f"{name}-{n}.out"
        self._fh = open(self.out, "wb")
        self.p = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m:
                return m
            rc = self.p.poll()
            if rc is not None:
                raise AssertionError(f"{self.name} exited {rc} before printing {pattern!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} printed no {pattern!r} in {timeout} s:\n{self.text()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.p.poll() is None

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> int:
        self._signal_group(signal.SIGKILL)
        return self.p.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end within timeout; returns the SIGTERM's exit status or None."""
        rc = None
        if self.p.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                rc = self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
        else:
            rc = self.p.returncode
        # whatever is left of the group (also after a clean exit of the leader)
        self._signal_group(signal.SIGKILL)
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()
        return rc


def run_cli(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------------
# our own ETSI GS QKD 014 client (and the emulator's control API)


class Client:
    """An HTTPS client with one client certificate. trust_env=False and verify= per request: docs/kms.md
    "Client quirks found" (REQUESTS_CA_BUNDLE overrides Session.verify)."""

    def __init__(self, base: str, cert: Path, key: Path, ca: Path):
        self.base = base.rstrip("/")
        self.cert = (str(cert), str(key))
        self.ca = str(ca)
        self.s = requests.Session()
        self.s.trust_env = False

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> requests.Response:
        return self.s.get(self.base + path, cert=self.cert, verify=self.ca, timeout=timeout)

    def post(self, path: str, body, timeout: float = HTTP_TIMEOUT) -> requests.Response:
        return self.s.post(self.base + path, json=body, cert=self.cert, verify=self.ca, timeout=timeout)

    def close(self) -> None:
        self.s.close()


def json_body(r: requests.Response):
    try:
        return r.json()
    except ValueError:
        return None


class Outcome:
    def __init__(self):
        self.ok = False
        self.status = None      # enc_keys status (or None: no HTTP answer)
        self.body = None        # the error body (JSON) of a refused enc_keys
        self.error = None       # what was wrong, None when the delivery is as the docs say
        self.keys: dict[str, bytes] = {}
        self.consumed = 0
        self.number = 0
        self.size = 0

    def __repr__(self):
        return f"Outcome(ok={self.ok}, status={self.status}, error={self.error!r}, body={self.body!r})"


def deliver(master: Client, slave: Client, number: int, size: int) -> Outcome:
    """enc_keys by the master, dec_keys by the slave; checks identical keys of exactly `size` bits."""
    o = Outcome()
    o.number, o.size = number, size
    try:
        r = master.post(f"/api/v1/keys/{SLAVE}/enc_keys", {"number": number, "size": size})
    except requests.RequestException as e:
        o.error = f"enc_keys: no answer ({type(e).__name__}: {e})"
        return o
    o.status = r.status_code
    if r.status_code != 200:
        o.body = json_body(r)
        return o
    body = r.json()
    try:
        keys = {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in body["keys"]}
        route = body["key_container_extension"]["qkdseg_route"]
    except (KeyError, TypeError, ValueError) as e:
        o.error = f"enc_keys: not a Key container ({e}): {body}"
        return o
    o.consumed = 0 if route is None else int(route.get("consumed_bits", 0))
    o.keys = keys
    if len(keys) != number:
        o.error = f"enc_keys gave {len(keys)} keys for number={number}"
        return o
    bad = [len(v) * 8 for v in keys.values() if len(v) * 8 != size]
    if bad:
        o.error = f"key sizes {bad} for size={size}"
        return o
    try:
        r2 = slave.post(f"/api/v1/keys/{MASTER}/dec_keys", {"key_IDs": [{"key_ID": i} for i in keys]})
    except requests.RequestException as e:
        o.error = f"dec_keys: no answer ({type(e).__name__}: {e})"
        return o
    if r2.status_code != 200:
        o.error = f"dec_keys answered {r2.status_code}: {r2.text[:300]}"
        return o
    got = {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in r2.json()["keys"]}
    if got != keys:
        o.error = f"dec_keys gave other keys/ids than enc_keys ({sorted(got)} vs {sorted(keys)})"
        return o
    o.ok = True
    return o


def refusal_problem(o: Outcome) -> str | None:
    """None if `o` is a delivery as the docs say, or a refusal as the docs say for no key material:
    503 with a JSON body {"message": ...} (docs/kms.md Tables 12-13, "Device errors")."""
    if o.error:
        return o.error
    if o.ok:
        return None
    if o.status != 503:
        return f"enc_keys answered {o.status} (docs: 503 when no route has key): {o.body!r}"
    if not (isinstance(o.body, dict) and isinstance(o.body.get("message"), str)):
        return f"503 without a JSON {{'message': ...}} body: {o.body!r}"
    return None


# ----------------------------------------------------------------------------------------------------
# the records: the emulator's keys.jsonl, the service's database and audit log


def read_log(path: Path) -> list[dict]:
    """keys.jsonl, complete lines only (each is written with one write, before the answer)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    return [json.loads(l) for l in lines[:-1] if l.strip()]  # the part after the last \n is incomplete


def db_snapshot(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(device_keys)")]
        try:
            rows = con.execute("SELECT k, key_id, nbytes, used, state, blob FROM device_keys").fetchall()
        except sqlite3.OperationalError as e:
            raise AssertionError(f"device_keys has columns {cols} (this check reads k, key_id, nbytes, used, "
                                 f"state, blob: undocumented names, see the module docstring): {e}")
        links = {k: c for k, c in con.execute("SELECT k, consumed FROM links")}
    finally:
        con.close()
    return {"rows": [dict(k=r[0], key_id=r[1], nbytes=r[2], used=r[3], state=r[4], blob=bytes(r[5] or b""))
                     for r in rows], "consumed": links}


def read_audit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def norm(link: str) -> frozenset:
    return frozenset(link.split("|"))


# ----------------------------------------------------------------------------------------------------
# the set-up


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env()
    root = tmp_path_factory.mktemp("devfield")
    e.root = root
    e.dir = root / "svc"
    e.logs = root / "logs"
    e.logs.mkdir()
    e.procs: list[Proc] = []
    e.state = {}
    e.outcomes: list[Outcome] = []   # every delivery this file made, in order
    clients: list[Client] = []
    try:
        r = run_cli(["kms", "init", str(e.dir), "--network", "example", "--sae", f"{MASTER}={MASTER_NODE}",
                     "--sae", f"{SLAVE}={SLAVE_NODE}", "--security-level", LEVEL, "--link-source", "device"])
        assert r.returncode == 0, f"kms init failed ({r.returncode}): {r.stdout}{r.stderr}"
        e.devdir = e.dir / "devices"
        for f in ("device.toml", "keys.jsonl", "pki/ca.crt", "pki/server.crt", "pki/device-operator.crt",
                  "pki/device-operator.key"):
            assert (e.devdir / f).exists(), f"kms init --link-source device wrote no devices/{f}"
        e.kms_toml = tomllib.loads((e.dir / "kms.toml").read_text())
        e.dev_toml = tomllib.loads((e.devdir / "device.toml").read_text())
        e.dev_port = int(e.dev_toml["port"])
        e.links = {norm(name): dict(t, name=name) for name, t in e.dev_toml["links"].items()}
        e.log = e.devdir / "keys.jsonl"
        e.db = e.dir / "kms.sqlite3"

        e.start_device = lambda: _start_device(e)
        e.device = e.start_device()
        e.kms = Proc("kms", [QKDSEG, "kms", "serve", str(e.dir), "--port", "0", "--dashboard-port", "0"], e.logs)
        e.procs.append(e.kms)
        m = e.kms.wait_for(r"https://127\.0\.0\.1:(\d+)/api/v1/keys/")
        e.kms_port = int(m.group(1))
        m = e.kms.wait_for(r"dashboard on http://127\.0\.0\.1:(\d+)/dashboard/")
        e.dash = f"http://127.0.0.1:{m.group(1)}/dashboard/api/"
        base = f"https://127.0.0.1:{e.kms_port}"
        pki = e.dir / "pki"

        def sae_client(sae):
            c = Client(base, pki / f"{sae}.crt", pki / f"{sae}.key", pki / "ca.crt")
            clients.append(c)
            return c

        e.sae_client = sae_client
        e.master, e.slave = sae_client(MASTER), sae_client(SLAVE)
        e.operator = Client(f"https://127.0.0.1:{e.dev_port}", e.devdir / "pki/device-operator.crt",
                            e.devdir / "pki/device-operator.key", e.devdir / "pki/ca.crt")
        clients.append(e.operator)
        net = requests.get(e.dash + "network", timeout=HTTP_TIMEOUT).json()
        e.link_of_k = {l["index"]: frozenset((str(l["u"]), str(l["v"]))) for l in net["links"]}
        assert set(e.link_of_k.values()) == set(e.links), "the emulator's links are not the network's links"
        yield e
    finally:
        for c in clients:
            c.close()
        for p in reversed(e.procs):
            p.stop(timeout=10)


def _start_device(e: Env) -> Proc:
    p = Proc("device", [QKDSEG, "device", "serve", str(e.devdir)], e.logs)
    e.procs.append(p)
    p.wait_for(rf"https://127\.0\.0\.1:{e.dev_port}/api/v1/keys/")
    return p


def counters(e: Env) -> dict:
    r = e.operator.get("/qkdseg/v1/counters")
    assert r.status_code == 200, f"counters: {r.status_code} {r.text[:300]}"
    return r.json()


def wait_pools_full(e: Env, timeout: float = 20.0) -> dict:
    """Waits until the service's fetch loops have refilled every pool ("again at once if the device holds
    more and the pool has room"): no key pending at the emulator, the counters and the database unchanged
    over two polls, and every link's held bits within one device key of its capacity."""
    deadline = time.monotonic() + timeout
    prev, stable = None, 0
    last = None
    while time.monotonic() < deadline:
        c = counters(e)
        snap = db_snapshot(e.db)
        held = held_bits(e, snap)
        full = all(e.links[l]["buffer_bits"] - held.get(l, 0) < e.links[l]["key_size"] for l in e.links)
        key = (tuple(sorted((l, v["issued"], v["delivered"], v["pending"]) for l, v in c["links"].items())),
               len(snap["rows"]))
        pending = sum(v["pending"] for v in c["links"].values())
        last = (c, snap, held)
        if pending == 0 and full and key == prev:
            stable += 1
            if stable >= 1:
                return {"counters": c, "db": snap, "held": held}
        else:
            stable = 0
        prev = key
        time.sleep(0.4)
    raise AssertionError(f"the pools did not refill from the devices within {timeout} s: held {last[2]}, "
                         f"counters {last[0]}")


def held_bits(e: Env, snap: dict) -> dict:
    held = defaultdict(int)
    for r in snap["rows"]:
        if r["state"] == "held":
            held[e.link_of_k[r["k"]]] += 8 * (r["nbytes"] - r["used"])
    return held


def check_books(e: Env, log: list[dict], snap: dict, my_consumed: int, complete: bool) -> list[str]:
    """The device-key bookkeeping of docs/kms.md "Link keys from devices". Returns the problems found.
    complete=True: every fetch of the service has been recorded at both sides (the emulator quiet)."""
    problems = []
    enc = {}            # key id -> link (normalized)
    dec = {}
    lost = set()
    order = defaultdict(list)   # link -> key ids in the order end a received them
    enc_count = Counter()
    dec_count = Counter()
    for n, rec in enumerate(log, 1):
        op, link = rec.get("op"), rec.get("link")
        if op not in ("enc_keys", "dec_keys", "lost", "expired"):
            problems.append(f"keys.jsonl line {n}: op {op!r}")
            continue
        if link is None or norm(link) not in e.links:
            problems.append(f"keys.jsonl line {n}: unknown link {link!r}")
            continue
        L = e.links[norm(link)]
        nl = norm(link)
        for kid in rec.get("key_ids", []):
            if op == "enc_keys":
                enc_count[kid] += 1
                enc[kid] = nl
                order[nl].append(kid)
                if rec.get("sae") != L["a_sae"]:
                    problems.append(f"line {n}: enc_keys by {rec.get('sae')!r}, the service's end a is {L['a_sae']!r}")
            elif op == "dec_keys":
                dec_count[kid] += 1
                dec[kid] = nl
                if rec.get("sae") != L["b_sae"]:
                    problems.append(f"line {n}: dec_keys by {rec.get('sae')!r}, the service's end b is {L['b_sae']!r}")
                if enc.get(kid) != nl:
                    problems.append(f"line {n}: dec_keys of {kid} on {link}, not issued there before")
            else:
                lost.add(kid)
                if kid in dec:
                    problems.append(f"line {n}: {kid} {op} after its dec_keys")
    twice = [k for k, c in enc_count.items() if c > 1]
    if twice:
        problems.append(f"{len(twice)} device key ids issued by enc_keys more than once, e.g. {twice[:3]}")
    twice = [k for k, c in dec_count.items() if c > 1]
    if twice:
        problems.append(f"{len(twice)} device key ids delivered by dec_keys more than once, e.g. {twice[:3]}")

    rows = snap["rows"]
    ids = Counter(r["key_id"] for r in rows)
    dup = [k for k, c in ids.items() if c > 1]
    if dup:
        problems.append(f"device_keys holds {len(dup)} key ids twice, e.g. {dup[:3]}")
    by_id = {r["key_id"]: r for r in rows}
    for r in rows:
        kid, link = r["key_id"], e.link_of_k.get(r["k"])
        if link is None:
            problems.append(f"device_keys row of unknown link index {r['k']}")
            continue
        if enc.get(kid) != link:
            problems.append(f"device_keys {kid} ({r['state']}) on link {sorted(link)} was never issued there by "
                            f"the emulator's enc_keys")
            continue
        if r["state"] in ("held", "used"):
            if dec.get(kid) != link:
                problems.append(f"device_keys {kid} is {r['state']} but end b never got it by dec_keys "
                                f"(a key of one end only)")
            if r["nbytes"] * 8 != e.links[link]["key_size"]:
                problems.append(f"device_keys {kid}: {r['nbytes']} bytes, the link's key_size is "
                                f"{e.links[link]['key_size']} bits")
            if not 0 <= r["used"] <= r["nbytes"]:
                problems.append(f"device_keys {kid}: used {r['used']} of {r['nbytes']} bytes")
            if r["state"] == "used" and (r["used"] != r["nbytes"] or any(r["blob"])):
                problems.append(f"device_keys {kid}: state used, used {r['used']}/{r['nbytes']}, "
                                f"{len(r['blob'])} blob bytes left (docs: used up, bytes erased)")
            if r["state"] == "held" and r["used"] == r["nbytes"]:
                problems.append(f"device_keys {kid}: all bytes used but state held")
        elif r["state"] == "skipped":
            if r["used"] != 0 or any(r["blob"]):
                problems.append(f"device_keys {kid}: skipped but used {r['used']}, {len(r['blob'])} blob bytes")
        else:
            problems.append(f"device_keys {kid}: state {r['state']!r}")
    # every key both ends fetched is held or used by the service; a key end b never got is not
    if complete:
        for kid, link in dec.items():
            r = by_id.get(kid)
            if r is None or r["state"] not in ("held", "used"):
                problems.append(f"device key {kid} of {sorted(link)} went to both ends but the service has "
                                f"{'no row' if r is None else r['state']}")
    # "Relays read a link's held keys as one byte stream, in the order end a received them; each byte is
    # used once": along that order, used-up keys, then at most one partly used key, then unused keys.
    consumed_db = snap["consumed"]
    total_used_bits = 0
    for link, kids in order.items():
        seq = [by_id[k] for k in kids if k in by_id and by_id[k]["state"] in ("held", "used")]
        phase = 0   # 0: used up so far, 1: after a partly used key or an unused one
        for r in seq:
            full = r["used"] == r["nbytes"]
            if phase == 0 and not full:
                phase = 1
            elif phase == 1 and r["used"] != 0:
                problems.append(f"link {sorted(link)}: key {r['key_id']} used ({r['used']} bytes) after a "
                                f"key not used up: not one byte stream in fetch order")
                break
        used_bits = 8 * sum(r["used"] for r in seq)
        total_used_bits += used_bits
        k = next(k for k, l in e.link_of_k.items() if l == link)
        if consumed_db.get(k, 0) != used_bits:
            problems.append(f"link {sorted(link)}: links.consumed {consumed_db.get(k, 0)} != 8 x device bytes "
                            f"used {used_bits}")
    if sum(consumed_db.values()) != my_consumed:
        problems.append(f"the links consumed {sum(consumed_db.values())} bits, the deliveries made here "
                        f"report consumed_bits summing to {my_consumed}")
    if total_used_bits != my_consumed:
        problems.append(f"device key bits used {total_used_bits} != consumed_bits of the deliveries {my_consumed}")
    return problems


def all_keys_distinct(outcomes: list[Outcome]) -> list[str]:
    seen_id, seen_bytes, out = set(), set(), []
    for o in outcomes:
        for kid, b in o.keys.items():
            if kid in seen_id:
                out.append(f"key id {kid} issued twice")
            if b in seen_bytes:
                out.append(f"key bytes of {kid} issued before under another id")
            seen_id.add(kid)
            seen_bytes.add(b)
    return out


def consumed_sum(e: Env) -> int:
    return sum(o.consumed for o in e.outcomes if o.ok)


# ----------------------------------------------------------------------------------------------------
# the tests


STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
                 "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size", "min_key_size",
                 "max_SAE_ID_count"}


def test_status_of_the_device_fed_service(env):
    """docs/kms.md Table 9: the 11 required fields; the service's own values from kms.toml."""
    r = env.master.get(f"/api/v1/keys/{SLAVE}/status")
    assert r.status_code == 200, r.text
    s = r.json()
    assert STATUS_FIELDS <= set(s), f"missing {STATUS_FIELDS - set(s)}"
    assert s["master_SAE_ID"] == MASTER and s["slave_SAE_ID"] == SLAVE
    assert s["source_KME_ID"] == s["target_KME_ID"] == env.kms_toml["kme_id"]
    assert s["key_size"] == env.kms_toml["key_size"] == 256
    assert s["max_SAE_ID_count"] == 0
    for f in STATUS_FIELDS - {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID"}:
        assert type(s[f]) is int, f"{f} = {s[f]!r} is not a JSON integer"
    # the emulator's status, with end a's certificate of one link (docs: key_size = the link's,
    # min_key_size = max_key_size = key_size, max_key_count = buffer_bits // key_size, max_SAE_ID_count 0)
    name, t = next(iter(env.dev_toml["links"].items()))
    k = re.fullmatch(r"link(\d+)-a", t["a_sae"])
    assert k, f"a_sae {t['a_sae']!r} (docs: certificates pki/link<k>-a.crt)"
    dev = Client(f"https://127.0.0.1:{env.dev_port}", env.devdir / f"pki/link{k.group(1)}-a.crt",
                 env.devdir / f"pki/link{k.group(1)}-a.key", env.devdir / "pki/ca.crt")
    try:
        r = dev.get(f"/api/v1/keys/{t['b_sae']}/status")
    finally:
        dev.close()
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["key_size"] == d["min_key_size"] == d["max_key_size"] == t["key_size"]
    assert d["max_key_count"] == t["buffer_bits"] // t["key_size"]
    assert d["max_SAE_ID_count"] == 0
    assert d["source_KME_ID"] == env.dev_toml["kme_id"]


def test_deliveries_give_identical_keys(env):
    """docs/kms.md: "Each key is delivered once to the master (enc_keys) and once to its slave (dec_keys);
    both get identical bytes, exactly `size` bits." With link keys from the devices."""
    wait_pools_full(env)   # the first fill from the devices
    plan = [(1, 256), (3, 256), (2, 512), (1, 64), (4, 4096), (2, 1024), (1, 256)]
    outs = [deliver(env.master, env.slave, n, s) for n, s in plan]
    env.outcomes.extend(outs)
    bad = [(p, o) for p, o in zip(plan, outs) if not o.ok]
    assert not bad, f"deliveries failed: {bad}"
    assert not all_keys_distinct(outs)
    assert consumed_sum(env) > 0, "no delivery consumed link key: the check proves nothing"
    # a key already delivered is gone (Tables 12-13: 400 for an already delivered key id)
    kid = next(iter(outs[0].keys))
    r = env.slave.post(f"/api/v1/keys/{MASTER}/dec_keys", {"key_IDs": [{"key_ID": kid}]})
    assert r.status_code == 400 and isinstance(json_body(r), dict), (r.status_code, r.text)


def test_device_keys_consumed_once_while_the_emulator_runs(env):
    """docs/kms.md "The sequence of calls", "Its records", "Its control API": every device key id is
    issued once (enc_keys by end a), fetched once by end b, held or used by the service only when both ends
    got it, its bytes used once in fetch order; links.consumed = 8 x the device bytes used; the counters
    agree with the log; the level is the bits held."""
    q = wait_pools_full(env)
    c, snap = q["counters"], q["db"]
    log = read_log(env.log)
    problems = check_books(env, log, snap, consumed_sum(env), complete=True)
    # the counters (this emulator process since its start = the whole log so far)
    enc_n, dec_n, lost_n = Counter(), Counter(), Counter()
    for rec in log:
        n = len(rec["key_ids"])
        {"enc_keys": enc_n, "dec_keys": dec_n}.get(rec["op"], lost_n)[norm(rec["link"])] += n
    for name, v in c["links"].items():
        l = norm(name)
        if v["issued"] != v["delivered"] + v["pending"] + v["lost"] + v["expired"]:
            problems.append(f"counters {name}: issued != delivered + pending + lost + expired: {v}")
        if (v["issued"], v["delivered"]) != (enc_n[l], dec_n[l]):
            problems.append(f"counters {name}: issued/delivered {v['issued']}/{v['delivered']}, keys.jsonl "
                            f"{enc_n[l]}/{dec_n[l]}")
        fetched = sum(1 for r in snap["rows"] if env.link_of_k[r["k"]] == l and r["state"] != "skipped")
        if fetched != v["delivered"]:
            problems.append(f"{name}: the service holds or used {fetched} device keys, the device delivered "
                            f"{v['delivered']}")
    # the level is the device key bits held (docs/model.md section 8; dashboard pools)
    pools = requests.get(env.dash + "pools", timeout=HTTP_TIMEOUT).json()
    for k, level in enumerate(pools["levels"]):
        held = q["held"].get(env.link_of_k[k], 0)
        if level != held:
            problems.append(f"link {k}: level {level} != device bits held {held}")
    assert not problems, "\n".join(problems)
    env.state["checked_once"] = True


def test_lost_device_keys_are_skipped_at_both_ends(env):
    """docs/kms.md: the `lose` fault "drops the next `count` keys issued (per link) before their dec_keys, so
    the other end's dec_keys gets 400"; then step 3' fetches the others one by one ("the keys end b can
    fetch are kept") and "a key id that one end could not fetch is skipped at both ends, never half-used"."""
    name = next(iter(env.dev_toml["links"]))
    link = norm(name)
    k = next(k for k, l in env.link_of_k.items() if l == link)
    lines0 = len(read_log(env.log))
    r = env.operator.post("/qkdseg/v1/faults", {"mode": "lose", "delay_s": 0, "count": 3, "links": [name]})
    assert r.status_code == 200, f"faults: {r.status_code} {r.text[:300]}"
    try:
        # 4 x 4096 bits: 8192 bits of every link's pool used, so every fetch loop refills
        o = deliver(env.master, env.slave, 4, 4096)
        env.outcomes.append(o)
        assert o.ok, o
        q = wait_pools_full(env)
    finally:
        r = env.operator.post("/qkdseg/v1/faults", {"mode": "none"})
    assert r.status_code == 200, f"faults none: {r.status_code} {r.text[:300]}"
    log = read_log(env.log)
    lost = {kid for rec in log[lines0:] if rec["op"] == "lost" for kid in rec["key_ids"]}
    problems = []
    if len(lost) != 3 or any(norm(rec["link"]) != link for rec in log[lines0:] if rec["op"] == "lost"):
        problems.append(f"keys.jsonl: lost {sorted(lost)} after a lose fault of 3 keys on {name}")
    skipped = {r["key_id"] for r in q["db"]["rows"] if r["state"] == "skipped"}
    if skipped != lost:
        problems.append(f"the service skipped {sorted(skipped)}, the emulator lost {sorted(lost)}")
    c = q["counters"]["links"][name]
    if c["lost"] != 3:
        problems.append(f"counters {name}: lost {c['lost']} (3 keys lost)")
    fetched_here = [r for r in q["db"]["rows"] if r["k"] == k and r["state"] != "skipped"]
    if len(fetched_here) != c["delivered"]:
        problems.append(f"{name}: {len(fetched_here)} keys held or used, the device delivered {c['delivered']}")
    problems += check_books(env, log, q["db"], consumed_sum(env), complete=True)
    o = deliver(env.master, env.slave, 2, 256)
    env.outcomes.append(o)
    if not o.ok:
        problems.append(f"a delivery after the lose fault: {o}")
    assert not problems, "\n".join(problems)
    env.state["lost"] = lost


def test_kill_9_of_the_emulator_during_deliveries(env):
    """docs/kms.md "Device errors": "The key service itself never stops for a device: it serves from the
    keys held, and answers its own 503 ("not enough key material") only when no route has key". Every
    request made around the kill is either a delivery with identical keys or that 503 with a JSON body."""
    outs: list[Outcome] = []
    killed = threading.Event()
    done = threading.Event()
    after_kill_503 = [0]

    def loop():
        m, s = env.sae_client(MASTER), env.sae_client(SLAVE)
        try:
            for _ in range(60):
                # 4 keys of 4096 bits = 2 relays on the 12-link route: 8192 bits per link, so a pool
                # of 100000 bits is drained in about 12 deliveries once the device is gone
                o = deliver(m, s, 4, 4096)
                o.after_kill = killed.is_set()
                outs.append(o)
                if o.after_kill and not o.ok:
                    after_kill_503[0] += 1
                    if after_kill_503[0] >= 3:
                        break
        finally:
            done.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while sum(o.ok for o in outs) < 3 and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.02)
    assert sum(o.ok for o in outs) >= 3, f"no deliveries before the kill: {outs}"
    rc = env.device.kill9()
    killed.set()
    env.state["killed_at"] = time.time()
    t.join(40)
    env.outcomes.extend(outs)
    assert not t.is_alive(), "the delivery loop hung after the device was killed"
    assert rc == -signal.SIGKILL
    after = [o for o in outs if o.after_kill]
    print(f"kill test: {len(outs)} requests, {sum(o.ok for o in outs)} delivered, {len(after)} after the kill "
          f"({sum(o.ok for o in after)} delivered), statuses {Counter(o.status for o in outs)}")
    problems = [f"request {i}{' (after the kill)' if o.after_kill else ''}: {refusal_problem(o)}"
                for i, o in enumerate(outs) if refusal_problem(o)]
    assert env.kms.alive(), f"kms serve ended after the device was killed:\n{env.kms.text()}"
    r = env.master.get(f"/api/v1/keys/{SLAVE}/status")
    assert r.status_code == 200 and STATUS_FIELDS <= set(r.json()), r.text
    refused = [o for o in after if not o.ok and o.status == 503]
    if not refused:
        problems.append("the held keys never ran out after the kill: no 503 in "
                        f"{len(after)} requests of 8192 bits per link (the pools hold at most 100000)")
    for o in refused:
        msg = o.body.get("message", "") if isinstance(o.body, dict) else ""
        if "key material" not in msg.lower():
            problems.append(f"503 message {msg!r} (docs: \"not enough key material\")")
            break
    # a small request while the device is away: served from what is left, or the same JSON 503
    o = deliver(env.master, env.slave, 1, 64)
    env.outcomes.append(o)
    if refusal_problem(o):
        problems.append(f"a 64-bit request while the device is away: {refusal_problem(o)}")
    problems += all_keys_distinct(env.outcomes)
    # the service notices: its audit log records each link's device state (checked at the end, when the
    # file is synced)
    assert not problems, "\n".join(problems)


def test_deliveries_resume_after_the_emulator_restarts(env):
    """docs/kms.md "Device errors": "answers again -> ok: fetching resumes; the pool refills" (retries
    wait at most device_backoff_max_s = 5 s); the emulator restarted on the same directory."""
    assert "killed_at" in env.state, "the kill test did not run"
    assert env.kms.alive()
    n0 = len(read_log(env.log))
    env.state["log_lines_at_restart"] = n0
    env.device = env.start_device()
    t0 = time.monotonic()
    first = None
    tries: list[Outcome] = []
    while time.monotonic() - t0 < 20:
        o = deliver(env.master, env.slave, 4, 4096)
        tries.append(o)
        if o.ok or refusal_problem(o):
            first = o
            break
        time.sleep(0.5)
    env.outcomes.extend(tries)
    problems = [refusal_problem(o) for o in tries if refusal_problem(o)]
    assert not problems, problems
    assert first is not None and first.ok, (f"no delivery of 4 x 4096 bits within 20 s of the emulator's "
                                            f"restart: last {tries[-1:]}")
    print(f"restart test: first delivery {time.monotonic() - t0:.1f} s after the restart, {len(tries)} tries")
    # the first delivery needs 8192 bits on each link only; "the pool refills": wait for it (the links'
    # loops come back one by one, each after its own back-off), then deliver again
    wait_pools_full(env)
    outs = [deliver(env.master, env.slave, n, s) for n, s in [(4, 4096), (2, 256), (1, 512)]]
    env.outcomes.extend(outs)
    assert all(o.ok for o in outs), outs
    assert not all_keys_distinct(env.outcomes)
    # the new process's counters agree with the log lines it wrote (its counters start at 0)
    q = wait_pools_full(env)
    log = read_log(env.log)[n0:]
    enc_n, dec_n = Counter(), Counter()
    for rec in log:
        if rec["op"] == "enc_keys":
            enc_n[norm(rec["link"])] += len(rec["key_ids"])
        elif rec["op"] == "dec_keys":
            dec_n[norm(rec["link"])] += len(rec["key_ids"])
    bad = [(n, v["issued"], enc_n[norm(n)], v["delivered"], dec_n[norm(n)])
           for n, v in q["counters"]["links"].items()
           if (v["issued"], v["delivered"]) != (enc_n[norm(n)], dec_n[norm(n)])]
    assert not bad, f"restarted emulator: (link, issued, log enc, delivered, log dec) differ: {bad}"
    env.state["resumed"] = True


def test_clean_stop_and_no_device_key_used_twice_across_the_restart(env):
    """SIGTERM stops both servers with status 0 (README: "the servers stop cleanly with status 0"); then,
    over both lives of the emulator: no device key id issued twice, none held or used by the service
    unless both ends got it, each byte used once, the consumption equal to what the deliveries report;
    the audit log records each link's device going `unreachable` and coming back `ok`."""
    assert env.state.get("resumed"), "the restart test did not pass"
    with ThreadPoolExecutor(max_workers=2) as ex:   # both SIGTERMs at once
        f_kms, f_dev = ex.submit(env.kms.stop, 20), ex.submit(env.device.stop, 20)
        rc_kms, rc_dev = f_kms.result(), f_dev.result()
    problems = []
    if rc_kms != 0:
        problems.append(f"kms serve exit status on SIGTERM: {rc_kms}")
    if rc_dev != 0:
        problems.append(f"device serve exit status on SIGTERM: {rc_dev}")
    for p in env.procs:
        if "Traceback" in p.text():
            problems.append(f"{p.name} ({p.out.name}) printed a traceback:\n{p.text()[-3000:]}")
    log = read_log(env.log)
    snap = db_snapshot(env.db)
    # complete=False: a dec_keys answered by the killed emulator may never have reached the service
    problems += check_books(env, log, snap, consumed_sum(env), complete=False)
    # a key both ends got is held or used by the service, except those of a call cut by the kill:
    # at most one call (max_key_per_request keys) per link, all in the first emulator's lines
    n0 = env.state["log_lines_at_restart"]
    by_id = {r["key_id"]: r for r in snap["rows"]}
    missing = defaultdict(list)
    for i, rec in enumerate(log):
        if rec["op"] != "dec_keys":
            continue
        for kid in rec["key_ids"]:
            r = by_id.get(kid)
            if r is None or r["state"] not in ("held", "used"):
                missing[norm(rec["link"])].append((i, kid))
    for link, lst in missing.items():
        if any(i >= n0 for i, _ in lst) or len(lst) > env.dev_toml["max_key_per_request"]:
            problems.append(f"link {sorted(link)}: {len(lst)} keys delivered to both ends are not held or used "
                            f"by the service (beyond one call cut by the kill)")
    # keys issued by the first emulator and never fetched by end b: never used by the service
    dec_ids = {k for rec in log if rec["op"] == "dec_keys" for k in rec["key_ids"]}
    for rec in log[:n0]:
        if rec["op"] == "enc_keys":
            for kid in rec["key_ids"]:
                r = by_id.get(kid)
                if kid not in dec_ids and r is not None and r["state"] != "skipped":
                    problems.append(f"{kid}: end b never fetched it, the service has it {r['state']}")
    # the audit log (docs/kms.md "Device errors": one record per change of a link's state)
    audit = read_audit(env.dir / "audit.jsonl")
    print(f"final: {len(log)} keys.jsonl lines ({n0} before the restart), {len(snap['rows'])} device_keys rows "
          f"{Counter(r['state'] for r in snap['rows'])}, {sum(o.ok for o in env.outcomes)} deliveries made here, "
          f"{consumed_sum(env)} bits consumed; audit device records "
          f"{Counter(a.get('state') for a in audit if a.get('event') == 'device')}, skip records "
          f"{sum(1 for a in audit if a.get('event') == 'device_skip')}")
    dev = [a for a in audit if a.get("event") == "device"]
    for link in env.links:
        states = [a.get("state") for a in dev if a.get("link") and norm(a["link"]) == link]
        if "unreachable" not in states:
            problems.append(f"audit: link {sorted(link)} has device states {states}, no 'unreachable' after "
                            f"the kill (docs: killed -> unreachable)")
        elif "ok" not in states[states.index("unreachable"):]:
            problems.append(f"audit: link {sorted(link)}: states {states}, no 'ok' after the restart")
    # docs: skipped keys are one record {"event": "device_skip", "link", "key_ids" (at most 64), ...}
    skip_ids = {kid for a in audit if a.get("event") == "device_skip" for kid in a.get("key_ids", [])}
    if env.state.get("lost") and not env.state["lost"] <= skip_ids:
        problems.append(f"audit: the lost keys {sorted(env.state['lost'])} are not in device_skip records "
                        f"({sorted(skip_ids)})")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------------
# careless inputs: README "User errors ... print one line, `qkdseg: error: ...`, and exit with status 2"


def _careless_cases(tmp: Path) -> dict[str, tuple[list[str], Path | None]]:
    empty = tmp / "empty"
    empty.mkdir()
    svc_like = tmp / "svc-like"   # DIR given where DIR/devices is meant
    svc_like.mkdir()
    (svc_like / "kms.toml").write_text('network = "example"\nlink_source = "device"\n')
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "device.toml").write_text("host = \"127.0.0.1\"\nport = [this is not toml\n")
    (broken / "keys.jsonl").write_text("")
    return {
        # docs/kms.md: link_source = "emulated" or "device"; "A bad value names the flag."
        "init-link-source-nonsense": (["kms", "init", str(tmp / "svc-nonsense"), "--network", "example",
                                       "--sae", "A=0", "--sae", "B=7", "--link-source", "nonsense"],
                                      tmp / "svc-nonsense" / "kms.toml"),
        "device-serve-missing-dir": (["device", "serve", str(tmp / "no-such-dir")], None),
        "device-serve-empty-dir": (["device", "serve", str(empty)], None),
        "device-serve-service-dir": (["device", "serve", str(svc_like)], None),
        # README: "a missing or malformed file" is a user error (our reading: device.toml too)
        "device-serve-malformed-device-toml": (["device", "serve", str(broken)], None),
    }


@pytest.fixture(scope="module")
def careless(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("careless")
    cases = _careless_cases(tmp)
    with ThreadPoolExecutor(max_workers=len(cases)) as ex:
        futs = {name: ex.submit(run_cli, args, 60.0) for name, (args, _) in cases.items()}
        return {name: (f.result(), cases[name][1]) for name, f in futs.items()}


@pytest.mark.parametrize("case", ["init-link-source-nonsense", "device-serve-missing-dir",
                                  "device-serve-empty-dir", "device-serve-service-dir",
                                  "device-serve-malformed-device-toml"])
def test_careless_input_is_one_error_line(careless, case):
    r, must_not_exist = careless[case]
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, f"exit {r.returncode}: {out}"
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), f"not one error line: {out!r}"
    if case == "init-link-source-nonsense":
        assert "--link-source" in lines[0], lines[0]
    if must_not_exist is not None:
        # README: "every option is checked before a progress bar, folder or file appears"
        assert not must_not_exist.exists(), f"{must_not_exist} was written by a refused kms init"
