"""``qkdseg simulate`` end to end: files, columns, identical reruns on every backend,
conservation read back from the files, blocking against load, one-line user errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import qkdseg
from qkdseg.cli import app
from qkdseg.experiments.simulation import SWEEP_COLUMNS, run_load_sweep

runner = CliRunner()

REQUEST_COLUMNS = [
    "algorithm", "request", "arrival", "source", "destination", "key_bits", "epsilon", "seed", "outcome", "served",
    "service_time", "end_time", "wait", "security", "route_security", "consumed_bits", "keys", "segments", "paths",
    "hops", "tries", "reason",
]
TIMESERIES_COLUMNS = [
    "algorithm", "interval", "t_start", "t_end", "offered", "served", "blocked", "queued", "served_key_bits",
    "served_key_bps", "mean_level_bits", "share_ready", "share_warning", "share_charging", "share_empty",
]
RUN = ["simulate", "example", "--rate", "60", "--duration", "4", "--key-bits", "20000", "--epsilon", "0.5",
       "--ttl", "0.2", "--seed", "3", "--algorithms", "smr,msp,single", "--quiet"]


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_simulate_twice_identical_with_documented_columns(tmp_path):
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(app, [*RUN, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        outs.append(tmp_path / name)
    a, b = _files(outs[0]), _files(outs[1])
    assert a == b
    assert set(a) >= {"requests.parquet", "timeseries.parquet", "levels.parquet", "timeseries.png", "pool_levels.png",
                      "report.md", "run.json"}
    req = pd.read_parquet(outs[0] / "requests.parquet")
    ts = pd.read_parquet(outs[0] / "timeseries.parquet")
    assert list(req.columns) == REQUEST_COLUMNS
    assert list(ts.columns) == TIMESERIES_COLUMNS
    assert set(req["algorithm"]) == {"smr", "msp", "single"}
    served = req[req["served"]]
    assert (served["consumed_bits"] == served["hops"] * served["key_bits"]).all()
    assert (req.loc[~req["served"], "consumed_bits"] == 0).all()
    assert set(req["outcome"]) <= {"served", "blocked"}
    for alg, d in ts.groupby("algorithm"):
        r = req[req["algorithm"] == alg]
        assert d["offered"].sum() == len(r) and d["served"].sum() == r["served"].sum()
    run = json.loads((outs[0] / "run.json").read_text())
    assert run["seed"] == 3 and "--out" not in run["command"]
    for alg in ("smr", "msp", "single"):  # the pools' books against the requests' records
        assert run["debited_bits"][alg] == served.loc[served["algorithm"] == alg, "consumed_bits"].sum() > 0
    report = (outs[0] / "report.md").read_text()
    assert "| smr |" in report and "docs/model.md section 9" in report


def test_conservation_read_back_from_the_files(tmp_path):
    # links without a rate (--link-rate 0) never refill: what left the pools is what the served requests consumed
    res = runner.invoke(app, ["simulate", "example", "--rate", "40", "--duration", "3", "--key-bits", "10000",
                              "--epsilon", "0.5", "--link-rate", "0", "--interval", "0.5", "--quiet", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    req = pd.read_parquet(tmp_path / "requests.parquet")
    lv = pd.read_parquet(tmp_path / "levels.parquet")
    pool = qkdseg.example_network().arrays.pool_bits
    for alg, d in lv.groupby("algorithm"):
        last = d[d["t"] == d["t"].max()].sort_values("link")["level_bits"].to_numpy()
        assert (d["level_bits"] >= 0).all() and (d["level_bits"] <= np.tile(pool, d["t"].nunique())).all()
        assert int((pool - last).sum()) == int(req.loc[(req["algorithm"] == alg) & req["served"], "consumed_bits"].sum())
    assert req["served"].any() and (~req["served"]).any()


def test_sweep_identical_on_every_backend_and_blocking_rises(tmp_path):
    net = qkdseg.example_network()
    kw = dict(duration=3.0, replications=2, algorithms=("smr", "single"), key_bits=20_000, epsilon=0.5, seed=4,
              progress=False)
    rates = (10.0, 40.0, 160.0)
    serial, _ = run_load_sweep(net, rates, backend="serial", **kw)
    procs, _ = run_load_sweep(net, rates, backend="processes", workers=2, **kw)
    pd.testing.assert_frame_equal(serial, procs)
    assert list(serial.columns) == list(SWEEP_COLUMNS)
    assert len(serial) == 3 * 2 * 2
    mean = serial.groupby(["algorithm", "rate"])["blocking"].mean()
    for alg in ("smr", "single"):
        b = mean[alg].to_numpy()
        assert (np.diff(b) >= 0).all() and b[-1] > b[0], (alg, b)
    # the replication's seed is shared by every rate and algorithm
    assert serial.groupby("replication")["seed"].nunique().eq(1).all()


def test_sweep_on_dask_identical():
    distributed = pytest.importorskip("distributed")
    net = qkdseg.example_network()
    kw = dict(duration=2.0, replications=2, algorithms=("smr", "msp"), key_bits=20_000, epsilon=0.5, seed=1,
              progress=False)
    serial, _ = run_load_sweep(net, (20.0, 80.0), backend="serial", **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dask, _ = run_load_sweep(net, (20.0, 80.0), scheduler=cluster.scheduler_address, **kw)
    pd.testing.assert_frame_equal(serial, dask)


def test_sweep_cli_writes_table_and_figure(tmp_path):
    args = ["simulate", "example", "--rates", "10,80", "--replications", "2", "--duration", "2", "--key-bits", "20000",
            "--epsilon", "0.5", "--algorithms", "smr,disjoint", "--quiet", "--workers", "1"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res2 = runner.invoke(app, [*args[:-2], "--backend", "serial", "--out", str(tmp_path / "b")])
    assert res2.exit_code == 0, res2.output
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert {"sweep.parquet", "load.png", "load.svg", "report.md", "run.json"} <= set(_files(tmp_path / "a"))
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| 80 | smr | 2 |" in report and "±" in report


def test_trace_file_run(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("t,src,dst,key_bits,epsilon\n0.0,0,7,20000,0.5\n0.1,0,7,20000,0.5\n0.2,3,4,1000,0.9\n",
                     encoding="utf-8")
    res = runner.invoke(app, ["simulate", "example", "--trace", str(trace), "--algorithms", "smr", "--quiet",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["arrival"].tolist() == [0.0, 0.1, 0.2] and req["key_bits"].tolist() == [20000, 20000, 1000]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--rate", "5", "--rates", "5,10"], "exactly one of --rate, --rates"),
        ([], "exactly one of --rate, --rates"),
        (["--rates", "5,x"], "--rates '5,x': must be numbers"),
        (["--rates", "5,-1"], "rate -1 must be a positive number"),
        (["--rate", "5", "--replications", "3"], "--replications needs a load sweep"),
        (["--rate", "5", "--algorithms", "smr,nope"], "unknown algorithm 'nope'"),
        (["--rate", "5", "--duration", "-1"], "--duration -1: must be a finite number > 0"),
        (["--rate", "5", "--ttl", "-2"], "--ttl -2: must be a finite number >= 0"),
        (["--rate", "5", "--epsilon", "2"], "--epsilon 2: must be a finite number in [0, 1]"),
        (["--rate", "5", "--pairs", "zipf"], "--pairs 'zipf': use uniform or gravity"),
        (["--trace", "no-such.csv"], "no-such.csv: no such trace file"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, msg):
    res = runner.invoke(app, ["simulate", "example", *args, "--quiet", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert msg in res.output and "Traceback" not in res.output
    assert res.output.startswith("qkdseg: error: ") and res.output.count("\n") == 1


def test_a_run_without_requests_still_writes_its_files(tmp_path):
    trace = tmp_path / "empty.csv"
    trace.write_text("t,src,dst\n", encoding="utf-8")
    res = runner.invoke(app, ["simulate", "example", "--trace", str(trace), "--algorithms", "smr,single", "--quiet",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(tmp_path / "o" / "requests.parquet")) == 0
    assert "| single | 0 | 0 | 0 | - |" in (tmp_path / "o" / "report.md").read_text()


def test_smr_level_serves_more_than_disjoint_where_pools_run_dry(tmp_path):
    """Issue 23's independent check: ``qkdseg simulate`` on a network the docs do not use
    (Waxman, 50 nodes, 6 trusted relays at p = 0.97, untrusted 0.85, seed 23), smr-level and disjoint
    on the same trace at a load where pools run dry: smr-level serves more key, none below epsilon;
    the report's paired differences are those recomputed here from the requests' own rows."""
    net = qkdseg.waxman(50, trusted=6, p=0.85, trusted_p=0.97, seed=23)
    path = tmp_path / "net.json"
    qkdseg.write_network(net, path)
    args = ["simulate", str(path), "--rates", "200", "--replications", "3", "--duration", "2", "--key-bits", "10000",
            "--epsilon", "0.8", "--seed", "5", "--algorithms", "smr-level,disjoint", "--quiet", "--workers", "1",
            "--out", str(tmp_path / "out")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    lv, dj = (df[df["algorithm"] == a].set_index("replication") for a in ("smr-level", "disjoint"))
    assert (dj["short"] + dj["no_route"]).min() > 0  # the pools ran dry for disjoint
    assert (lv["throughput_bps"] > dj["throughput_bps"]).all()
    assert (lv["mean_consumed_bits"] < dj["mean_consumed_bits"]).all()
    # no served key below epsilon: every served request of every replication, recomputed on its own trace
    from qkdseg.sim import Simulation, poisson_requests
    from qkdseg.experiments.spec import trial_seed

    for rep in range(3):
        req = poisson_requests(net, 200.0, 2.0, seed=trial_seed(5, rep), key_bits=10_000, epsilon=0.8)
        d = Simulation(net, req, "smr-level", interval=2.0).run().requests_frame()
        assert int(d["served"].sum()) == int(lv.loc[rep, "served"])
        assert (d.loc[d["served"], "security"] >= 0.8 - 1e-12).all()
    diff = lv["served"] - dj["served"]
    half = 4.302652729911275 * diff.std(ddof=1) / np.sqrt(3)  # Student t, 2 degrees of freedom, 97.5%
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Paired differences against `smr-level`" in report
    paired = report.split("## Paired differences")[1]
    line = next(x for x in paired.splitlines() if x.startswith("| 200 | disjoint | 3 |"))
    assert line.split(" | ")[3] == f"{-diff.mean():+.2f} ± {half:.2f} ({int((diff < 0).sum())}/3)"
    assert {"load_cost.png", "load_cost.svg"} <= set(_files(tmp_path / "out"))
