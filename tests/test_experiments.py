"""Sweeps: determinism across backends, the Dask backend on a real
LocalCluster, the documented columns, plotting from saved results."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import qkdseg
from qkdseg import InvalidRequest
from qkdseg.cli import app
from qkdseg.experiments import FigureSpec, SweepSpec, paper_spec, read_results, render, run_sweep, write_results
from qkdseg.experiments.runner import COLUMNS
from qkdseg.experiments.trials import P_INDEPENDENT, TrialTopology, evaluate, request_pair, run_chunk
from report_checker import check_report_claims

runner = CliRunner()

DOCUMENTED = ["figure", "algorithm", "p_untrusted", "n_trusted", "trial", "seed", "security", "consumed_bits",
              "key_consumption_rate", "key_bits_e50", "key_bits_e70", "key_bits_e90", "blocked"]


def small_spec(trials=4, seed=3):
    return SweepSpec(
        figures=(FigureSpec("fig5", "p_untrusted", ((0.6, 10), (0.9, 10))), FigureSpec("fig6", "n_trusted", ((0.8, 0), (0.8, 20)))),
        trials=trials,
        seed=seed,
    )


@pytest.fixture(scope="module")
def serial_df():
    return run_sweep(small_spec(), backend="serial", progress=False)


def test_columns_and_shape(serial_df):
    df = serial_df
    assert list(df.columns[: len(DOCUMENTED)]) == DOCUMENTED
    assert len(df) == 4 * 4 * 4  # trials x points x algorithms
    assert set(df["algorithm"]) == {"smr", "msp", "disjoint", "single"}
    assert (df["key_bits_e50"] >= df["key_bits_e70"]).all() and (df["key_bits_e70"] >= df["key_bits_e90"]).all()


def test_rows_reproduce_from_the_recorded_seed(serial_df):
    """Every row is recomputable from its seed with the public API."""
    row = serial_df[(serial_df["figure"] == "fig5") & (serial_df["algorithm"] == "smr")].iloc[3]
    net = qkdseg.waxman(100, trusted=int(row["n_trusted"]), p=float(row["p_untrusted"]), seed=int(row["seed"]))
    s, d = request_pair(int(row["seed"]), 100)
    r = qkdseg.route(net, s, d, epsilon=0.9)
    assert r.security == pytest.approx(row["security"], abs=1e-15)
    assert r.consumed_bits == row["consumed_bits"] and r.key_bits == row["key_bits_e90"]


def test_same_algorithms_see_same_trial(serial_df):
    g = serial_df.groupby(["figure", "point", "trial"])
    assert (g["source"].nunique() == 1).all() and (g["links"].nunique() == 1).all()


def test_process_pool_identical_and_files_byte_identical(serial_df, tmp_path):
    df2 = run_sweep(small_spec(), backend="processes", workers=2, chunk_size=1, progress=False)
    pd.testing.assert_frame_equal(serial_df, df2)
    a = write_results(serial_df, tmp_path / "a").read_bytes()
    b = write_results(df2, tmp_path / "b").read_bytes()
    assert a == b
    assert write_results(serial_df, tmp_path / "c", fmt="csv").read_bytes() == write_results(df2, tmp_path / "d", fmt="csv").read_bytes()


def test_dask_local_cluster_identical(serial_df):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        df = run_sweep(small_spec(), scheduler=cluster.scheduler_address, chunk_size=1, progress=False)
    pd.testing.assert_frame_equal(serial_df, df)


def test_p_independent_cache_changes_nothing():
    spec = paper_spec(trials=3, seed=11)
    seed = 12345
    topo = TrialTopology(spec, seed)
    s, d = request_pair(seed, 100)
    cache: dict = {}
    for p in (0.5, 0.75, 0.95):
        arrays = topo.arrays(p, 10)
        assert evaluate(arrays, s, d, spec, seed, cache, 10) == evaluate(arrays, s, d, spec, seed)
    assert {name for name, _ in cache} == set(P_INDEPENDENT)


def test_spec_validation_names_the_field():
    with pytest.raises(InvalidRequest, match="trials=0"):
        paper_spec(trials=0)
    with pytest.raises(qkdseg.UnknownAlgorithm, match="unknown algorithm 'bogus'"):
        paper_spec(algorithms=("bogus",))
    with pytest.raises(InvalidRequest, match="unknown field 'nope'"):
        SweepSpec.from_dict({"figures": [], "nope": 1})
    with pytest.raises(InvalidRequest, match="n_trusted=200 exceeds"):
        SweepSpec(figures=(FigureSpec("f", "n_trusted", ((0.8, 200),)),))
    spec = small_spec()
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_reproduce_cli_twice_identical_then_plot(tmp_path):
    """The small end-to-end check: twice with one seed, identical results,
    figures and a report; `plot` redraws from the saved file."""
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(app, ["reproduce", "--trials", "3", "--seed", "5", "--out", str(tmp_path / name), "--quiet", "--workers", "1"])
        assert res.exit_code == 0, res.output
        outs.append(tmp_path / name)
    assert (outs[0] / "results.parquet").read_bytes() == (outs[1] / "results.parquet").read_bytes()
    for f in ("fig5.png", "fig5.svg", "fig6.png", "fig6.svg", "report.md", "run.json"):
        assert (outs[0] / f).stat().st_size > 0
    report = (outs[0] / "report.md").read_text()
    assert "![fig5](fig5.png)" in report
    df = read_results(outs[0])
    # each claim row's verdict and numbers, recomputed from the results file
    assert check_report_claims(df, report) >= 8
    assert len(df) == 3 * 17 * 5 and list(df.columns[: len(DOCUMENTED)]) == DOCUMENTED  # REPRODUCE_ALGORITHMS
    (outs[0] / "fig5.png").unlink()
    res = runner.invoke(app, ["plot", str(outs[0] / "results.parquet")])
    assert res.exit_code == 0, res.output
    assert (outs[0] / "redrawn" / "fig5.png").stat().st_size > 10_000  # a new folder: the results' own report stays


def test_plot_errors(tmp_path):
    res = runner.invoke(app, ["plot", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "no such file" in res.output
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    res = runner.invoke(app, ["plot", str(tmp_path / "junk.csv")])
    assert res.exit_code == 2 and "not a qkdseg results file" in res.output


def test_render_from_saved_rows(serial_df, tmp_path):
    info = render(serial_df, tmp_path)
    assert len(info["figures"]) == 4 and len(info["claims"]) == 8
    assert all(isinstance(c["passed"], bool) for c in info["claims"])


def test_study_small(tmp_path):
    from qkdseg.experiments.study import run_study, study_networks, write_study_report

    keys = study_networks("zoo", 20)
    assert len(keys) > 100 and all(k.startswith("topozoo/") for k in keys)
    df = run_study("zoo", requests=1, min_nodes=90, workers=1, progress=False)
    assert set(df["algorithm"]) == {"smr", "smr-exact", "msp", "disjoint", "single", "smr-level"} and df["nodes"].min() >= 90
    # smr-level's row: one key at 0.9 when it meets the level, recomputed through the public API
    for _, row in df[df["algorithm"] == "smr-level"].iterrows():
        net = qkdseg.load_topohub(row["network"], trusted=0.1, p=0.8, seed=int(row["seed"]))
        r = qkdseg.route(net, row["source"], row["destination"], "smr-level", epsilon=0.9)
        assert row["key_bits_e90"] == (r.block_bits if r.reconstruction.n_keys else 0)
        assert row["consumed_bits"] == (r.consumed_bits if r.reconstruction.n_keys else 0)
    with pytest.raises(InvalidRequest, match="no topology of group 'zoo' has at least 100000 nodes"):
        run_study("zoo", min_nodes=100_000, progress=False)
    path = write_study_report(df, tmp_path)
    assert "topozoo/" in path.read_text() and "## smr-level: key at epsilon 0.9 per consumed bit" in path.read_text()


def test_reproduce_level_figure_adds_files_and_alters_none(tmp_path):
    """Issue 23: ``reproduce`` adds level.parquet, fig_level.png/svg and level.md; the paper's own
    files are byte-identical to a run without them. Each level row is recomputed through the public
    API on its own topology, and level.md's numbers from the two files."""
    import pandas as pd

    import qkdseg
    from qkdseg.experiments import reproduce
    from qkdseg.experiments.trials import request_pair

    reproduce(2, 5, tmp_path / "a", backend="serial", progress=False, sensitivity_trials=0, level_trials=0)
    reproduce(2, 5, tmp_path / "b", backend="serial", progress=False, sensitivity_trials=0, level_trials=2)
    for f in ("results.parquet", "report.md", "fig5.svg", "fig6.svg"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert not (tmp_path / "a" / "level.parquet").exists()
    assert {"level.parquet", "fig_level.png", "fig_level.svg", "level.md"} <= {p.name for p in (tmp_path / "b").iterdir()}
    lv = pd.read_parquet(tmp_path / "b" / "level.parquet")
    assert len(lv) == 2 * 10 * 2 * 2 and set(lv["algorithm"]) == {"smr-level", "disjoint-subset"}
    for _, row in lv[lv["algorithm"] == "smr-level"].iloc[::7].iterrows():
        net = qkdseg.waxman(100, trusted=10, p=row["p_untrusted"], seed=int(row["seed"]))
        s, d = request_pair(int(row["seed"]), 100)
        r = qkdseg.route(net, s, d, "smr-level", epsilon=row["epsilon"])
        assert bool(row["met"]) == (r.reconstruction.n_keys > 0)
        if row["met"]:
            assert row["consumed_bits"] == r.consumed_bits and row["key_bits"] == r.block_bits
            assert r.security >= row["epsilon"] - 1e-12
    res = read_results(tmp_path / "b")
    full = res[(res["figure"] == "fig5") & (res["algorithm"] == "disjoint") & (res["p_untrusted"] == 0.8)]
    served = full[full["key_bits_e90"] > 0]
    expect = served["key_bits_e90"].sum() / served["consumed_bits"].sum()
    text = (tmp_path / "b" / "level.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 0.9 | 0.80 | disjoint |"))
    assert line.split(" | ")[4].split(" ± ")[0] == f"{expect:.4f}"
    # the subset rows: the cheapest subset of disjoint's own paths, by brute force on the public API
    import itertools

    from qkdseg.reconstruction import meets
    from qkdseg.security import route_security

    for _, row in lv[lv["algorithm"] == "disjoint-subset"].iloc[::5].iterrows():
        net = qkdseg.waxman(100, trusted=10, p=row["p_untrusted"], seed=int(row["seed"]))
        s, d = request_pair(int(row["seed"]), 100)
        paths = [[net.arrays.index[v] for v in q] for q in qkdseg.route(net, s, d, "disjoint").paths]
        costs = [sum(len(q) - 1 for q in c) for k in range(1, len(paths) + 1) for c in itertools.combinations(paths, k)
                 if meets(route_security(net.arrays.p, [list(c)])[0], row["epsilon"])]
        assert bool(row["met"]) == bool(costs)
        assert row["consumed_bits"] == (min(costs) * 100_000 if costs else 0)
    assert "## Where the saving comes from: subset selection against segmenting" in text
    mine = lv[(lv["epsilon"] == 0.9) & (lv["p_untrusted"] == 0.8) & lv["met"] & (lv["algorithm"] == "smr-level")]
    line = next(x for x in text.splitlines() if x.startswith("| 0.9 | 0.80 | smr-level |"))
    assert line.split(" | ")[3] == f"{len(mine)} / 2"
