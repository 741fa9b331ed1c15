"""Threshold sharing in the relay engine both deployments run (qkdseg.keys.steps; issue 40): shares relayed as the
pieces, a segment end that decodes as soon as its shares prove the key, lost and altered paths, the late check.

In one process, with the steps wired by direct calls as :func:`qkdseg.keys.relay` wires them, and a message
filter that plays the dead relay (its messages never arrive) or the tampering one (a byte flipped).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from qkdseg import read_network, route
from qkdseg.keys import KeyStore, relay
from qkdseg.keys.material import KeyMaterial
from qkdseg.keys.relay import Plan, _LocalEnd, _neighbours
from qkdseg.keys.steps import NodePart, RelayNode, node_parts

from four_paths import FOUR


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    import json

    p = tmp_path_factory.mktemp("four") / "four.json"
    p.write_text(json.dumps(FOUR))
    return read_network(p)


def _run(net, r, *, dead=(), tamper=(), settle=True):
    """Relay ``r`` with relays ``dead`` silent and ``tamper`` flipping a byte of what they forward; the nodes."""
    store = KeyStore(net)
    need: dict = defaultdict(int)
    for seg in r.segments:
        for path in seg.paths:
            for a, b in zip(path, path[1:]):
                need[store.canonical((a, b))] += r.block_bits
    pads = store.reserve(need)
    parts = node_parts(r, [Plan.from_any(r.reconstruction, r)])
    offset: dict = defaultdict(int)
    nodes = {v: RelayNode(part, {w: _LocalEnd(store.canonical((v, w)), v, pads, offset) for w in _neighbours(part)})
             for v, part in parts.items()}
    queue = [m for n in nodes.values() for m in n.start()]
    arrivals = []
    while queue:
        msg = queue.pop(0)
        if msg["src"] in dead:
            continue
        if msg["src"] in tamper and msg["kind"] == "pieces":
            msg = {**msg, "blocks": [(pid, off, c ^ KeyMaterial(b"\x01" + bytes(c.bits // 8 - 1)))
                                     for pid, off, c in msg["blocks"]]}
        arrivals.append(msg["dst"])
        queue += nodes[msg["dst"]].on_message(msg)
        if not queue and settle:  # nothing more will come: what the grace timer does
            for n in nodes.values():
                if n.waiting:
                    queue += n.settle()
    return nodes


def test_part_names_its_sharing_and_round_trips(four):
    r = route(four, 0, 10, block_bits=64, epsilon=0.3, sharing="threshold", tolerate=2)
    parts = node_parts(r, [Plan.from_any(r.reconstruction, r)])
    end = parts[5]
    assert end.tolerate == 2 and [p for _, _, p in end.paths] == [tuple(p) for p in r.segments[0].paths]
    d = end.to_dict()
    assert d["sharing"] == "threshold" and d["tolerate"] == 2 and NodePart.from_dict(d) == end
    xor = node_parts(route(four, 0, 10, block_bits=64), [Plan.xor_all(route(four, 0, 10, block_bits=64))])
    assert xor[5].to_dict()["sharing"] == "xor" and NodePart.from_dict(xor[5].to_dict()).tolerate == 0


def test_kms_relay_with_threshold_shares_keys_identical_and_pieces_are_shares(four):
    from qkdseg.reconstruction.shamir import combine

    r = route(four, 0, 10, block_bits=256, epsilon=0.3, sharing="threshold", tolerate=1)
    res = relay(r, KeyStore(four), r.reconstruction)
    assert res.keys_identical and all(res.plans[0].keys[0].segment_keys_identical)
    # the relays of segment 0 hold the shares of its key: any 3 of 4 rebuild it
    shares = [res.views[p[1]].pieces[(0, i)].reveal() for i, p in enumerate(r.segments[0].paths)]
    seg_key = res.views[0].segment_keys[(0, 0, 0)]
    assert KeyMaterial(combine([shares[0], None, shares[2], shares[3]], 1).secret) == seg_key


@pytest.mark.parametrize("tolerate", [1, 2])
def test_a_dead_relay_costs_its_path_not_the_run(four, tolerate):
    r = route(four, 0, 10, block_bits=128, epsilon=0.3, sharing="threshold", tolerate=tolerate)
    victim = r.segments[0].paths[1][1]
    nodes = _run(four, r, dead={victim})
    src, dst = nodes[0].keys(), nodes[10].keys()
    assert src and src == dst and not nodes[5].failed


def test_decodes_at_k_shares_before_the_last_arrives(four):
    """T = 1, m = 4: the segment end decodes at the third share (k = 3), with no wait for the fourth."""
    r = route(four, 0, 10, block_bits=128, epsilon=0.3, sharing="threshold", tolerate=1)
    victim = r.segments[0].paths[3][1]
    nodes = _run(four, r, dead={victim}, settle=False)  # no grace timer: decoded from the shares alone
    assert nodes[0].keys() == nodes[10].keys() and nodes[10].keys()


def test_t2_waits_for_a_proving_share_then_settles(four):
    """T = 2, m = 4, k = 2: two shares are not decoded at once (q = 3); with two dead paths the grace timer decodes
    the two that came (e = 2 <= T)."""
    r = route(four, 0, 10, block_bits=128, epsilon=0.3, sharing="threshold", tolerate=2)
    dead = {r.segments[0].paths[0][1], r.segments[0].paths[2][1]}
    stuck = _run(four, r, dead=dead, settle=False)
    assert stuck[5].waiting and not stuck[10].keys()
    nodes = _run(four, r, dead=dead)
    assert nodes[0].keys() == nodes[10].keys() and nodes[10].keys()


def test_t2_a_tampering_relay_is_corrected_and_its_path_named(four):
    r = route(four, 0, 10, block_bits=128, epsilon=0.3, sharing="threshold", tolerate=2)
    path = r.segments[1].paths[2]
    nodes = _run(four, r, tamper={path[1]})
    assert nodes[0].keys() == nodes[10].keys() and nodes[10].keys()
    ev = nodes[10].share_events
    assert ev and {e["what"] for e in ev} == {"altered"} and {tuple(e["nodes"]) for e in ev} == {tuple(path)}
    assert not nodes[5].share_events


def test_t1_a_tampering_relay_is_detected(four):
    """T = 1: the decoding at k shares has no spare; the altered share shows when it or the fourth comes (or the key
    differs: the end-to-end confirmation's case). Never a silent wrong key with nothing reported."""
    r = route(four, 0, 10, block_bits=128, epsilon=0.3, sharing="threshold", tolerate=1)
    nodes = _run(four, r, tamper={r.segments[0].paths[1][1]})
    same = nodes[0].keys() == nodes[10].keys()
    assert nodes[5].share_events or not same
    if nodes[5].share_events:
        assert {e["what"] for e in nodes[5].share_events} <= {"inconsistent", "altered"}


# -- kms serve (KeyService in-process: the planner, the same engine, the audit) ----------------------------------------
def test_kms_service_with_threshold_sharing_delivers_and_names_it(tmp_path, four):
    import asyncio
    import json

    from qkdseg import write_network
    from qkdseg.kms.server import open_service
    from qkdseg.server.config import KmsConfig, write_config
    from qkdseg.server.etsi import Caller
    from qkdseg.server.storagekey import init_keys

    d = tmp_path / "svc"
    d.mkdir()
    write_network(four, tmp_path / "four.json")
    cfg = KmsConfig(network=str(tmp_path / "four.json"), saes={"A": "0", "B": "10"}, security_level=0.3,
                    reconstruction="xor-all", sharing="threshold", tolerate=2, _dir=d).check()
    write_config(d, cfg)
    init_keys(cfg)
    svc = open_service(d, clock=lambda: 1_000_000.0)
    try:
        async def go():
            out = await svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(3, 256, None, None, None))
            back = await svc.dec_keys(Caller("B", "b"), "A", [k["key_ID"] for k in out["keys"]])
            return out, back

        out, back = asyncio.run(go())
        assert [k["key"] for k in back["keys"]] == [k["key"] for k in out["keys"]]
        route = out["key_container_extension"]["qkdseg_route"]
        assert route["sharing"] == "threshold" and route["tolerate"] == 2 and route["keys_per_relay"] == 1
        assert all(abs(k["key_extension"]["qkdseg_security"] - 0.42471289) < 1e-6 for k in out["keys"])
    finally:
        svc.close()
    audit = [json.loads(x) for x in (d / "audit.jsonl").read_text().splitlines()]
    issues = [r for r in audit if r.get("event") == "issue"]
    assert issues and all(r["route"]["sharing"] == "threshold" and r["route"]["tolerate"] == 2 for r in issues)


def test_kms_toml_sharing_is_checked(tmp_path):
    from qkdseg.errors import InvalidRequest
    from qkdseg.server.config import KmsConfig

    def cfg(**kw):
        return KmsConfig(network="example", saes={"A": "0", "B": "7"}, _dir=tmp_path, **kw).check()

    assert cfg().sharing == "xor" and cfg().tolerate == 0
    for kw, field in (({"sharing": "shamir"}, "sharing"), ({"tolerate": 1}, "tolerate"),
                      ({"sharing": "threshold", "tolerate": 0, "reconstruction": "xor-all"}, "tolerate"),
                      ({"sharing": "threshold", "tolerate": 1}, "reconstruction"),
                      ({"sharing": "threshold", "tolerate": True, "reconstruction": "xor-all"}, "tolerate")):
        with pytest.raises(InvalidRequest, match=f"field '{field}'"):
            cfg(**kw)


def test_kms_init_and_net_init_refuse_bad_sharing_in_one_line(tmp_path):
    """The flags' checks (cli.common.sharing_fields, shared by both inits), then each init's exit 2 and one line."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from qkdseg.cli.common import sharing_fields
    from qkdseg.errors import InvalidRequest

    for (sharing, tolerate, rec), needle in (
            ((None, -1, None), "--tolerate -1"), (("shamir", 1, None), "--sharing 'shamir'"),
            (("threshold", None, None), "--sharing threshold needs --tolerate"), (("threshold", 0, None), "got 0"),
            (("xor", 2, None), "--tolerate 2 needs --sharing threshold"),
            ((None, 1, "paper"), "--reconstruction paper")):
        with pytest.raises(InvalidRequest, match=re.escape(needle)):
            sharing_fields(sharing, tolerate, rec)
    assert sharing_fields(None, 2, None) == {"sharing": "threshold", "tolerate": 2, "reconstruction": "xor-all"}
    assert sharing_fields(None, None, None) == {"sharing": "xor", "tolerate": 0, "reconstruction": "paper"}
    q = str(Path(sys.executable).with_name("qkdseg"))
    for cmd, args, needle in ((["kms", "init", str(tmp_path / "k"), "--no-pki"], ["--sharing", "threshold"],
                               "--sharing threshold needs --tolerate"),
                              (["net", "init", str(tmp_path / "n")], ["--tolerate", "1", "--reconstruction", "paper"],
                               "--reconstruction paper")):
        r = subprocess.run([q, *cmd, "--network", "example", "--sae", "A=0", "--sae", "B=7", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- the network's bookkeeping (net/shares.py, net/suspects.py): no processes ------------------------------------------
def test_share_reports_name_the_path_and_feed_the_failed_relays(four):
    from types import SimpleNamespace

    from qkdseg.net.shares import SharePaths, tolerable
    from qkdseg.net.suspects import Suspects
    from qkdseg.net.wire import Problem

    class Planner:
        def __init__(self):
            self.excluded = {}
            self.arrays = four.arrays

        def exclude(self, node, reason):
            self.excluded[node] = reason

        def readmit(self, node, reason):
            self.excluded.pop(node, None)

    ctl = SimpleNamespace(suspects=Suspects(Planner(), after=2))
    r = route(four, 0, 10, block_bits=64, sharing="threshold", tolerate=2)
    paths = SharePaths()
    paths.planned("r1", r)
    paths.planned("xor", route(four, 0, 10, block_bits=64))  # an XOR plan is not kept
    assert list(paths.plans) == ["r1"]
    i = 2
    path = [str(v) for v in r.segments[1].paths[i]]
    rep = {"request_id": "r1", "segment": 1, "path": i, "what": "altered"}
    assert paths.reports("5", [rep]) == []  # node 5 does not end segment 1: ignored
    recs = SharePaths.apply(ctl, paths.reports("10", [rep, {**rep, "request_id": "unknown"}]))
    assert [(x["event"], x["path"], x["reporter"], x["tolerate"]) for x in recs] == [("share altered", path, "10", 2)]
    # a confirmed run through the relay does not clear an altered share; a second report names it suspect
    ctl.suspects.planned("run", four.arrays, [int(v) for v in path], 0, 10)
    ctl.suspects.outcomes("0", [("run", True, "")])
    assert ctl.suspects.view()[path[1]]["failed_runs"] == 1
    recs = SharePaths.apply(ctl, paths.reports("10", [rep]))
    assert [x["event"] for x in recs] == ["share altered", "node suspect"] and recs[1]["node"] == path[1]
    for bad in ([{"request_id": "r1", "segment": True, "path": 0, "what": "altered"}],
                [{"request_id": "r1", "segment": 0, "path": 0, "what": "lost"}], "x"):
        with pytest.raises(Problem):
            paths.reports("10", bad)
    # which unreachable nodes a plan survives: relays of at most T paths per segment, no segment node
    relay = lambda j, i: str(r.segments[j].paths[i][1])  # noqa: E731
    assert tolerable(r, [relay(0, 0), relay(0, 1), relay(1, 3)])
    assert not tolerable(r, [relay(0, 0), relay(0, 1), relay(0, 2)]) and not tolerable(r, ["5"])
    assert not tolerable(route(four, 0, 10, block_bits=64), [relay(0, 0)])
