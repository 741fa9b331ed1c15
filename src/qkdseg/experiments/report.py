"""The paper's claims, judged PASS/FAIL from the data, as ``report.md``."""

from __future__ import annotations

from pathlib import Path

from .claims import Claim, _fmt_x, _x, judge  # noqa: F401  (Claim and judge: public here too)
from .figures import summarise
from .spec import eps_column


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
    lines += ["## Claims", "",
              "Every verdict is a paired test: trial t has the same topology and request pair at every point and for "
              "every algorithm, so settings are compared request by request (the mean of the differences and its 95% "
              "Student-t half-width; significant when the interval excludes 0). \"At every point\": significant in "
              "the claimed direction at each point. \"Grows\": the last point minus the first significantly positive "
              "and no step between neighbouring points significantly negative. ε is the level of the key lengths.", ""]
    if robust is None:
        lines += ["| figure | claim | measured on | verdict | numbers |", "|---|---|---|---|---|"]
    else:
        lines += ["| figure | claim | measured on | verdict | robust to MSP's beta | numbers |", "|---|---|---|---|---|---|"]
    for c in claims:
        rob = "" if robust is None else f" {robust.get((c.figure, c.text), '-')} |"
        lines.append(f"| {c.figure} | {c.text} | {c.settings} | **{'PASS' if c.passed else 'FAIL'}** |{rob} {c.evidence} |")
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
    out = [{"figure": c.figure, "claim": c.text, "settings": c.settings, "passed": c.passed, "evidence": c.evidence}
           for c in judge(df, epsilons)]
    if sensitivity is not None and len(sensitivity):
        from .sensitivity import robustness

        robust = robustness(df, sensitivity, epsilons)
        for c in out:
            c["robust"] = robust.get((c["figure"], c["claim"]), "-")
    return out


__all__ = ["Claim", "claims_table", "judge", "write_report"]
