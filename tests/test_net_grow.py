"""A running network grown and shrunk (issue 37): ``net sae add|remove``, ``net add-node``, ``net add-link``,
``net remove-link``, ``net remove-node``, the admin role, ``net up`` on a running network.

One ``example`` network (a controller and ten nodes, SAEs A at node 0 and B at node 7) is started for the module;
the tests change it in order (each builds on the last), with real processes on loopback, real certificates and
real ETSI 014 clients.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from test_net import Net, _free_port, _run, net_up



@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    base = tmp_path_factory.mktemp("grow")
    d, taps = base / "deploy", base / "taps"
    taps.mkdir()
    port = _free_port()
    r = _run("net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
             "--security-level", "0.5", "--port", str(port))
    assert r.returncode == 0, r.stderr
    with net_up(d, taps, {**os.environ}) as n:
        n.port = port
        yield n


def _fresh(n: Net) -> Net:
    """The module's network with its files read again (addresses of new nodes)."""
    m = Net(n.dir, n.taps, n.env)
    m.port = n.port
    return m


def _pids(n: Net) -> dict:
    return json.loads((n.dir / "run" / "pids.json").read_text())


def _ok(*args) -> dict:
    r = _run("net", *args, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _ctx(n: Net, who: str):
    from qkdseg.net.wire import client_context

    if who == "controller":
        c = n.dir / "controller"
        return client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
    if who.startswith("node "):
        nd = n.dir / "nodes" / n.names[who[5:]]
        return client_context(nd / "node.crt", nd / "node.key", nd / "ca.crt")
    pk = n.dir / "pki"
    return client_context(pk / f"{who}.crt", pk / f"{who}.key", pk / "ca.crt")


def _health(n: Net, address: str) -> dict:
    with httpx.Client(verify=_ctx(n, "controller"), timeout=10.0) as cl:
        return cl.get(f"https://{address}/health").json()


def _audit(directory: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (directory / "audit.jsonl").read_text().splitlines()) if r.get("event") == event]


def _route_links(n: Net, master: str, mnode: str, slave: str, snode: str) -> set[str]:
    """The links one delivery consumed bits of (the controller's store, before and after)."""
    before = n.controller_consumed()
    n.deliver(master, mnode, slave, snode)
    return {frozenset(json.loads(k)) for k, c in n.controller_consumed().items() if c > before.get(k, 0)}


def _l(u: int, v: int) -> frozenset:
    return frozenset((u, v))


def test_a_change_of_membership_from_a_node_or_an_sae_certificate_is_refused_403(grown):
    n = grown
    body = {"version": 99, "op": "x", "conf": {}, "network": {}, "saes": {}, "nodes": []}
    for who in ("node 0", "A", "controller"):
        for addr in (n.net["address"], n.addr["3"]):
            with httpx.Client(verify=_ctx(n, who), timeout=10.0) as cl:
                r = cl.post(f"https://{addr}/control/v1/membership", json=body)
            assert r.status_code == 403, (who, addr, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "admin role" in r.json()["detail"]
    assert len(_audit(n.dir / "controller", "membership refused")) == 3
    assert len(_audit(n.dir / "nodes" / n.names["3"], "membership refused")) == 3
    assert {row.get("topology_version") for row in _status_rows(n)} == {0}
    for addr in (n.net["address"], n.addr["3"]):  # the admin's malformed change: 400 naming the field, nothing done
        with httpx.Client(verify=_ctx(n, "admin"), timeout=10.0) as cl:
            r = cl.post(f"https://{addr}/control/v1/membership", json={})
        assert r.status_code == 400 and r.json()["detail"] == "malformed message: the field 'version' is missing", r.text
    assert {row.get("topology_version") for row in _status_rows(n)} == {0}
    for who, want in (("admin", {"status": "ok", "topology_version": 0}), ("A", {"status": "ok"})):
        with httpx.Client(verify=_ctx(n, who), timeout=10.0) as cl:  # the admin sees the version, an SAE nothing
            assert cl.get(f"https://{n.addr['3']}/health").json() == want
            assert cl.get(f"https://{n.net['address']}/health").json() == want


def _status_rows(n: Net) -> list[dict]:
    r = _run("net", "status", str(n.dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sae_add_delivers_without_restart_and_sae_remove_voids_its_waiting_keys(grown):
    n = grown
    pids = _pids(n)
    bad = n.dir.parent / "bad-ca.key"
    bad.write_text("garbage\n")
    r = _run("net", "sae", "add", str(n.dir), "E=2", "--ca-key", str(bad))  # the CA's key read before the change
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad-ca.key" in r.stderr, r.stderr
    assert {row.get("topology_version") for row in _status_rows(n)} == {0}  # nothing registered anywhere
    out = _ok("sae", "add", str(n.dir), "E=2")
    assert out["topology_version"] == 1 and not out["not_applied"] and len(out["applied"]) == 11
    assert (n.dir / "pki" / "E.crt").exists()
    n.deliver("A", "0", "E", "2")
    code, waiting = n.client("A", "0").get_key("E", number=1, size=256)  # left waiting at node 2
    assert code == 200
    kid = waiting.keys[0].key_id
    out = _ok("sae", "remove", str(n.dir), "E")
    assert out["topology_version"] == 2 and not out["not_applied"]
    voided = _audit(n.dir / "nodes" / n.names["2"], "sae removed")
    assert voided and kid in voided[-1]["key_ids"]
    code, _ = n.client("E", "2").get_key_with_key_IDs("A", [kid])
    assert code in (400, 401, 404)  # E is no longer registered: nothing to fetch
    assert _pids(n) == pids
    assert {row["topology_version"] for row in _status_rows(n)} == {2}


def test_add_node_with_two_links_then_net_up_starts_only_it_and_delivers_through_them(grown):
    n = grown
    pids = _pids(n)
    out = _ok("add-node", str(n.dir), "--id", "10", "--address", f"127.0.0.12:{n.port}", "--link", "0",
              "--link", "7")
    assert out["topology_version"] == 3 and not out["not_applied"], out
    _ok("sae", "add", str(n.dir), "F=10")
    r = _run("net", "up", str(n.dir), "--detach", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    now = _pids(n)
    assert {k: v for k, v in now.items() if k in pids} == pids and set(now) - set(pids) == {"node-10"}
    m = _fresh(n)
    links = _route_links(m, "A", "0", "F", "10")
    assert _l(0, 10) in links, links  # through the new links

    links = _route_links(m, "F", "10", "B", "7")
    assert _l(10, 7) in links, links
    rows = _status_rows(m)
    assert {row["topology_version"] for row in rows} == {4} and all(row["healthy"] for row in rows)


def test_remove_link_of_a_live_route_plans_around_it_and_destroys_its_key_at_both_ends(grown):
    m = _fresh(grown)
    used = _route_links(m, "A", "0", "F", "10")
    assert _l(0, 10) in used
    done, outcomes = threading.Event(), []

    def traffic():  # requests while the link goes: each delivered whole at both ends, or refused with nothing issued
        a, f = m.client("A", "0"), m.client("F", "10")
        while not done.is_set() and len(outcomes) < 40:
            code, c = a.get_key("F", number=1, size=256)
            if code == 200:
                code2, back = f.get_key_with_key_IDs("A", [k.key_id for k in c.keys])
                outcomes.append(code2 == 200 and [k.key for k in back.keys] == [k.key for k in c.keys])
            else:
                outcomes.append(code == 503)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        out = _ok("remove-link", str(m.dir), "0", "10")
    finally:
        done.set()
        t.join(timeout=60)
    assert outcomes and all(outcomes), outcomes
    assert out["topology_version"] == 5 and not out["not_applied"]
    after = _route_links(m, "A", "0", "F", "10")
    assert _l(0, 10) not in after and _l(10, 7) in after  # around it: through 7
    for node in ("0", "10"):
        nd = m.dir / "nodes" / m.names[node]
        assert "[0,10]" not in json.loads((nd / "links.sealed.json").read_text())
        assert all(set(lk["link"]) != {0, 10} for lk in json.loads((nd / "node.json").read_text())["links"])
        assert _audit(nd, "link removed")[-1]["link"] == "[0,10]"


def test_remove_node_of_an_untrusted_relay_refuses_its_certificate_and_plans_around_it(grown):
    m = _fresh(grown)
    pids = _pids(m)
    out = _ok("remove-node", str(m.dir), "1")
    assert out["topology_version"] == 6 and out["stopped"] and not out["not_applied"]
    assert _health(m, m.net["address"])["excluded"].get("1") == "removed"
    for nb in ("0", "3"):  # its former neighbours
        with httpx.Client(verify=_ctx(m, "node 1"), timeout=10.0) as cl:
            r = cl.get(f"https://{m.addr[nb]}/relay/v1/links", params={"link": "[0,1]"})
        assert r.status_code == 403 and "removed" in r.json()["detail"], r.text
    for _ in range(3):
        links = _route_links(m, "A", "0", "B", "7")
        assert not any(1 in k for k in links), links
    now = _pids(m)
    assert "node-1" not in now and {k: v for k, v in pids.items() if k != "node-1"} == now


def test_the_controller_keeps_each_staying_links_offset_and_forgets_a_removed_one(tmp_path, monkeypatch):
    """In one process (no server): a change applied to the controller; its store restarts on the new topology."""
    import asyncio

    import numpy as np

    from qkdseg.net import grow, growstate, membership
    from qkdseg.net.controller import Controller
    from qkdseg.net.layout import init_network
    from qkdseg.server.store import Batch

    d = tmp_path / "net"
    init_network(d, "example", {"A": "0", "B": "7"})
    sent = []
    monkeypatch.setattr(growstate, "_controller_up", lambda *a: None)
    monkeypatch.setattr(growstate, "_post", lambda ctx, addr, body, timeout=20.0: (sent.append(body), (False, "test"))[1])
    with pytest.raises(Exception, match="goes through the running controller"):
        grow.remove_link(d, "3", "5")
    body = next(b for b in sent if "network" in b)
    ctl = Controller(d / "controller")
    try:
        k35, k48 = (ctl.link_index[frozenset(e)] for e in (("3", "5"), ("4", "8")))
        bits = np.zeros(ctl.svc.arrays.n_links, dtype=np.int64)
        bits[[k35, k48]] = (1000, 2000)

        async def change():
            links = ctl.svc.planner.reserve(bits)
            await ctl.svc.committer.commit(Batch(links=ctl.svc.planner.link_rows(links)))
            assert (await membership.apply(ctl, body))["applied"]
            assert not (await membership.apply(ctl, body))["applied"]  # the same version again: applied already

        asyncio.run(change())
        assert ctl.topology_version == 1 and ctl.svc.arrays.n_links == 11
        assert frozenset(("3", "5")) not in ctl.link_index
        assert int(ctl.svc.levels.consumed[ctl.link_index[frozenset(("4", "8"))]]) == 2000
        assert [(u, v, c) for u, v, c, _, _ in ctl.svc.store.load_links().values()] == [("4", "8", 2000)]
    finally:
        ctl.svc.close()
    again = Controller(d / "controller")  # a restart reads what the change wrote
    try:
        assert again.topology_version == 1 and again.svc.arrays.n_links == 11
        assert int(again.svc.levels.consumed[again.link_index[frozenset(("4", "8"))]]) == 2000
    finally:
        again.svc.close()


def test_a_node_adds_a_link_then_destroys_its_key_and_voids_a_removed_saes_keys(tmp_path, monkeypatch):
    """In one process (no server): a node's side of add-link, remove-link and sae remove."""
    import asyncio

    from qkdseg.net import grow, growstate, nodemembers
    from qkdseg.net.layout import init_network
    from qkdseg.net.node import NodeService

    d = tmp_path / "net"
    init_network(d, "example", {"A": "0", "B": "7", "E": "0"})
    sent = []
    monkeypatch.setattr(growstate, "_controller_up", lambda *a: None)
    monkeypatch.setattr(growstate, "_post", lambda ctx, addr, body, timeout=20.0: (sent.append(body), (False, "test"))[1])
    for _ in range(2):  # the command run again (the controller refused it after DIR was written): one entry
        with pytest.raises(Exception, match="goes through the running controller"):
            grow.add_link(d, "0", "7")
    assert [set(lk["link"]) for lk in json.loads((d / "nodes" / "0" / "node.json").read_text())["links"]].count(
        {0, 7}) == 1
    body = next(b for b in sent if b.get("conf", {}).get("id") == 0)
    nd = d / "nodes" / "0"
    conf = json.loads((nd / "node.json").read_text())  # node 0 as it ran before the change
    (nd / "node.json").write_text(json.dumps({**conf, "links": conf["links"][:2], "topology_version": 0}))
    svc = NodeService(nd)
    try:
        async def change():
            assert (await nodemembers.apply(svc, body))["applied"]
            end = svc.links[7]
            off, km = end.take(32)  # its seed, sealed to this node, opens: key material
            assert off == 0 and len(km.reveal()) == 32
            gone = json.loads(json.dumps(body))
            gone.update(version=2, sealed={})
            gone["conf"]["links"] = conf["links"][:2]
            del gone["conf"]["registry"]["E"]
            assert (await nodemembers.apply(svc, gone))["applied"]
            with pytest.raises(Exception, match="was removed from the network"):
                end.take(32)  # a request holding the end fails cleanly

        asyncio.run(change())
        assert 7 not in svc.links and "[0,7]" not in json.loads((nd / "links.sealed.json").read_text())
        events = [json.loads(x)["event"] for x in (nd / "audit.jsonl").read_text().splitlines()]
        assert events[-5:] == ["link added", "membership", "link removed", "sae removed", "membership"]
        assert json.loads((nd / "node.json").read_text())["topology_version"] == 2 and "E" not in svc.registry
    finally:
        svc.close()


def test_changes_of_membership_refused_in_one_line(tmp_path):
    from qkdseg.net.layout import init_network

    d = tmp_path / "net"
    init_network(d, "example", {"A": "0", "B": "7"}, port=_free_port())
    before = (d / "nodes" / "0" / "node.json").read_text()
    for args, needle in [(("add-link", str(d), "0", "7"), "does not answer"),  # no controller: nothing changed
                         (("sae", "add", str(d), "E"), "expected SAE_ID=NODE"),
                         (("remove-node", str(d), "1", "--format", "xml"), "--format")]:
        r = _run("net", *args)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (d / "nodes" / "0" / "node.json").read_text() == before
