"""Issue 36, item 4: ``net init --link-seeds agree``: the two ends of each emulated link agree its seed over their
mutual TLS (net/linkseeds.py); no other machine, and no file but each end's own ``links.sealed.json``, holds it.

One line network (0 - 1 - 2), real processes on loopback. The agreement is cut twice by a kill -9 (the test-only
``QKDSEG_TEST_KILL_AFTER_SEAL``): the proposer right after it sealed its seed, before sending it; the acceptor right
after it sealed the seed it received, before answering. Then the whole network starts at once (nodes 0 and 1
restart with their seeds sealed): one seed per link, the one first drawn, never another; the keys delivered are the
same at both ends.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from test_net import Net, _free_port, _run
from timing import scaled


def _line(tmp_path: Path) -> Path:
    topo = tmp_path / "line.json"
    topo.write_text(json.dumps({"directed": False, "graph": {"name": "line3"},
                                "nodes": [{"id": i, "trusted": i == 1, "p": 1.0 if i == 1 else 0.8} for i in range(3)],
                                "links": [{"source": 0, "target": 1}, {"source": 1, "target": 2}]}))
    return topo


def _seeds(d: Path, node: str) -> dict[str, bytes]:
    from qkdseg.net.layout import unseal

    nd = d / "nodes" / node
    sealed = json.loads((nd / "links.sealed.json").read_text())
    return {name: unseal((nd / "storage.key").read_bytes(), name, blob) for name, blob in sealed.items()}


def _start(d: Path, node: str, env: dict) -> subprocess.Popen:
    from qkdseg.net.procs import start_one

    conf = json.loads((d / "nodes" / node / "node.json").read_text())
    return start_one(d, {"role": "node", "dir": str(d / "nodes" / node), "name": f"node-{node}",
                         "address": conf["address"]}, env=env)


def _wait_exit(p: subprocess.Popen, seconds: float) -> int:
    try:
        return p.wait(timeout=scaled(seconds))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"process {p.pid} did not exit") from None


def _pending(net: Net) -> dict[str, list]:
    import httpx

    from qkdseg.net.wire import client_context

    c = net.dir / "controller"
    ctx = client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
    with httpx.Client(verify=ctx, timeout=5.0) as cl:
        return {n: cl.get(f"https://{net.addr[n]}/health").json()["seeds_pending"] for n in net.addr}


def test_link_seeds_agreed_by_the_ends_across_kill9_one_seed_per_link(tmp_path):
    d = tmp_path / "line"
    r = _run("net", "init", str(d), "--network", str(_line(tmp_path)), "--sae", "A=0", "--sae", "B=2",
             "--port", str(_free_port()), "--link-seeds", "agree")
    assert r.returncode == 0, r.stderr
    for n in "012":  # net init drew no seed
        assert json.loads((d / "nodes" / n / "links.sealed.json").read_text()) == {}
        assert json.loads((d / "nodes" / n / "node.json").read_text())["link_seeds"] == "agree"
    env = {**os.environ, "QKDSEG_RELAY_TIMEOUT_S": "6", "QKDSEG_REPORT_S": "0.3"}
    kill01 = {**env, "QKDSEG_ALLOW_HOSTILE": "1", "QKDSEG_TEST_KILL_AFTER_SEAL": "[0,1]"}
    procs: list[subprocess.Popen] = []
    try:
        # the proposer (node 0, link [0,1]'s first end) dies right after sealing its seed, before sending it
        p0 = _start(d, "0", kill01)
        procs.append(p0)
        assert _wait_exit(p0, 60) == -signal.SIGKILL
        first = _seeds(d, "0")["[0,1]"]
        assert _seeds(d, "1") == {}
        # the acceptor (node 1) dies right after sealing the seed node 0 sends again, before answering
        p1 = _start(d, "1", kill01)
        p0 = _start(d, "0", env)
        procs += [p1, p0]
        assert _wait_exit(p1, 60) == -signal.SIGKILL
        assert _seeds(d, "0") == {"[0,1]": first} and _seeds(d, "1")["[0,1]"] == first  # the same, not a new one
        s12 = _seeds(d, "1").get("[1,2]")  # node 1 proposes [1,2]: sealed before node 2 ever ran
        p0.send_signal(signal.SIGTERM)
        _wait_exit(p0, 30)
        # the whole network at once: the agreements finish, one seed per link
        r = _run("net", "up", str(d), "--detach", env=env, timeout=int(scaled(180)))
        assert r.returncode == 0, r.stdout + r.stderr
        net = Net(d, tmp_path, env)
        deadline = time.monotonic() + scaled(30)
        while any(_pending(net).values()):
            assert time.monotonic() < deadline, f"seeds not agreed: {_pending(net)}"
            time.sleep(0.2)
        seeds = {n: _seeds(d, n) for n in "012"}
        assert seeds["0"] == {"[0,1]": first} and seeds["2"].keys() == {"[1,2]"}
        assert seeds["1"] == {"[0,1]": first, "[1,2]": seeds["2"]["[1,2]"]}
        if s12 is not None:
            assert seeds["2"]["[1,2]"] == s12
        assert first != seeds["2"]["[1,2]"]
        for _ in range(3):  # keys across both links, the same at both ends (Net.deliver compares them)
            net.deliver("A", "0", "B", "2")
        # no seed anywhere in DIR in the clear (raw, base64, hex): only sealed, in its two ends' own files
        needles = [f(s) for s in (first, seeds["2"]["[1,2]"])
                   for f in (lambda b: b, lambda b: base64.b64encode(b), lambda b: b.hex().encode())]
        for path in d.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(x in data for x in needles), path
        sealed = {n: [json.loads(x).get("link") for x in (d / "nodes" / n / "audit.jsonl").read_text().splitlines()
                      if '"link seed"' in x] for n in "012"}
        assert sealed["2"] == ["[1,2]"]  # sealed once, audited
        assert sealed["0"] == []  # node 0 never sealed again after its crash (that seal died before its audit)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        _run("net", "down", str(d))


def test_link_seeds_refusals(tmp_path):
    import pytest

    from qkdseg.errors import InvalidRequest
    from qkdseg.net.layout import init_network

    for seeds, source in (("agree", "device"), ("both", "emulated")):
        with pytest.raises(InvalidRequest, match="--link-seeds"):
            init_network(tmp_path / "x", "example", {"A": "0"}, link_seeds=seeds, link_source=source)
    assert not (tmp_path / "x").exists()
