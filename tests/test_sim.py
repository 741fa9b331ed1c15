"""Time-dynamic runs (qkdseg.sim): the checks of docs/model.md section 9.

Infinite pools give static routes; bits are conserved and pools stay in
[0, pool]; one overloaded link serves at its rate; blocking grows with load;
stepping changes nothing; and an independent SimPy model (tests/sim_model.py)
agrees request by request.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkdseg
from qkdseg.errors import InvalidRequest
from qkdseg.sim import Requests, Simulation, poisson_requests, read_trace, simulate

from sim_model import SimpyModel


def _two_nodes(pool=100_000, rate=100_000.0):
    g = nx.Graph()
    g.add_node(0, trusted=False, p=0.8)
    g.add_node(1, trusted=False, p=0.8)
    g.add_edge(0, 1, pool_bits=pool, rate_bps=rate)
    return qkdseg.Network(g, name="two")


def _with_pools(net, pool):
    g = nx.Graph(net.graph)
    for _, _, d in g.edges(data=True):
        d["pool_bits"] = pool
    return qkdseg.Network(g, name=net.name)


@pytest.fixture(scope="module")
def wax():
    return qkdseg.waxman(30, trusted=4, p=0.8, seed=5)


# -- infinite pools: static routes -----------------------------------------------------
@pytest.mark.parametrize("algorithm", ["smr", "disjoint", "single", "msp"])
def test_infinite_pools_give_static_routes(wax, algorithm):
    net = _with_pools(wax, 2**40)
    req = poisson_requests(net, rate=20.0, duration=5.0, seed=2, key_bits=4096, epsilon=0.0)
    sim = Simulation(net, req, algorithm).run()
    df = sim.requests_frame()
    assert len(df) == len(req) > 50
    assert df["served"].all()
    ids = net.arrays.node_ids
    for j in range(0, len(req), 7):
        opts = {"seed": int(req.seed[j])} if algorithm == "msp" else {}
        r = qkdseg.route(net, ids[req.src[j]], ids[req.dst[j]], algorithm, block_bits=4096, epsilon=0.0, **opts)
        row = df.iloc[j]
        assert row["hops"] == r.hops and row["paths"] == len(r.paths) and row["segments"] == len(r.segments)
        assert row["consumed_bits"] == r.consumed_bits
        assert row["route_security"] == pytest.approx(r.security, abs=1e-12)
        assert row["security"] == pytest.approx(r.reconstruction.global_keys[0].security, abs=1e-12)
        assert row["end_time"] == row["arrival"] and row["wait"] == 0.0


def test_infinite_pools_block_only_on_epsilon(wax):
    net = _with_pools(wax, 2**40)
    req = poisson_requests(net, rate=20.0, duration=5.0, seed=4, key_bits=256, epsilon=0.9)
    df = Simulation(net, req, "smr").run().requests_frame()
    ids = net.arrays.node_ids
    for j in range(len(req)):
        r = qkdseg.route(net, ids[req.src[j]], ids[req.dst[j]], "smr", block_bits=256, epsilon=0.9)
        assert bool(df["served"].iloc[j]) == (r.reconstruction.n_keys > 0)
        if not df["served"].iloc[j]:
            assert df["reason"].iloc[j] == "epsilon"


# -- conservation and bounds ---------------------------------------------------------------
def _check_books(sim: Simulation) -> None:
    df = sim.requests_frame()
    served = df[df["served"]]
    assert int(sim.levels.consumed.sum()) == int(served["consumed_bits"].sum())
    assert (served["consumed_bits"] == served["hops"] * served["key_bits"]).all()
    cap = sim.levels.capacity
    for lv in [*sim.snap_level, sim.levels.level]:
        assert (lv >= 0).all() and (lv <= cap).all()
    ts = sim.timeseries_frame()
    assert ts["offered"].sum() == len(df)
    assert ts["served"].sum() == len(served)
    assert ts["blocked"].sum() == int((df["outcome"] == "blocked").sum())
    assert ts["served_key_bits"].sum() == int(served["key_bits"].sum())
    shares = ts[[c for c in ts.columns if c.startswith("share_")]].sum(axis=1)
    assert np.allclose(shares, 1.0)
    assert (df["wait"].dropna() >= 0).all() and (df["wait"].dropna() <= sim.ttl + 1e-9).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    rate=st.floats(1.0, 200.0),
    key_bits=st.sampled_from([1000, 8000, 30000]),
    ttl=st.sampled_from([0.0, 0.05, 0.5]),
    algorithm=st.sampled_from(["smr", "single", "msp", "disjoint"]),
    pool=st.sampled_from([40_000, 100_000]),
)
def test_conservation_and_bounds(seed, rate, key_bits, ttl, algorithm, pool):
    net = _with_pools(qkdseg.example_network(), pool)
    req = poisson_requests(net, rate=rate, duration=2.0, seed=seed, key_bits=key_bits, epsilon=0.5)
    sim = Simulation(net, req, algorithm, ttl=ttl, link_rate_bps=50_000.0, interval=0.25).run()
    _check_books(sim)
    assert not (sim.outcome == -1).any() and not (sim.outcome == -2).any()


# -- saturation ---------------------------------------------------------------------------------
def test_saturation_one_link_serves_at_its_rate():
    net = _two_nodes(pool=100_000, rate=100_000.0)
    req = poisson_requests(net, rate=100.0, duration=100.0, seed=1, key_bits=10_000, epsilon=0.5)  # 10x the link rate
    sim = Simulation(net, req, "single", interval=10.0).run()
    ts = sim.timeseries_frame()
    steady = ts[ts["t_start"] >= 50.0]
    throughput = steady["served_key_bits"].sum() / 50.0
    assert throughput == pytest.approx(100_000.0, rel=0.02)
    df = sim.requests_frame()
    assert df["served"].mean() < 0.2
    _check_books(sim)


def test_light_load_blocks_nothing():
    net = _two_nodes(pool=100_000, rate=100_000.0)
    req = poisson_requests(net, rate=1.0, duration=200.0, seed=1, key_bits=10_000, epsilon=0.5)  # a tenth of the rate
    df = Simulation(net, req, "single").run().requests_frame()
    assert len(df) > 150 and df["served"].all()


def test_waiting_requests_are_served_when_pools_refill():
    net = _two_nodes(pool=10_000, rate=1_000.0)
    t = np.array([0.0, 0.1, 0.2])
    req = Requests(t, np.zeros(3, dtype=np.int64), np.ones(3, dtype=np.int64), np.array([10_000, 1_000, 1_000]),
                   np.full(3, 0.5), np.zeros(3, dtype=np.int64), 1.0)
    sim = Simulation(net, req, "single", ttl=5.0).run()
    df = sim.requests_frame()
    # the first empties the pool; 1000 bits come back at t = 1.0 and t = 2.0 exactly
    assert df["outcome"].tolist() == ["served"] * 3
    assert df["service_time"].tolist() == [0.0, 1.0, 2.0]
    sim = Simulation(net, req, "single", ttl=1.5).run()
    assert sim.requests_frame()["outcome"].tolist() == ["served", "served", "blocked"]
    assert sim.requests_frame()["end_time"].tolist() == [0.0, 1.0, 1.7]


# -- monotonicity over load ------------------------------------------------------------------------
def test_blocking_grows_with_load_for_smr_on_waxman():
    # the same 300 requests per replication at every rate (common random numbers: the n-th request has the
    # same end nodes at every rate, its arrival time scales as 1 / rate), so only the load differs
    net = qkdseg.waxman(100, trusted=10, p=0.8, seed=1)
    blocking = []
    for rate in (20.0, 160.0, 1280.0):
        reps = []
        for rep in range(3):
            req = poisson_requests(net, rate=rate, duration=400.0 / rate, seed=rep, key_bits=10_000, epsilon=0.9)
            reps.append(1.0 - Simulation(net, req.head(300), "smr").run().requests_frame()["served"].mean())
        blocking.append(float(np.mean(reps)))
    assert blocking == sorted(blocking), blocking
    assert blocking[-1] > blocking[0] + 0.1, blocking


# -- stepping --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [0.0, 0.3])
def test_stepping_gives_the_same_run(ttl):
    net = _with_pools(qkdseg.example_network(), 50_000)
    req = poisson_requests(net, rate=60.0, duration=3.0, seed=9, key_bits=8000, epsilon=0.5)
    whole = Simulation(net, req, "smr", ttl=ttl, interval=0.5).run()
    stepped = Simulation(net, req, "smr", ttl=ttl, interval=0.5)
    for until in (0.0, 0.37, 1.0, 1.0, 2.2, 2.9999):
        stepped.run(until=until)
        assert stepped.t == until
        assert (stepped.levels.level >= 0).all()
    stepped.run()
    a, b = whole.requests_frame(), stepped.requests_frame()
    assert a.equals(b)
    assert whole.timeseries_frame().equals(stepped.timeseries_frame())
    assert (whole.levels.level == stepped.levels.level).all()
    with pytest.raises(InvalidRequest, match="before"):
        stepped.run(until=1.0)


def test_pools_mid_run():
    net = qkdseg.example_network()
    req = poisson_requests(net, rate=200.0, duration=2.0, seed=1, key_bits=20_000, epsilon=0.5)
    sim = Simulation(net, req, "smr").run(until=1.0)
    pools = sim.pools()
    assert list(pools.columns) == ["link", "u", "v", "level_bits", "capacity_bits", "rate_bps", "consumed_bits", "state"]
    assert set(pools["state"]) <= {"READY", "WARNING", "CHARGING", "EMPTY"}
    assert (pools["level_bits"] <= pools["capacity_bits"]).all()
    assert (pools["state"] == "EMPTY").eq(pools["level_bits"] < 20_000).all()


# -- the API ---------------------------------------------------------------------------------------
def test_simulate_tables_and_common_random_numbers():
    net = qkdseg.example_network()
    res = simulate(net, rate=30.0, duration=5.0, algorithms=("smr", "single"), key_bits=20_000, epsilon=0.5, seed=2,
                   interval=1.0)
    req = res.requests
    a, b = req[req["algorithm"] == "smr"], req[req["algorithm"] == "single"]
    for col in ("arrival", "source", "destination", "seed", "key_bits", "epsilon"):
        assert (a[col].to_numpy() == b[col].to_numpy()).all()
    assert set(res.timeseries["algorithm"]) == {"smr", "single"}
    assert len(res.timeseries) == 10
    assert len(res.levels) == 2 * 5 * net.n_links
    again = simulate(net, rate=30.0, duration=5.0, algorithms=("smr", "single"), key_bits=20_000, epsilon=0.5, seed=2,
                     interval=1.0)
    assert again.requests.equals(req) and again.timeseries.equals(res.timeseries)


def test_simulate_errors():
    net = qkdseg.example_network()
    with pytest.raises(InvalidRequest, match="rate"):
        simulate(net)
    with pytest.raises(InvalidRequest, match="rate=-1"):
        simulate(net, rate=-1, duration=1.0)
    with pytest.raises(InvalidRequest, match="seed"):
        Simulation(net, poisson_requests(net, 1.0, 1.0), "msp", options={"seed": 3})
    with pytest.raises(InvalidRequest, match="ttl"):
        Simulation(net, poisson_requests(net, 1.0, 1.0), "smr", ttl=-1)
    with pytest.raises(qkdseg.UnknownAlgorithm):
        Simulation(net, poisson_requests(net, 1.0, 1.0), "nope")


def test_ppbp_and_gravity():
    net = qkdseg.waxman(30, trusted=4, p=0.8, seed=5)
    req = poisson_requests(net, rate=50.0, duration=200.0, seed=1, arrivals="ppbp", pairs="gravity")
    assert (np.diff(req.t) >= 0).all() and req.t.max() < 200.0
    assert 0.6 * 50 * 200 < len(req) < 1.6 * 50 * 200
    assert (req.src != req.dst).all()
    # a burst is one pair: far fewer distinct pairs than requests
    assert len(set(zip(req.src.tolist(), req.dst.tolist()))) < len(req) / 20
    deg = np.diff(net.arrays.indptr)
    hi, lo = np.argsort(deg)[-5:], np.argsort(deg)[:5]
    uni = poisson_requests(net, rate=50.0, duration=200.0, seed=1, pairs="gravity")
    assert np.isin(uni.src, hi).sum() > np.isin(uni.src, lo).sum()


def test_common_random_numbers_across_rates():
    net = qkdseg.example_network()
    a = poisson_requests(net, rate=10.0, duration=10.0, seed=3)
    b = poisson_requests(net, rate=20.0, duration=10.0, seed=3)
    n = len(a) // 2
    assert np.allclose(a.t[:n] / 2, b.t[:n])
    assert (a.src[:n] == b.src[: n]).all() and (a.dst[:n] == b.dst[:n]).all()


def test_read_trace(tmp_path):
    net = qkdseg.example_network()
    p = tmp_path / "trace.csv"
    p.write_text("t,src,dst,key_bits,epsilon\n0.5,0,7,2000,0.5\n0.1,3,4,1000,0.9\n", encoding="utf-8")
    req = read_trace(p, net)
    assert req.t.tolist() == [0.1, 0.5] and req.src.tolist() == [3, 0] and req.key_bits.tolist() == [1000, 2000]
    assert req.duration > 0.5
    p.write_text("t,src,dst\n0.5,0,99\n", encoding="utf-8")
    with pytest.raises(InvalidRequest, match=r"row 2: dst='99' is not in network"):
        read_trace(p, net)
    p.write_text("t,src\n0.5,0\n", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="no column dst"):
        read_trace(p, net)
    p.write_text("t,src,dst,epsilon\n0.5,0,7,1.5\n", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="row 2: epsilon=1.5"):
        read_trace(p, net)


# -- the independent SimPy model ---------------------------------------------------------------------
def _trace(req: Requests):
    return [(float(req.t[j]), int(req.src[j]), int(req.dst[j]), int(req.key_bits[j]), float(req.epsilon[j]),
             int(req.seed[j])) for j in range(len(req))]


@pytest.mark.parametrize(
    "net_name,algorithm,ttl,rate,key_bits,pool",
    [
        ("example", "smr", 0.0, 80.0, 20_000, 100_000),
        ("example", "smr", 0.4, 120.0, 20_000, 60_000),
        ("example", "msp", 0.3, 80.0, 10_000, 50_000),
        ("example", "single", 1.0, 150.0, 30_000, 100_000),
        ("waxman", "disjoint", 0.2, 100.0, 20_000, 100_000),
        ("waxman", "smr", 0.5, 100.0, 30_000, 100_000),
        ("waxman", "least-loaded", 0.2, 100.0, 20_000, 100_000),  # pool-aware: no route cache
    ],
)
def test_agrees_with_the_simpy_model(net_name, algorithm, ttl, rate, key_bits, pool):
    base = qkdseg.example_network() if net_name == "example" else qkdseg.waxman(30, trusted=4, p=0.8, seed=5)
    net = _with_pools(base, pool)
    req = poisson_requests(net, rate=rate, duration=1.5, seed=11, key_bits=key_bits, epsilon=0.5)
    sim = Simulation(net, req, algorithm, ttl=ttl, link_rate_bps=60_000.0).run()
    model = SimpyModel(net, _trace(req), algorithm, ttl=ttl, rate_bps=60_000.0)
    got = model.run()
    df = sim.requests_frame()
    assert len(got) == len(df) == len(req)
    outcomes = df["outcome"].tolist()
    assert outcomes.count("blocked") > 0 and outcomes.count("served") > 0  # the case exercises both
    if ttl > 0:
        assert (df["wait"] > 0).any()  # and waiting
    for j in range(len(req)):
        m = got[j]
        assert outcomes[j] == m["outcome"], j
        assert math.isclose(df["end_time"].iloc[j], m["end_time"], rel_tol=0, abs_tol=1e-12), j
        if m["outcome"] == "served":
            assert df["consumed_bits"].iloc[j] == m["consumed_bits"]
            assert df["hops"].iloc[j] == m["hops"]
            assert df["security"].iloc[j] == pytest.approx(m["security"], abs=1e-15)
    assert int(sim.levels.consumed.sum()) == model.debited
    model.advance(sim.t)
    assert sim.levels.level.tolist() == model.level


def test_pool_states_follow_their_direction():
    # one link, pool 10000 bits at 1000 bit/s; READY at >= 5000, EMPTY below the 3000-bit key size
    net = _two_nodes(pool=10_000, rate=1_000.0)
    t = np.array([0.0, 0.001, 1.0])
    req = Requests(t, np.zeros(3, dtype=np.int64), np.ones(3, dtype=np.int64), np.full(3, 3000), np.full(3, 0.5),
                   np.zeros(3, dtype=np.int64), 10.0)
    sim = Simulation(net, req, "single")
    expect = [(0.0, 7000, "READY"), (0.0005, 7000, "READY"), (0.5, 4500, "WARNING"), (0.99, 4990, "WARNING"),
              (1.0, 2000, "EMPTY"), (1.5, 2500, "EMPTY"), (2.0, 3000, "CHARGING"), (2.9, 3900, "CHARGING"),
              (4.0, 5000, "READY"), (9.0, 10_000, "READY")]
    for until, level, state in expect:
        pools = sim.run(until=until).pools()
        assert (int(pools["level_bits"][0]), pools["state"][0]) == (level, state), until
