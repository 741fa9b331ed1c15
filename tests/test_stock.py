"""Key stocks (issue 34): the stock object's invariants (Hypothesis), the ``[stock]`` table's checks, and
``kms serve``'s stocks: in-process with a clock of the test's own, and one real ``kms serve`` process.

The network of nodes' stocks (the same :class:`qkdseg.server.stock.Stock`) are tests/test_net_stock.py's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from kms_helpers import Server, consumed_offsets, kms_init
from qkdseg.errors import InvalidRequest
from qkdseg.kms.server import open_service
from qkdseg.server.config import KmsConfig, write_config
from qkdseg.server.etsi import Caller, KmsError
from qkdseg.server.stock import PairState, Stock
from qkdseg.server.stockconfig import StockConfig, parse_stock, stock_table
from qkdseg.server.storagekey import init_keys
from timing import scaled

LEVEL = 0.5  # the example network's SMR route between nodes 0 and 7 meets it with 2 keys per relay


# -- the stock object ---------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


OPS = st.lists(st.one_of(
    st.tuples(st.just("take"), st.integers(0, 1), st.integers(1, 40)),  # a request takes keys of a pair
    st.tuples(st.just("due"), st.just(0), st.just(0)),  # the scheduler looks
    st.tuples(st.just("ok"), st.integers(0, 1), st.integers(0, 70)),  # a run of the pair ends, adding keys
    st.tuples(st.just("fail"), st.integers(0, 1), st.just(0)),  # a run of the pair fails
    st.tuples(st.just("tick"), st.just(0), st.floats(0.0, 10.0)),  # time passes
    st.tuples(st.just("expire"), st.integers(0, 1), st.integers(0, 5)),
), max_size=60)


@settings(max_examples=80, deadline=None)
@given(low=st.integers(0, 30), span=st.integers(1, 60), block=st.integers(1, 50), ops=OPS)
def test_stock_watermarks_and_counters_hold_under_any_sequence(low, span, block, ops):
    """A run is asked for only below LOW, never two at a time for a pair, never beyond the target or the block;
    every counter adds up; a failure waits (doubling, capped) and a run that works ends the wait."""
    high = low + span
    pairs = (("A", "B"), ("C", "D"))
    keys = {p: 0 for p in pairs}
    clock = Clock()
    # runs are started by due() and ended by the test (no event loop here: the refill callable is never called)
    stock = Stock(StockConfig(pairs, low, high, 0.5, 256), lambda p: keys[p], lambda p, n: None, block=block,
                  clock=clock, backoff=(0.5, 8.0))
    running: dict = {}
    filling = {p: False for p in pairs}  # the model: fell below LOW, target not reached since
    want = {p: dict(runs=0, fails=0, refilled=0, hits=0, expired=0) for p in pairs}
    for op, i, x in ops:
        pair = pairs[i]
        st_ = stock.states[pair]
        if op == "take":
            if keys[pair] >= x:
                keys[pair] -= x
                stock.served(pair, x)
                want[pair]["hits"] += 1
        elif op == "due":
            before = {p: (stock.states[p].refilling, clock.t < stock.states[p].next_try) for p in pairs}
            for p in pairs:
                if not any(before[p]):
                    filling[p] = (filling[p] or keys[p] < low) and keys[p] < high
            for p, n in stock.due():
                assert not before[p][0] and not before[p][1]  # no second run, no run while waiting
                assert filling[p] and 1 <= n <= min(block, high - keys[p])  # below LOW, or on its way to HIGH
                running[p] = n
            for p in pairs:  # every filling pair, idle and not waiting, got its run
                if not any(before[p]) and filling[p]:
                    assert p in running
        elif op in ("ok", "fail") and pair in running:
            n = running.pop(pair)
            added = min(x, n) if op == "ok" else 0
            keys[pair] += added
            wait0 = st_.wait_s
            stock.finished(pair, added if op == "ok" else None, None if op == "ok" else RuntimeError("x"))
            if added:
                want[pair]["runs"] += 1
                want[pair]["refilled"] += added
                assert st_.wait_s == 0.0 and st_.next_try == 0.0
            else:
                want[pair]["fails"] += 1
                assert st_.wait_s == (0.5 if wait0 <= 0 else min(8.0, 2 * wait0))
                assert st_.next_try == pytest.approx(clock.t + st_.wait_s)
            assert not st_.refilling
        elif op == "tick":
            clock.t += x
        elif op == "expire":
            x = min(x, keys[pair])
            keys[pair] -= x
            stock.expired(pair, x)
            want[pair]["expired"] += x
    snap = stock.snapshot()
    for p in pairs:
        s = snap[f"{p[0]}:{p[1]}"]
        assert (s["refill_runs"], s["refill_failures"], s["keys_refilled"], s["hits"], s["expired_unused"]) == (
            want[p]["runs"], want[p]["fails"], want[p]["refilled"], want[p]["hits"], want[p]["expired"])
        assert s["keys"] == keys[p] and s["refilling"] == (p in running) and 0.0 <= s["wait_s"] <= 8.0


def test_a_cap_on_runs_starts_the_emptiest_stocks_first():
    """``runs``: at most that many runs under way in all, the emptiest stocks first; a run that ends makes room."""
    pairs = [("A", "B"), ("C", "B"), ("D", "B"), ("E", "B")]
    have = {("A", "B"): 10, ("C", "B"): 0, ("D", "B"): 5, ("E", "B"): 40}
    cfg = StockConfig(tuple(pairs), 16, 64, LEVEL, 256)
    stock = Stock(cfg, lambda pair: have[pair], lambda p, n: None, runs=2)
    assert stock.due() == [(("C", "B"), 64), (("D", "B"), 59)]
    assert stock.due() == []  # two under way: no room
    stock.finished(("C", "B"), 64)
    have[("C", "B")] = 64
    assert stock.due() == [(("A", "B"), 54)]  # E (40 keys, above LOW) is not filling
    assert [p for p, s in stock.states.items() if s.refilling] == [("A", "B"), ("D", "B")]


def test_stock_scheduler_fills_backs_off_follows_its_policy_and_stops_cleanly():
    """The asyncio scheduler: a stock below LOW is filled to the policy's target in blocks; a failing refill is
    retried after its backoff; cancelling the scheduler cancels the run under way."""
    class Half:  # a policy of the test's own: half of HIGH
        def target(self, pair, state: PairState) -> int:
            return 20

    async def go():
        keys = {("A", "B"): 0}
        calls = []
        gate = asyncio.Event()

        async def refill(pair, n):
            calls.append(n)
            if len(calls) == 3:  # the third run fails once
                raise KmsError(503, "no route now")
            if len(calls) == 5:  # the fifth hangs until cancelled
                await gate.wait()
            keys[pair] += n
            return n

        stock = Stock(StockConfig((("A", "B"),), 10, 40, 0.5, 256), lambda p: keys[p], refill, policy=Half(),
                      block=8, backoff=(0.05, 1.0), period=0.02)
        task = asyncio.get_running_loop().create_task(stock.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if keys[("A", "B")] >= 20:
                break
        s = stock.snapshot()["A:B"]
        assert keys[("A", "B")] == 20 and calls == [8, 8, 4, 4]  # to the policy's 20, blocks of 8; retried
        keys[("A", "B")] = 12  # served, still at LOW or above: no run
        stock.poke()
        await asyncio.sleep(0.1)
        assert len(calls) == 4
        assert (s["refill_runs"], s["refill_failures"], s["keys_refilled"], s["target"]) == (3, 1, 20, 20)
        assert s["last_error"] is None and s["wait_s"] == 0.0
        keys[("A", "B")] = 5  # served below LOW: the next run starts (up to the target) and hangs
        stock.poke()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(calls) == 5:
                break
        assert calls[-1] == 8 and stock.states[("A", "B")].refilling
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not stock.states[("A", "B")].refilling and not stock._runs

    asyncio.run(go())


# -- the [stock] table ----------------------------------------------------------------------------------
SAES = {"A": "0", "B": "7", "C": "4", "D": "7"}


@pytest.mark.parametrize("table, needle", [
    ({"pairs": ["A:X"]}, "names SAE 'X', which is not registered"),
    ({"pairs": ["A:B", "A:B"]}, "is given twice"),
    ({"pairs": ["B:D"]}, "two SAEs at one node"),
    ({"pairs": ["AB"]}, "must be MASTER:SLAVE"),
    ({"pairs": ["A:B"], "low": 9, "high": 3}, "[stock] low=9 must have 0 <= LOW <= HIGH"),
    ({"pairs": ["A:B"], "low": -1, "high": 3}, "[stock] low=-1 must be whole numbers"),
    ({"pairs": ["A:B"], "low": 2.5, "high": 3}, "[stock] low=2.5 must be whole numbers"),
    ({"pairs": ["A:B"], "low": 0, "high": 0}, "[stock] high=0 must have"),
    ({"pairs": ["A:B"], "level": 0.0}, "must be a security level in (0, 1]"),
    ({"pairs": ["A:B"], "level": 1.5}, "must be a security level in (0, 1]"),
    ({"pairs": ["A:B"], "size": 100}, "must be a multiple of 8 bits in [64, 4096]"),
    ({"pairs": ["A:B"], "size": 8192}, "must be a multiple of 8 bits in [64, 4096]"),
    ({"pairs": ["A:B"], "reserve": 1.0}, "in [0, 1)"),
    ({"pairs": ["A:B"], "colour": 1}, "unknown field(s) colour"),
])
def test_stock_table_refusals_are_one_line(table, needle):
    full = {"level": 0.5, "size": 256, **table}
    with pytest.raises(InvalidRequest) as e:
        parse_stock(full, saes=SAES, min_size=64, max_size=4096, where="DIR/kms.toml")
    assert needle in str(e.value) and "\n" not in str(e.value) and "DIR/kms.toml: [stock]" in str(e.value)


def test_a_node_reports_only_the_stocks_of_its_own_saes_with_integer_counts():
    """The controller's check of a link report's ``qkdseg_stock`` (the dashboard's rows, net/reportcheck.py)."""
    from types import SimpleNamespace

    from qkdseg.net.reportcheck import STOCK_COUNTS, check_stock
    from qkdseg.net.wire import Problem

    sc = parse_stock({"pairs": ["A:B", "C:B"], "level": 0.5, "size": 256}, saes={"A": "0", "B": "7", "C": "4"}, min_size=64, max_size=4096)
    ctl = SimpleNamespace(stock=sc, svc=SimpleNamespace(sae_node={"A": 0, "B": 1, "C": 2},
                                                        arrays=SimpleNamespace(node_ids=["0", "7", "4"])))
    good = {k: 3 for k in STOCK_COUNTS} | {"refilled_here": True, "last_error": None, "wait_s": 0.5}
    assert check_stock(ctl, "0", {"A:B": good}) == {"A:B": {k: 3 for k in STOCK_COUNTS} | {"refilled_here": True}}
    assert set(check_stock(ctl, "7", {"A:B": good, "C:B": good})) == {"A:B", "C:B"}  # the slave's node: both
    for caller, body, status in (("0", {"C:B": good}, 403), ("4", {"B:A": good}, 403), ("0", [], 400),
                                 ("0", {"A:B": good | {"hits": -1}}, 400), ("0", {"A:B": good | {"keys": 1.5}}, 400),
                                 ("0", {"A:B": "many"}, 400)):
        with pytest.raises(Problem) as err:
            check_stock(ctl, caller, body)
        assert err.value.status == status, (caller, body)


def test_kms_and_net_init_take_the_stock_flags_and_refuse_bad_ones(tmp_path):
    from typer.testing import CliRunner

    from qkdseg.cli import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    base = ["--network", "example", "--sae", "A=0", "--sae", "B=7", "--sae", "C=4", "--security-level", "0.5"]
    r = run("kms", "init", tmp_path / "k", *base, "--stock", "A:B", "--stock", "C:B", "--stock-keys", "8:32",
            "--stock-size", "128", "--no-pki")
    assert r.exit_code == 0, r.output
    from qkdseg.server.config import load_config

    sc = load_config(tmp_path / "k").stock_config()
    assert sc == StockConfig((("A", "B"), ("C", "B")), 8, 32, 0.5, 128, 0.25)
    for flags, needle in ((["--stock", "A:Z"], "--stock A:Z names SAE 'Z'"),
                          (["--stock", "A:B", "--stock-keys", "64:16"], "--stock-keys 64:16 must have 0 <= LOW <= "
                                                                         "HIGH (low 64 is above high 16)"),
                          (["--stock", "A:B", "--stock-keys", "-2:16"], "--stock-keys -2:16 must be whole numbers"),
                          (["--stock", "A:B", "--stock-keys", "many"], "--stock-keys 'many' must be LOW:HIGH"),
                          (["--stock", "A:B", "--stock-level", "1.5"], "--stock-level 1.5 must be"),
                          (["--stock", "A:B", "--stock-size", "250"], "--stock-size 250 must be a multiple of 8"),
                          (["--stock-level", "0.7"], "--stock-level needs at least one --stock")):
        for cmd in ("kms", "net"):
            r = run(cmd, "init", tmp_path / f"bad-{cmd}", *base, *flags)
            assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, (cmd, flags, r.output)
    r = run("net", "init", tmp_path / "n", *base, "--stock", "A:B", "--stock-keys", "4:12")
    assert r.exit_code == 0, r.output
    names = json.loads((tmp_path / "n" / "nodes.json").read_text())
    conf = {v: json.loads((tmp_path / "n" / "nodes" / names[v] / "node.json").read_text()) for v in ("0", "7", "4")}
    want = {"pairs": ["A:B"], "low": 4, "high": 12, "level": 0.5, "size": 256, "reserve": 0.25}
    assert conf["0"]["stock"] == want and conf["7"]["stock"] == want and "stock" not in conf["4"]
    assert load_config(tmp_path / "n" / "controller").stock_config().pairs == (("A", "B"),)
    for name, edit, needle in (("low-above-high", ("low = 8", "low = 40"), "[stock] low=40 must have 0 <= LOW <= HIGH"),
                               ("bad-low", ("low = 8", "low = -3"), "[stock] low=-3 must be whole numbers"),
                               ("bad-high", ("high = 32", "high = 0"), "[stock] high=0 must have")):
        bad = tmp_path / name  # a hand-edited kms.toml names the field at fault, one line
        shutil.copytree(tmp_path / "k", bad)
        toml = (bad / "kms.toml").read_text()
        assert edit[0] in toml, toml
        (bad / "kms.toml").write_text(toml.replace(edit[0], edit[1], 1))
        with pytest.raises(InvalidRequest) as e:
            load_config(bad)
        assert needle in str(e.value) and "\n" not in str(e.value) and str(bad / "kms.toml") in str(e.value)
    r = run("net", "init", tmp_path / "ttl", *base, "--key-ttl", "45")
    assert r.exit_code == 0, r.output
    assert load_config(tmp_path / "ttl" / "controller").key_ttl_s == 45.0
    assert {json.loads(p.read_text())["etsi"]["key_ttl_s"] for p in (tmp_path / "ttl" / "nodes").glob("*/node.json")
            } == {45.0}
    for value in ("0", "-1", "nan", "inf", "soon"):
        r = run("net", "init", tmp_path / "ttl-bad", *base, "--key-ttl", value)
        assert r.exit_code == 2 and "--key-ttl" in r.output and r.output.count("\n") == 1, (value, r.output)
        assert not (tmp_path / "ttl-bad" / "nodes.json").exists()
    assert stock_table([], None, None, None, security_level=0.9, key_size=256) == {}


# -- kms serve, in-process ---------------------------------------------------------------------------------
def _stocked(tmp: Path, clock, keys=(8, 24), rate: int = 100_000, pairs=("A:B",), ttl: float = 60.0):
    tmp.mkdir(parents=True)
    cfg = KmsConfig(network="example", saes={"A": "0", "B": "7", "C": "4"}, security_level=LEVEL, key_ttl_s=ttl,
                    default_rate_bps=rate, durability="normal", _dir=tmp,
                    stock={"pairs": list(pairs), "low": keys[0], "high": keys[1], "level": LEVEL, "size": 256,
                           "reserve": 0.25}).check()
    write_config(tmp, cfg)
    init_keys(cfg)
    return open_service(tmp, clock=clock)


def _run_closed(svc, go) -> None:
    """``asyncio.run(go())``, the service closed after it (also when it fails)."""
    try:
        asyncio.run(go())
    finally:
        svc.close()


async def _fill(svc, pair, keys, timeout=10.0):
    """Run the scheduler until ``pair``'s stock holds ``keys`` (or a refill stops); returns the task."""
    task = asyncio.get_running_loop().create_task(svc.stock_loop())
    for _ in range(int(scaled(timeout) / 0.01)):
        await asyncio.sleep(0.01)
        if svc.stock.count(pair) >= keys and not svc.stock.state(pair).refilling:
            return task
    task.cancel()
    raise AssertionError(f"stock {pair} not filled: {svc.stock.snapshot()}")


def test_kms_stock_serves_whole_requests_at_once_and_expires_unused_keys(tmp_path):
    """Filled after start and shown by status; a request the stock covers is served from it (identical keys at
    both ends, fetched once, each with its exact security, no link key spent); one it cannot cover whole is
    relayed on demand (a miss); stocked keys expire after key_ttl_s, counted, and the stock is filled again."""
    clock = Clock()
    clock.t = 1_000_000.0
    svc = _stocked(tmp_path / "svc", clock, ttl=60.0)
    a, b = Caller("A", "a"), Caller("B", "b")

    async def go():
        task = await _fill(svc, ("A", "B"), 24)
        try:
            status = svc.status(a, "B")
            assert status["stored_key_count"] == 24
            assert status["status_extension"]["qkdseg_stock"] == {"keys": 24, "target": 24, "low": 8, "high": 24,
                                                                  "level": LEVEL, "size": 256}
            rows = {r.key_id: r.security for r in svc.spares[("A", "B")]}
            consumed = svc.levels.consumed.copy()
            assert svc.waiting_keys() == 0  # max_key_count counts keys issued and waiting: stocked keys do not
            svc.cfg.max_key_count, most = 5, svc.cfg.max_key_count  # 24 stocked, 5 allowed to wait: served
            out = await svc.enc_keys(a, "B", svc.parse_key_request(5, 256, None, None, None))
            assert svc.waiting_keys() == 5 and svc.status(a, "B")["stored_key_count"] == 19
            svc.cfg.max_key_count = most
            assert np.array_equal(svc.levels.consumed, consumed)  # no link key spent
            assert out["key_container_extension"]["qkdseg_from_stock"] is True
            assert out["key_container_extension"]["qkdseg_route"] is None
            for k in out["keys"]:
                assert k["key_extension"] == {"qkdseg_security": rows[k["key_ID"]], "qkdseg_from_stock": True}
                assert k["key_extension"]["qkdseg_security"] >= LEVEL
            back = await svc.dec_keys(b, "A", [k["key_ID"] for k in out["keys"]])
            assert [k["key"] for k in back["keys"]] == [k["key"] for k in out["keys"]]
            with pytest.raises(KmsError) as e:  # fetched once
                await svc.dec_keys(b, "A", [out["keys"][0]["key_ID"]])
            assert e.value.status == 400
            # B as master: kms serve's stock serves both directions of its pair
            out = await svc.enc_keys(b, "A", svc.parse_key_request(2, 256, None, None, None))
            assert out["key_container_extension"]["qkdseg_from_stock"] is True
            # more than the stock holds: relayed on demand (a miss); another size: not the stock's
            out = await svc.enc_keys(a, "B", svc.parse_key_request(40, 256, None, None, None))
            assert out["key_container_extension"]["qkdseg_from_stock"] is False
            assert "qkdseg_from_stock" not in out["keys"][0]["key_extension"]
            assert out["key_container_extension"]["qkdseg_route"]["relays"] >= 1
            out = await svc.enc_keys(a, "B", svc.parse_key_request(1, 512, None, None, None))
            assert "qkdseg_from_stock" not in out["key_container_extension"]
            s = svc.stock.snapshot()["A:B"]
            assert (s["hits"], s["misses"], s["keys_served"]) == (2, 1, 7)
            task.cancel()
            task = await _fill(svc, ("A", "B"), 24)  # below LOW after the miss took its spare keys: refilled
            assert svc.stock.snapshot()["A:B"]["refill_runs"] >= 2
            task.cancel()
            held = svc.stock.count(("A", "B"))
            clock.t += 61.0  # past key_ttl_s: the stocked keys expire unused
            assert svc.stock.count(("A", "B")) == 0
            await svc.expire()
            assert svc.stock.snapshot()["A:B"]["expired_unused"] >= held
            assert not [r for q in svc.spares.values() for r in q]
            task = await _fill(svc, ("A", "B"), 24)
        finally:
            task.cancel()

    _run_closed(svc, go)


def test_kms_refill_leaves_each_link_its_reserve_for_on_demand_requests(tmp_path):
    """Links that do not refill (rate 0): a stock that wants far more than the links hold fills until each link of
    its route keeps its reserve (25% of its pool), then stops, refused; an unstocked pair on the same links is
    still served on demand."""
    svc = _stocked(tmp_path / "svc", lambda: 1_000_000.0, keys=(3000, 5000), rate=0)

    async def go():
        task = asyncio.get_running_loop().create_task(svc.stock_loop())
        try:
            for _ in range(3000):
                await asyncio.sleep(0.01)
                s = svc.stock.snapshot()["A:B"]
                if s["refill_failures"] >= 1 and not s["refilling"]:
                    break
            s = svc.stock.snapshot()["A:B"]
            assert s["refill_failures"] >= 1 and s["keys"] > 100, s
            assert "not enough key material" in s["last_error"]
            cap = svc.levels.capacity
            reserve = np.ceil(0.25 * cap)
            used = svc.levels.consumed > 0
            assert used.any() and np.all(svc.levels.level[used] >= reserve[used] - 2 * 256)
            # C (node 4) to B (node 7) shares the stock's last links: served on demand
            for _ in range(5):
                out = await svc.enc_keys(Caller("C", "c"), "B", svc.parse_key_request(2, 256, None, None, None))
                assert out["key_container_extension"]["qkdseg_route"]["relays"] >= 1
        finally:
            task.cancel()

    _run_closed(svc, go)


# -- kms serve, a real process ----------------------------------------------------------------------------------
def test_kms_serve_fills_its_stock_after_start_and_serves_from_it(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7", "C=4"), "--security-level", str(LEVEL),
                 "--stock", "A:B", "--stock-keys", "4:12", "--durability", "normal")
    server = Server(d, ("--metrics-port", "0", "--dashboard-port", "0")).start()
    try:
        master, slave = server.client("A"), server.client("B")
        for _ in range(int(scaled(30) / 0.1)):
            r = master.get("B/status")
            assert r.status_code == 200, r.text
            if r.json()["stored_key_count"] == 12:
                break
            time.sleep(0.1)
        status = r.json()
        assert status["stored_key_count"] == 12 and status["status_extension"]["qkdseg_stock"]["keys"] == 12
        before = consumed_offsets(d)
        r = master.post("B/enc_keys", {"number": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["key_container_extension"]["qkdseg_from_stock"] is True
        assert consumed_offsets(d) == before
        back = slave.post("A/dec_keys", {"key_IDs": [{"key_ID": k["key_ID"]} for k in body["keys"]]})
        assert back.status_code == 200 and [k["key"] for k in back.json()["keys"]] == [k["key"] for k in body["keys"]]
        assert all(len(base64.b64decode(k["key"])) == 32 and k["key_extension"]["qkdseg_from_stock"]
                   and math.isfinite(k["key_extension"]["qkdseg_security"]) for k in body["keys"])
        port = int(server.log_tail(20000).split("metrics on http://127.0.0.1:")[1].split("/")[0])
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert 'qkdseg_stock_hits_total{pair="A:B"} 1.0' in metrics
        assert 'qkdseg_stock_keys_served_total{pair="A:B"} 3.0' in metrics
        dash = int(server.log_tail(20000).split("dashboard on http://127.0.0.1:")[1].split("/")[0])
        rows = requests.get(f"http://127.0.0.1:{dash}/dashboard/api/stocks", timeout=30).json()["rows"]
        assert [(r["where"], r["pair"], r["hits"], r["target"], r["refilled_here"]) for r in rows] == [
            ("kms serve", "A:B", 1, 12, True)] and rows[0]["refill_runs"] >= 1 and rows[0]["keys"] >= 9
    finally:
        assert server.stop() == 0, server.log_tail()
    assert "Traceback" not in server.log_tail(20000)
