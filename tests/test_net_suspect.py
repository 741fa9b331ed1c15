"""Issue 38 over real processes: quotas at the slave's node, and a misbehaving relay named and routed around.

One network for the module (``net up``; loopback), at security level 0.8 so that one path suffices:

    0 (A, E) -- 1 -- 3 (trusted) -- 4 (B, C)
      \\---- 2 -- 5 (trusted) --/

A request from A to B goes over both paths (smr); nodes 2 and 1 are then run as the hostile-node harness
(:mod:`qkdseg.net.hostile`) to corrupt or drop what they relay, until each is named suspect and routed around.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from test_net import Net, _free_port, _run
from test_net import _scrape as scrape

ENV = {"QKDSEG_RELAY_TIMEOUT_S": "3", "QKDSEG_REPORT_S": "0.5"}
QUOTAS = ("--max-key-count", "6", "--sae-max-waiting", "4", "--sae-rate", "10")


@pytest.fixture(scope="module")
def snet(tmp_path_factory):
    base = tmp_path_factory.mktemp("suspect")
    topo = base / "two-paths.json"
    trusted = {3, 5}
    topo.write_text(json.dumps({"directed": False, "graph": {"name": "two-paths"},
                                "nodes": [{"id": i, "trusted": i in trusted, "p": 1.0 if i in trusted else 0.8}
                                          for i in range(6)],
                                "links": [{"source": u, "target": v} for u, v in ((0, 1), (1, 3), (0, 2), (2, 5),
                                                                                  (5, 3), (3, 4))]}))
    d = base / "net"
    saes = [a for s in ("A=0", "B=4", "C=4", "E=0") for a in ("--sae", s)]
    r = _run("net", "init", str(d), "--network", str(topo), *saes, "--security-level", "0.8",
             "--port", str(_free_port()), *QUOTAS)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, **ENV}
    mport = _free_port()
    r = _run("net", "up", str(d), "--detach", "--metrics-port-base", str(mport), env=env, timeout=180)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        n = Net(d, base, env)
        n.metrics = {"controller": mport, "0": mport + 1 + list(n.names).index("0")}
        yield n
    finally:
        _run("net", "down", str(d), timeout=120)


def _audit(net, where: str) -> list[dict]:
    p = net.dir / ("controller" if where == "controller" else f"nodes/{net.names[where]}") / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _events(net, where: str, event: str) -> int:
    return sum(1 for r in _audit(net, where) if r.get("event") == event)


def _issued_at_4(net) -> int:
    """Keys issued and stored at node 4 (relayed, or spare keys issued there)."""
    return sum(len(r.get("key_ids", ())) for r in _audit(net, "4")
               if r.get("event") == "issue spare keys" or (r.get("event") == "store"))


def _refused(net, master: str, slave: str, number: int, limit: str):
    """A request refused with 503 naming ``limit``: no plan at the controller, nothing stored or issued at node 4."""
    plans, at4 = _events(net, "controller", "plan"), _issued_at_4(net)
    code, c = net.client(master, "0").get_key(slave, number=number)
    assert code == 503 and f"{limit}=" in c.message, (code, vars(c))
    time.sleep(0.3)
    assert (_events(net, "controller", "plan"), _issued_at_4(net)) == (plans, at4)
    deny = [r for r in _audit(net, "0") if r.get("event") == "deny"][-1]
    assert deny["reason"] == limit and deny["status"] == 503


def test_quotas_are_counted_at_the_slaves_node_and_refuse_before_anything_is_issued(snet):
    """max_key_count 6 and sae_max_waiting 4 at node 4 (issue 38: before, a node checked neither), sae_rate 10."""
    a = snet.client("A", "0")
    code, ab = a.get_key("B", number=4)
    assert code == 200, vars(ab)
    _refused(snet, "A", "B", 1, "sae_max_waiting")  # A:B has 4 waiting at node 4
    code, ac = a.get_key("C", number=2)  # another pair keeps its keys: 6 wait at node 4
    assert code == 200, vars(ac)
    _refused(snet, "A", "C", 1, "max_key_count")
    code, _ = snet.client("B", "4").get_key_with_key_IDs("A", [k.key_id for k in ab.keys])
    assert code == 200
    code, ab2 = a.get_key("B", number=3)  # fetched: room again
    assert code == 200, vars(ab2)
    e = snet.client("E", "0")
    codes = [e.get_status("B")[0] for _ in range(30)]  # E's bucket holds 10 and refills 10 a second
    assert codes.count(503) >= 5 and codes[:5] == [200] * 5, codes
    assert a.get_status("B")[0] == 200  # A has a bucket of its own
    assert [r for r in _audit(snet, "0") if r.get("reason") == "sae_rate"]
    m = scrape(snet.metrics["0"])
    counted = {dict(k[1]).get("reason"): v for k, v in m.items() if k[0] == "qkdseg_refusals_total"}
    assert counted.get("sae_max_waiting") == 1 and counted.get("max_key_count") == 1 and counted["sae_rate"] >= 5
    for slave, got in (("B", ab2), ("C", ac)):  # nothing left waiting for the tests after
        assert snet.client(slave, "4").get_key_with_key_IDs("A", [k.key_id for k in got.keys])[0] == 200
