"""Link keys from QKD devices: ``qkdseg kms serve`` with every link fed by ``qkdseg device serve`` over ETSI 014.

One emulator and one key service for the module (both real processes on
127.0.0.1, started and stopped by the fixture). The example network with
pools of 6144 bits (24 device keys of 256 bits per link), so that a few
requests drain them. The tests run in order: deliveries, then the device's
faults (503, slow, 401, lost keys, kill -9 and restart), then the whole
run's records are checked against the emulator's own.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from kms_helpers import Device, Server, kms_init, set_config

LEVEL = 0.5  # the example network's SMR route (security 0.884736) meets it with 2 keys per relay
POOL = 6144


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from qkdseg import example_network
    from qkdseg.topology.files import write_network

    base = tmp_path_factory.mktemp("device")
    net = example_network()
    for _, _, d in net.graph.edges(data=True):
        d["pool_bits"] = POOL
    write_network(net, base / "net.json")
    d = kms_init(base / "svc", str(base / "net.json"), ("A=0", "B=7"), "--security-level", str(LEVEL),
                 "--link-source", "device")
    set_config(d, device_timeout_s=1.0, device_backoff_max_s=1.0, device_poll_s=0.1)
    device = Device(d / "devices").start()
    server = Server(d, ("--dashboard-port", "0"))
    try:
        server.start()
        yield device, server
    finally:
        server.stop()
        device.stop()


def _db(server) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{server.directory / 'kms.sqlite3'}?mode=ro", uri=True)


def _device_rows(server) -> list[tuple]:
    db = _db(server)
    try:
        return db.execute("SELECT k, seq, key_id, nbytes, used, state FROM device_keys ORDER BY k, seq").fetchall()
    finally:
        db.close()


def _held_bits(server) -> dict[int, int]:
    out: Counter = Counter()
    for k, _seq, _kid, nbytes, used, state in _device_rows(server):
        if state == "held":
            out[k] += 8 * (nbytes - used)
    return dict(out)


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _audit(server) -> list[dict]:
    path = server.directory / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _full(server):
    """Every link holds a full pool's worth of device keys (24 keys of 256 bits)."""
    held = _held_bits(server)
    return len(held) == 12 and all(v == POOL for v in held.values())


def _clients(server):
    from etsi_qkd_014_client import QKD014Client

    pk = server.directory / "pki"
    master = QKD014Client(server.host, str(pk / "A.crt"), str(pk / "A.key"), str(pk / "ca.crt"))
    slave = QKD014Client(server.host, str(pk / "B.crt"), str(pk / "B.key"), str(pk / "ca.crt"))
    return master, slave


def _deliver(server, number=2):
    """One enc_keys by A and dec_keys by B (the real client); returns the route's consumed bits."""
    master, slave = _clients(server)
    code, container = master.get_key("B", number=number, size=256)
    assert code == 200, getattr(container, "message", container)
    code, back = slave.get_key_with_key_IDs("A", [k.key_id for k in container.keys])
    assert code == 200
    got = {k.key_id: k.key for k in back.keys}
    assert [got[k.key_id] for k in container.keys] == [k.key for k in container.keys]
    assert all(len(base64.b64decode(k.key)) == 32 for k in container.keys)


def _consumed(server) -> dict[int, int]:
    db = _db(server)
    try:
        return dict(db.execute("SELECT k, consumed FROM links").fetchall())
    finally:
        db.close()


def test_deliveries_use_device_keys_once_and_pools_fall_by_the_consumed_bits(pair):
    device, server = pair
    _wait(lambda: _full(server), what="the pools to fill from the devices")
    before = _consumed(server)
    issued_before = sum(e["route"]["consumed_bits"] for e in _audit(server) if e["event"] == "issue")
    for _ in range(3):
        _deliver(server)
    time.sleep(0.2)  # the group commit of the last answer
    after = _consumed(server)
    used = Counter()
    for k, _seq, _kid, _n, u, _state in _device_rows(server):
        used[k] += 8 * u
    # the consumed offset of each link is exactly the device bytes its relays used
    assert {k: after.get(k, 0) for k in range(12)} == {k: used.get(k, 0) for k in range(12)}
    spent = sum(after.values()) - sum(before.values())
    issued = sum(e["route"]["consumed_bits"] for e in _audit(server) if e["event"] == "issue") - issued_before
    assert spent == issued > 0
    # the pools refill from the devices to full again, and then the emulator's own counters agree: keys fetched
    # at both ends of each link (issued to a, delivered to b) = the keys the service took for that link
    names = _link_names(server.directory)

    def agree():
        if not _full(server):
            return False
        c = device.counters()["links"]
        rows = Counter(r[0] for r in _device_rows(server))
        return all(c[names[k]]["issued"] == c[names[k]]["delivered"] == rows[k] and c[names[k]]["pending"] == 0
                   for k in range(12))

    try:
        _wait(agree, what="the emulator's counters to agree with the service's records")
    except AssertionError:
        raise AssertionError((device.counters()["links"], Counter(r[0] for r in _device_rows(server)), _held_bits(server)))


def _device_state(server, link_state: str, since: int) -> bool:
    return any(e["event"] == "device" and e["state"] == link_state for e in _audit(server)[since:])


def _drain(server) -> int:
    """Ask until the service refuses with its own 503; returns the deliveries made."""
    master, slave = _clients(server)
    n = 0
    for _ in range(40):
        code, container = master.get_key("B", number=4, size=256)
        if code != 200:
            assert code == 503, container
            return n
        code, _ = slave.get_key_with_key_IDs("A", [k.key_id for k in container.keys])
        assert code == 200
        n += 1
    raise AssertionError("the pools never ran dry")


@pytest.mark.parametrize("mode,state", [("refuse", "no_key"), ("slow", "timeout"), ("unauthorized", "unauthorized")])
def test_a_failing_device_leaves_the_held_key_then_503_and_the_service_recovers(pair, mode, state):
    device, server = pair
    _wait(lambda: _full(server), what="full pools")
    since = len(_audit(server))
    device.fault(mode, delay_s=3.0)
    _deliver(server)  # room in the pools: the loops call the device again (a full pool makes no call)
    _wait(lambda: _device_state(server, state, since), what=f"the device state {state}")
    pools = requests.get(f"{server.dashboard_url}api/pools", timeout=30).json()
    assert state in pools["devices"]["states"]  # the dashboard shows the link's device state
    assert _drain(server) >= 1  # the keys held still serve, then the service's own 503 (no path has key)
    r = requests.get(f"{server.url}/B/status", cert=(str(server.directory / "pki/A.crt"),
                                                      str(server.directory / "pki/A.key")),
                     verify=str(server.directory / "pki/ca.crt"), timeout=30)
    assert r.status_code == 200 and r.json()["stored_key_count"] < 4  # its status agrees with its 503 for 4 keys
    device.fault("none")
    _wait(lambda: _device_state(server, "ok", since), what="the device state ok again")
    _wait(lambda: _full(server), what="the pools to refill")
    _deliver(server)
    assert server.proc.poll() is None


def test_a_key_the_other_end_cannot_fetch_is_skipped_at_both_ends(pair):
    device, server = pair
    _wait(lambda: _full(server), what="full pools")
    link = "0|1"
    device.fault("lose", count=3, links=[link])
    for _ in range(2):  # room in the pools: the loops fetch again and meet the lost keys
        _deliver(server, 4)
    _wait(lambda: device.counters()["links"][link]["lost"] >= 3, what="3 lost keys")
    lost = {kid for rec in device.log_records() if rec["op"] == "lost" for kid in rec["key_ids"]}
    skipped = _wait(lambda: {r[2] for r in _device_rows(server) if r[5] == "skipped"} >= lost and
                    {r[2] for r in _device_rows(server) if r[5] == "skipped"}, what="the skips recorded")
    assert lost <= skipped
    assert any(e["event"] == "device_skip" and e["link"] == link for e in _audit(server))
    device.fault("none")
    _wait(lambda: _full(server), what="the pools to refill")
    _deliver(server)


def test_kill9_and_restart_of_the_device(pair):
    device, server = pair
    _wait(lambda: _full(server), what="full pools")
    since = len(_audit(server))
    device.kill9()
    _deliver(server)  # the key held still serves, and the loops call the device again
    _wait(lambda: _device_state(server, "unreachable", since), what="the device state unreachable")
    _drain(server)  # the key held still serves, then the service's own 503
    device.start()
    _wait(lambda: _device_state(server, "ok", since), what="the device state ok again")
    _wait(lambda: _full(server), what="the pools to refill after the restart")
    _deliver(server)
    assert server.proc.poll() is None


def test_a_restarted_service_starts_with_the_device_keys_it_held(pair):
    device, server = pair
    _wait(lambda: _full(server), what="full pools")
    device.fault("refuse")  # no new key: what the service serves after its restart is what it held
    server.stop()
    held = _held_bits(server)
    server.start()
    r = requests.get(f"{server.url}/B/status", cert=(str(server.directory / "pki/A.crt"),
                                                      str(server.directory / "pki/A.key")),
                     verify=str(server.directory / "pki/ca.crt"), timeout=30)
    assert r.status_code == 200 and r.json()["stored_key_count"] > 0
    _deliver(server)
    assert sum(_held_bits(server).values()) < sum(held.values())
    device.fault("none")
    _wait(lambda: _full(server), what="the pools to refill")


def test_the_records_of_both_ends_agree_with_the_device(pair):
    """Over the whole module: every device key the service holds or used was issued to end a and delivered to end
    b exactly once; no key id twice; a skipped key was never used; consumed offsets = device bytes used."""
    device, server = pair
    server.stop()  # nothing moves from here on
    cfg_links = json.loads(json.dumps(_device_links(server.directory)))
    rows = _device_rows(server)
    enc: Counter = Counter()
    dec: Counter = Counter()
    by_sae = {}
    for rec in device.log_records():
        if rec["op"] in ("enc_keys", "dec_keys"):
            for kid in rec["key_ids"]:
                (enc if rec["op"] == "enc_keys" else dec)[kid] += 1
                by_sae[(rec["op"], kid)] = (rec["link"], rec["sae"])
    assert all(n == 1 for n in enc.values()) and all(n == 1 for n in dec.values())
    ids = [r[2] for r in rows]
    assert len(ids) == len(set(ids))
    names = {k: name for k, name in enumerate(_link_names(server.directory))}
    for k, _seq, kid, nbytes, used, state in rows:
        if state == "skipped":
            assert used == 0
            continue
        assert enc[kid] == 1 and dec[kid] == 1, kid
        link, a_sae = by_sae[("enc_keys", kid)]
        _, b_sae = by_sae[("dec_keys", kid)]
        assert link == names[k]
        assert (a_sae, b_sae) == (cfg_links[link]["a_sae"], cfg_links[link]["b_sae"])
    used = Counter()
    for k, _seq, _kid, _n, u, _state in rows:
        used[k] += 8 * u
    assert {k: v for k, v in _consumed(server).items()} == {k: used.get(k, 0) for k in range(12)}
    # every key the service stored came from an enc_keys of the device (skipped ones included)
    assert set(ids) <= set(enc)


def _device_links(directory: Path) -> dict:
    import tomllib

    return tomllib.loads((directory / "kms.toml").read_text())["device_links"]


def _link_names(directory: Path) -> list[str]:
    from qkdseg.topology import load

    net = load(str(directory.parent / "net.json"))
    a = net.arrays
    return [f"{a.node_ids[a.edge_u[k]]}|{a.node_ids[a.edge_v[k]]}" for k in range(a.n_links)]


def test_device_keys_are_sealed_at_rest_and_resealed_with_a_new_storage_key(tmp_path):
    from qkdseg.server.store import Batch, Store

    store = Store(tmp_path, bytes(range(32)), b"a" * 32)
    try:
        material = bytes(range(32, 64))
        blob = store.seal_device(0, 1, "id-1", material)
        store.commit(Batch(device_put=[(0, 1, "id-1", 32, 0, "held", blob, 0.0)]))
        assert material not in (tmp_path / "kms.sqlite3").read_bytes() + blob
        assert store.reseal_all(bytes(range(1, 33))) == 1
        (k, seq, kid, _n, _used, new_blob), = store.load_device_keys()
        assert new_blob != blob and store.open_device(k, seq, kid, new_blob) == material
        store.commit(Batch(device_used={(0, 1): 32}))
        assert store.load_device_keys() == []  # used up: no longer held, its bytes erased
    finally:
        store.close()
