"""Summaries, figures and the report of the threshold-sharing study (:mod:`qkdseg.experiments.threshold`).

- ``threshold_security.png``: each scheme's exact security against ``p`` and
  against the number of trusted relays, one column per network;
- ``threshold_cost.png``: the share of requests that get a key at level 0.7
  and the link bits each such key bit costs, against the trusted relays;
- ``threshold_failures.png``: the share of requests served against the
  relay failure probability, one panel per network;
- ``report.md`` with the results table (:func:`results_table`).

Means with 95% confidence half-widths: 1.96 standard errors over requests
(static part), Student t over replications (dynamic part, and the paired
differences against SMR with XOR on the same traces and failure draws).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import save_figure
from .spec import eps_column
from .threshold import COST_EPSILON, FAILURES, SCHEMES, ZOO_BASE_TRUSTED

#: Matplotlib style per scheme: XOR schemes in SMR's red, threshold in orange and brown, baselines as elsewhere.
SCHEME_STYLES = {
    "smr xor": dict(color="#d62728", ls="-", marker="o"),
    "smr xor-all": dict(color="#d62728", ls="--", marker="s", mfc="white"),
    "smr T=1": dict(color="#ff7f0e", ls="-", marker="^"),
    "smr T=2": dict(color="#8c564b", ls="-", marker="v"),
    "smr-exact T=1": dict(color="#ff7f0e", ls="--", marker="^", mfc="white"),
    "smr-exact T=2": dict(color="#8c564b", ls="--", marker="v", mfc="white"),
    "smr-level T=1": dict(color="#e377c2", ls="-", marker="X"),
    "disjoint xor": dict(color="#2ca02c", ls=":", marker="D", mfc="white"),
    "msp xor": dict(color="#1f77b4", ls="-.", marker="P"),
}
Z95 = 1.959963984540054


def _t95(n: int) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def _mean_ci(values, student: bool = False) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not v.size:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    q = _t95(v.size) if student else Z95
    return float(v.mean()), q * float(v.std(ddof=1)) / np.sqrt(v.size)


def _order(names) -> list[str]:
    labels = [s[0] for s in SCHEMES]
    return sorted(names, key=labels.index)


def static_summary(df):
    """Per (network, sweep, point, scheme): security, refused share, the share of requests with a key at each
    level and the link bits per key bit at :data:`COST_EPSILON` (over the requests that get one)."""
    import pandas as pd

    col = eps_column(COST_EPSILON)
    rows = []
    for (net, sweep, p, t, scheme), d in df.groupby(["network", "sweep", "p_untrusted", "n_trusted", "scheme"],
                                                    sort=False):
        sec, sec_ci = _mean_ci(d["security"])
        keyed = d[d[col] > 0]
        cost, cost_ci = _mean_ci(keyed["consumed_bits"] / keyed[col])
        share, share_ci = _mean_ci((d[col] > 0).astype(float))
        rows.append({"network": net, "sweep": sweep, "p_untrusted": p, "n_trusted": t, "scheme": scheme,
                     "n": len(d), "n_keyed": len(keyed), "security": sec, "security_ci": sec_ci, "refused": float(d["refused"].mean()),
                     "key_share": share, "key_share_ci": share_ci, "bits_per_key_bit": cost,
                     "bits_per_key_bit_ci": cost_ci})
    return pd.DataFrame(rows)


def dynamic_summary(df):
    """Per (network, scheme, failure probability): served share and link bits per served key bit (Student t
    over replications), and the paired difference of served requests against ``smr xor``."""
    import pandas as pd

    ref = SCHEMES[0][0]
    rows = []
    for (net, scheme, prob), d in df.groupby(["network", "scheme", "relay_failure"], sort=False):
        d = d.sort_values("replication")
        base = df[(df["network"] == net) & (df["scheme"] == ref) & (df["relay_failure"] == prob)] \
            .set_index("replication").loc[d["replication"]]
        share, share_ci = _mean_ci(d["served_share"], student=True)
        cost, cost_ci = _mean_ci(d["consumed_link_bits"] / d["served_key_bits"].where(d["served_key_bits"] > 0),
                                 student=True)
        diff, diff_ci = _mean_ci(d["served"].to_numpy() - base["served"].to_numpy(), student=True)
        rows.append({"network": net, "scheme": scheme, "relay_failure": prob, "n": len(d), "requests":
                     float(d["requests"].mean()), "served_share": share, "served_share_ci": share_ci,
                     "failed": float(d["failed"].mean()), "bits_per_served_bit": cost,
                     "bits_per_served_bit_ci": cost_ci, "served_vs_ref": diff, "served_vs_ref_ci": diff_ci})
    return pd.DataFrame(rows)


def _pm(m: float, ci: float, digits: int) -> str:
    if np.isnan(m):
        return "-"
    return f"{m:.{digits}f}" + ("" if np.isnan(ci) else f" ± {ci:.{digits}f}")


def base_point(net: str) -> tuple[float, int]:
    """The point of the results table: p = 0.8 with 10 trusted relays (Waxman) or :data:`ZOO_BASE_TRUSTED`."""
    return 0.8, 10 if net == "waxman-100" else ZOO_BASE_TRUSTED


def results_table(static, dynamic) -> list[str]:
    """The markdown results table: per network and scheme, at the base point."""
    s, d = static_summary(static), dynamic_summary(dynamic)
    head = ("| network | scheme | security | refused | key at 0.7 | link bits per key bit (0.7) | served, no failure "
            "| served, 1% | served, 5% | served − smr xor, 5% |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net in dict.fromkeys(static["network"]):
        p, t = base_point(net)
        sub = s[(s["network"] == net) & (s["p_untrusted"] == p) & (s["n_trusted"] == t)].drop_duplicates("scheme")
        for scheme in _order(sub["scheme"]):
            r = sub[sub["scheme"] == scheme].iloc[0]
            dyn = d[(d["network"] == net) & (d["scheme"] == scheme)].set_index("relay_failure")
            cells = [_pm(dyn.loc[f, "served_share"], dyn.loc[f, "served_share_ci"], 3) if f in dyn.index else "-"
                     for f in FAILURES]
            last = dyn.loc[FAILURES[-1]] if FAILURES[-1] in dyn.index else None
            vs = "-" if last is None or scheme == SCHEMES[0][0] else _pm(last["served_vs_ref"], last["served_vs_ref_ci"], 1)
            lines.append(f"| {net} | {scheme} | {_pm(r['security'], r['security_ci'], 3)} | {r['refused']:.0%} | "
                         f"{_pm(r['key_share'], r['key_share_ci'], 2)} | "
                         f"{_pm(r['bits_per_key_bit'], r['bits_per_key_bit_ci'], 1)} | " + " | ".join(cells) +
                         f" | {vs} |")
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grid(static, metric: str, ylabel: str, stem: str, out: Path, rows=("p", "trusted"), prob: bool = True,
          title: str = "") -> list[Path]:
    plt = _pyplot()
    s = static_summary(static)
    nets = list(dict.fromkeys(static["network"]))
    fig, axes = plt.subplots(len(rows), len(nets), figsize=(4.6 * len(nets), 3.4 * len(rows)), squeeze=False)
    for i, sweep in enumerate(rows):
        for j, net in enumerate(nets):
            ax = axes[i][j]
            sub = s[(s["network"] == net) & (s["sweep"] == sweep)]
            x = "p_untrusted" if sweep == "p" else "n_trusted"
            for scheme in _order(sub["scheme"].unique()):
                if metric == "security" and scheme.startswith("smr-level"):
                    continue  # it routes to the level, not for security
                c = sub[sub["scheme"] == scheme].sort_values(x)
                kw = SCHEME_STYLES.get(scheme, {})
                ax.plot(c[x], c[metric], label=scheme, lw=1.6, ms=4.5, **kw)
                lo, hi = c[metric] - c[metric + "_ci"].fillna(0), c[metric] + c[metric + "_ci"].fillna(0)
                if prob:  # a probability or a share: the band stays in [0, 1]
                    lo, hi = lo.clip(0, 1), hi.clip(0, 1)
                else:  # a cost over the requests with a key: no band over fewer than 3 of them
                    few = c["n_keyed"] < 3
                    lo, hi = lo.clip(lower=0).where(~few, c[metric]), hi.where(~few, c[metric])
                ax.fill_between(c[x], lo, hi, color=kw.get("color", "k"), alpha=0.12, lw=0)
            if prob:
                ax.set_ylim(-0.02, 1.02)
            else:
                ax.set_ylim(bottom=0)
            fixed = f"{int(sub['n_trusted'].iloc[0])} trusted" if sweep == "p" and len(sub) else "p = 0.8"
            ax.set_title(f"{net} ({fixed})", fontsize=10)
            ax.set_xlabel("p of untrusted relays" if sweep == "p" else "trusted relays")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out, stem)


def plot_failures(dynamic, out: Path, sim: dict) -> list[Path]:
    plt = _pyplot()
    d = dynamic_summary(dynamic)
    nets = list(dict.fromkeys(dynamic["network"]))
    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 3.6), squeeze=False)
    for j, net in enumerate(nets):
        ax = axes[0][j]
        sub = d[d["network"] == net]
        for scheme in _order(sub["scheme"].unique()):
            c = sub[sub["scheme"] == scheme].sort_values("relay_failure")
            ci = c["served_share_ci"].fillna(0)
            yerr = [np.minimum(ci, c["served_share"]), np.minimum(ci, 1 - c["served_share"])]  # kept in [0, 1]
            ax.errorbar(100 * c["relay_failure"], c["served_share"], yerr=yerr, label=scheme,
                        lw=1.6, ms=4.5, capsize=3, **SCHEME_STYLES.get(scheme, {}))
        ax.set_title(net, fontsize=10)
        ax.set_xlabel("relay failure probability (%)")
        ax.set_ylabel("share of requests served")
        ax.set_xticks([100 * f for f in FAILURES])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, ncol=2)
    n = int(dynamic["replication"].nunique())
    fig.suptitle(f"keys served under relay failures: {sim['rate']:g} requests/s for {sim['duration']:g} s, "
                 f"{sim['key_bits']}-bit keys at level {sim['epsilon']}; {n} replications, 95% CI", fontsize=11)
    return save_figure(fig, out, "threshold_failures")


def plot_threshold(static, dynamic, out: Path, sim: dict) -> list[Path]:
    n = int(static.groupby(["network", "sweep", "p_untrusted", "n_trusted", "scheme"]).size().min())
    files = _grid(static, "security", "exact security", "threshold_security", out,
                  title=f"security of the route's key under each sharing ({n} requests per point; bands: 95% CI)")
    files += _grid(static, "key_share", f"share with a key at {COST_EPSILON}", "threshold_cost_share", out,
                   rows=("trusted",), title=f"requests that get a key at level {COST_EPSILON}")
    files += _grid(static, "bits_per_key_bit", "link bits per key bit", "threshold_cost", out, rows=("trusted",),
                   prob=False, title=f"link bits consumed per key bit at level {COST_EPSILON} (requests with a key; "
                                     "no band over fewer than 3)")
    return files + plot_failures(dynamic, out, sim)


def write_threshold_report(static, dynamic, out: Path, *, header: str, sim: dict) -> Path:
    lines = [
        "# Threshold sharing against XOR (issue 40)",
        "",
        header,
        "",
        "Schemes: SMR's route with XOR and the paper's reconstruction (`smr xor`, the reference), the same route "
        "with one XOR key of every piece (`smr xor-all`), the same route with each segment key shared k-of-m, "
        "k = m - T (`smr T=1`, `smr T=2`), `smr-exact` with its segment nodes chosen for the sharing (`smr-exact T=1`, "
        "`smr-exact T=2`), `smr-level T=1` (the fewest hops that meet the level under 2-of-... sharing: level 0.7 "
        "in the static columns, its security only just above it; the request's level in the simulator), and the "
        "baselines `disjoint` and `msp` with XOR and the paper's "
        "reconstruction. Security: the route's exact security under its sharing (0 when blocked or refused: a "
        "segment of m <= T paths). Key at 0.7: the share of requests whose route delivers a key at level 0.7; "
        "link bits per key bit: consumed bits / key bits over those requests. Served: the simulator's share of "
        f"requests served ({sim['rate']:g} requests/s for {sim['duration']:g} s, {sim['key_bits']}-bit keys at "
        f"level {sim['epsilon']}, p = 0.8) with each relay failing with the given probability, failures drawn from "
        "each request's seed (the same draws for every scheme); the last column is the paired difference of served "
        "requests against `smr xor` on the same traces. Means ± 95% half-widths.",
        "",
        "At the base point (p = 0.8; 10 trusted relays on the Waxman networks, "
        f"{ZOO_BASE_TRUSTED} on the Zoo networks):",
        "",
        *results_table(static, dynamic),
        "",
        "Figures: `threshold_security.png` (security against p and the trusted relays), `threshold_cost_share.png` "
        "and `threshold_cost.png` (keys at 0.7 and their cost against the trusted relays), "
        "`threshold_failures.png` (served against the failure probability). Rows: `static.parquet`, "
        "`dynamic.parquet`; summaries: `static_summary.csv`, `dynamic_summary.csv`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    static_summary(static).to_csv(out / "static_summary.csv", index=False)
    dynamic_summary(dynamic).to_csv(out / "dynamic_summary.csv", index=False)
    return path
