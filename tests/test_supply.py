"""Stocks sized by demand (issue 35): the sizing rule (qkdseg.supply), the same targets in the service's stock
and in the simulator's meter after a step in demand, and the service's ``--stock-policy adaptive`` (the flags; a
real ``kms serve`` under a fixed load). The simulator's policies: tests/test_sim_supply.py.
"""

from __future__ import annotations

import math
import random
import time

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from kms_helpers import Server, kms_init
from qkdseg.server.stock import Stock
from qkdseg.server.stockconfig import StockConfig
from qkdseg.supply import Meter, shortage, size
from timing import scaled


# -- the rule ---------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(rate=st.floats(0.0, 300.0), disp=st.floats(1.0, 30.0), lead=st.floats(0.0, 5.0),
       hit=st.floats(0.5, 0.999), more=st.floats(1.0, 3.0))
def test_the_reorder_point_is_the_least_that_keeps_the_fill_rate(rate, disp, lead, hit, more):
    """``low`` is the least whole number whose expected shortage over a lead time is at most ``(1 - hit)`` of a
    batch; the target is ``low + batch``; with the same batch, more demand never gives a smaller stock.

    A larger batch may: it allows more shortage per refill, so the reorder level can fall by more than the batch
    grew (rate 2 -> 3.125, dispersion 10, lead 2 s, hit 0.5: low 8 -> 7, target 11 -> 13; at rate 40 -> 40.02,
    lead 0.1 s, the target itself goes 11 -> 10 as the batch goes 4 -> 5). That is the (s, S) rule's trade of
    safety stock against batch size, not a fault, so monotonicity is checked where the batch is the same."""
    s = size(rate, disp, lead, hit)
    if rate == 0:
        assert (s.low, s.target) == (0, 0)
        return
    level = s.low - 1  # refilled once it holds this many or fewer
    allowed = (1 - hit) * s.batch
    assert shortage(level, rate * lead, disp) <= allowed + 1e-9
    assert level == 0 or shortage(level - 1, rate * lead, disp) > allowed
    assert s.target == level + s.batch and s.batch >= max(4, math.ceil(rate * lead - 1e-9))
    bigger = size(rate * more, disp, lead, hit)
    if bigger.batch == s.batch:
        assert bigger.low >= s.low and bigger.target >= s.target
    # the closed form against the sum it stands for
    mu, direct = rate * lead / disp, 0.0
    for n in range(int(mu + 12 * mu**0.5 + 31)):
        direct += max(0.0, disp * n - level) * math.exp(n * math.log(mu) - mu - math.lgamma(n + 1)) if mu else 0.0
    assert shortage(level, rate * lead, disp) == pytest.approx(direct, rel=1e-6, abs=1e-9)


def _step_trace(seed: int = 7) -> list[float]:
    """Poisson arrivals: 2/s for 120 s, 40/s for 60 s, 2/s for 240 s."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for rate, end in ((2.0, 120.0), (40.0, 180.0), (2.0, 420.0)):
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            out.append(t)
    return out


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_adaptive_targets_rise_with_a_step_in_demand_and_fall_after_it_in_the_service_and_the_simulator():
    """The service's stock (``[stock] policy = "adaptive"``, a clock of the test's own, every request a hit or a
    miss, a refill of 0.3 s) and the simulator's meter (qkdseg.sim.supply's, fed the same) give the same targets,
    which rise within seconds of a step in demand and fall back within the window after it."""
    clock = Clock()
    pair = ("A", "B")
    stock = Stock(StockConfig((pair,), 16, 500, 0.5, 256, policy="adaptive", hit=0.99), lambda p: 0,
                  lambda p, n: None, clock=clock)
    meter = Meter(0.0, lead_s=1.0)  # what SupplyRun keeps per pair
    seen = {}

    def look() -> int:
        """The scheduler looks; a run it starts lands 0.3 s later (the lead time both measure)."""
        runs = stock.due()
        target = stock.states[pair].target
        if runs:
            clock.t += 0.3
            stock.finished(pair, 5)
            meter.refilled(0.3)
        return target

    marks = (110.0, 125.0, 175.0, 250.0, 419.0)
    arrivals = _step_trace()
    i = 0
    for mark in marks:
        while i < len(arrivals) and arrivals[i] <= mark:
            clock.t = arrivals[i]
            (stock.served if i % 3 else stock.missed)(pair, 1)
            meter.demand(1, arrivals[i])
            i += 1
            if i % 20 == 0:
                look()
        clock.t = mark
        want = meter.size(mark, 0.99)
        seen[mark] = look()
        assert seen[mark] == want.target  # one rule
        snap = stock.snapshot()["A:B"]  # what /metrics and the dashboard read
        assert (snap["target"], snap["low"]) == (want.target, want.low)
    before, early, during, _, late = (seen[m] for m in marks)
    assert early > before and during > before  # within 5 s of the step, and through it
    assert during >= 2 * before
    assert late < during and late <= before + 2  # the window (60 s) after the step: back down


# -- the service ---------------------------------------------------------------------------------------------
def test_kms_and_net_init_write_the_stock_policy_and_refuse_bad_ones(tmp_path):
    import json

    from typer.testing import CliRunner

    from qkdseg.cli import app
    from qkdseg.server.config import load_config

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    base = ["--network", "example", "--sae", "A=0", "--sae", "B=7", "--security-level", "0.5"]
    r = run("kms", "init", tmp_path / "k", *base, "--stock", "A:B", "--stock-policy", "adaptive", "--stock-hit",
            "0.95", "--no-pki")
    assert r.exit_code == 0, r.output
    sc = load_config(tmp_path / "k").stock_config()
    assert (sc.policy, sc.hit) == ("adaptive", 0.95)
    r = run("net", "init", tmp_path / "n", *base, "--stock", "A:B", "--stock-policy", "adaptive")
    assert r.exit_code == 0, r.output
    names = json.loads((tmp_path / "n" / "nodes.json").read_text())
    conf = json.loads((tmp_path / "n" / "nodes" / names["0"] / "node.json").read_text())
    assert (conf["stock"]["policy"], conf["stock"]["hit"]) == ("adaptive", 0.99)
    for flags, needle in ((["--stock", "A:B", "--stock-policy", "magic"], "--stock-policy magic must be one of"),
                          (["--stock", "A:B", "--stock-hit", "1"], "--stock-hit 1.0 must be a probability"),
                          (["--stock-policy", "adaptive"], "--stock-policy needs at least one --stock")):
        for cmd in ("kms", "net"):
            r = run(cmd, "init", tmp_path / f"bad-{cmd}", *base, *flags)
            assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, (cmd, flags, r.output)


def _metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + '{pair="A:B"}'))
    return float(line.split()[-1])


def test_kms_serve_adaptive_stock_keeps_its_hit_rate_at_a_fixed_load(tmp_path):
    """A real ``kms serve``, its A:B stock adaptive (HIGH 64): Poisson requests of one key at 10/s (80 of them, at
    most about 8 s);
    once it has seen a second of demand, at least 90% are served from stock (the target 99%; a loaded machine's
    slow refills cost some), and /metrics show the target it moved to, below HIGH."""
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7", "C=4"), "--security-level", "0.5",
                 "--stock", "A:B", "--stock-keys", "16:64", "--stock-policy", "adaptive", "--durability", "normal")
    server = Server(d, ("--metrics-port", "0")).start()
    try:
        master = server.client("A")
        port = int(server.log_tail(20000).split("metrics on http://127.0.0.1:")[1].split("/")[0])
        rng = random.Random(1)
        hits, total, t0 = 0, 0, time.monotonic()
        deadline = t0 + scaled(8.0)
        nxt = t0
        while time.monotonic() < deadline and total < 80:
            nxt += rng.expovariate(10.0)
            time.sleep(max(0.0, nxt - time.monotonic()))
            r = master.post("B/enc_keys", {"number": 1})
            assert r.status_code == 200, r.text
            if time.monotonic() - t0 > 1.0:
                total += 1
                hits += bool(r.json()["key_container_extension"].get("qkdseg_from_stock"))
        assert total >= 40 and hits / total >= 0.9, (hits, total)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        target = _metric(metrics, "qkdseg_stock_target_keys")
        assert 4 <= target < 64
    finally:
        assert server.stop() == 0, server.log_tail()
    assert "Traceback" not in server.log_tail(20000)
