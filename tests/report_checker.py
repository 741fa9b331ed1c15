"""The claim rows of a sweep's report.md, recomputed from its results.

Independent of qkdseg: plain pandas/numpy over the results file. The four
claims of docs/experiments.md are recognised by their text; for each, the
verdict and the numbers quoted beside it are recomputed from the per-point
means and 95% CI half-widths (1.96 sample standard deviations / sqrt(n)).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

LEVELS = ("key_bits_e50", "key_bits_e70", "key_bits_e90")
Z95 = 1.959963984540054


def claim_rows(report: str) -> list[dict]:
    rows = []
    for line in report.splitlines():
        if not line.startswith("| fig"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        verdicts = [c for c in cells if c in ("**PASS**", "**FAIL**")]
        if len(verdicts) != 1:
            continue
        rows.append({"figure": cells[0], "claim": cells[1], "passed": verdicts[0] == "**PASS**", "numbers": cells[-1]})
    return rows


def point_stats(df, fig: str, alg: str, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x values, means and 95% CI half-widths (1.96 sample std / sqrt n) per point."""
    sub = df[(df["figure"] == fig) & (df["algorithm"] == alg)]
    x = "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"
    xs = np.array(sorted(sub[x].unique()))
    means, cis = [], []
    for v in xs:
        vals = sub.loc[sub[x] == v, col].to_numpy(dtype=float)
        means.append(vals.mean())
        cis.append(Z95 * vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0)
    return xs, np.array(means), np.array(cis)


def numbers_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def check_report_claims(df, report: str) -> int:
    """Check every recognised claim row of ``report`` against ``df``; returns how many."""
    rows = claim_rows(report)
    checked = 0
    for c in rows:
        m = re.match(r"(\S+) is more secure than (\S+) at every point", c["claim"])
        if m:
            a, b = m.group(1).lower(), m.group(2).lower()
            _, ma, _ = point_stats(df, c["figure"], a, "security")
            _, mb, _ = point_stats(df, c["figure"], b, "security")
            diff = ma - mb
            assert c["passed"] == bool((diff > 0).all()), c
            nums = numbers_in(c["numbers"])
            # "smallest margin {min:+.4f} at x ({a:.4f} vs {b:.4f}); mean margin {mean:+.4f}"
            k = int(np.argmin(diff))
            assert nums[0] == pytest.approx(diff.min(), abs=6e-5) and nums[-1] == pytest.approx(diff.mean(), abs=6e-5)
            assert nums[-3] == pytest.approx(ma[k], abs=6e-5) and nums[-2] == pytest.approx(mb[k], abs=6e-5)
            checked += 1
            continue
        m = re.match(r"(\S+) consumes fewer keys than (\S+) at every point", c["claim"])
        if m:
            a, b = m.group(1).lower(), m.group(2).lower()
            ratio = point_stats(df, c["figure"], a, "consumed_bits")[1] / point_stats(df, c["figure"], b, "consumed_bits")[1]
            assert c["passed"] == bool((ratio < 1).all()), c
            nums = numbers_in(c["numbers"])
            assert nums[0] == pytest.approx(ratio.max(), abs=6e-4) and nums[-1] == pytest.approx(ratio.mean(), abs=6e-4)
            checked += 1
            continue
        m = re.match(r"key length grows with", c["claim"])
        if m:
            ok = True
            for alg in ("smr", "msp"):
                for col in LEVELS:
                    _, mean, ci = point_stats(df, c["figure"], alg, col)
                    drops = any(mean[i] < mean[i - 1] - (ci[i] + ci[i - 1]) for i in range(1, len(mean)))
                    ok &= bool(mean[-1] > mean[0]) and not drops
                    first_last = f"{alg} {col}: {mean[0] / 1000:.1f} -> {mean[-1] / 1000:.1f} kb"
                    assert first_last in c["numbers"], (first_last, c)
            assert c["passed"] == ok, c
            checked += 1
            continue
        m = re.match(r"(\S+) gets longer keys than (\S+)", c["claim"])
        if m:
            a, b = m.group(1).lower(), m.group(2).lower()
            ok = True
            for col in LEVELS:
                margin = point_stats(df, c["figure"], a, col)[1] - point_stats(df, c["figure"], b, col)[1]
                ok &= bool((margin > 0).all())
                assert f"{col}: min margin {margin.min() / 1000:+.1f} kb" in c["numbers"], (col, c)
            assert c["passed"] == ok, c
            checked += 1
    return checked
