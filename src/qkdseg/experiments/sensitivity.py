"""How much the verdicts depend on choices: MSP's walk bias, and segmenting.

Two analyses, both computed from results files (never typed in):

- **MSP's beta.** :func:`run_sensitivity` reruns MSP alone at several walk
  biases ``beta`` (:data:`SENSITIVITY_BETAS`) on the first ``trials`` trials
  of the paper's sweep: the same seeds, so the same topologies, pairs and
  placements as the first ``trials`` trials of ``results.parquet``. Its rows
  (``sensitivity.parquet``) carry a ``msp_beta`` column. :func:`claims_by_beta`
  judges the paper's claims on SMR's rows of those trials against MSP at
  each beta.
- **Segmenting.** :func:`segmentation_table`: per point, the share of
  requests where ``smr`` is below ``disjoint`` (by more than
  :data:`BELOW_MARGIN`), and ``smr-exact``'s margins over both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from .claims import _fmt_x, _x, judge
from .runner import run_sweep
from .spec import paper_spec

#: MSP walk biases of the sensitivity section (0: uniform walk; 1: the default).
SENSITIVITY_BETAS = (0.0, 1.0, 3.0, 10.0)
#: Trials per point of the sensitivity sweeps when ``reproduce`` is not told otherwise.
DEFAULT_SENSITIVITY_TRIALS = 200
#: A request counts as "below" another algorithm when its security is lower by more than this.
BELOW_MARGIN = 1e-12
#: File name of the sensitivity rows (beside ``results.parquet``).
SENSITIVITY_STEM = "sensitivity"


def run_sensitivity(trials: int, seed: int = 0, betas=SENSITIVITY_BETAS, **sweep_kwargs: Any):
    """MSP alone at each ``beta``, on the paper's points and the first
    ``trials`` trials of master seed ``seed`` (a DataFrame with ``msp_beta``).

    ``sweep_kwargs`` go to :func:`~qkdseg.experiments.run_sweep` (backend,
    workers, scheduler, progress).
    """
    import pandas as pd

    if trials < 1:
        raise InvalidRequest(f"sensitivity trials={trials} must be at least 1")
    frames = []
    for beta in betas:
        spec = paper_spec(trials=trials, seed=seed, algorithms=("msp",), algorithm_options={"msp": {"beta": float(beta)}})
        df = run_sweep(spec, desc=f"msp beta={beta:g}", **sweep_kwargs)
        df.insert(2, "msp_beta", float(beta))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def sensitivity_path(results_dir: str | Path) -> Path | None:
    """The sensitivity file beside a results file (``None`` if there is none)."""
    d = Path(results_dir)
    for suffix in (".parquet", ".csv"):
        p = d / f"{SENSITIVITY_STEM}{suffix}"
        if p.is_file():
            return p
    return None


def _with_beta(df, sens, beta: float):
    import pandas as pd

    n = int(sens["trial"].max()) + 1
    ours = df[(df["algorithm"] != "msp") & (df["trial"] < n)]
    theirs = sens[sens["msp_beta"] == beta].drop(columns="msp_beta")
    return pd.concat([ours, theirs], ignore_index=True)


def claims_by_beta(df, sens, epsilons=(0.5, 0.7, 0.9)) -> dict[float, list]:
    """``beta -> judge(...)``: the paper's claims with MSP at each beta of
    ``sens``, on the trials that ``sens`` holds (SMR's rows from ``df``)."""
    return {float(b): judge(_with_beta(df, sens, float(b)), epsilons) for b in sorted(sens["msp_beta"].unique())}


def robustness(df, sens, epsilons=(0.5, 0.7, 0.9)) -> dict[tuple[str, str], str]:
    """``(figure, claim text) -> "yes"`` when the claim passes at every beta
    of ``sens``, else ``"no: fails at beta ..."``."""
    by_beta = claims_by_beta(df, sens, epsilons)
    out: dict[tuple[str, str], list[float]] = {}
    for beta, claims in by_beta.items():
        for c in claims:
            out.setdefault((c.figure, c.text), [])
            if not c.passed:
                out[(c.figure, c.text)].append(beta)
    return {k: "yes" if not v else "no: fails at beta " + ", ".join(f"{b:g}" for b in v) for k, v in out.items()}


def beta_means(df, sens, eps_col: str = "key_bits_e90"):
    """Per figure and beta: MSP's mean security, consumed bits and key length
    over every point and trial of ``sens``, beside SMR's and ``single``'s on
    the same trials (a DataFrame)."""
    import pandas as pd

    rows = []
    for b in sorted(sens["msp_beta"].unique()):
        both = _with_beta(df, sens, float(b))
        for fig in sorted(both["figure"].unique()):
            sub = both[both["figure"] == fig]
            m = sub.groupby("algorithm")[["security", "consumed_bits", eps_col]].mean()
            row = {"figure": fig, "beta": float(b), "trials": int(sub["trial"].nunique())}
            for a in ("msp", "smr", "smr-exact", "single"):
                if a in m.index:
                    row[f"security_{a}"] = float(m.loc[a, "security"])
                    row[f"consumed_{a}"] = float(m.loc[a, "consumed_bits"])
                    row[f"{eps_col}_{a}"] = float(m.loc[a, eps_col])
            rows.append(row)
    return pd.DataFrame(rows)


def segmentation_table(df):
    """Per figure and point: how ``smr`` and ``smr-exact`` compare with
    ``disjoint`` request by request (a DataFrame; empty without those rows).

    Columns: ``figure, x, value, n``; ``smr_below`` and ``exact_below`` (share
    of requests below ``disjoint``), ``smr_worst`` (largest loss of ``smr``
    against ``disjoint``), the three mean securities, ``exact_minus_smr``
    and ``exact_minus_disjoint`` (mean margins).
    """
    import pandas as pd

    need = {"smr", "smr-exact", "disjoint"}
    if not need <= set(df["algorithm"].unique()):
        return pd.DataFrame()
    rows = []
    for fig in sorted(df["figure"].unique()):
        sub = df[(df["figure"] == fig) & df["algorithm"].isin(need)]
        x = _x(df[df["figure"] == fig])
        w = sub.pivot_table(index=["point", "trial"], columns="algorithm", values="security", aggfunc="first")
        xs = sub.groupby("point")[x].first()
        for point, g in w.groupby(level="point"):
            smr, exact, dis = g["smr"], g["smr-exact"], g["disjoint"]
            rows.append({
                "figure": fig, "x": x, "value": xs[point], "n": len(g),
                "smr_below": float((smr < dis - BELOW_MARGIN).mean()),
                "exact_below": float((exact < dis - BELOW_MARGIN).mean()),
                "smr_worst": float((dis - smr).max()),
                "security_smr": float(smr.mean()), "security_exact": float(exact.mean()),
                "security_disjoint": float(dis.mean()),
                "exact_minus_smr": float((exact - smr).mean()), "exact_minus_disjoint": float((exact - dis).mean()),
            })
    return pd.DataFrame(rows)


def segmentation_lines(df) -> list[str]:
    """The report's section on segmenting (Markdown lines; none without the rows)."""
    t = segmentation_table(df)
    if t.empty:
        return []
    lines = [
        "## Segmenting: smr and smr-exact against disjoint",
        "",
        "Per point, over the same requests: the share where each algorithm's exact security is below "
        f"`disjoint`'s (by more than {BELOW_MARGIN:g}), `smr`'s largest loss against `disjoint`, and mean margins.",
        "",
        "| figure | point | n | smr below disjoint | smr-exact below disjoint | smr worst loss "
        "| security smr | smr-exact | disjoint | smr-exact - smr | smr-exact - disjoint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in t.iterrows():
        lines.append(
            f"| {r['figure']} | {_fmt_x(r['x'], r['value'])} | {int(r['n'])} | {100 * r['smr_below']:.1f}% "
            f"| {100 * r['exact_below']:.1f}% | {r['smr_worst']:.4f} | {r['security_smr']:.4f} | {r['security_exact']:.4f} "
            f"| {r['security_disjoint']:.4f} | {r['exact_minus_smr']:+.4f} | {r['exact_minus_disjoint']:+.4f} |"
        )
    both = df[df["algorithm"].isin(["smr", "smr-exact", "disjoint"])]
    w = both.pivot_table(index=["figure", "point", "trial"], columns="algorithm", values="security", aggfunc="first")
    lines += [
        "",
        f"Over all {len(w)} requests: `smr` is below `disjoint` on {100 * (w['smr'] < w['disjoint'] - BELOW_MARGIN).mean():.1f}%, "
        f"`smr-exact` on {100 * (w['smr-exact'] < w['disjoint'] - BELOW_MARGIN).mean():.1f}%; mean security "
        f"smr {w['smr'].mean():.4f}, smr-exact {w['smr-exact'].mean():.4f}, disjoint {w['disjoint'].mean():.4f}.",
        "",
    ]
    return lines


def sensitivity_lines(df, sens, epsilons=(0.5, 0.7, 0.9)) -> list[str]:
    """The report's section on MSP's beta (Markdown lines)."""
    if sens is None or len(sens) == 0:
        return []
    by_beta = claims_by_beta(df, sens, epsilons)
    betas = list(by_beta)
    n = int(sens["trial"].max()) + 1
    lines = [
        "## Sensitivity: MSP's walk bias beta",
        "",
        f"MSP rerun at beta {', '.join(f'{b:g}' for b in betas)} on the first {n} trials of every point "
        f"(`{SENSITIVITY_STEM}.parquet`; the same topologies, pairs and placements as those trials above), "
        "judged against SMR's rows of the same trials. beta = 0 is a uniform walk; larger beta walks closer "
        "to a shortest-hop path (docs/baselines.md).",
        "",
        "| figure | claim | " + " | ".join(f"beta={b:g}" for b in betas) + " |",
        "|---|---|" + "---|" * len(betas),
    ]
    first = by_beta[betas[0]]
    for i, c in enumerate(first):
        cells = []
        for b in betas:
            cb = by_beta[b][i]
            cells.append(f"**{'PASS' if cb.passed else 'FAIL'}**")
        lines.append(f"| {c.figure} | {c.text} | " + " | ".join(cells) + " |")
    m = beta_means(df, sens)
    col = "key_bits_e90"
    lines += [
        "",
        "Means over every point and trial of the sensitivity data:",
        "",
        "| figure | beta | security msp | security smr | security smr-exact | security single | consumed msp (Mb) "
        "| consumed smr (Mb) | kb@0.9 msp | kb@0.9 smr |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for _, r in m.iterrows():
        lines.append(
            f"| {r['figure']} | {r['beta']:g} | {r['security_msp']:.4f} | {r['security_smr']:.4f} "
            f"| {r.get('security_smr-exact', nan):.4f} | {r.get('security_single', nan):.4f} "
            f"| {r['consumed_msp'] / 1e6:.3f} | {r['consumed_smr'] / 1e6:.3f} "
            f"| {r[f'{col}_msp'] / 1000:.1f} | {r[f'{col}_smr'] / 1000:.1f} |"
        )
    lines += ["", "Evidence per beta:", ""]
    for b in betas:
        for c in by_beta[b]:
            lines.append(f"- beta={b:g}, {c.figure}, {c.text}: **{'PASS' if c.passed else 'FAIL'}**; {c.evidence}")
    lines.append("")
    return lines


__all__ = [
    "BELOW_MARGIN",
    "DEFAULT_SENSITIVITY_TRIALS",
    "SENSITIVITY_BETAS",
    "beta_means",
    "claims_by_beta",
    "robustness",
    "run_sensitivity",
    "segmentation_lines",
    "segmentation_table",
    "sensitivity_lines",
    "sensitivity_path",
]
