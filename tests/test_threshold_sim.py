"""Threshold sharing in path choice and in the time-dynamic simulator (issue 40): smr-level with tolerate, relay
failures paired by seed between XOR and threshold sharing, the simulate CLI."""

import itertools
import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from checkers import four_path_network, threshold_brute
from qkdseg import Network, example_network, route
from qkdseg.cli import app
from qkdseg.errors import InvalidRequest
from qkdseg.sim import Requests, Simulation, poisson_requests


def _sharing(t):
    return {"sharing": "threshold", "tolerate": t} if t else {}


def test_smr_level_least_hops_under_threshold_by_enumeration():
    """On s - t - d with four two-relay paths per segment, smr-level's route under k-of-m sharing has the fewest
    hops of every choice of paths (every pair of subsets, the brute force's security) that meets the level."""
    net = four_path_network(0.8)
    pmap = dict(zip(net.arrays.node_ids, net.arrays.p.tolist()))
    full = route(net, "s", "d", "smr-exact")
    assert full.segment_nodes == ("s", "t", "d")
    segs = [list(s.paths) for s in full.segments]
    subsets = [[c for k in range(1, 5) for c in itertools.combinations(seg, k)] for seg in segs]
    for t in (1, 2):
        for eps in (0.3, 0.5, 0.6, 0.7, 0.8):
            best = min((sum(len(q) - 1 for q in a + b) for a in subsets[0] for b in subsets[1]
                        if min(len(a), len(b)) > t and threshold_brute(pmap, [list(a), list(b)], ["t"], t) >= eps),
                       default=None)
            r = route(net, "s", "d", "smr-level", epsilon=eps, **_sharing(t))
            got = [list(s.paths) for s in r.segments]
            assert r.security == pytest.approx(threshold_brute(pmap, got, ["t"], t), abs=1e-12)
            if best is None:
                assert not r.level["met"] and r.reconstruction.n_keys == 0
            else:
                assert r.level["met"] and r.hops == best and r.security >= eps - 1e-12
                assert r.reconstruction.n_keys == 1 and r.reconstruction.global_keys[0].security == r.security
                assert min(len(s) for s in got) > t  # every segment can carry its k-of-m key


@st.composite
def hub_networks(draw):
    """Two sides (source 0 among the even nodes, destination 1 among the odd ones) joined only through one or two
    trusted hubs (p 1 or 0.9), random links inside each side and to the hubs: routes of one to three segments."""
    n = draw(st.integers(6, 10))
    g = nx.Graph()
    for v in range(n):
        g.add_node(v, p=draw(st.sampled_from([0.5, 0.7, 0.9])))
    hubs = [n + h for h in range(draw(st.integers(1, 2)))]
    for h in hubs:
        g.add_node(h, trusted=True, p=draw(st.sampled_from([1.0, 0.9])))
    for side in (0, 1):
        nodes = list(range(side, n, 2))
        pairs = [(u, v) for u, v in itertools.combinations(nodes, 2)]
        g.add_edges_from(draw(st.lists(st.sampled_from(pairs), min_size=len(nodes), max_size=2 * len(nodes))))
        for h in hubs:
            g.add_edges_from((h, v) for v in draw(st.sets(st.sampled_from(nodes), min_size=1, max_size=len(nodes))))
    if len(hubs) == 2 and draw(st.booleans()):
        g.add_edge(*hubs)
    return Network(g)


@settings(max_examples=30, deadline=None)
@given(hub_networks(), st.integers(1, 2), st.sampled_from([0.2, 0.4, 0.6]))
def test_smr_level_threshold_routes_against_brute_force(net, t, eps):
    """Random small networks: smr-level's route under threshold sharing has the security the brute force over
    relay states gives (shared relays included); a met route meets the level with one key, and a refusal names
    a segment with m <= T paths."""
    try:
        r = route(net, 0, 1, "smr-level", epsilon=eps, sharing="threshold", tolerate=t)
    except InvalidRequest as err:
        assert "segment" in str(err) and f"tolerate {t}" in str(err)
        return
    if r.blocked:
        return
    pmap = dict(zip(net.arrays.node_ids, net.arrays.p.tolist()))
    segs = [list(s.paths) for s in r.segments]
    assert r.security == pytest.approx(threshold_brute(pmap, segs, r.segment_nodes[1:-1], t), abs=1e-12)
    assert all(len(s) > t for s in segs)
    assert r.level["met"] == (r.reconstruction.n_keys == 1)
    if r.level["met"]:
        assert r.security >= eps - 1e-12


@settings(max_examples=30, deadline=None)
@given(hub_networks(), st.integers(1, 2))
def test_smr_exact_threshold_chain_against_brute_force(net, t):
    """smr-exact under threshold sharing: its security is the brute force's, and it is never below the k-of-m
    security of the routes of disjoint (chain ()) and SMR (SMR's chain) that can carry the sharing, both of
    which it tries."""
    pmap = dict(zip(net.arrays.node_ids, net.arrays.p.tolist()))

    def sec(alg):
        try:
            r = route(net, 0, 1, alg, sharing="threshold", tolerate=t)
        except InvalidRequest:
            return None
        if r.blocked:
            return None
        segs = [list(x.paths) for x in r.segments]
        assert r.security == pytest.approx(threshold_brute(pmap, segs, r.segment_nodes[1:-1], t), abs=1e-12)
        return r.security

    best, others = sec("smr-exact"), [x for x in (sec("disjoint"), sec("smr")) if x is not None]
    if others:
        assert best is not None and best >= max(others) - 1e-9


def test_relay_failures_paired_between_xor_and_threshold():
    """On the four-path network (every request relayed through t), SMR routes the same eight paths under XOR and
    under 3-of-4 sharing (one key of every path, xor-all, in both); with relay failures drawn from each request's seed, every outcome equals an independent
    recomputation from the same draws: XOR loses a run when t or any relay failed, threshold when t failed or a
    segment lost more than one path. So threshold's failures are a subset of XOR's, on the same requests."""
    net = four_path_network(0.9)
    net = Network(net.graph, name="four")
    n = 120
    s_, d_ = net.arrays.index["s"], net.arrays.index["d"]
    req = Requests(np.arange(n, dtype=float), np.full(n, s_), np.full(n, d_), np.full(n, 64), np.full(n, 0.1),
                   np.random.default_rng(5).integers(0, 2**32, n), float(n))
    keep = np.ones(n, dtype=bool)
    p = 0.08
    runs = {t: Simulation(net, req, "smr", relay_failure=p, reconstruction="xor-all", **_sharing(t)).run()
            for t in (0, 1)}
    frames = {t: sim.requests_frame() for t, sim in runs.items()}
    r = route(net, "s", "d", "smr")
    segs = [[[net.arrays.index[v] for v in q] for q in s.paths] for s in r.segments]
    t_idx = net.arrays.index["t"]
    failed = {0: set(), 1: set()}
    checked = 0
    for j in np.flatnonzero(keep):
        down = np.random.default_rng([int(req.seed[j]), 4, 1]).random(net.arrays.n_nodes) < p
        lost = [sum(bool(down[q[1:-1]].any()) for q in seg) for seg in segs]
        want = {0: bool(down[t_idx]) or max(lost) > 0, 1: bool(down[t_idx]) or max(lost) > 1}
        for t in (0, 1):
            row = frames[t].iloc[j]
            assert row["tries"] == 1
            assert (row["reason"] == "failed") == want[t], (j, t)
            assert row["served"] == (not want[t])
            if want[t]:
                failed[t].add(int(j))
        checked += 1
    assert failed[1] < failed[0] and len(failed[1]) >= 1  # paired: threshold loses fewer runs, on the same draws
    for t, sim in runs.items():  # a failed run's bits are spent: the pools paid for every served or failed run
        d = frames[t]
        ran = d["served"] | (d["reason"] == "failed")
        assert int(sim.levels.consumed.sum()) == int(d.loc[ran, "consumed_bits"].sum())
    assert checked == keep.sum()


def test_few_paths_and_the_default_unchanged():
    """On the example network (two paths per segment) tolerate 2 leaves every request unserved with reason
    few_paths; relay_failure 0 changes nothing against a run without it."""
    net = example_network()
    req = poisson_requests(net, rate=2.0, duration=40.0, seed=2, key_bits=500, epsilon=0.3)
    sim = Simulation(net, req, "smr", sharing="threshold", tolerate=2).run()
    d = sim.requests_frame()
    assert len(d) and not d["served"].any() and set(d["reason"]) == {"few_paths"}
    a = Simulation(net, req, "smr").run().requests_frame()
    b = Simulation(net, req, "smr", relay_failure=0.0).run().requests_frame()
    assert a.equals(b)
    with pytest.raises(InvalidRequest, match="relay_failure"):
        Simulation(net, req, "smr", relay_failure=1.5)
    with pytest.raises(InvalidRequest, match="xor-all"):
        Simulation(net, req, "smr", sharing="threshold", tolerate=1, reconstruction="paper")


def test_simulate_cli_sharing_and_failures(tmp_path):
    runner = CliRunner()
    out = tmp_path / "o"
    res = runner.invoke(app, ["simulate", "example", "--rate", "2", "--duration", "60", "--algorithms", "smr",
                              "--epsilon", "0.3", "--key-bits", "500", "--sharing", "threshold", "--tolerate", "1",
                              "--relay-failure", "0.05", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert (run["sharing"], run["tolerate"], run["relay_failure"], run["reconstruction"]) == \
        ("threshold", 1, 0.05, "xor-all")
    assert "--sharing threshold --tolerate 1 --relay-failure 0.05" in run["command"]
    for args, msg in ((["--tolerate", "1"], "--tolerate 1 needs --sharing threshold"),
                      (["--relay-failure", "2"], "--relay-failure 2"),
                      (["--sharing", "threshold", "--tolerate", "1", "--reconstruction", "paper"], "xor-all")):
        res = runner.invoke(app, ["simulate", "example", "--rate", "2", "--duration", "5", "-q", "-o",
                                  str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_threshold_study_pieces_and_report(tmp_path):
    """The study's pieces on a few requests and a short trace: static rows per scheme (threshold refused where a
    segment has m <= T paths, a one-key scheme keyed only where the level is met), simulator rows at
    every failure probability, the figures and the report's table; the CLI refuses a study without CIs."""
    from qkdseg.experiments import threshold as th
    from qkdseg.experiments.threshold_report import plot_threshold, results_table, write_threshold_report

    static = pd.DataFrame(th.static_waxman(0, [0, 1], [("p", 0.8, 10), ("trusted", 0.8, 10)])
                          + th.static_zoo("topozoo/Dfn", 0, [0, 1], [("p", 0.8, 5), ("trusted", 0.8, 5)]))
    assert set(static["scheme"]) == {s[0] for s in th.SCHEMES}
    for _, r in static.iterrows():
        assert r["refused"] <= (r["tolerate"] > 0)
        assert (r["key_bits_e70"] > 0) <= (r["security"] >= 0.7 - 1e-12 or r["scheme"].endswith("xor"))
    smr = static[static["algorithm"] == "smr"].groupby(["network", "request", "sweep"])
    for _, d in smr:  # the same paths under every sharing: XOR and xor-all agree, T=2 is never above T=1
        sec = dict(zip(d["scheme"], d["security"]))
        assert sec["smr xor"] == sec["smr xor-all"] and sec["smr T=2"] <= sec["smr T=1"] + 1e-12
    sim = {"rate": 4.0, "duration": 10.0, "key_bits": 256, "epsilon": 0.5}
    dynamic = pd.DataFrame([row for rep in (0, 1) for row in th.dynamic_runs("topozoo/Dfn", 0, rep, sim)])
    assert len(dynamic) == 2 * len(th.SCHEMES) * len(th.FAILURES)
    assert (dynamic.groupby(["replication", "relay_failure"])["requests"].nunique() == 1).all()  # one trace
    assert (dynamic.loc[dynamic["relay_failure"] == 0, "failed"] == 0).all()
    table = results_table(static, dynamic)
    assert len(table) == 2 + 2 * len(th.SCHEMES) and "| Dfn | smr T=1 |" in "\n".join(table)
    files = plot_threshold(static, dynamic, tmp_path, sim)
    report = write_threshold_report(static, dynamic, tmp_path, header="test", sim=sim)
    assert all(f.stat().st_size > 0 for f in files) and "| waxman-100 | smr xor |" in report.read_text()
    for args, msg in ((["--threshold", "--requests", "1"], "--requests 1"),
                      (["--threshold", "--p", "0.5"], "--p does not apply to study --threshold"),
                      (["--replications", "4"], "--replications needs --threshold")):
        res = CliRunner().invoke(app, ["study", *args, "-q", "-o", str(tmp_path / "x")])
        assert res.exit_code == 2 and msg in res.output and not (tmp_path / "x").exists(), res.output
