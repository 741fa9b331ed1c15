"""The dashboard's Monitor without HTTP: pool states, rows, counters, history (issue 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdseg.keys.pools import PoolState, _next_state
from qkdseg.keys.levels import READY, STATES, pool_states
from qkdseg.server.monitor import Monitor
from qkdseg.server.etsi import Caller, KmsError
from test_kms_service import _service, _small_pools


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.floats(0.05, 1.0), st.integers(1, 600),
       st.lists(st.integers(0, 5000), min_size=1, max_size=30))
def test_pool_states_follow_the_key_buffer_rules(cap, share, empty, levels):
    """Vectorised states equal QKDNetSim's scalar rule (keys.pools) with Mmin = empty - 1 and Mthr = the READY level."""
    ready = int(np.ceil(cap * share))
    state = np.array([READY], dtype=np.int8)
    ref = PoolState.READY
    for lv in levels:
        lv = min(lv, cap)
        state = pool_states(np.array([lv]), np.array([ready]), empty, state)
        ref = _next_state(lv, empty - 1, ready, ref)
        # an EMPTY threshold above READY's makes EMPTY win in both
        assert STATES[int(state[0])] == ref.value, (lv, cap, ready, empty)


@contextlib.contextmanager
def watched(svc):
    """A Monitor of ``svc``; both are closed on the way out, also when the test fails."""
    try:
        mon = Monitor(svc)
    except BaseException:
        svc.close()
        raise
    try:
        yield mon
    finally:
        mon.close()
        svc.close()


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rows_counters_and_history(tmp_path):
    clock = Clock()
    svc = _service(tmp_path / "svc", _small_pools(tmp_path, 2048), clock=clock)
    with watched(svc) as mon:
        a, b = Caller("A", "fa"), Caller("B", "fb")

        async def go():
            out = await svc.enc_keys(a, "B", svc.parse_key_request(2, 256, None, None, None))
            await svc.dec_keys(b, "A", [k["key_ID"] for k in out["keys"]])
            return out

        out = asyncio.run(go())
        rows = mon.deliveries()
        assert [r["kind"] for r in rows] == ["fetch", "issue"] and [r["seq"] for r in rows] == [2, 1]
        issue = rows[1]
        secs = [k["key_extension"]["qkdseg_security"] for k in out["keys"]]
        assert issue["key_ids"] == [k["key_ID"][:8] for k in out["keys"]]
        assert issue["achieved_security"] == min(secs) and issue["mean_security"] == pytest.approx(np.mean(secs))
        route = out["key_container_extension"]["qkdseg_route"]
        assert issue["consumed_bits"] == route["consumed_bits"] and issue["segments"] == len(route["segment_nodes"]) - 1
        assert issue["paths"] == route["paths"] == sum(len(seg) for seg in issue["route_paths"])
        assert [seg[0][0] for seg in issue["route_paths"]] == route["segment_nodes"][:-1]
        # the pools: every route link paid 256 bits (one relay); 1792 of 2048 is READY (>= 1024)
        pools = mon.pools()
        assert pools["levels"] == svc.levels.level.tolist() and set(pools["states"]) == {"READY"}
        # a refusal, with its reason and what was asked
        svc.levels.level[:] = 100  # every link below one key: EMPTY, and the next request is refused
        with pytest.raises(KmsError) as err:
            asyncio.run(svc.enc_keys(a, "B", svc.parse_key_request(1, 256, None, None, None)))
        asyncio.run(svc.deny(err.value, a, "enc_keys", "B"))
        refusal = mon.deliveries(limit=1)[0]
        assert refusal["kind"] == "refusal" and refusal["reason"] == "no_key_material" and refusal["status"] == 503
        assert refusal["requested_security"] == 0.5 and refusal["master"] == "A" and refusal["slave"] == "B"
        assert set(mon.pools()["states"]) == {"EMPTY"}
        c = mon.counters()
        for window in ("last_minute", "since_start"):
            assert c[window]["deliveries"] == 1 and c[window]["keys_served"] == 2
            assert c[window]["key_bits_served"] == 512 and c[window]["fetches"] == 1
            assert c[window]["refusals_by_reason"] == {"no_key_material": 1}
            assert c[window]["mean_security"] == pytest.approx(np.mean(secs))
        clock.t += 61  # a minute later: the window is empty, the totals are not
        c = mon.counters()
        assert c["last_minute"]["deliveries"] == 0 and c["last_minute"]["mean_security"] is None
        assert c["since_start"]["deliveries"] == 1
        # history: samples as recorded, the last `seconds` only
        for _ in range(3):
            clock.t += 1
            mon.sample(record=True)
        h = mon.link_history(0)
        assert len(h["times"]) == 3 and h["levels"] == [2048] * 3 and h["capacity_bits"] == 2048  # refilled at 1 kb/s
        assert len(mon.link_history(0, seconds=1.5)["times"]) == 2
        assert mon.deliveries(limit=10, after=2) == [refusal]
    assert mon.observe not in svc.observers


def test_states_refill_to_charging_then_ready(tmp_path):
    clock = Clock()
    svc = _service(tmp_path / "svc", _small_pools(tmp_path, 2048), clock=clock)  # default_rate_bps=1000
    with watched(svc) as mon:
        svc.levels.level[:] = 0
        assert set(mon.pools()["states"]) == {"EMPTY"}
        clock.t += 0.5  # +500 bits: between EMPTY (256) and READY (1024), refilled from EMPTY
        assert set(mon.pools()["states"]) == {"CHARGING"}
        clock.t += 1.0
        assert set(mon.pools()["states"]) == {"READY"}
        svc.levels.level[:] = 600  # drained from READY
        assert set(mon.pools()["states"]) == {"WARNING"}


def test_live_queue_gets_rows_and_a_slow_client_is_dropped(tmp_path):
    svc = _service(tmp_path / "svc", "example")
    with watched(svc) as mon:
        async def go():
            q = mon.subscribe()
            out = await svc.enc_keys(Caller("A", "fa"), "B", svc.parse_key_request(1, 256, None, None, None))
            event, text = q.get_nowait()
            row = json.loads(text)
            assert event == "delivery" and row["key_ids"] == [out["keys"][0]["key_ID"][:8]]
            for _ in range(1001):  # nobody reads: the queue fills, the client is told to reload and dropped
                mon._publish("pools", {})
            assert q not in mon._subscribers
            items = [q.get_nowait() for _ in range(q.qsize())]
            assert items[-1] == ("reload", "{}")

        asyncio.run(go())


def test_network_view_has_every_node_link_and_sae(tmp_path):
    svc = _service(tmp_path / "svc", "example")
    with watched(svc) as mon:
        view = mon.network_view()
        g = svc.network.graph
        assert sorted(n["id"] for n in view["nodes"]) == sorted(str(v) for v in g.nodes)
        assert sorted((lk["u"], lk["v"]) for lk in view["links"]) == sorted(
            (str(min(u, v)), str(max(u, v))) for u, v in g.edges)
        assert view["saes"] == {"A": "0", "B": "7", "C": "4"} and view["positions"] == "file"
        by_id = {n["id"]: n for n in view["nodes"]}
        assert by_id["0"]["saes"] == ["A"] and by_id["3"]["trusted"] and not by_id["1"]["trusted"]
        assert (by_id["7"]["x"], by_id["7"]["y"]) == tuple(g.nodes[7]["pos"])


events_st = st.lists(st.tuples(
    st.floats(0.0, 40.0),  # seconds since the previous event
    st.sampled_from(["issue", "deliver", "deny", "expire"]),
    st.integers(1, 4),  # keys
    st.sampled_from(["no_key_material", "level_unmet", "bad_request"]),
    st.floats(0.0, 1.0),  # security of each key
), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(events_st, st.floats(0.0, 100.0))
def test_last_minute_counts_equal_a_recount(tmp_path_factory, events, wait):
    """The incremental last-minute sums equal a recount of the events of the last 60 s (and the totals, all)."""
    clock = Clock(0.0)
    svc = _service(tmp_path_factory.mktemp("m") / "svc", "example", clock=clock)
    with watched(svc) as mon:
        seen = []
        for dt, kind, n, reason, sec in events:
            clock.t += dt
            ids = [f"{i:08d}-xxxx" for i in range(n)]
            rec = {"time": clock.t, "event": kind, "sae": "A", "peer": "B", "key_ids": ids, "size": 256,
                   "securities": [sec] * n, "status": 503, "reason": reason, "outcome": "x"}
            if kind == "deny":
                rec["key_ids"], rec["securities"] = [], []
            svc._notify(rec)
            seen.append((clock.t, kind, n, reason, sec))
            mon.counters()  # items leave the window between events too
        clock.t += wait
        c = mon.counters()

        def recount(items):
            issues = [x for x in items if x[1] == "issue"]
            keys = sum(x[2] for x in issues)
            by: dict = {}
            for x in items:
                if x[1] == "deny":
                    by[x[3]] = by.get(x[3], 0) + 1
            return {"deliveries": len(issues), "keys_served": keys, "key_bits_served": 256 * keys,
                    "fetches": sum(x[1] == "deliver" for x in items), "refusals": sum(by.values()),
                    "refusals_by_reason": by, "expiries": sum(x[1] == "expire" for x in items),
                    "mean_security": (sum(x[2] * x[4] for x in issues) / keys) if keys else None}

        for name, items in (("last_minute", [x for x in seen if x[0] >= clock.t - 60]), ("since_start", seen)):
            want, got = recount(items), c[name]
            for key in ("deliveries", "keys_served", "key_bits_served", "fetches", "refusals", "refusals_by_reason",
                        "expiries"):
                assert got[key] == want[key], (name, key)
            if want["mean_security"] is None:
                assert got["mean_security"] is None, name
            else:
                assert got["mean_security"] == pytest.approx(want["mean_security"], abs=1e-9), name


def test_json_answers_have_no_nan():
    from qkdseg.server.monitor import dumps

    assert dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": 0.5}) == '{"a":null,"b":[1.0,null],"c":0.5}'


def test_network_without_positions_gets_a_layout(tmp_path):
    import networkx as nx

    import qkdseg

    g = nx.cycle_graph(6)
    nx.set_node_attributes(g, {0: True, 3: True}, "trusted")
    path = tmp_path / "ring.json"
    qkdseg.write_network(qkdseg.Network(g, default_p=0.7, name="ring"), path)
    svc_dir = tmp_path / "svc"
    svc_dir.mkdir()
    from qkdseg.server.config import KmsConfig, write_config
    from qkdseg.kms.server import open_service

    from qkdseg.server.storagekey import init_keys

    cfg = KmsConfig(network=str(path), saes={"A": "1", "B": "4"}, _dir=svc_dir).check()
    write_config(svc_dir, cfg)
    init_keys(cfg)
    svc = open_service(svc_dir)
    with watched(svc) as mon:
        view = mon.network_view()
        assert view["positions"] == "layout" and len(view["nodes"]) == 6 and len(view["links"]) == 6
        xy = {(round(n["x"], 6), round(n["y"], 6)) for n in view["nodes"]}
        assert len(xy) == 6 and all(np.isfinite(list(c)).all() for c in xy)
        assert mon.network_view() is view  # computed once


def test_a_restart_shows_the_audited_history_but_counts_from_zero(tmp_path):
    from qkdseg.kms.server import open_service

    svc = _service(tmp_path / "svc", "example")
    try:
        async def go():
            out = await svc.enc_keys(Caller("A", "fa"), "B", svc.parse_key_request(2, 256, None, None, None))
            await svc.dec_keys(Caller("B", "fb"), "A", [k["key_ID"] for k in out["keys"]])
            await svc.deny(KmsError(400, "bad", reason="bad_request"), Caller("A", "fa"), "enc_keys", "C")
            return out

        out = asyncio.run(go())
    finally:
        svc.close()
    with open(tmp_path / "svc" / "audit.jsonl", "a") as fh:
        fh.write('{"event": "issue", "cut li')  # a torn last line (a write cut by a crash) is left out
    svc = open_service(tmp_path / "svc")
    with watched(svc) as mon:
        rows = mon.deliveries()
        assert mon.restored == 3 and [r["kind"] for r in rows] == ["refusal", "fetch", "issue"]
        assert all(r["restored"] for r in rows) and [r["seq"] for r in rows] == [3, 2, 1]
        issue = rows[2]
        route = out["key_container_extension"]["qkdseg_route"]
        assert issue["key_ids"] == [k["key_ID"][:8] for k in out["keys"]]
        assert issue["segment_nodes"] == route["segment_nodes"] and issue["route_paths"] == []
        assert rows[0]["reason"] == "bad_request" and rows[0]["slave"] == "C"
        c = mon.counters()["since_start"]
        assert c["deliveries"] == 0 and c["refusals"] == 0  # counters count from this start
        asyncio.run(svc.enc_keys(Caller("A", "fa"), "B", svc.parse_key_request(1, 256, None, None, None)))
        new = mon.deliveries(limit=1)[0]
        assert new["seq"] == 4 and "restored" not in new
