"""The claim rows of a sweep's report.md, recomputed from its results.

Independent of qkdseg: plain pandas/numpy/scipy over the results file. The
four claims of docs/experiments.md are recognised by their text; for each,
the verdict and the numbers quoted beside it are recomputed from paired
differences (the same trial at two points, or of two algorithms at one
point): their mean and 95% Student-t half-width, significant when the
interval excludes 0.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

LEVELS = {"key_bits_e50": 0.5, "key_bits_e70": 0.7, "key_bits_e90": 0.9}


def claim_rows(report: str) -> list[dict]:
    rows = []
    for line in report.splitlines():
        if not line.startswith("| fig"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        verdicts = [c for c in cells if c in ("**PASS**", "**FAIL**")]
        if len(verdicts) != 1:
            continue
        rows.append({"figure": cells[0], "claim": cells[1], "settings": cells[2], "passed": verdicts[0] == "**PASS**",
                     "numbers": cells[-1]})
    return rows


def table(df, fig: str, alg: str, col: str):
    """``col`` of one algorithm as a trial x x-value table (the pairs: one trial, one topology and request)."""
    sub = df[(df["figure"] == fig) & (df["algorithm"] == alg)]
    x = "p_untrusted" if df.loc[df["figure"] == fig, "p_untrusted"].nunique() > 1 else "n_trusted"
    return sub.pivot(index="trial", columns=x, values=col).astype(float).sort_index(axis=1)


def ci(d) -> tuple[float, float]:
    """Mean of paired differences and its 95% Student-t half-width."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("inf")
    return float(d.mean()), float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))


def numbers_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def _every_point(df, c, a, b, col, sign):
    """Per x: paired mean and half-width of a - b; how many are significant in the direction ``sign``."""
    A, B = table(df, c["figure"], a, col), table(df, c["figure"], b, col)
    res = {v: ci(A[v] - B[v]) for v in A.columns}
    sig = sum(1 for m, h in res.values() if sign * m - h > 0)
    return res, sig


def check_report_claims(df, report: str) -> int:
    """Check every recognised claim row of ``report`` against ``df``; returns how many."""
    rows = claim_rows(report)
    checked = 0
    for c in rows:
        assert "paired by trial" in c["settings"] and "trials per point" in c["settings"], c
        m = re.match(r"(\S+) is more secure than (\S+) at every point", c["claim"])
        if m:
            res, sig = _every_point(df, c, m.group(1).lower(), m.group(2).lower(), "security", +1)
            assert c["passed"] == (sig == len(res)), c
            assert f"above 0 at {sig} of {len(res)} points" in c["numbers"], c
            mean, half = min(res.values(), key=lambda v: v[0] - v[1])
            assert f"smallest paired margin {mean:+.4f} ± {half:.4f}" in c["numbers"], (mean, half, c)
            checked += 1
            continue
        m = re.match(r"(\S+) consumes fewer keys than (\S+) at every point", c["claim"])
        if m:
            a, b = m.group(1).lower(), m.group(2).lower()
            res, sig = _every_point(df, c, a, b, "consumed_bits", -1)
            assert c["passed"] == (sig == len(res)), c
            mean, half = max(res.values(), key=lambda v: v[0] + v[1])
            assert f"below 0 at {sig} of {len(res)} points" in c["numbers"], c
            assert f"largest paired difference {mean / 1e6:+.3f} ± {half / 1e6:.3f} Mb" in c["numbers"], c
            ratio = table(df, c["figure"], a, "consumed_bits").mean() / table(df, c["figure"], b, "consumed_bits").mean()
            assert numbers_in(c["numbers"])[-1] == pytest.approx(ratio.max(), abs=6e-4)
            checked += 1
            continue
        m = re.match(r"key length grows with", c["claim"])
        if m:
            ok = True
            for alg in ("smr", "msp"):
                for col, eps in LEVELS.items():
                    T = table(df, c["figure"], alg, col)
                    mean, half = ci(T.iloc[:, -1] - T.iloc[:, 0])
                    falls = [k for k in range(1, T.shape[1]) if sum(ci(T.iloc[:, k] - T.iloc[:, k - 1])) < 0]
                    ok &= mean - half > 0 and not falls
                    means = T.mean()
                    head = (f"{alg} ε={eps:g}: {means.iloc[0] / 1000:.1f} -> {means.iloc[-1] / 1000:.1f} kb "
                            f"(last - first {mean / 1000:+.1f} ± {half / 1000:.1f} kb")
                    assert head in c["numbers"], (head, c)
                    for k in falls:
                        fm, fh = ci(T.iloc[:, k] - T.iloc[:, k - 1])
                        fall = (f"{means.iloc[k - 1] / 1000:.1f} -> {means.iloc[k] / 1000:.1f} kb, "
                                f"{fm / 1000:+.1f} ± {fh / 1000:.1f} kb")
                        assert fall in c["numbers"], (fall, c)
            assert c["passed"] == ok, c
            checked += 1
            continue
        m = re.match(r"(\S+) gets longer keys than (\S+)", c["claim"])
        if m:
            ok = True
            for col, eps in LEVELS.items():
                res, sig = _every_point(df, c, m.group(1).lower(), m.group(2).lower(), col, +1)
                ok &= sig == len(res)
                mean, half = min(res.values(), key=lambda v: v[0] - v[1])
                note = (f"ε={eps:g}: significant at {sig} of {len(res)} points, smallest paired margin "
                        f"{mean / 1000:+.1f} ± {half / 1000:.1f} kb")
                assert note in c["numbers"], (note, c)
            assert c["passed"] == ok, c
            checked += 1
    return checked
