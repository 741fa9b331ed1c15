"""An independent check of the key service's operator dashboard API (docs/kms.md, "The operator dashboard").

Written from the documentation only, not from the dashboard's code: every expected number here
comes from a network this file writes, from the hand-computed SMR route of docs/model.md section 3
on it, or from what a real ETSI GS QKD 014 client (PyPI ``etsi-qkd-014-client``) received. It
starts ``qkdseg kms serve DIR --dashboard-port 0`` as a child process and reads
``/dashboard/api/`` with ``requests``, as any other client of that API would.

The network (``_network``): SAE_A at ``a``, SAE_B and SAE_B2 at ``b``, SAE_C at ``c``, SAE_D at ``d``::

         u1(0.6)       u3(0.8)              c(leaf) -- d -- t2(trusted) -- t
       /        \\     /       \\
      a          t(trusted)      b
       \\        /     \\       /
         u2(0.7)       u4(0.9)

SMR from a to b (docs/model.md section 3, by hand): the trusted relay minimising hop distance is
t (2 + 2; t2 gives 3 + 3). Two successive ExDijkstra paths a->b give 1 - (1 - 0.7*0.9)(1 - 0.6*0.8)
= 0.8076; two paths per segment through t give (1 - 0.3*0.4)(1 - 0.1*0.2) = 0.88 * 0.98 = 0.8624,
strictly better, so t is a segment node; from t, t2 cannot beat 0.98 (after the edge t-t2 is used,
t2 reaches b no more). Step 2 (round robin) gives a-u2-t, t-u4-b, then a-u1-t, t-u3-b: 4 paths,
8 hops, each of the 8 links once. The paper's reconstruction at level 0.5 makes 2 keys per relay,
by balanced matching 0.7*0.8 = 0.56 and 0.6*0.9 = 0.54. From c to d the route is the one link c-d,
no relay: security 1, one key per relay; that link (2,048 bits) is the one this file drains.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin, urlparse

import networkx as nx
import pytest
import requests
from etsi_qkd_014_client import QKD014Client

from kms_helpers import QKDSEG, Server, kms_init, set_config
from timing import scaled

LEVEL = 0.5
KEY_SIZE = 256
DEFAULT_RATE = 50  # default_rate_bps, for the one link whose file gives no rate_bps
ROUTE_AB = [[["a", "u2", "t"], ["a", "u1", "t"]], [["t", "u4", "b"], ["t", "u3", "b"]]]
ROUTE_AB_SECURITY = (1 - 0.3 * 0.4) * (1 - 0.1 * 0.2)
KEY_SECURITIES_AB = (0.7 * 0.8, 0.6 * 0.9)
SAES = {"SAE_A": "a", "SAE_B": "b", "SAE_B2": "b", "SAE_C": "c", "SAE_D": "d"}
DEADLINE_S = 2.0  # the issue: the dashboard shows a delivery within 2 seconds


def _network() -> nx.Graph:
    g = nx.Graph(name="dashboard-check")
    for node, trusted, p, pos in [
        ("a", False, 0.5, (0, 0)), ("u1", False, 0.6, (1, 1)), ("u2", False, 0.7, (1, -1)),
        ("t", True, None, (2, 0)), ("u3", False, 0.8, (3, 1)), ("u4", False, 0.9, (3, -1)),
        ("b", False, 0.5, (4, 0)), ("t2", True, None, (2, 2)), ("d", False, 0.75, (2, 3)),
        ("c", False, 0.95, (2, 4)),
    ]:
        attrs = {"trusted": trusted, "pos": [float(pos[0]), float(pos[1])]}
        if p is not None:
            attrs["p"] = p
        g.add_node(node, **attrs)
    for u, v in [("a", "u1"), ("a", "u2"), ("u1", "t"), ("u2", "t"),
                 ("t", "u3"), ("t", "u4"), ("u3", "b"), ("u4", "b")]:
        g.add_edge(u, v, pool_bits=8192, rate_bps=4, length_km=12.5)
    g.add_edge("t", "t2", pool_bits=4096)  # no rate_bps: default_rate_bps applies
    g.add_edge("t2", "d", pool_bits=4096, rate_bps=3, length_km=3.0)
    g.add_edge("d", "c", pool_bits=2048, rate_bps=2)
    return g


# -- talking to the dashboard ------------------------------------------------------------------------
class Recording(QKD014Client):
    """The real client, keeping each answer's JSON: its parsed ``DataKey`` drops ``key_extension``.

    Only the JSON is kept: a kept ``Response`` holds its TLS connection open, and the server then
    takes its 30 s keep-alive timeout to stop.
    """

    def _get(self, url):
        r = super()._get(url)
        self.last = r.json()
        return r

    def _post(self, url, data):
        r = super()._post(url, data)
        self.last = r.json()
        return r


def _csp_ok(r: requests.Response) -> None:
    if r.status_code in (401, 404):  # test_error_answers_carry_the_csp_header: they do not yet
        return
    assert "default-src 'self'" in r.headers.get("Content-Security-Policy", ""), (r.url, r.headers)


def _get(svc, path: str, **kw) -> requests.Response:
    r = requests.get(svc.api + path, timeout=10, **kw)
    _csp_ok(r)
    svc.bodies.append((r.url, r.content))
    return r


def _json(svc, path: str):
    r = _get(svc, path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


def _new_rows(svc, n: int, since: float) -> list[dict]:
    """The next ``n`` rows after ``svc.last_seq``, oldest first; they must arrive within 2 s of ``since``."""
    while True:
        got = _json(svc, f"deliveries?after={svc.last_seq}")
        rows = sorted(got["rows"], key=lambda r: r["seq"])
        if len(rows) >= n:
            break
        assert time.monotonic() - since < DEADLINE_S, f"{len(rows)} of {n} rows after {DEADLINE_S} s: {rows}"
        time.sleep(0.02)
    elapsed = time.monotonic() - since
    assert elapsed < DEADLINE_S, elapsed
    assert len(rows) == n, rows
    assert all(r["seq"] > svc.last_seq for r in rows)
    assert got["last_seq"] == rows[-1]["seq"]
    svc.last_seq = rows[-1]["seq"]
    return rows


def _pools(svc) -> dict:
    pools = _json(svc, "pools")
    m = len(svc.links)
    assert all(len(pools[f]) == m for f in ("levels", "capacity", "states"))
    for k, (level, cap, state) in enumerate(zip(pools["levels"], pools["capacity"], pools["states"])):
        assert cap == svc.links[k]["capacity_bits"] and 0 <= level <= cap
        # docs/kms.md "Pool states": EMPTY below the default key size, READY at or above half the
        # pool, WARNING or CHARGING in between
        if level < KEY_SIZE:
            assert state == "EMPTY", (k, level, state)
        elif level >= cap / 2:
            assert state == "READY", (k, level, state)
        else:
            assert state in ("WARNING", "CHARGING"), (k, level, state)
    return pools


def _expect_debit(svc, before: dict, debit: dict[int, int]) -> dict:
    """Poll ``pools`` (2 s) until every link fell by its debit, less what it refilled since ``before``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        after = _pools(svc)
        dt = after["time"] - before["time"]
        ok = True
        for k in range(len(svc.links)):
            fell = before["levels"][k] - after["levels"][k]
            refill = math.ceil(svc.rate[k] * max(dt, 0.0)) + 1  # floor(rate t) steps: at most ceil + 1
            want = debit.get(k, 0)
            assert fell <= want, (k, fell, want, before, after)
            ok &= fell >= want - refill
        if ok:
            return after
        assert time.monotonic() < deadline, ("pools did not show the debit", debit, before, after)
        time.sleep(0.05)


def _wait_counters(svc) -> dict:
    """``counters`` must match the ledger of what the clients saw, within 2 s."""
    led = svc.ledger
    secs = [s for issue in led["issues"] for s in issue["securities"]]
    want = {
        "deliveries": len(led["issues"]),
        "keys_served": len(secs),
        "key_bits_served": sum(len(i["securities"]) * i["size"] for i in led["issues"]),
        "fetches": led["fetches"],
        "refusals": sum(led["refusals"].values()),
        "refusals_by_reason": dict(led["refusals"]),
        "expiries": 0,
    }
    deadline = time.monotonic() + DEADLINE_S
    while True:
        c = _json(svc, "counters")
        got = {k: c["since_start"][k] for k in want}
        if got == want:
            break
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.05)
    assert c["window_s"] == 60
    assert c["started"] <= c["time"] and c["uptime_s"] == pytest.approx(c["time"] - c["started"], abs=1e-3)
    for scope in ("since_start", "last_minute"):  # the whole module runs in under a minute
        got = {k: c[scope][k] for k in want}
        assert got == want, (scope, got, want)
        if secs:
            assert c[scope]["mean_security"] == pytest.approx(sum(secs) / len(secs), abs=1e-12)
        else:
            assert c[scope]["mean_security"] is None
    return c


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    g = _network()
    net = root / "net.json"
    net.write_text(json.dumps(nx.node_link_data(g, edges="links")))
    d = kms_init(root / "svc", str(net), tuple(f"{s}={n}" for s, n in SAES.items()),
                 "--security-level", str(LEVEL), "--key-size", str(KEY_SIZE))
    set_config(d, default_rate_bps=DEFAULT_RATE)
    server = Server(d, args=("--dashboard-port", "0")).start()
    try:
        assert server.dashboard_url.startswith("http://127.0.0.1:"), server.dashboard_url
        pk = d / "pki"
        state = SimpleNamespace(
            server=server, graph=g, api=urljoin(server.dashboard_url, "api/"), bodies=[], keys=[],
            last_seq=0, ledger={"issues": [], "fetches": 0, "refusals": Counter()},
            client={s: Recording(server.host, str(pk / f"{s}.crt"), str(pk / f"{s}.key"), str(pk / "ca.crt"))
                    for s in SAES},
        )
        net_api = _json(state, "network")
        state.links = net_api["links"]
        state.link_of = {frozenset((lk["u"], lk["v"])): lk["index"] for lk in state.links}
        state.rate = [g.edges[lk["u"], lk["v"]].get("rate_bps", DEFAULT_RATE) for lk in state.links]
        yield state
    finally:
        server.stop()


def _enc(svc, master: str, slave: str, **kw):
    """enc_keys with the real client; a 200 goes into the ledger and the key list."""
    c = svc.client[master]
    code, data = c.get_key(slave, **kw)
    raw = c.last
    if code == 200:
        keys = raw["keys"]
        assert [k.key for k in data.keys] == [k["key"] for k in keys]
        for k in keys:
            svc.keys.append((k["key_ID"], k["key"]))
        size = len(base64.b64decode(keys[0]["key"])) * 8
        svc.ledger["issues"].append({"size": size,
                                     "securities": [k["key_extension"]["qkdseg_security"] for k in keys]})
    return code, raw


def _dec(svc, slave: str, master: str, ids: list[str]):
    c = svc.client[slave]
    code, data = c.get_key_with_key_IDs(master, ids)
    raw = c.last
    if code == 200:
        svc.ledger["fetches"] += 1
        for k in raw["keys"]:
            svc.keys.append((k["key_ID"], k["key"]))
    return code, raw


def _check_issue_row(row: dict, raw: dict, master: str, slave: str, size: int) -> None:
    keys = raw["keys"]
    secs = [k["key_extension"]["qkdseg_security"] for k in keys]
    ext = raw["key_container_extension"]
    assert row["kind"] == "issue" and row["outcome"] == "ok"
    assert (row["master"], row["slave"]) == (master, slave)
    assert row["keys"] == len(keys) and row["size"] == size and row["bits"] == len(keys) * size
    assert row["key_ids"] == [k["key_ID"][:8] for k in keys]
    assert row["achieved_security"] == pytest.approx(min(secs), abs=1e-12)
    assert row["mean_security"] == pytest.approx(sum(secs) / len(secs), abs=1e-12)
    assert row["requested_security"] == ext["qkdseg_security_level"]["requested"]
    assert row["level_source"] == ext["qkdseg_security_level"]["source"]
    assert row["spare_keys_used"] == ext["qkdseg_spare_keys_used"]
    route = ext["qkdseg_route"]
    if route is None:  # every key from spare keys
        assert row["consumed_bits"] == 0
    else:
        assert row["consumed_bits"] == route["consumed_bits"]
        assert row["segment_nodes"] == route["segment_nodes"]
        assert row["segments"] == len(route["segment_nodes"]) - 1
        assert row["paths"] == route["paths"] and row["hops"] == route["hops"]
        assert row["relays"] == route["relays"]
        assert row["route_security"] == pytest.approx(route["security"], abs=1e-12)
        assert sum(len(seg) for seg in row["route_paths"]) == route["paths"]
        assert sum(len(p) - 1 for seg in row["route_paths"] for p in seg) == route["hops"]


def _check_fetch_row(row: dict, raw: dict, master: str, slave: str, size: int) -> None:
    assert row["kind"] == "fetch" and row["outcome"] == "ok"
    assert (row["master"], row["slave"]) == (master, slave)
    assert row["keys"] == len(raw["keys"]) and row["size"] == size
    assert row["key_ids"] == [k["key_ID"][:8] for k in raw["keys"]]


def _check_refusal_row(row: dict, op: str, status: int, reason: str, message: str) -> None:
    assert row["kind"] == "refusal" and row["outcome"] == "refused"
    assert (row["op"], row["status"], row["reason"]) == (op, status, reason), row
    assert row["message"] == message
    assert row["key_ids"] == [] and row["bits"] == 0 and row["consumed_bits"] == 0


# -- 1. the network ----------------------------------------------------------------------------------
def test_network_lists_every_node_link_and_sae(svc):
    g = svc.graph
    net = _json(svc, "network")
    assert net["name"] == "dashboard-check" and net["kme_id"] == "KME_qkdseg"
    assert (net["algorithm"], net["reconstruction"]) == ("smr", "paper")
    assert net["security_level"] == LEVEL and net["key_size"] == KEY_SIZE
    assert net["positions"] == "file"
    by_node: dict[str, list[str]] = {}
    for sae, node in SAES.items():
        by_node.setdefault(node, []).append(sae)
    assert sorted(n["index"] for n in net["nodes"]) == list(range(g.number_of_nodes()))
    got = {n["id"]: (n["trusted"], n["p"], n["x"], n["y"], sorted(n["saes"])) for n in net["nodes"]}
    want = {node: (a["trusted"], a.get("p", 1.0), a["pos"][0], a["pos"][1], sorted(by_node.get(node, [])))
            for node, a in g.nodes(data=True)}
    assert got == want
    assert [lk["index"] for lk in net["links"]] == list(range(g.number_of_edges()))
    assert {frozenset((lk["u"], lk["v"])) for lk in net["links"]} == {frozenset(e) for e in g.edges}
    assert len(net["links"]) == g.number_of_edges()
    for lk in net["links"]:
        e = g.edges[lk["u"], lk["v"]]
        assert lk["capacity_bits"] == e["pool_bits"]
        assert lk["length_km"] == e.get("length_km")  # null when the file gives none
        # the file's rate; for the link without one, docs/kms.md does not say whether the API gives
        # null or the default_rate_bps that refills it: accept either
        assert lk["rate_bps"] in ((e["rate_bps"],) if "rate_bps" in e else (None, DEFAULT_RATE)), lk
    assert net["saes"] == SAES
    # pools start full, every link READY, in `links` order
    pools = _pools(svc)
    assert pools["levels"] == [g.edges[lk["u"], lk["v"]]["pool_bits"] for lk in net["links"]]
    assert pools["states"] == ["READY"] * len(net["links"])
    # every link's history, and 404 for no such link
    for lk in net["links"]:
        h = _json(svc, f"links/{lk['index']}?seconds=60")
        assert (h["index"], h["u"], h["v"], h["capacity_bits"]) == (lk["index"], lk["u"], lk["v"], lk["capacity_bits"])
        assert h["sample_s"] > 0 and len(h["times"]) == len(h["levels"]) >= 1
        assert h["times"] == sorted(h["times"]) and all(0 <= x <= lk["capacity_bits"] for x in h["levels"])
    r = _get(svc, f"links/{len(net['links'])}")
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/json")
    # GET only
    r = requests.post(svc.api + "network", timeout=10)
    assert r.status_code == 405, r.status_code
    _wait_counters(svc)


# -- 2. deliveries made with a real client -----------------------------------------------------------
def test_deliveries_counters_and_pools_follow_real_client_requests(svc):
    ab_links = {svc.link_of[frozenset(e)] for seg in ROUTE_AB for p in seg for e in zip(p, p[1:])}
    assert len(ab_links) == 8
    pools = _pools(svc)

    # R1: two 256-bit keys, one relay: 256 bits from each of the route's 8 links
    t0 = time.monotonic()
    code, r1 = _enc(svc, "SAE_A", "SAE_B", number=2, size=256)
    assert code == 200, r1
    (row,) = _new_rows(svc, 1, t0)
    _check_issue_row(row, r1, "SAE_A", "SAE_B", 256)
    assert row["segment_nodes"] == ["a", "t", "b"] and row["route_paths"] == ROUTE_AB
    assert (row["segments"], row["paths"], row["hops"], row["relays"]) == (2, 4, 8, 1)
    assert row["route_security"] == pytest.approx(ROUTE_AB_SECURITY, abs=1e-12)
    assert row["consumed_bits"] == 8 * 256
    assert sorted(k["key_extension"]["qkdseg_security"] for k in r1["keys"]) == pytest.approx(sorted(KEY_SECURITIES_AB))
    assert (row["applied_security"], row["level_source"]) == (LEVEL, "default") and not row["fallback"]
    pools = _expect_debit(svc, pools, {k: 256 for k in ab_links})

    # the slave fetches them with the real client
    t0 = time.monotonic()
    code, back = _dec(svc, "SAE_B", "SAE_A", [k["key_ID"] for k in r1["keys"]])
    assert code == 200 and [k["key"] for k in back["keys"]] == [k["key"] for k in r1["keys"]]
    (row,) = _new_rows(svc, 1, t0)
    _check_fetch_row(row, back, "SAE_A", "SAE_B", 256)

    # R2: four 128-bit keys: two relays of two keys, 2 x 128 bits from each link
    t0 = time.monotonic()
    code, r2 = _enc(svc, "SAE_A", "SAE_B", number=4, size=128)
    assert code == 200, r2
    (row,) = _new_rows(svc, 1, t0)
    _check_issue_row(row, r2, "SAE_A", "SAE_B", 128)
    assert row["relays"] == 2 and row["consumed_bits"] == 2 * 8 * 128
    pools = _expect_debit(svc, pools, {k: 256 for k in ab_links})

    # a mandatory level no route meets (best 0.8624): 400 level_unmet, nothing debited
    t0 = time.monotonic()
    code, err = _enc(svc, "SAE_A", "SAE_B", number=1, size=256,
                     extension_mandatory=[{"qkdseg_security_level": 0.99}])
    assert code == 400, err
    (row,) = _new_rows(svc, 1, t0)
    _check_refusal_row(row, "enc_keys", 400, "level_unmet", err["message"])
    assert row["master"] == "SAE_A" and row["slave"] == "SAE_B"
    assert row["requested_security"] == 0.99
    svc.ledger["refusals"]["level_unmet"] += 1
    pools = _expect_debit(svc, pools, {})

    # a size that is not a multiple of 8: 400 bad_request
    t0 = time.monotonic()
    code, err = _enc(svc, "SAE_A", "SAE_B", number=1, size=100)
    assert code == 400
    (row,) = _new_rows(svc, 1, t0)
    _check_refusal_row(row, "enc_keys", 400, "bad_request", err["message"])
    svc.ledger["refusals"]["bad_request"] += 1

    # R3: the client's plain GET (one key of the default size): a relay makes two, one is kept spare;
    # R4: the same GET is served from that spare key, with no debit
    t0 = time.monotonic()
    code, r3 = _enc(svc, "SAE_A", "SAE_B")
    assert code == 200 and len(r3["keys"]) == 1
    (row,) = _new_rows(svc, 1, t0)
    _check_issue_row(row, r3, "SAE_A", "SAE_B", KEY_SIZE)
    assert row["consumed_bits"] == 8 * KEY_SIZE and row["spare_keys_used"] == 0
    pools = _expect_debit(svc, pools, {k: KEY_SIZE for k in ab_links})
    t0 = time.monotonic()
    code, r4 = _enc(svc, "SAE_A", "SAE_B")
    assert code == 200 and len(r4["keys"]) == 1
    (row,) = _new_rows(svc, 1, t0)
    _check_issue_row(row, r4, "SAE_A", "SAE_B", KEY_SIZE)
    assert row["spare_keys_used"] == 1 and row["consumed_bits"] == 0
    assert sorted(k["key_extension"]["qkdseg_security"] for k in r3["keys"] + r4["keys"]) == pytest.approx(
        sorted(KEY_SECURITIES_AB))
    pools = _expect_debit(svc, pools, {})

    # SAE_B2 (same node, not the keys' slave) asks for them: 401 unauthorized, nothing consumed
    ids34 = [r3["keys"][0]["key_ID"], r4["keys"][0]["key_ID"]]
    t0 = time.monotonic()
    code, err = _dec(svc, "SAE_B2", "SAE_A", ids34)
    assert code == 401
    (row,) = _new_rows(svc, 1, t0)
    _check_refusal_row(row, "dec_keys", 401, "unauthorized", err["message"])
    svc.ledger["refusals"]["unauthorized"] += 1
    # the slave fetches R2's four keys and R3+R4's two in one call each
    for container, ids in ((r2, [k["key_ID"] for k in r2["keys"]]), (None, ids34)):
        t0 = time.monotonic()
        code, back = _dec(svc, "SAE_B", "SAE_A", ids)
        assert code == 200
        (row,) = _new_rows(svc, 1, t0)
        _check_fetch_row(row, back, "SAE_A", "SAE_B", 128 if container is r2 else KEY_SIZE)
    # fetching one again: 400 key_not_found
    t0 = time.monotonic()
    code, err = _dec(svc, "SAE_B", "SAE_A", [r1["keys"][0]["key_ID"]])
    assert code == 400
    (row,) = _new_rows(svc, 1, t0)
    _check_refusal_row(row, "dec_keys", 400, "key_not_found", err["message"])
    svc.ledger["refusals"]["key_not_found"] += 1

    _wait_counters(svc)
    # the whole table: seq from 1, newest first, limit and after honoured
    table = _json(svc, "deliveries?limit=1000")
    seqs = [r["seq"] for r in table["rows"]]
    assert seqs == list(range(svc.last_seq, 0, -1)) and table["last_seq"] == svc.last_seq
    assert [r["seq"] for r in _json(svc, "deliveries?limit=2")["rows"]] == seqs[:2]
    assert [r["seq"] for r in _json(svc, f"deliveries?after={svc.last_seq - 3}")["rows"]] == seqs[:3]
    assert all(len(i) == 8 for r in table["rows"] for i in r["key_ids"])


# -- 3. draining a link ------------------------------------------------------------------------------
def test_a_drained_link_refuses_with_its_reason(svc):
    cd = svc.link_of[frozenset(("c", "d"))]
    pools = _pools(svc)
    assert pools["levels"][cd] == 2048
    refused = 0
    # three keys a request (three relays of one key over the one link c-d): 2048 -> 1280 -> 512,
    # then 768 bits are wanted and 512 are there
    for want_level, want_state in ((1280, "READY"), (512, "WARNING"), (None, "WARNING")):
        t0 = time.monotonic()
        code, raw = _enc(svc, "SAE_C", "SAE_D", number=3)
        (row,) = _new_rows(svc, 1, t0)
        if want_level is not None:
            assert code == 200, raw
            _check_issue_row(row, raw, "SAE_C", "SAE_D", KEY_SIZE)
            assert row["segment_nodes"] == ["c", "d"] and row["route_paths"] == [[["c", "d"]]]
            assert (row["relays"], row["consumed_bits"], row["achieved_security"]) == (3, 768, 1.0)
            pools = _expect_debit(svc, pools, {cd: 768})
        else:
            assert code == 503, raw
            _check_refusal_row(row, "enc_keys", 503, "no_key_material", raw["message"])
            assert (row["master"], row["slave"], row["requested_security"]) == ("SAE_C", "SAE_D", LEVEL)
            svc.ledger["refusals"]["no_key_material"] += 1
            refused += 1
            pools = _expect_debit(svc, pools, {})
        assert pools["states"][cd] == want_state, pools
    assert refused == 1
    # two more keys take the last 512 bits: EMPTY; then one key is refused
    t0 = time.monotonic()
    code, raw = _enc(svc, "SAE_C", "SAE_D", number=2)
    assert code == 200, raw
    _check_issue_row(_new_rows(svc, 1, t0)[0], raw, "SAE_C", "SAE_D", KEY_SIZE)
    pools = _expect_debit(svc, pools, {cd: 512})
    assert pools["states"][cd] == "EMPTY"
    t0 = time.monotonic()
    code, raw = _enc(svc, "SAE_C", "SAE_D", number=1)
    assert code == 503
    _check_refusal_row(_new_rows(svc, 1, t0)[0], "enc_keys", 503, "no_key_material", raw["message"])
    svc.ledger["refusals"]["no_key_material"] += 1
    c = _wait_counters(svc)
    assert c["since_start"]["refusals_by_reason"]["no_key_material"] == 2
    deadline = time.monotonic() + DEADLINE_S  # one sample a second
    while (h := _json(svc, f"links/{cd}"))["levels"][-1] >= KEY_SIZE:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert max(h["levels"]) == 2048


# -- 4. no key bytes anywhere ------------------------------------------------------------------------
def _read_events(svc, seconds: float, out: dict) -> None:
    with requests.get(svc.api + "events", stream=True, timeout=(5, 5)) as r:
        out["status"], out["type"] = r.status_code, r.headers.get("Content-Type", "")
        _csp_ok(r)
        buf, end = b"", time.monotonic() + seconds
        for chunk in r.iter_content(chunk_size=None):
            buf += chunk
            if time.monotonic() > end:
                break
    out["body"] = buf


def _parse_sse(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            try:
                events.append((name, json.loads("\n".join(data))))
            except json.JSONDecodeError:  # the last block may be cut by the time bound
                pass
    return events


def _secret_forms(keys) -> list[bytes]:
    forms = []
    for key_id, b64 in keys:
        raw = base64.b64decode(b64)
        forms += [b64.encode(), b64.rstrip("=").encode(), base64.urlsafe_b64encode(raw).rstrip(b"="),
                  raw.hex().encode(), raw.hex().upper().encode(), raw,
                  key_id.encode(), key_id.replace("-", "").encode()]  # full ids: the dashboard cuts them to 8
    return forms


def test_no_key_bytes_in_any_dashboard_answer(svc):
    # an SSE stream that is open while a real client makes a delivery and its slave fetches it
    sse: dict = {}
    reader = threading.Thread(target=_read_events, args=(svc, 3.0, sse))
    reader.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    code, raw = _enc(svc, "SAE_A", "SAE_B", number=2, size=256)
    assert code == 200, raw
    code, back = _dec(svc, "SAE_B", "SAE_A", [k["key_ID"] for k in raw["keys"]])
    assert code == 200
    _new_rows(svc, 2, t0)
    reader.join(timeout=20)
    assert not reader.is_alive() and sse["status"] == 200 and sse["type"].startswith("text/event-stream")
    svc.bodies.append(("events", sse["body"]))
    events = _parse_sse(sse["body"])
    names = Counter(n for n, _ in events)
    assert names["pools"] >= 2 and names["counters"] >= 2, names  # at least once a second
    ids8 = [k["key_ID"][:8] for k in raw["keys"]]
    rows = [d for n, d in events if n == "delivery"]
    assert any(r["kind"] == "issue" and r["key_ids"] == ids8 for r in rows), rows
    assert any(r["kind"] == "fetch" and r["key_ids"] == ids8 for r in rows), rows
    for n, d in events:
        if n == "pools":
            assert len(d["levels"]) == len(svc.links)
    _wait_counters(svc)

    # every API answer once more, the page and every file it loads
    for path in ("network", "pools", "counters", "deliveries", "deliveries?limit=1000", "links/0",
                 f"links/{len(svc.links) - 1}?seconds=900", f"links/{len(svc.links)}", "nope"):
        _get(svc, path)
    page_url = svc.server.dashboard_url
    page = requests.get(page_url, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    _csp_ok(page)
    svc.bodies.append((page_url, page.content))
    assets = {urljoin(page_url, ref) for ref in re.findall(r'(?:src|href)="([^"#]+)"', page.text)
              if not ref.startswith(("data:", "http:", "https:", "//"))}
    assert assets, page.text[:500]
    for url in sorted(assets):
        r = requests.get(url, timeout=10)
        assert r.status_code == 200, url
        _csp_ok(r)
        svc.bodies.append((url, r.content))
    assert len(svc.keys) >= 4  # 2 keys to the master, 2 to the slave here; every earlier test adds its own
    forms = _secret_forms(svc.keys)
    checked = 0
    for where, body in svc.bodies:
        low = body.lower()
        for form in forms:
            assert form not in body and form.lower() not in low, f"key material {form[:12]!r} in {where}"
        checked += 1
    assert checked >= 12


# -- 5. access ---------------------------------------------------------------------------------------
def _serve_fails(directory: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([QKDSEG, "kms", "serve", str(directory), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it started although it should not have
            proc.kill()
            proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    """A service on the example network whose dashboard is public: 0.0.0.0, TLS, the token."""
    d = kms_init(tmp_path_factory.mktemp("pub") / "svc", "example", ("A=0", "B=7"))
    server = Server(d, args=("--dashboard-port", "0", "--dashboard-host", "0.0.0.0", "--dashboard-public"))
    server.start()
    try:
        assert server.dashboard_url.startswith("https://"), server.dashboard_url
        port = urlparse(server.dashboard_url).port
        yield SimpleNamespace(server=server, dir=d, port=port, base=f"https://127.0.0.1:{port}/dashboard/",
                              ca=str(d / "pki" / "ca.crt"), token=(d / "dashboard.token").read_text().strip())
    finally:
        server.stop()


def test_non_loopback_dashboard_needs_the_public_flag_and_a_private_token(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    token_file = d / "dashboard.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    line = _one_line_error(_serve_fails(d, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0"))
    assert "dashboard" in line
    os.chmod(token_file, 0o644)  # others can read it: a public dashboard refuses to start
    line = _one_line_error(_serve_fails(d, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0",
                                        "--dashboard-public"))
    assert "dashboard.token" in line


def test_public_dashboard_needs_the_token_over_tls(pub):
    token = pub.token
    assert len(token) >= 16
    wrong = token[:-1] + ("x" if token[-1] != "x" else "y")

    def get(path, session=requests, **kw):
        r = session.get(pub.base + path, verify=pub.ca, timeout=10, **kw)
        _csp_ok(r)
        return r

    for path in ("api/network", "api/counters", "api/deliveries", "api/links/0", "api/events", ""):
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}):
            r = get(path, headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.headers["Content-Type"].startswith("application/json") and r.json()["message"], r.text
    r = get("api/network", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and len(r.json()["nodes"]) == 10
    r = get("api/events", headers={"Authorization": f"Bearer {token}"}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    r.close()
    # ?token= once, then the cookie alone
    s = requests.Session()
    r = get(f"?token={token}", session=s)
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert "token" not in r.url and [h.status_code for h in r.history] == [303]  # the token leaves the address
    cookie = r.history[0].headers.get("Set-Cookie", "").lower()
    assert all(flag in cookie for flag in ("httponly", "samesite=strict", "secure")), cookie
    r = get("api/counters", session=s)
    assert r.status_code == 200 and r.json()["since_start"]["deliveries"] == 0
    s.close()
    # TLS only: plain HTTP on that port gets no dashboard
    try:
        r = requests.get(f"http://127.0.0.1:{pub.port}/dashboard/api/network", timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code != 200
    except requests.exceptions.ConnectionError:
        pass


def test_error_answers_carry_the_csp_header(svc, pub):
    answers = [requests.get(svc.api + path, timeout=10) for path in (f"links/{len(svc.links)}", "nope")]
    answers.append(requests.get(pub.base + "api/network", verify=pub.ca, timeout=10))
    assert [r.status_code for r in answers] == [404, 404, 401]
    for r in answers:
        assert "default-src 'self'" in r.headers.get("Content-Security-Policy", ""), (r.url, dict(r.headers))


def test_a_public_dashboard_stops_at_once_after_a_refused_stream(tmp_path):
    """A 401 on the event stream leaves an idle TLS connection: the stop must not wait for it (it took 3.4 s, the backstop then being 3 s)."""
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    server = Server(d, args=("--dashboard-port", "0", "--dashboard-host", "0.0.0.0", "--dashboard-public")).start()
    try:
        port = urlparse(server.dashboard_url).port
        s = requests.Session()
        r = s.get(f"https://127.0.0.1:{port}/dashboard/api/events", verify=str(d / "pki" / "ca.crt"), timeout=10)
        assert r.status_code == 401
        t = time.monotonic()
        rc = server.stop()
        took = time.monotonic() - t
    finally:
        server.stop(signal.SIGKILL)
    # the backstop, timeout_graceful_shutdown, is 10 s: a stop that waited for the idle connection takes that long.
    # At once is within 5 s, scaled on a busy machine (5.5 s once beside a second suite) but kept below the backstop
    assert rc == 0 and took < min(scaled(5), 9), (rc, took)
