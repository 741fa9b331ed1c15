"""Figures from saved rows (compute -> file -> figure): the paper's Fig. 5/6
layout, means with 95% confidence bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Colours per algorithm, stable across figures.
COLOURS = {"smr": "#d62728", "smr-exact": "#9467bd", "msp": "#1f77b4", "disjoint": "#2ca02c", "single": "#7f7f7f",
           "smr-level": "#ff7f0e", "least-loaded": "#8c564b"}
#: Line style and marker per algorithm: with the colour, curves that lie on each other stay told apart.
LINES = {"smr": ("-", "o"), "smr-exact": ("--", "s"), "msp": ("-.", "^"), "disjoint": (":", "D"),
         "single": ((0, (6, 2, 1, 2, 1, 2)), "v"), "smr-level": ("-", "P"), "least-loaded": ((0, (3, 1.5)), "X")}


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
    from matplotlib.lines import Line2D

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 5.4), dpi=110)
    ax_r = ax_a.twinx()
    for a in algs:
        r = s[s["algorithm"] == a]
        c = COLOURS.get(a, "black")
        _band(ax_a, r[x], r["security_mean"], r["security_ci"], c, "-", "o")
        # consumption: dashed, hollow squares, thinner, so it never reads as a security curve of the same colour
        ax_r.plot(r[x], r["key_consumption_rate_mean"], "--", color=c, marker="s", ms=4, mfc="white", lw=1.1)
        ax_r.fill_between(r[x], r["key_consumption_rate_mean"] - r["key_consumption_rate_ci"],
                          r["key_consumption_rate_mean"] + r["key_consumption_rate_ci"], color=c, alpha=0.08, lw=0)
        for e in epsilons:
            col = eps_column(e)
            if col not in sub:
                continue
            style, marker = EPS_STYLES.get(e, ("-.", "d"))
            _band(ax_b, r[x], r[f"{col}_mean"] / 1000.0, r[f"{col}_ci"] / 1000.0, c, style, marker)
    n = int(s["n"].min())
    ax_a.set_xlabel(X_LABEL[x])
    ax_a.set_ylabel("end-to-end security probability (solid, ●)")
    ax_r.set_ylabel("key consumption rate (dashed, □)", color="#444444", style="italic")
    ax_r.tick_params(axis="y", colors="#444444")
    ax_r.spines["right"].set_linestyle("--")
    ax_a.set_title(f"({figure[-1]}a) security and key consumption, {n} trials per point", fontsize=10)
    ax_b.set_xlabel(X_LABEL[x])
    ax_b.set_ylabel("key length at ε (kb)")
    ax_b.set_title(f"({figure[-1]}b) length of the global key", fontsize=10)
    # legends below the axes, never on a curve or a tick: colour = algorithm, line style = quantity (a) or epsilon (b)
    alg_handles = [Line2D([], [], color=COLOURS.get(a, "black"), lw=2.5, label=a) for a in algs]
    style_a = [Line2D([], [], color="black", ls="-", marker="o", ms=4, lw=1.6, label="security (left axis)"),
               Line2D([], [], color="black", ls="--", marker="s", ms=4, mfc="white", lw=1.1,
                      label="consumption (right axis)")]
    style_b = [Line2D([], [], color="black", ls=EPS_STYLES.get(e, ("-.", "d"))[0], marker=EPS_STYLES.get(e, ("-.", "d"))[1],
                      ms=3.5, lw=1.6, label=f"ε = {e:g}") for e in epsilons if eps_column(e) in sub]
    for ax, extra in ((ax_a, style_a), (ax_b, style_b)):
        ax.add_artist(ax.legend(handles=alg_handles, fontsize=7.5, ncol=len(alg_handles), loc="upper center",
                                bbox_to_anchor=(0.5, -0.12), frameon=False, handlelength=1.5, columnspacing=1.2))
        ax.legend(handles=extra, fontsize=7.5, ncol=len(extra), loc="upper center", bbox_to_anchor=(0.5, -0.19),
                  frameon=False, handlelength=2.8)
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
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
