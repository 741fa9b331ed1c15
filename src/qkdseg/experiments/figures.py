"""Figures from saved rows (compute -> file -> figure): the paper's Fig. 5/6
layout, means with 95% confidence bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Colours per algorithm, stable across figures.
COLOURS = {"smr": "#d62728", "smr-exact": "#9467bd", "msp": "#1f77b4", "disjoint": "#2ca02c", "single": "#7f7f7f",
           "disjoint-subset": "#17becf", "smr-level": "#ff7f0e", "least-loaded": "#8c564b"}
#: Line style and marker per algorithm: with the colour, curves that lie on each other stay told apart.
LINES = {"smr": ("-", "o"), "smr-exact": ("--", "s"), "msp": ("-.", "^"), "disjoint": (":", "D"),
         "single": ((0, (6, 2, 1, 2, 1, 2)), "v"), "disjoint-subset": ((0, (5, 2)), "h"), "smr-level": ("-", "P"),
         "least-loaded": ((0, (3, 1.5)), "X")}


def style(alg: str, **extra) -> dict:
    """Matplotlib keywords of an algorithm's curves: its colour, line style and marker (hollow for the dotted
    and dashed ones, so that a marker under another stays visible)."""
    ls, marker = LINES.get(alg, ("-", "o"))
    kw = {"color": COLOURS.get(alg, "black"), "ls": ls, "marker": marker, "ms": 4.5, "lw": 1.6, "label": alg}
    if ls != "-":
        kw["mfc"] = "white"
    kw.update(extra)
    return kw
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


def _band(ax, xs, mean, ci, **kw):
    ax.plot(xs, mean, **kw)
    ax.fill_between(xs, mean - ci, mean + ci, color=kw.get("color", "black"), alpha=0.13, lw=0)


def paired_difference(sub, x: str, col: str, a: str, b: str):
    """Per value of ``x``: mean of ``a - b`` over the trials both hold (paired), its 95% Student-t half-width,
    as a DataFrame ``x, mean, ci, n``."""
    import pandas as pd

    from .claims import paired

    w = sub[sub["algorithm"].isin([a, b])].pivot_table(index=[x, "trial"], columns="algorithm", values=col,
                                                       aggfunc="first")
    rows = []
    if {a, b} <= set(w.columns):
        for v, g in (w[a] - w[b]).groupby(level=x):
            m, h, n = paired(g.to_numpy())
            rows.append({x: v, "mean": m, "ci": h, "n": n})
    return pd.DataFrame(rows, columns=[x, "mean", "ci", "n"])


def plot_figure(df, figure: str, out_dir: str | Path, epsilons=(0.5, 0.7, 0.9)) -> list[Path]:
    """Draw one figure (``fig5``/``fig6``) of the rows ``df`` to PNG and SVG, as small multiples.

    Top row: (a) end-to-end security, (a) key consumption rate, and (c) the
    paired difference ``disjoint - smr`` in key length at each epsilon.
    Bottom row (b): key length at each epsilon, one panel per epsilon. Each
    panel has at most five curves; each algorithm keeps one colour, line
    style and marker (:func:`style`). Lines are means, bands 95% confidence
    intervals (paired for (c)).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .spec import eps_column

    sub = df[df["figure"] == figure]
    x = "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"
    eps = [e for e in epsilons if eps_column(e) in sub]
    cols = ["security", "key_consumption_rate"] + [eps_column(e) for e in eps]
    s = summarise(sub, x, cols)
    algs = sorted(s["algorithm"].unique(), key=_alg_rank)
    n = int(s["n"].min())
    k = figure[-1]
    ncols = max(3, len(eps))
    fig, axes = plt.subplots(2, ncols, figsize=(4.6 * ncols, 8.6), dpi=110, squeeze=False, layout="constrained")
    top = [("security", f"({k}a) end-to-end security", "end-to-end security probability", 1.0),
           ("key_consumption_rate", f"({k}a) key consumption rate", "key consumption rate (share of all pools)", 1.0)]
    for ax, (col, title, ylabel, scale) in zip(axes[0], top):
        for a in algs:
            r = s[s["algorithm"] == a]
            _band(ax, r[x], r[f"{col}_mean"] * scale, r[f"{col}_ci"] * scale, **style(a))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    ax = axes[0][2]
    if {"smr", "disjoint"} <= set(algs) and eps:
        for e in eps:
            d = paired_difference(sub, x, eps_column(e), "disjoint", "smr")
            ls, marker = EPS_STYLES.get(e, ("-.", "d"))
            _band(ax, d[x], d["mean"] / 1000.0, d["ci"] / 1000.0, color=COLOURS["disjoint"], ls=ls, marker=marker,
                  ms=4.5, lw=1.6, mfc="white", label=f"ε = {e:g}")
        ax.axhline(0.0, color="black", lw=0.9)
        ax.set_title(f"({k}c) disjoint - smr, key length, paired by trial", fontsize=10)
        ax.set_ylabel("difference in key length (kb); > 0: disjoint longer")
        ax.legend(fontsize=8, loc="best", title="level", title_fontsize=8)
    else:
        ax.set_axis_off()
    for ax, e in zip(axes[1], eps):
        col = eps_column(e)
        for a in algs:
            r = s[s["algorithm"] == a]
            _band(ax, r[x], r[f"{col}_mean"] / 1000.0, r[f"{col}_ci"] / 1000.0, **style(a))
        ax.set_title(f"({k}b) length of the global key at ε = {e:g}", fontsize=10)
        ax.set_ylabel(f"key length at ε = {e:g} (kb)")
    for ax in axes[1][len(eps):]:
        ax.set_axis_off()
    for ax in axes.flat:
        if ax.axison:
            ax.set_xlabel(X_LABEL[x])
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], **style(a)) for a in algs]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False,
               handlelength=3.2)
    fixed = f"p = {sub['p_untrusted'].iloc[0]:.2f}" if x == "n_trusted" else f"{int(sub['n_trusted'].iloc[0])} trusted relays"
    fig.suptitle(f"{figure}: {int(sub['nodes'].iloc[0]) if 'nodes' in sub else ''}-node Waxman networks, {fixed}, "
                 f"{n} trials per point; lines: means, bands: 95% CI", fontsize=11)
    return save_figure(fig, out_dir, figure)


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir`` (SVG
    without a date and with ids salted by ``stem``, not at random, so reruns
    give identical files) and close it."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:  # a figure laid out by its own engine (constrained) keeps it
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
