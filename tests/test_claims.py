"""The report's claims are paired tests (issue 39 item 3): on constructed rows whose trials differ a lot from each
other (so unpaired intervals are wide) but move together between points, a significant fall between neighbouring
points fails "grows" although the endpoints rise, a rise the unpaired intervals would call noise passes, and each
claim names what it was measured on; the report's rows are then recomputed by the independent checker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qkdseg.experiments import write_report
from qkdseg.experiments.claims import judge, paired
from report_checker import check_report_claims

TRUSTED = (0, 5, 10)
N = 60


def _rows(smr_steps: tuple[float, float, float]) -> pd.DataFrame:
    """fig6-like rows: SMR's key length per trial = a wide per-trial base + the step of its point + small noise;
    MSP far below with steady growth."""
    rng = np.random.default_rng(1)
    base = rng.uniform(200_000, 700_000, N)
    rows = []
    for k, t in enumerate(TRUSTED):
        for i in range(N):
            for alg, level, sec, used in (("smr", base[i] + smr_steps[k], 0.97, 2e6),
                                          ("msp", base[i] / 4 + 20_000 * k, 0.7, 4e6)):
                noise = rng.normal(0, 3_000, 3)
                rows.append({"figure": "fig6", "algorithm": alg, "p_untrusted": 0.8, "n_trusted": t, "point": k,
                             "trial": i, "seed": i, "nodes": 100, "security": sec + 0.01 * rng.random(),
                             "consumed_bits": used + 1e4 * rng.random(), "key_consumption_rate": 0.05,
                             "key_bits_e50": level + noise[0], "key_bits_e70": level * 0.7 + noise[1],
                             "key_bits_e90": level * 0.4 + noise[2], "blocked": False})
    return pd.DataFrame(rows)


def _growth(df):
    return next(c for c in judge(df) if c.text.startswith("key length grows"))


def test_a_significant_fall_between_neighbours_fails_growth(tmp_path):
    df = _rows((0.0, -16_000.0, 40_000.0))  # T=0 -> 5 falls by 16 kb, then rises past the start
    c = _growth(df)
    assert not c.passed
    assert "smr ε=0.5:" in c.evidence and "significant fall T=0 -> T=5" in c.evidence
    # the unpaired rule of before (drop beyond the two points' 95% CIs added) would have seen no drop at all
    smr = df[df["algorithm"] == "smr"].groupby("n_trusted")["key_bits_e50"]
    ci = 1.96 * smr.std() / np.sqrt(smr.count())
    assert smr.mean()[5] > smr.mean()[0] - (ci[0] + ci[5])
    assert "T = 0..10 trusted relays" in c.settings and f"{N} trials per point" in c.settings and "ε = 0.5" in c.settings
    report = write_report(df, tmp_path).read_text()
    assert check_report_claims(df, report) == 4
    assert "| fig6 | key length grows with the number of trusted relays |" in report and "**FAIL**" in report


def test_a_paired_rise_passes_where_unpaired_intervals_overlap():
    df = _rows((0.0, 6_000.0, 12_000.0))
    c = _growth(df)
    assert c.passed, c.evidence
    smr = df[df["algorithm"] == "smr"].groupby("n_trusted")["key_bits_e50"]
    ci = 1.96 * smr.std() / np.sqrt(smr.count())
    assert smr.mean()[10] - smr.mean()[0] < ci[0] + ci[10]  # unpaired: the endpoints' intervals overlap


def test_endpoints_that_do_not_differ_significantly_fail():
    assert not _growth(_rows((0.0, 300.0, 500.0))).passed


def test_paired_interval():
    m, h, n = paired([1.0, np.nan, 3.0])
    assert (m, n) == (2.0, 2) and h == pytest.approx(12.706204736 * np.sqrt(2) / np.sqrt(2))
    assert paired([4.0])[1] == float("inf")
