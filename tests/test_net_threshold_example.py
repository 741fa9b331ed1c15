"""Threshold sharing on ``example`` (two paths per segment) with ``net init --reconstruction xor-all --tolerate 1``:
a relay killed mid-run under 8 clients (issue 40; the four-path network: tests/test_net_threshold.py)."""

from __future__ import annotations

import os

import pytest
from test_net import _free_port, _run, net_up
from test_net_threshold import ENV, _storm


@pytest.fixture(scope="module")
def example_t1(tmp_path_factory):
    base = tmp_path_factory.mktemp("example-t1")
    d = base / "deploy"
    r = _run("net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7", "--security-level", "0.2",
             "--reconstruction", "xor-all", "--tolerate", "1", "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr
    with net_up(d, base, {**os.environ, **ENV}) as n:
        yield n


def test_example_xor_all_t1_survives_a_relay_killed_mid_run(example_t1):
    """Relay 1 (one of segment 0's two paths) killed under 8 clients: no run fails on the relay (a 503 only where a
    later plan is refused before relaying: one path left in segment 0, and threshold sharing with T = 1 needs two);
    keys identical."""
    example_t1.deliver("A", "0", "B", "7")  # the first plan compiles the routing: not inside the storm
    results, killed_at = _storm(example_t1, "A", "0", "B", "7", "1")
    bad = [(c, m) for c, m, _, _ in results if c != 200 and "nothing was debited" not in m]  # a relay that failed
    assert not bad, bad
    survived = [dt for c, _, t0, dt in results if c == 200 and t0 < killed_at < t0 + dt]
    print(f"example, kill -9 relay 1, T = 1: {sum(c == 200 for c, *_ in results)} of {len(results)} delivered, "
          f"{len(survived)} in flight at the kill delivered")
    assert survived  # runs in flight when the relay died were delivered
