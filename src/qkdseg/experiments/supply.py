"""``qkdseg simulate --supply``: supply policies on one trace or over a load sweep, their table and figures.

Every policy (and algorithm) of a replication plays the same trace (common random numbers: paired by seed;
with several replications, replication ``r`` of every rate uses the trace seed ``trial_seed(seed, r)``, as the
load sweep). ``supply.csv`` has one row per run (:meth:`qkdseg.sim.supply.SupplyRun.summary`),
``supply_summary.csv`` the mean and 95% CI (Student t over the replications) per (rate, algorithm, supply),
``report.md`` the table, the study's trade-off table (:func:`tradeoff_table`) and ``run.json`` the command and
parameters; a sweep adds ``supply_tradeoff.png`` (mean stocked bits against hit rate, per policy) and ``supply_wait.png``
(wait p99 against load).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..sim import poisson_requests
from .spec import trial_seed
from ..sim.supply import SupplyRun, restrict_pairs

#: The measures summarised per (rate, algorithm, supply).
MEASURES = ("hit_rate", "wait_p50_ms", "wait_p99_ms", "served", "blocked", "mean_stocked_bits", "peak_stocked_bits",
            "expired_keys", "link_bits_per_served_bit")


def supply_runs(network, supplies, *, algorithms=("smr",), rates=(None,), duration: float = 600.0,
                replications: int = 1, seed: int = 0, requests=None, key_bits: int = 256, epsilon: float = 0.9,
                pairs: str = "uniform", arrivals: str = "poisson", supply_pairs: int | None = None,
                progress=None, **run_kw: Any):
    """One row per (rate, replication, algorithm, supply): the runs' summaries (a DataFrame). ``requests``: one
    trace instead of ``rates``; ``run_kw``: :class:`~qkdseg.sim.supply.SupplyRun`'s options."""
    import pandas as pd

    rows = []
    n = network.arrays.n_nodes
    for rate in rates:
        for rep in range(replications):
            rs = seed if requests is not None or replications == 1 else trial_seed(seed, rep)
            reqs = requests if requests is not None else poisson_requests(
                network, rate, duration, seed=rs, key_bits=key_bits, epsilon=epsilon, pairs=pairs,
                arrivals=arrivals)
            if supply_pairs:
                reqs = restrict_pairs(reqs, n, supply_pairs, rs)
            for alg in algorithms:
                for sup in supplies:
                    row = SupplyRun(network, reqs, sup, alg, **run_kw).run().summary()
                    rows.append({"rate": math.nan if rate is None else float(rate), "replication": rep,
                                 "seed": rs, "arrivals": arrivals, **row})
                    if progress is not None:
                        progress(row)
    return pd.DataFrame(rows)


def summarise(df):
    """Mean and 95% CI half-width (Student t, replications) of :data:`MEASURES` per (rate, algorithm, supply)."""
    import pandas as pd
    from scipy.stats import t as student_t

    out = []
    keys = ["rate", "algorithm", "supply"]
    for key, g in df.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key), n=len(g))
        q = float(student_t.ppf(0.975, len(g) - 1)) if len(g) > 1 else math.nan
        for m in MEASURES:
            v = g[m].astype(float).dropna()
            row[f"{m}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{m}_ci"] = q * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _pm(mean: float, ci: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "-"
    return format(mean, fmt) + ("" if not math.isfinite(ci) else " ± " + format(ci, fmt))


def report_lines(s) -> list[str]:
    """The summary as a markdown table."""
    lines = ["| rate | algorithm | supply | hit rate | wait p50 ms | wait p99 ms | served | blocked | "
             "mean stocked kb | peak stocked kb | expired keys | link bits / served bit |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in s.iterrows():
        cell = {m: (r[f"{m}_mean"], r[f"{m}_ci"]) for m in MEASURES}
        lines.append(" | ".join([
            f"| {r['rate']:g}", str(r["algorithm"]), str(r["supply"]), _pm(*cell["hit_rate"], ".4f"),
            _pm(*cell["wait_p50_ms"], ".1f"), _pm(*cell["wait_p99_ms"], ".1f"), _pm(*cell["served"], ".1f"),
            _pm(*cell["blocked"], ".1f"), _pm(cell["mean_stocked_bits"][0] / 1e3, cell["mean_stocked_bits"][1] / 1e3,
                                               ".2f"),
            _pm(cell["peak_stocked_bits"][0] / 1e3, cell["peak_stocked_bits"][1] / 1e3, ".2f"),
            _pm(*cell["expired_keys"], ".1f"), _pm(*cell["link_bits_per_served_bit"], ".2f")]) + " |")
    return lines


#: Where a policy that missed no request is drawn on the trade-off figure's log scale.
MISS_FLOOR = 1e-4


def _save(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def figures(s, out: Path) -> list[Path]:
    """``supply_tradeoff.png`` (mean stocked bits against the miss rate, log-log, one point per load; on demand
    holds nothing and is left out) and ``supply_wait.png``
    (wait p99 against the load), per policy, with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax, bx = plt.subplots(figsize=(6.4, 4.2)), plt.subplots(figsize=(6.4, 4.2))  # (figure, axes) each
    for sup, g in s.groupby("supply", sort=False):
        g = g.sort_values("rate")
        if sup != "on-demand":  # it holds nothing: off the log scale
            miss = (1.0 - g["hit_rate_mean"]).clip(lower=MISS_FLOOR)
            ax[1].errorbar(miss, g["mean_stocked_bits_mean"] / 1e3, xerr=g["hit_rate_ci"].fillna(0),
                           yerr=g["mean_stocked_bits_ci"].fillna(0) / 1e3, fmt="o-" if sup == "adaptive" else "s--",
                           label=sup, capsize=2)
        bx[1].errorbar(g["rate"], g["wait_p99_ms_mean"], yerr=g["wait_p99_ms_ci"].fillna(0), fmt="o-", label=sup,
                       capsize=2)
    ax[1].set_xscale("log")
    ax[1].set_yscale("log")
    files = [_save(*ax, f"miss rate (1 - hit rate; {MISS_FLOOR:g} where none missed), one point per load",
                   "mean stocked key (kb)", out / "supply_tradeoff.png"),
             _save(*bx, "load (requests per second)", "request wait p99 (ms)", out / "supply_wait.png")]
    plt.close(ax[0])
    plt.close(bx[0])
    return files


def write_supply(df, out_dir, *, command: str, params: dict, sweep: bool) -> dict:
    """``supply.csv``, ``supply_summary.csv``, ``report.md``, ``run.json`` (and a sweep's figures)."""
    out = Path(out_dir)
    s = summarise(df)
    files = [out / "supply.csv", out / "supply_summary.csv"]
    df.to_csv(files[0], index=False)
    s.to_csv(files[1], index=False)
    if sweep and len(s):
        files += figures(s, out)
    lines = [f"# Key supply policies on {params.get('network')}", "", f"`{command}`", "",
             "Mean ± 95% CI over the replications (paired: every policy plays the same traces).", "",
             *report_lines(s), ""]
    trade = tradeoff_table(s)
    if trade:
        lines += ["Adaptive against the least-stocked fixed watermark that reaches at least its hit rate (means):", "",
                  "| rate | algorithm | adaptive hit | adaptive kb | adaptive expired | best fixed | its hit | its kb | "
                  "its expired | adaptive / fixed bits |", "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for r in trade:
            fx = r["best_fixed"] is not None
            lines.append(
                f"| {r['rate']:g} | {r['algorithm']} | {r['adaptive_hit']:.4f} | {r['adaptive_bits'] / 1e3:.2f} | "
                f"{r['adaptive_expired']:.1f} | {r['best_fixed'] or 'none reaches it'} | "
                + (f"{r['best_fixed_hit']:.4f} | {r['best_fixed_bits'] / 1e3:.2f} | {r['best_fixed_expired']:.1f} | "
                   + (f"{r['share']:.2f}" if r["share"] is not None else "-") if fx else "- | - | - | -") + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    files.append(out / "report.md")
    (out / "run.json").write_text(json.dumps({"command": command, "params": params}, indent=2, default=str) + "\n",
                                  encoding="utf-8")
    files.append(out / "run.json")
    return {"summary": s, "files": [str(f) for f in files]}


def tradeoff_table(s) -> list[dict]:
    """Per (rate, algorithm): at the hit rate adaptive reaches, each policy's mean stocked bits and expired keys,
    and adaptive's stocked bits as a share of the least-stocked fixed watermark that reaches at least that hit
    rate (None when no fixed watermark does)."""
    out = []
    for (rate, alg), g in s.groupby(["rate", "algorithm"], sort=False, dropna=False):
        ad = g[g["supply"] == "adaptive"]
        if not len(ad):
            continue
        hit = float(ad["hit_rate_mean"].iloc[0])
        fixed = g[g["supply"].str.startswith("fixed:") & (g["hit_rate_mean"] >= hit)]
        best = fixed.loc[fixed["mean_stocked_bits_mean"].idxmin()] if len(fixed) else None
        out.append({"rate": rate, "algorithm": alg, "adaptive_hit": hit,
                    "adaptive_bits": float(ad["mean_stocked_bits_mean"].iloc[0]),
                    "adaptive_expired": float(ad["expired_keys_mean"].iloc[0]),
                    "best_fixed": None if best is None else best["supply"],
                    "best_fixed_hit": None if best is None else float(best["hit_rate_mean"]),
                    "best_fixed_bits": None if best is None else float(best["mean_stocked_bits_mean"]),
                    "best_fixed_expired": None if best is None else float(best["expired_keys_mean"]),
                    "share": None if best is None or not best["mean_stocked_bits_mean"] else
                    float(ad["mean_stocked_bits_mean"].iloc[0]) / float(best["mean_stocked_bits_mean"])})
    return out


__all__ = ["MEASURES", "summarise", "supply_runs", "tradeoff_table", "write_supply"]
