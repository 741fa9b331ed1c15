"""The network of nodes on QKD devices: ``net init --link-source device``, ``net up`` with the device emulator.

One network (the example network, SAEs at nodes 0 and 7: every route
crosses at least 3 links) runs on emulated QKD devices: every link key comes
from ``qkdseg device serve DIR/devices`` over ETSI 014 (``enc_keys`` at the
sender of each direction, ``dec_keys`` at the receiver). Deliveries use the
real ``etsi-qkd-014-client``; the emulator's counters and its record of
calls, and both ends' stored device key sequences, are checked against each
other.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_net import Net, _free_port, _run
from timing import scaled

SAES = ("A=0", "B=7")


@pytest.fixture(scope="module")
def dnet(tmp_path_factory):
    base = tmp_path_factory.mktemp("dnet")
    d = base / "deploy"
    port = _free_port()
    r = _run("net", "init", str(d), "--network", "example", *[a for s in SAES for a in ("--sae", s)],
             "--security-level", "0.5", "--port", str(port), "--link-source", "device")
    assert r.returncode == 0, r.stderr
    assert "devices/" in r.stdout
    env = {**os.environ, "QKDSEG_RELAY_TIMEOUT_S": "6", "QKDSEG_REPORT_S": "1"}
    r = _run("net", "up", str(d), "--detach", env=env, timeout=180)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield Net(d, base, env)
    finally:
        _run("net", "down", str(d), timeout=120)


def _counters(net) -> dict:
    import ssl

    import httpx

    pk = net.dir / "devices" / "pki"
    ctx = ssl.create_default_context(cafile=str(pk / "ca.crt"))
    ctx.load_cert_chain(str(pk / "device-operator.crt"), str(pk / "device-operator.key"))
    dc = (net.dir / "devices" / "device.toml").read_text()
    port = int(next(line.split("=")[1] for line in dc.splitlines() if line.startswith("port")))
    r = httpx.get(f"https://127.0.0.1:{port}/qkdseg/v1/counters", timeout=5, verify=ctx)
    assert r.status_code == 200, r.text
    return r.json()


def _chunks(net, node: str) -> dict:
    """(link, direction) -> [(offset, nbytes, key ids)] of a node's stored device key sequences."""
    db = sqlite3.connect(f"file:{net.dir / 'nodes' / net.names[node] / 'relay.sqlite3'}?mode=ro", uri=True)
    try:
        out: dict = {}
        for lk, d, off, n, ids in db.execute("SELECT link, dir, offset, nbytes, key_ids FROM device_chunks "
                                             "ORDER BY link, dir, offset"):
            if n:
                out.setdefault((lk, d), []).append((off, n, json.loads(ids)))
        return out
    finally:
        db.close()


def _wait_delivery(net, deadline_s: float = 30.0):
    deadline = time.monotonic() + deadline_s
    while True:
        code, c = net.client("A", "0").get_key("B", number=1, size=256)
        if code == 200:
            code2, back = net.client("B", "7").get_key_with_key_IDs("A", [c.keys[0].key_id])
            assert code2 == 200 and back.keys[0].key == c.keys[0].key
            return c
        assert code == 503 and c.message, (code, c)
        assert time.monotonic() < deadline, f"no delivery within {deadline_s} s: {c.message}"
        time.sleep(0.5)


def test_bad_link_source_is_one_line(tmp_path):
    r = _run("net", "init", str(tmp_path / "x"), "--network", "example", "--sae", "A=0", "--sae", "B=7",
             "--link-source", "fibre")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "qkdseg: error: --link-source 'fibre' must be 'emulated' or 'device'"], r.stderr


def test_device_links_load_no_routing_kernel():
    """A node on devices imports qkdseg.net.devicelinks: still no numba, llvmlite, scipy, routing or qkdseg.kms."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import qkdseg.net.node, qkdseg.net.devicelinks"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    mods = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "qkdseg.net.devicelinks" in mods
    heavy = [m for m in mods if m.split(".")[0] in ("numba", "llvmlite", "scipy")
             or m.startswith(("qkdseg.routing", "qkdseg._kernels")) or m.split(".")[:2] == ["qkdseg", "kms"]]
    assert heavy == []


def test_init_writes_device_credentials_per_link_end(dnet):
    rows = json.loads(_run("net", "status", str(dnet.dir), "--format", "json").stdout)
    assert rows[0]["role"] == "device" and rows[0]["healthy"] and rows[0]["pid"]
    assert all(r["healthy"] for r in rows)
    import httpx

    from qkdseg.net.wire import client_context

    c = dnet.dir / "controller"
    deadline = time.monotonic() + scaled(20)
    with httpx.Client(verify=client_context(c / "controller.crt", c / "controller.key", c / "ca.crt"), timeout=10) as cl:
        while True:  # the first round of each link's loop: then "ok", with keys fetched
            h = cl.get(f"https://{dnet.addr['0']}/health").json()
            if {v["state"] for v in h["device_links"].values()} == {"ok"}:
                break
            assert time.monotonic() < deadline, h
            time.sleep(0.2)
    assert len(h["device_links"]) == 2 and all(v["fetched_keys"] > 0 for v in h["device_links"].values()), h
    for name in dnet.names.values():
        nd = dnet.dir / "nodes" / name
        conf = json.loads((nd / "node.json").read_text())
        assert json.loads((nd / "links.sealed.json").read_text()) == {}  # no seed: the devices give the keys
        mine = {lk["device"]["sae"] for lk in conf["links"]}
        assert len(mine) == len(conf["links"])
        held = {p.stem for p in (nd / "device").glob("*.key")}
        assert held == mine  # only its own links' device credentials
        assert all(oct((nd / "device" / f"{s}.key").stat().st_mode & 0o777) == "0o600" for s in mine)


def test_deliveries_across_three_hops_from_devices(dnet):
    _wait_delivery(dnet)
    for _ in range(6):
        dnet.deliver("A", "0", "B", "7", number=2, size=256)
    dnet.deliver("A", "0", "B", "7", number=1, size=512)
    # the links the relays used: every one fed by the devices, at least 3 of them on a path from 0 to 7
    used = set()
    for node in dnet.names:
        for (lk, d), v in dnet.offsets(node).items():
            if v:
                used.add(lk)
    assert len(used) >= 3
    ends = {tuple(str(x) for x in json.loads(lk)) for lk in used}
    import networkx as nx

    assert nx.has_path(nx.Graph(list(ends)), "0", "7")
    counters = _counters(dnet)["links"]
    for lk in used:
        u, v = (str(x) for x in json.loads(lk))
        c = counters.get(f"{u}|{v}") or counters[f"{v}|{u}"]
        assert c["issued"] > 0 and c["delivered"] > 0
    _check_records(dnet)


def _check_records(net) -> None:
    """Both ends of each link hold the same device keys at the same offsets; each device key was issued once and
    delivered once (the emulator's record), and none is held by one end only."""
    per_node = {node: _chunks(net, node) for node in net.names}
    log = [json.loads(line) for line in (net.dir / "devices" / "keys.jsonl").read_text().splitlines()]
    enc = Counter(k for r in log if r["op"] == "enc_keys" for k in r["key_ids"])
    dec = Counter(k for r in log if r["op"] == "dec_keys" for k in r["key_ids"])
    assert max(enc.values()) == 1 and max(dec.values(), default=1) == 1  # no device key issued or fetched twice
    held_ids = []
    for node, chunks in per_node.items():
        conf = json.loads((net.dir / "nodes" / net.names[node] / "node.json").read_text())
        for lk in conf["links"]:
            name = json.dumps(lk["link"], separators=(",", ":"))
            d = 0 if str(lk["link"][0]) == str(node) else 1  # this node sends direction d
            mine = chunks.get((name, d), [])
            theirs = per_node[str(lk["neighbour"])].get((name, d), [])
            # the sender holds nothing that the receiver does not hold at the same offset (the receiver may hold
            # one round more: it stores before it answers)
            assert all(c in theirs for c in mine), (node, name, d)
            held_ids += [k for _, _, ids in mine for k in ids]
            # the receiver never read beyond what the sender holds
            end = max((o + n for o, n, _ in mine), default=0)
            assert net.offsets(str(lk["neighbour"])).get((name, d), 0) <= end
    assert held_ids and len(held_ids) == len(set(held_ids))
    for k in held_ids:  # every key a sender holds was issued to it once and fetched by the receiver once
        assert enc[k] == 1 and dec[k] == 1


def _restart_device(net) -> None:
    from qkdseg.net.procs import health, processes, start_one

    p = next(p for p in processes(net.dir) if p["role"] == "device")
    proc = start_one(net.dir, p, env=net.env)
    pids = json.loads((net.dir / "run" / "pids.json").read_text())
    pids["device"] = proc.pid
    (net.dir / "run" / "pids.json").write_text(json.dumps(pids))
    deadline = time.monotonic() + scaled(60)
    while not health(net.dir, [p], timeout=1.0)["device"]:
        assert time.monotonic() < deadline and proc.poll() is None, "the device emulator did not restart"
        time.sleep(0.2)


def test_receiver_ahead_of_its_sender_is_skipped_at_both_ends(dnet):
    """The sender dies between the receiver's 202 and its own write (played here: node 0's device end fetches keys
    and names them to its neighbour, as node 0): node 0's next round gets 409 and moves past them; they are used by
    no one, and deliveries go on."""
    import ssl

    import httpx

    from qkdseg.net.wire import client_context

    nd0 = dnet.dir / "nodes" / dnet.names["0"]
    conf = json.loads((nd0 / "node.json").read_text())
    offs = dnet.offsets("0")

    def used(x):  # node 0's outgoing counter on that link: the link the relays use most
        return offs.get((json.dumps(x["link"], separators=(",", ":")), 0 if str(x["link"][0]) == "0" else 1), 0)

    lk = max(conf["links"], key=used)
    assert used(lk) > 0
    nb = str(lk["neighbour"])
    name, dev = json.dumps(lk["link"], separators=(",", ":")), lk["device"]
    d = 0 if str(lk["link"][0]) == "0" else 1
    dctx = ssl.create_default_context(cafile=str(nd0 / dev["ca"]))
    dctx.load_cert_chain(str(nd0 / dev["cert"]), str(nd0 / dev["key"]))
    with httpx.Client(verify=dctx, timeout=10) as cl:
        r = cl.post(f"{dev['url']}/api/v1/keys/{dev['peer_sae']}/enc_keys", json={"number": 2})
    assert r.status_code == 200, r.text
    ids = [k["key_ID"] for k in r.json()["keys"]]
    ctx = client_context(nd0 / "node.crt", nd0 / "node.key", nd0 / "ca.crt")
    with httpx.Client(verify=ctx, timeout=10) as cl:
        for _ in range(20):  # node 0's own loop may write first: then start at the end node 3 gives
            end = _chunks(dnet, nb).get((name, d), [(0, 0, [])])
            at = max(o + n for o, n, _ in end)
            r = cl.post(f"https://{dnet.addr[nb]}/relay/v1/device_keys",
                        json={"link": name, "direction": d, "offset": at, "key_ids": ids})
            if r.status_code == 202:
                break
            assert r.status_code == 409, r.text
        assert r.status_code == 202 and r.json()["key_ids"] == ids, r.text
    ahead = r.json()["end"]
    deadline = time.monotonic() + scaled(40)
    m, sl = dnet.client("A", "0"), dnet.client("B", "7")
    while not any(o >= ahead for o, _, _ in _chunks(dnet, "0").get((name, d), [])):
        assert time.monotonic() < deadline, "node 0 never moved past the keys only its neighbour holds"
        code, c = m.get_key("B", number=4, size=1024)  # use the link's keys, so that node 0 fetches more
        if code == 200:
            code2, back = sl.get_key_with_key_IDs("A", [k.key_id for k in c.keys])
            assert code2 == 200 and {k.key_id: k.key for k in back.keys} == {k.key_id: k.key for k in c.keys}
        else:
            assert code == 503 and c.message, (code, c)
            time.sleep(0.2)
    held0 = {k for _, _, i in _chunks(dnet, "0").get((name, d), []) for k in i}
    assert not held0 & set(ids)  # the keys the neighbour alone holds are not node 0's: no piece names them
    dnet.deliver("A", "0", "B", "7", number=2)
    _check_records(dnet)


def test_device_killed_fails_cleanly_and_recovers(dnet):
    """kill -9 of the emulator: the keys held still serve (identical at both ends), then the controller refuses
    with its JSON 503 (the nodes report what they hold); after its restart deliveries resume."""
    deadline = time.monotonic() + scaled(30)
    while dnet.client("A", "0").get_status("B")[1].stored_key_count < 64:  # the links topped up again
        assert time.monotonic() < deadline
        time.sleep(0.3)
    os.kill(dnet.pid("device"), signal.SIGKILL)
    codes = []
    for i in range(20):
        code, c = dnet.client("A", "0").get_key("B", number=4 if i == 0 else 16, size=1024)
        if code == 200:  # device keys held from before: still identical at both ends
            code2, back = dnet.client("B", "7").get_key_with_key_IDs("A", [k.key_id for k in c.keys])
            assert code2 == 200 and {k.key_id: k.key for k in back.keys} == {k.key_id: k.key for k in c.keys}
        else:
            assert code == 503 and c.message, (code, c)
        codes.append(code)
        if codes.count(503) >= 3:
            break
    assert codes[0] == 200 and codes.count(503) >= 3, codes
    _restart_device(dnet)
    _wait_delivery(dnet)
    for _ in range(3):
        dnet.deliver("A", "0", "B", "7", number=2)
    _check_records(dnet)


def test_device_keys_only_from_the_links_other_end(dnet):
    """``/relay/v1/device_keys``: 403 from a node that is not the link's sending end, 409 at a wrong offset
    (with the receiver's end), 403 from an SAE's certificate."""
    import httpx

    from qkdseg.net.wire import client_context

    conf = json.loads((dnet.dir / "nodes" / dnet.names["0"] / "node.json").read_text())
    lk = conf["links"][0]
    name = json.dumps(lk["link"], separators=(",", ":"))
    nb = str(lk["neighbour"])
    d_from_nb = 0 if str(lk["link"][0]) == nb else 1
    stranger = next(n for n in dnet.names if n not in ("0", nb) and n not in {str(x["neighbour"]) for x in conf["links"]})

    def post(node_dir: Path, body: dict):
        ctx = client_context(node_dir / "node.crt", node_dir / "node.key", node_dir / "ca.crt")
        with httpx.Client(verify=ctx, timeout=10) as cl:
            return cl.post(f"https://{dnet.addr['0']}/relay/v1/device_keys", json=body)

    body = {"link": name, "direction": d_from_nb, "offset": 10**9, "key_ids": ["00000000-0000-4000-8000-000000000000"]}
    r = post(dnet.dir / "nodes" / dnet.names[stranger], body)
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json", r.text
    r = post(dnet.dir / "nodes" / dnet.names[nb], {**body, "direction": 1 - d_from_nb})  # node 0 sends that one
    assert r.status_code == 403, r.text
    r = post(dnet.dir / "nodes" / dnet.names[nb], body)
    assert r.status_code == 409 and 0 <= r.json()["end"] < 10**9, r.text
    sae = dnet.dir / "pki"
    ctx = client_context(sae / "A.crt", sae / "A.key", sae / "ca.crt")
    with httpx.Client(verify=ctx, timeout=10) as cl:
        assert cl.post(f"https://{dnet.addr['0']}/relay/v1/device_keys", json=body).status_code == 403


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(0, 260), st.integers(0, 80))
def test_device_stream_reads_its_chunks_in_order_or_raises(sizes, offset, n):
    """DeviceStream.read is the concatenation of the chunks at their offsets; beyond them it raises (503)."""
    from qkdseg.net.devicelinks import DeviceShort, DeviceStream

    s = DeviceStream("[0,1]")
    seq, pos = b"", 0
    for i, size in enumerate(sizes):
        data = bytes((i * 37 + j) % 256 for j in range(size))
        s.add(1, pos, data)
        seq, pos = seq + data, pos + size
    assert s.ends[1] == len(seq) and s.ends[0] == 0
    if n == 0 or offset + n <= len(seq):  # nothing to read is no shortage
        assert s.read(1, offset, n) == seq[offset: offset + n]
    else:
        with pytest.raises(DeviceShort):
            s.read(1, offset, n)
    assert s.held(1, offset) == max(0, len(seq) - offset)
