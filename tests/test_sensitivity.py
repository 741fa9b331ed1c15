"""The reproduce report's sensitivity and segmentation sections: computed
from the results files (recomputed here with plain pandas, then a tampered
file changes the report), deterministic, consistent with the main sweep."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from qkdseg.cli import app
from qkdseg.experiments import reproduce

runner = CliRunner()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    reproduce(3, 5, d / "a", backend="serial", progress=False, sensitivity_trials=2)
    reproduce(3, 5, d / "b", backend="serial", progress=False, sensitivity_trials=2)
    return d


def test_files_deterministic(out):
    for f in ("results.parquet", "sensitivity.parquet", "report.md", "fig5.svg", "fig6.svg", "fig5.png"):
        assert (out / "a" / f).read_bytes() == (out / "b" / f).read_bytes(), f


def test_sensitivity_rows_match_the_main_sweep(out):
    """MSP at beta = 1 (its default) in the sensitivity file equals the main
    sweep's MSP rows of the same trials; every beta covers every point."""
    df = pd.read_parquet(out / "a" / "results.parquet")
    sens = pd.read_parquet(out / "a" / "sensitivity.parquet")
    assert sorted(sens["msp_beta"].unique()) == [0.0, 1.0, 3.0, 10.0]
    assert sorted(sens["trial"].unique()) == [0, 1]
    assert (sens.groupby("msp_beta").size() == 17 * 2).all()
    key = ["figure", "point", "trial"]
    main = df[(df["algorithm"] == "msp") & (df["trial"] < 2)].set_index(key).sort_index()
    one = sens[sens["msp_beta"] == 1.0].set_index(key).sort_index()
    for col in ("security", "consumed_bits", "key_bits_e90", "seed"):
        assert (main[col] == one[col]).all(), col
    assert not (sens[sens["msp_beta"] == 0.0]["hops"].to_numpy() == one["hops"].to_numpy()).all()


def _report(out):
    return (out / "report.md").read_text()


def test_report_numbers_come_from_the_files(out, tmp_path):
    d = out / "a"
    df = pd.read_parquet(d / "results.parquet")
    sens = pd.read_parquet(d / "sensitivity.parquet")
    report = _report(d)
    # MSP's mean security per figure and beta, and SMR's on the same two trials
    for (fig, beta), g in sens.groupby(["figure", "msp_beta"]):
        smr = df[(df["figure"] == fig) & (df["algorithm"] == "smr") & (df["trial"] < 2)]["security"].mean()
        assert f"| {fig} | {beta:g} | {g['security'].mean():.4f} | {smr:.4f} |" in report
    # smr below disjoint per point
    w = df.pivot_table(index=["figure", "point", "trial"], columns="algorithm", values="security")
    for (fig, point), g in w.groupby(level=["figure", "point"]):
        share = 100 * (g["smr"] < g["disjoint"] - 1e-12).mean()
        exact_share = 100 * (g["smr-exact"] < g["disjoint"] - 1e-12).mean()
        assert exact_share == 0.0
        x = df[(df["figure"] == fig) & (df["point"] == point)].iloc[0]
        label = f"p={x['p_untrusted']:.2f}" if fig == "fig5" else f"T={int(x['n_trusted'])}"
        assert f"| {fig} | {label} | 3 | {share:.1f}% | {exact_share:.1f}% |" in report
    # tamper: MSP at beta = 3 perfectly secure -> SMR no longer more secure at beta 3
    work = tmp_path / "t"
    work.mkdir()
    df.to_parquet(work / "results.parquet", index=False)
    bad = sens.copy()
    bad.loc[bad["msp_beta"] == 3.0, "security"] = 1.0
    bad.to_parquet(work / "sensitivity.parquet", index=False)
    res = runner.invoke(app, ["plot", str(work / "results.parquet")])
    assert res.exit_code == 0, res.output
    text = _report(work / "redrawn")  # plot writes a new folder beside the results
    from scipy import stats

    for fig in ("fig5", "fig6"):
        assert f"| {fig} | 3 | 1.0000 |" in text
        row = next(line for line in text.splitlines()
                   if line.startswith(f"| {fig} | SMR is more secure than MSP at every point |") and "paired by trial" in line)
        assert "fails at beta" in row and "3" in row.split("fails at beta")[1].split("|")[0]
        sens_row = next(line for line in text.splitlines()
                        if line.startswith(f"| {fig} | SMR is more secure than MSP at every point |") and "beta" not in line
                        and line.count("**") >= 8)
        assert sens_row.split("|")[5].strip() == "**FAIL**"  # the beta=3 column
        # its evidence, recomputed: per point the paired margin smr - 1.0 over the two trials, the worst by its
        # lower 95% bound (Student t, 1 degree of freedom)
        smr = df[(df["figure"] == fig) & (df["algorithm"] == "smr") & (df["trial"] < 2)]
        worst = min(((g["security"] - 1.0).mean() - stats.t.ppf(0.975, 1) * (g["security"] - 1.0).std() / 2 ** 0.5,
                     (g["security"] - 1.0).mean()) for _, g in smr.groupby("point"))[1]
        line = next(x for x in text.splitlines() if x.startswith(f"- beta=3, {fig}, SMR is more secure than MSP"))
        assert f"smallest paired margin {worst:+.4f}" in line, line


def test_zero_sensitivity_trials_skips_it(tmp_path):
    info = reproduce(1, 0, tmp_path, backend="serial", progress=False, sensitivity_trials=0)
    assert not (tmp_path / "sensitivity.parquet").exists()
    assert "robust" not in info["claims"][0] and "MSP's walk bias" not in _report(tmp_path)


def test_study_gains_over_disjoint_and_redraw(tmp_path):
    """The study's per-network gains of smr and smr-exact over disjoint are the
    means of the per-request differences; `qkdseg plot` redraws a study file."""
    from qkdseg.experiments import write_results
    from qkdseg.experiments.study import run_study, study_table

    df = run_study("zoo", requests=2, min_nodes=90, workers=1, progress=False)
    t = study_table(df).set_index("network")
    for net, g in df.groupby("network"):
        sec = g.pivot(index="request", columns="algorithm", values="security")
        for a in ("smr", "smr-exact"):
            assert t.loc[net, f"gain_{a}"] == pytest.approx((sec[a] - sec["disjoint"]).mean(), abs=1e-15)
        assert (sec["smr-exact"] >= sec["disjoint"] - 1e-12).all()
    write_results(df, tmp_path)
    res = runner.invoke(app, ["plot", str(tmp_path / "results.parquet")])
    assert res.exit_code == 0, res.output
    assert "gain smr-exact" in (tmp_path / "redrawn" / "report.md").read_text()
