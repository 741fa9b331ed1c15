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
from pathlib import Path

import pytest
from test_net import Net, _free_port, _run
from test_net import _scrape as scrape
from timing import scaled

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
             "--port", str(_free_port()), *QUOTAS, "--suspect-after", "2", "--suspect-for", "600")
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
    for slave, got in (("B", ab2), ("C", ac)):  # nothing left waiting for the tests after
        assert snet.client(slave, "4").get_key_with_key_IDs("A", [k.key_id for k in got.keys])[0] == 200
    codes, elapsed = _burst(snet, "E", "0", "B")
    # E's bucket holds 10 and refills 10 a second: at least the 10 it held pass, at most 10 more each second
    ok, refused = codes.count(200), codes.count(503)
    assert ok + refused == len(codes) and 10 <= ok <= 10 + 10 * elapsed + 1 and refused >= 5, (ok, refused, elapsed)
    assert a.get_status("B")[0] == 200  # A has a bucket of its own
    assert [r for r in _audit(snet, "0") if r.get("reason") == "sae_rate"]
    m = scrape(snet.metrics["0"])
    counted = {dict(k[1]).get("reason"): v for k, v in m.items() if k[0] == "qkdseg_refusals_total"}
    assert counted.get("sae_max_waiting") == 1 and counted.get("max_key_count") == 1
    assert counted["sae_rate"] == refused


def _burst(net, sae: str, node: str, slave: str) -> tuple[list[int], float]:
    """``sae``'s status requests to ``node`` from 6 threads over kept-alive connections, until 5 are refused (or
    scaled 20 s): each status code, and the seconds from the first request sent to the last answer (the bucket's
    bound holds on any machine; the threads make the requests outpace its refill on a busy one)."""
    import threading

    import httpx

    from qkdseg.net.wire import client_context

    pk = net.dir / "pki"
    ctx = client_context(pk / f"{sae}.crt", pk / f"{sae}.key", pk / "ca.crt")
    url = f"https://{net.addr[node]}/api/v1/keys/{slave}/status"
    codes: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + scaled(20)

    def hammer():
        with httpx.Client(verify=ctx, timeout=scaled(10)) as cl:
            while time.monotonic() < deadline:
                with lock:
                    if codes.count(503) >= 5 or len(codes) >= 400:
                        return
                code = cl.get(url).status_code
                with lock:
                    codes.append(code)

    t0 = time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes, time.monotonic() - t0


# -- a misbehaving relay named and routed around --------------------------------------------------------------
def _ctl_health(net) -> dict:
    import httpx

    from qkdseg.net.wire import client_context

    c = net.dir / "controller"
    with httpx.Client(verify=client_context(c / "controller.crt", c / "controller.key", c / "ca.crt"),
                      timeout=10) as cl:
        return cl.get(f"https://{net.net['address']}/health").json()


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return got


SIZES = iter(range(264, 4096, 8))  # a size no spare key has: each request is a relay run


def _run_once(net) -> tuple[int, int]:
    """A -> B once: (status, the plan's hops: 3 through node 1, 4 through nodes 2 and 5); a key delivered is
    fetched at B and compared."""
    code, c = net.client("A", "0").get_key("B", size=next(SIZES))
    plan = [r for r in _audit(net, "controller") if r.get("event") == "plan"][-1]
    if code == 200:
        code2, back = net.client("B", "4").get_key_with_key_IDs("A", [c.keys[0].key_id])
        assert code2 == 200 and back.keys[0].key == c.keys[0].key
    else:
        assert code == 503 and c.message, (code, vars(c))
    return code, plan["route"]["hops"]


def _hostile(net, node: str) -> Path:
    """Node ``node`` as the hostile-node harness (restarted so once), behaving until its file says otherwise."""
    from test_net_hostile import _restart

    path = net.dir.parent / f"hostile-{node}.json"
    if not path.exists():
        path.write_text("{}")
        net.hostile_file = path
        _restart(net, node, hostile=True)
    return path


def _excluded(net, want: dict, what: str) -> None:
    _wait(lambda: _ctl_health(net)["excluded"] == want, scaled(10), f"{what}: {_ctl_health(net)['excluded']}")


def test_a_corrupting_relay_is_named_routed_around_and_cleared(snet):
    """Node 2 corrupts: the two failed runs through nodes 1 and 2 name node 1 first (a tie); the next run, through
    node 2 only, fails too: node 2 is named and node 1 readmitted (its failures all went through node 2)."""
    lie = _hostile(snet, "2")
    assert _run_once(snet) == (200, 6)  # both paths: 0-1-3 and 0-2-5-3, then 3-4
    lie.write_text(json.dumps({"corrupt": ["pieces"]}))
    assert [_run_once(snet) for _ in range(2)] == [(503, 6), (503, 6)]  # --suspect-after 2
    _excluded(snet, {"1": "suspect"}, "node 1 was not named first")
    assert _run_once(snet) == (503, 4)  # through node 2 alone
    _excluded(snet, {"2": "suspect"}, "node 2 was not named, or node 1 not readmitted")
    recs = [r for r in _audit(snet, "controller") if r.get("event") in ("node suspect", "node readmitted")]
    assert [(r["event"], r["node"]) for r in recs[-3:]] == [("node suspect", "1"), ("node suspect", "2"),
                                                            ("node readmitted", "1")], recs
    assert recs[-2]["failed_runs"] == 3 and "key confirmation failed" in " ".join(recs[-2]["why"])
    assert _run_once(snet) == (200, 3)  # routed around node 2: through node 1 alone
    rows = json.loads(_run("net", "status", str(snet.dir), "--format", "json").stdout)
    assert next(r for r in rows if r["role"] == "controller")["excluded"] == {"2": "suspect"}
    m = scrape(snet.metrics["controller"])
    assert m[("qkdseg_suspect_nodes", ())] == 1 and m[("qkdseg_suspects_named_total", ())] == 2
    lie.write_text("{}")  # it behaves again; still planned around until cleared
    r = _run("net", "clear-suspect", str(snet.dir), "2")
    assert r.returncode == 0 and "no longer suspect" in r.stdout, r.stdout + r.stderr
    assert _ctl_health(snet)["excluded"] == {}
    assert _audit(snet, "controller")[-1]["event"] == "node readmitted"
    assert _run_once(snet) == (200, 6)  # used again
    r = _run("net", "clear-suspect", str(snet.dir), "99")
    assert r.returncode == 2 and "99" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_dropping_relay_is_named_routed_around_and_cleared(snet):
    lie = _hostile(snet, "1")
    assert _run_once(snet) == (200, 6)
    lie.write_text(json.dumps({"drop": ["pieces"]}))
    assert [_run_once(snet) for _ in range(2)] == [(503, 6), (503, 6)]  # each the source's timeout (3 s here)
    _excluded(snet, {"1": "suspect"}, "node 1 was not named")
    rec = [r for r in _audit(snet, "controller") if r.get("event") == "node suspect"][-1]
    assert rec["node"] == "1" and rec["why"] == ["timed out"], rec
    assert _run_once(snet) == (200, 4)  # routed around: nodes 2 and 5
    lie.write_text("{}")
    assert _run("net", "clear-suspect", str(snet.dir), "1").returncode == 0
    assert _run_once(snet) == (200, 6)  # used again


def test_the_suspect_rule_one_at_a_time_explained_failures_readmitted_expiry():
    from types import SimpleNamespace

    import numpy as np

    from qkdseg.net.suspects import Suspects

    class Planner:
        excluded: dict = {}

        def exclude(self, node, reason):
            self.excluded[node] = reason

        def readmit(self, node, reason):
            self.excluded.pop(node, None)

    t = [0.0]
    arrays = SimpleNamespace(node_ids=list(range(6)), trusted=np.array([0, 0, 0, 1, 0, 1], dtype=bool))
    sus = Suspects(Planner(), after=2, for_s=10.0, clock=lambda: t[0])
    runs = iter(range(100))

    def run(nodes, ok, source=0):
        rid = str(next(runs))
        sus.planned(rid, arrays, nodes, 0, 4)
        return sus.outcomes(str(source), [(rid, ok, "" if ok else "key confirmation failed")])

    assert run([0, 1, 3, 2, 5, 4], False) == []  # relays 1 and 2 implicated (3, 5 trusted; 0, 4 the ends)
    assert [r["node"] for r in run([0, 1, 3, 2, 5, 4], False)] == ["1"]  # a tie: one at a time, the lowest id
    recs = run([0, 2, 5, 3, 4], False)  # through 2 alone: 2 named, 1 readmitted (explained by 2)
    assert [(r["event"], r["node"]) for r in recs] == [("node suspect", "2"), ("node readmitted", "1")]
    assert sus.planner.excluded == {"2": "suspect"}
    assert run([0, 1, 3, 4], True) == [] and sus.view() == {"2": {"failed_runs": 3, "until": 10.0}}
    rid = "x"
    sus.planned(rid, arrays, [0, 1, 3, 4], 0, 4)
    assert sus.outcomes("4", [(rid, False, "")]) == [] and rid in sus.runs  # only its source reports a run
    run([0, 1, 3, 4], False)
    run([0, 1, 3, 4], True)  # a confirmed run clears the failures before it
    assert "1" not in sus.failed
    t[0] = 11.0
    assert [r["node"] for r in sus.expire()] == ["2"] and sus.planner.excluded == {}
