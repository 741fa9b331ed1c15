"""The paper's claims, judged PASS/FAIL from the data, as ``report.md``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .figures import summarise
from .spec import eps_column


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and its verdict on the data."""

    figure: str
    text: str
    passed: bool
    evidence: str


def _x(sub) -> str:
    return "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"


def _fmt_x(x: str, v) -> str:
    return f"p={v:.2f}" if x == "p_untrusted" else f"T={int(v)}"


def judge(df, epsilons=(0.5, 0.7, 0.9), a: str = "smr", b: str = "msp") -> list[Claim]:
    """Evaluate the paper's four claims for every figure in ``df``.

    1. ``a`` (SMR) is more secure than ``b`` (MSP) at every point (means).
    2. ``a`` consumes fewer key bits than ``b`` at every point (means).
    3. Key length grows with the swept parameter: for ``a`` and ``b`` and
       every epsilon, the mean at the last point exceeds the first, and no
       step between neighbouring points falls by more than the two points'
       95% CI half-widths added.
    4. ``a`` gets longer keys than ``b`` at every point and every epsilon.
    """
    claims = []
    for fig in sorted(df["figure"].unique()):
        sub = df[df["figure"] == fig]
        x = _x(sub)
        eps_cols = [eps_column(e) for e in epsilons if eps_column(e) in sub]
        s = summarise(sub[sub["algorithm"].isin([a, b])], x, ["security", "consumed_bits", *eps_cols])
        if not {a, b} <= set(s["algorithm"]):
            continue
        A = s[s["algorithm"] == a].set_index(x)
        B = s[s["algorithm"] == b].set_index(x)
        xs = list(A.index)
        # 1. security
        diff = A["security_mean"] - B["security_mean"]
        worst = diff.idxmin()
        claims.append(Claim(fig, f"{a.upper()} is more secure than {b.upper()} at every point", bool((diff > 0).all()),
                            f"smallest margin {diff.min():+.4f} at {_fmt_x(x, worst)} "
                            f"({A['security_mean'][worst]:.4f} vs {B['security_mean'][worst]:.4f}); "
                            f"mean margin {diff.mean():+.4f}"))
        # 2. consumption
        ratio = A["consumed_bits_mean"] / B["consumed_bits_mean"]
        worst = ratio.idxmax()
        claims.append(Claim(fig, f"{a.upper()} consumes fewer keys than {b.upper()} at every point", bool((ratio < 1).all()),
                            f"consumed bits {a}/{b} at most {ratio.max():.3f} (at {_fmt_x(x, worst)}), "
                            f"mean {ratio.mean():.3f}"))
        # 3. growth
        what = "p" if x == "p_untrusted" else "the number of trusted relays"
        ok = True
        notes = []
        for alg, T in ((a, A), (b, B)):
            for col in eps_cols:
                m, ci = T[f"{col}_mean"].to_numpy(), T[f"{col}_ci"].to_numpy()
                grows = m[-1] > m[0]
                drops = [i for i in range(1, len(m)) if m[i] < m[i - 1] - (ci[i] + ci[i - 1])]
                ok &= grows and not drops
                notes.append(f"{alg} {col}: {m[0] / 1000:.1f} -> {m[-1] / 1000:.1f} kb"
                             + (f", significant drop at {', '.join(_fmt_x(x, xs[i]) for i in drops)}" if drops else ""))
        claims.append(Claim(fig, f"key length grows with {what}", bool(ok), "; ".join(notes)))
        # 4. longer keys
        margins = {col: (A[f"{col}_mean"] - B[f"{col}_mean"]) for col in eps_cols}
        ok = all((mg > 0).all() for mg in margins.values())
        ev = "; ".join(f"{col}: min margin {mg.min() / 1000:+.1f} kb at {_fmt_x(x, mg.idxmin())}" for col, mg in margins.items())
        claims.append(Claim(fig, f"{a.upper()} gets longer keys than {b.upper()} (every point, every epsilon)", bool(ok), ev))
    return claims


def _table(s, x: str, cols: list[str]) -> str:
    head = "| " + " | ".join([x, "algorithm", "n", *cols]) + " |"
    sep = "|" + "---|" * (3 + len(cols))
    lines = [head, sep]
    for _, r in s.iterrows():
        vals = []
        for c in cols:
            m, ci = r[f"{c}_mean"], r[f"{c}_ci"]
            vals.append(f"{m / 1000:.1f} ± {ci / 1000:.1f} kb" if c.startswith("key_bits") or c == "consumed_bits"
                        else f"{m:.4f} ± {ci:.4f}")
        xv = f"{r[x]:.2f}" if x == "p_untrusted" else f"{int(r[x])}"
        lines.append("| " + " | ".join([xv, r["algorithm"], str(int(r["n"])), *vals]) + " |")
    return "\n".join(lines)


def write_report(df, out_dir: str | Path, *, header: str = "", epsilons=(0.5, 0.7, 0.9), sensitivity=None) -> Path:
    """Write ``report.md``: the claims with PASS/FAIL and their numbers, the
    figures, and per-point means with 95% CIs.

    With ``sensitivity`` (the rows of
    :func:`~qkdseg.experiments.sensitivity.run_sensitivity`) the claim table
    gains a "robust to MSP's beta" column and the report a section per
    beta; with ``smr``, ``smr-exact`` and ``disjoint`` rows, a section on
    what segmenting buys per point."""
    from .sensitivity import robustness, segmentation_lines, sensitivity_lines

    out = Path(out_dir)
    claims = judge(df, epsilons)
    robust = robustness(df, sensitivity, epsilons) if sensitivity is not None and len(sensitivity) else None
    lines = ["# qkdseg: the paper's evaluation, reproduced", ""]
    if header:
        lines += [header, ""]
    if robust is None:
        lines += ["## Claims", "", "| figure | claim | verdict | numbers |", "|---|---|---|---|"]
    else:
        lines += ["## Claims", "", "| figure | claim | verdict | robust to MSP's beta | numbers |", "|---|---|---|---|---|"]
    for c in claims:
        rob = "" if robust is None else f" {robust.get((c.figure, c.text), '-')} |"
        lines.append(f"| {c.figure} | {c.text} | **{'PASS' if c.passed else 'FAIL'}** |{rob} {c.evidence} |")
    lines.append("")
    if robust is not None:
        lines += ["\"Robust\": the claim passes at every beta of the sensitivity section below (on its trials).", ""]
    for fig in sorted(df["figure"].unique()):
        sub = df[df["figure"] == fig]
        x = _x(sub)
        eps_cols = [eps_column(e) for e in epsilons if eps_column(e) in sub]
        lines += [f"## {fig}", ""]
        if (out / f"{fig}.png").exists():
            lines += [f"![{fig}]({fig}.png)", ""]
        cols = ["security", "key_consumption_rate", "consumed_bits", *eps_cols]
        lines += [_table(summarise(sub, x, cols), x, cols), ""]
        blocked = sub.groupby("algorithm")["blocked"].sum()
        lines += ["Blocked requests: " + ", ".join(f"{k} {int(v)}" for k, v in blocked.items()) + ".", ""]
    lines += segmentation_lines(df)
    lines += sensitivity_lines(df, sensitivity, epsilons)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def claims_table(df, epsilons=(0.5, 0.7, 0.9), sensitivity=None) -> list[dict]:
    """The verdicts as plain dicts (for JSON and the CLI); with
    ``sensitivity``, each also says whether it is robust to MSP's beta."""
    out = [{"figure": c.figure, "claim": c.text, "passed": c.passed, "evidence": c.evidence} for c in judge(df, epsilons)]
    if sensitivity is not None and len(sensitivity):
        from .sensitivity import robustness

        robust = robustness(df, sensitivity, epsilons)
        for c in out:
            c["robust"] = robust.get((c["figure"], c["claim"]), "-")
    return out


__all__ = ["Claim", "claims_table", "judge", "write_report"]
