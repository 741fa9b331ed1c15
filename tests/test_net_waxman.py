"""``qkdseg net up`` on a 30-node Waxman network: 31 processes, deliveries between SAEs at three different nodes."""

from __future__ import annotations

import base64
import json
import os

import pytest

from test_net import _free_port, _run


@pytest.fixture(scope="module")
def wax(tmp_path_factory):
    base = tmp_path_factory.mktemp("wax")
    topo, d = base / "wax.json", base / "deploy"
    r = _run("topology", "generate", "waxman", "--nodes", "30", "--seed", "3", "-o", str(topo))
    assert r.returncode == 0, r.stderr
    nodes = json.loads(topo.read_text())
    ids = [str(n["id"]) for n in nodes["nodes"]] if "nodes" in nodes else None
    saes = {"A": ids[0], "B": ids[-1], "C": ids[len(ids) // 2]}
    r = _run("net", "init", str(d), "--network", str(topo), *[a for s, v in saes.items() for a in ("--sae", f"{s}={v}")],
             "--security-level", "0.3", "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr
    r = _run("net", "up", str(d), "--detach", timeout=240)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield d, saes
    finally:
        _run("net", "down", str(d), timeout=120)


def test_waxman_network_up_and_deliveries(wax):
    from etsi_qkd_014_client import QKD014Client

    d, saes = wax
    rows = json.loads(_run("net", "status", str(d), "--format", "json").stdout)
    assert len(rows) == 31 and all(r["healthy"] for r in rows) and len({r["pid"] for r in rows}) == 31
    addr = {r["node"]: r["address"] for r in rows if r["role"] == "node"}
    pk = d / "pki"

    def client(sae):
        return QKD014Client(addr[saes[sae]], str(pk / f"{sae}.crt"), str(pk / f"{sae}.key"), str(pk / "ca.crt"))

    for master, slave in (("A", "B"), ("B", "C"), ("C", "A")):
        code, c = client(master).get_key(slave, number=2)
        assert code == 200, getattr(c, "message", c)
        code, back = client(slave).get_key_with_key_IDs(master, [k.key_id for k in c.keys])
        assert code == 200 and [k.key for k in back.keys] == [k.key for k in c.keys]
        assert all(len(base64.b64decode(k.key)) == 32 for k in c.keys)
        assert client(slave).get_key_with_key_IDs(master, [c.keys[0].key_id])[0] == 400
        # the master's certificate at the slave's node: not attached there
        other = QKD014Client(addr[saes[slave]], str(pk / f"{master}.crt"), str(pk / f"{master}.key"), str(pk / "ca.crt"))
        assert other.get_key(slave)[0] == 401
