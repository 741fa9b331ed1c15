"""Figures from saved rows (compute -> file -> figure): the paper's Fig. 5/6
layout, means with 95% confidence bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Colours per algorithm, stable across figures.
COLOURS = {"smr": "#d62728", "smr-exact": "#9467bd", "msp": "#1f77b4", "disjoint": "#2ca02c", "single": "#7f7f7f",
           "smr-level": "#ff7f0e"}
X_LABEL = {"p_untrusted": "security probability p of untrusted relays", "n_trusted": "number of trusted relays"}
EPS_STYLES = {0.5: ("-", "o"), 0.7: ("--", "s"), 0.9: (":", "^")}


def summarise(df, x: str, metrics: list[str]):
    """Mean and 95% CI half-width of ``metrics`` per (x, algorithm).

    Returns a DataFrame with columns ``x, algorithm, n`` and, per metric,
    ``<metric>_mean`` and ``<metric>_ci`` (1.96 standard errors).
    """
    g = df.groupby([x, "algorithm"], sort=False)
    out = g.size().rename("n").to_frame()
    for m in metrics:
        vals = df[m].astype(float)
        agg = vals.groupby([df[x], df["algorithm"]], sort=False).agg(["mean", "std", "count"])
        out[f"{m}_mean"] = agg["mean"]
        out[f"{m}_ci"] = 1.959963984540054 * agg["std"].fillna(0.0) / np.sqrt(agg["count"])
    out = out.reset_index()
    return out.sort_values([x, "algorithm"], key=lambda s: s if s.name == x else s.map(_alg_rank)).reset_index(drop=True)


def _alg_rank(name: str) -> int:
    order = list(COLOURS)
    return order.index(name) if name in order else len(order)


def _band(ax, xs, mean, ci, colour, style="-", marker="o", label=None):
    ax.plot(xs, mean, style, color=colour, marker=marker, ms=3.5, lw=1.6, label=label)
    ax.fill_between(xs, mean - ci, mean + ci, color=colour, alpha=0.15, lw=0)


def plot_figure(df, figure: str, out_dir: str | Path, epsilons=(0.5, 0.7, 0.9)) -> list[Path]:
    """Draw one figure (``fig5``/``fig6``) of the rows ``df`` to PNG and SVG.

    Panel a: end-to-end security (solid, left axis) and key consumption rate
    (dashed, right axis) against the swept parameter. Panel b: key length at
    each epsilon (kb). Lines are means, bands 95% confidence intervals.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .spec import eps_column

    sub = df[df["figure"] == figure]
    x = "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"
    cols = ["security", "key_consumption_rate"] + [eps_column(e) for e in epsilons if eps_column(e) in sub]
    s = summarise(sub, x, cols)
    algs = sorted(s["algorithm"].unique(), key=_alg_rank)
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    ax_r = ax_a.twinx()
    for a in algs:
        r = s[s["algorithm"] == a]
        c = COLOURS.get(a, "black")
        _band(ax_a, r[x], r["security_mean"], r["security_ci"], c, "-", "o", label=f"{a} security")
        _band(ax_r, r[x], r["key_consumption_rate_mean"], r["key_consumption_rate_ci"], c, "--", "x", label=f"{a} consumption")
        for e in epsilons:
            col = eps_column(e)
            if col not in sub:
                continue
            style, marker = EPS_STYLES.get(e, ("-.", "d"))
            _band(ax_b, r[x], r[f"{col}_mean"] / 1000.0, r[f"{col}_ci"] / 1000.0, c, style, marker, label=f"{a}, \u03b5={e:g}")
    n = int(s["n"].min())
    ax_a.set_xlabel(X_LABEL[x])
    ax_a.set_ylabel("end-to-end security probability (solid)")
    ax_r.set_ylabel("key consumption rate (dashed)")
    ax_a.set_title(f"({figure[-1]}a) security and key consumption, {n} trials per point", fontsize=10)
    h1, l1 = ax_a.get_legend_handles_labels()
    h2, l2 = ax_r.get_legend_handles_labels()
    ax_a.legend(h1 + h2, l1 + l2, fontsize=7, ncol=2, loc="best", framealpha=0.85)
    ax_b.set_xlabel(X_LABEL[x])
    ax_b.set_ylabel("key length at \u03b5 (kb)")
    ax_b.set_title(f"({figure[-1]}b) length of the global key", fontsize=10)
    ax_b.legend(fontsize=6.5, ncol=len(algs), loc="best", framealpha=0.85)
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, figure)


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir`` (SVG
    without a date and with ids salted by ``stem``, not at random, so reruns
    give identical files) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        with plt.rc_context({"svg.hashsalt": f"qkdseg-{stem}"}):
            fig.savefig(p, metadata={"Date": None} if ext == "svg" else None)
        paths.append(p)
    plt.close(fig)
    return paths
