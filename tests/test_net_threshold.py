"""Threshold sharing in the network of processes (issue 40; docs/network.md, "Threshold sharing").

One network for most of the module, real processes on loopback: two segments of four node-disjoint one-relay paths

    0 (A) -- 1|2|3|4 -- 5 (trusted) -- 6|7|8|9 -- 10 (B)

started with ``net init --tolerate 1`` (k = 3 of 4), every node tapping what it handles (the adversary's tap). A
relay is killed mid-run under 8 clients (no 503: the run's segment end decodes from the 3 shares that came), the
compromise test reads the taps, then the controller is restarted with ``tolerate = 2`` and a relay altering what it
forwards (the hostile-node harness): the keys are corrected and the path is named at its segment end and at the
controller. ``example`` with ``--tolerate 1``: tests/test_net_threshold_example.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import pytest
from test_net import _binomial_check, _compromise_share, _free_port, _run, net_up
from test_net_hostile import _audit, _restart, _stop, _wait
from four_paths import FOUR
from timing import scaled

ENV = {"QKDSEG_RELAY_TIMEOUT_S": "6", "QKDSEG_REPORT_S": "0.5"}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    base = tmp_path_factory.mktemp("four")
    d, taps, topo = base / "deploy", base / "taps", base / "four.json"
    taps.mkdir()
    topo.write_text(json.dumps(FOUR))
    r = _run("net", "init", str(d), "--network", str(topo), "--sae", "A=0", "--sae", "B=10",
             "--security-level", "0.3", "--tolerate", "1", "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr
    env = {**os.environ, **ENV, "QKDSEG_ALLOW_TAP": "1", "QKDSEG_TAP_DIR": str(taps)}
    with net_up(d, taps, env) as n:
        n.hostile_file = base / "hostile.json"
        n.hostile_file.write_text("{}")
        yield n


def _node_audit(net, node: str) -> list[dict]:
    return _audit(net, "controller" if node == "controller" else net.names[node])


def _storm(net, master, mnode, slave, snode, victim: str, per_client: int = 3):
    """8 clients, ``per_client`` requests each, relay ``victim`` killed with SIGKILL 0.5 s in: [(code, message,
    started, seconds)] and the kill's time."""
    def client(_):
        out = []
        m, s = net.client(master, mnode), net.client(slave, snode)
        for _ in range(per_client):
            t0 = time.monotonic()
            code, c = m.get_key(slave)
            dt = time.monotonic() - t0
            if code == 200:
                code2, back = s.get_key_with_key_IDs(master, [c.keys[0].key_id])
                assert code2 == 200 and back.keys[0].key == c.keys[0].key  # identical at both ends
            out.append((code, getattr(c, "message", ""), t0, dt))
        return out

    results = []
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(client, i) for i in range(8)]
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(net.pid(f"node-{net.names[victim]}"), signal.SIGKILL)
        for f in futs:
            results += f.result()
    return results, killed_at


def test_every_record_of_a_threshold_run_names_its_sharing(four):
    """The plan (controller), the issue (source) and the store (destination) records say threshold, T = 1."""
    four.deliver("A", "0", "B", "10")
    want = {"sharing": "threshold", "tolerate": 1}
    plan = _wait(lambda: [r for r in _node_audit(four, "controller") if r["event"] == "plan"], scaled(10), "plan")
    issue = _wait(lambda: [r for r in _node_audit(four, "0") if r["event"] == "issue"], scaled(10), "issue")
    store = _wait(lambda: [r for r in _node_audit(four, "10") if r["event"] == "store"], scaled(10), "store")
    assert all({k: r["route"][k] for k in want} == want for r in plan + issue)
    assert all({k: r[k] for k in want} == want for r in store)


def test_compromise_with_threshold_sharing_matches_exact_security(four):
    """100 keys (one per relay run); each run's relays compromised with probability 1 - p = 0.3 (seeded): the share of
    keys rebuilt from k of a segment's shares in the taps matches 1 - their mean exact (threshold) security."""
    from qkdseg import read_network

    graph = read_network(four.dir.parent / "four.json").graph
    hits, securities, runs, _, _ = _compromise_share(four, graph, "A", "0", "B", "10", 100, 20261207, tolerate=1)
    assert len(set(runs)) == len(runs) and abs(securities[0] - 0.83960569) < 1e-6, securities[:1]
    _binomial_check("compromise test, threshold T = 1", hits, securities, runs)


def test_kill9_relay_mid_run_t1_no_503(four):
    """8 clients while relay 2 (one path of segment 0) is killed: every request 200 with identical keys; the runs
    in flight decode from the 3 shares that came, the later ones are planned around the dead relay."""
    results, killed_at = _storm(four, "A", "0", "B", "10", "2")
    codes = [c for c, _, _, _ in results]
    assert codes == [200] * len(codes), [(c, m) for c, m, _, _ in results if c != 200]
    in_flight = [dt for _, _, t0, dt in results if t0 < killed_at < t0 + dt]
    print(f"kill -9 relay 2, T = 1: {len(codes)} of {len(codes)} delivered, {len(in_flight)} in flight at the kill; "
          f"times {min(dt for *_, dt in results):.2f} to {max(dt for *_, dt in results):.2f} s")
    four.restart(f"node-{four.names['2']}", "node", four.dir / "nodes" / four.names["2"])


def test_t2_a_tampering_relay_is_corrected_and_named_at_its_end_and_the_controller(four):
    """The controller restarted with tolerate = 2; relay 7 (segment 1) flips a byte of every piece it forwards:
    keys delivered correct, the path 5-7-10 named in node 10's audit and the controller's, and relay 7 recorded
    as a failed relay there (named suspect after three)."""
    toml = four.dir / "controller" / "kms.toml"
    _stop(four, "controller")
    toml.write_text(toml.read_text().replace("tolerate = 1", "tolerate = 2"))
    four.restart("controller", "controller", four.dir / "controller")
    _restart(four, four.names["7"], hostile=True)
    four.hostile_file.write_text(json.dumps({"corrupt": ["pieces"]}))
    try:
        # three runs: the third report names relay 7 suspect, and a later request would be planned around it, which
        # at level 0.3 and T = 2 the three paths left cannot meet (503: one clean clone of two under load saw it)
        for _ in range(3):
            four.deliver("A", "0", "B", "10", size=264)  # a size no spare key has: each a relay run
    finally:
        four.hostile_file.write_text("{}")
    path = ["5", "7", "10"]
    at_end = _wait(lambda: [r for r in _node_audit(four, "10") if r["event"] == "share altered"], scaled(10), "end")
    assert {tuple(map(str, r["path"])) for r in at_end} == {tuple(path)} and all(r["tolerate"] == 2 for r in at_end)
    ctl = _wait(lambda: [r for r in _node_audit(four, "controller") if r["event"] == "share altered"], scaled(15),
                "controller's record")
    assert {tuple(r["path"]) for r in ctl} == {tuple(path)} and all(r["reporter"] == "10" for r in ctl)
    named = _wait(lambda: [r for r in _node_audit(four, "controller") if r["event"] == "node suspect"], scaled(15),
                  "suspect")
    assert {r["node"] for r in named} == {"7"}, named
