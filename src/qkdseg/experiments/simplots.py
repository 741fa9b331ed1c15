"""The figures of ``qkdseg simulate`` (:mod:`.simulation` writes them).

Every figure states what produced it (network, offered load, epsilon, key
size, run length) in its title; algorithms keep one colour, line style and
marker (:func:`~qkdseg.experiments.figures.style`) in every figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _alg_rank, save_figure, style, summarise

#: Load-sweep panels: column, axis label, scale.
LOAD_PANELS = (("blocking", "blocking ratio (blocked / requests)", 1.0),
               ("throughput_bps", "served key throughput (kb/s)", 1e-3),
               ("key_utilisation", "key utilisation (link bits consumed / generated)", 1.0),
               ("mean_security", "mean security of served keys", 1.0))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def run_context(network: str, epsilon: float, key_bits: int, duration: float, *, rate: float | None = None) -> str:
    """One line naming what a figure of a run shows: network, load, epsilon, key size, run length."""
    load = f", {rate:g} requests/s" if rate is not None else ""
    return f"network {network}{load}, ε = {epsilon:g}, {int(key_bits):,}-bit keys, {duration:g} s runs"


def smoothing_window(intervals: int) -> int:
    """Intervals per moving-average window of ``timeseries.png``: about a twentieth of the run, at least 1."""
    return max(1, int(round(intervals / 20)))


def plot_timeseries(ts, out_dir: str | Path, *, context: str = "", window: int | None = None) -> list[Path]:
    """Served key throughput (kb/s) and the blocked share of finished requests over time, as centred moving
    averages over ``window`` intervals (default :func:`smoothing_window`): sums of served bits, blocked and
    finished requests over the window, divided (not a mean of per-interval ratios)."""
    plt = _pyplot()
    fig, (ax_t, ax_b) = plt.subplots(2, 1, figsize=(10, 6.8), dpi=110, sharex=True, layout="constrained")
    width = float((ts["t_end"] - ts["t_start"]).max()) if len(ts) else 0.0
    n_int = int(ts.groupby("algorithm").size().max()) if len(ts) else 0
    w = window or smoothing_window(n_int)
    for alg in sorted(ts["algorithm"].unique(), key=_alg_rank):
        d = ts[ts["algorithm"] == alg]
        roll = lambda col: d[col].astype(float).rolling(w, center=True, min_periods=1).sum()  # noqa: E731
        mid = (d["t_start"] + d["t_end"]) / 2
        kw = style(alg, ms=0, lw=1.5)
        span = (d["t_end"] - d["t_start"]).rolling(w, center=True, min_periods=1).sum()
        ax_t.plot(mid, roll("served_key_bits") / span / 1000.0, **kw)
        done = roll("served") + roll("blocked")
        ax_b.plot(mid, roll("blocked").where(done > 0) / done.where(done > 0), **kw)
    ax_t.set_ylabel("served key throughput (kb/s)")
    ax_b.set_ylabel("blocked / finished requests")
    ax_b.set_xlabel("time (s)")
    for ax in (ax_t, ax_b):
        ax.grid(alpha=0.3)
    _legend_below(fig, [ax_t], ts["algorithm"].nunique())
    fig.suptitle((f"{context}\n" if context else "") + f"moving averages over {w} interval(s) of {width:g} s "
                 f"({w * width:g} s window)", fontsize=10)
    return save_figure(fig, out_dir, "timeseries")


def plot_pool_levels(levels, capacity: np.ndarray, out_dir: str | Path, *, context: str = "") -> list[Path]:
    """One heat map per algorithm: links (sorted by their mean level under the first algorithm) by time."""
    plt = _pyplot()
    algs = sorted(levels["algorithm"].unique(), key=_alg_rank)
    fig, axes = plt.subplots(len(algs), 1, figsize=(10, 2.3 * len(algs) + 1.0), dpi=110, squeeze=False, sharex=True)
    cap = np.maximum(np.asarray(capacity, dtype=np.float64), 1.0)
    m = cap.size
    order = None
    im = None
    for ax, alg in zip(axes[:, 0], algs):
        d = levels[levels["algorithm"] == alg]
        times = np.unique(d["t"].to_numpy())
        mat = d["level_bits"].to_numpy(dtype=np.float64).reshape(times.size, m) / cap
        if order is None:
            order = np.argsort(mat.mean(axis=0), kind="stable")
        edges = np.concatenate([[0.0], times])
        # rasterized: one image in the SVG instead of one path per (link, time) cell (45 MB on the README's example)
        im = ax.pcolormesh(edges, np.arange(m + 1), mat[:, order].T, cmap="viridis", vmin=0.0, vmax=1.0, shading="flat",
                           rasterized=True)
        ax.set_ylabel(f"{alg}\nlinks")
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title((f"{context}\n" if context else "")
                         + "pool level / pool size of every link (links sorted by mean level)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), fraction=0.025, pad=0.01, label="level / pool")
    fig.set_layout_engine("constrained")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"pool_levels.{ext}"
        with plt.rc_context({"svg.hashsalt": "qkdseg-pool_levels"}):  # as save_figure: reruns give identical files
            fig.savefig(p, metadata={"Date": None} if ext == "svg" else None, dpi=150 if ext == "svg" else "figure")
        paths.append(p)
    plt.close(fig)
    return paths


def _curves(ax, s, col: str, scale: float, logx: bool) -> None:
    for alg in sorted(s["algorithm"].unique(), key=_alg_rank):
        r = s[s["algorithm"] == alg]
        kw = style(alg)
        mean, ci = r[f"{col}_mean"] * scale, r[f"{col}_ci"] * scale
        ax.plot(r["rate"], mean, **kw)
        ax.fill_between(r["rate"], mean - ci, mean + ci, color=kw["color"], alpha=0.13, lw=0)
    ax.set_xlabel("offered load (requests/s)")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)


def _legend_below(fig, axes, n_algs: int) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(n_algs, 7), fontsize=8.5, frameon=False,
               handlelength=3.2)


def plot_load(df, out_dir: str | Path, *, context: str = "", stem: str = "load") -> list[Path]:
    """Blocking ratio, served key throughput, key utilisation and mean security of served keys against
    offered load (means over replications, 95% CI bands)."""
    plt = _pyplot()
    panels = [p for p in LOAD_PANELS if p[0] in df]
    s = summarise(df, "rate", [c for c, _, _ in panels])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.1 * len(panels), 4.6), dpi=110, squeeze=False,
                             layout="constrained")
    axes = axes[0]
    logx = s["rate"].max() / max(s["rate"].min(), 1e-12) > 10
    for ax, (col, label, scale) in zip(axes, panels):
        _curves(ax, s, col, scale, logx)
        ax.set_ylabel(label)
    n = int(s["n"].min())
    _legend_below(fig, axes, s["algorithm"].nunique())
    fig.suptitle((f"{context}\n" if context else "") + f"{n} replication(s) per point; lines: means, bands: 95% CI",
                 fontsize=10)
    return save_figure(fig, out_dir, stem)


def plot_load_cost(df, out_dir: str | Path, *, context: str = "", stem: str = "load_cost") -> list[Path]:
    """Bits per served key and served keys against offered load (95% CIs)."""
    plt = _pyplot()
    s = summarise(df, "rate", ["mean_consumed_bits", "served"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=110, layout="constrained")
    logx = s["rate"].max() / max(s["rate"].min(), 1e-12) > 10
    for ax, (col, label, scale) in zip(axes, [("mean_consumed_bits", "consumed link bits per served key (kb)", 1e-3),
                                              ("served", "served keys per run", 1.0)]):
        _curves(ax, s, col, scale, logx)
        ax.set_ylabel(label)
    _legend_below(fig, axes, s["algorithm"].nunique())
    fig.suptitle((f"{context}\n" if context else "") + f"cost per key, {int(s['n'].min())} replication(s) per point; "
                 "bands: 95% CI", fontsize=10)
    return save_figure(fig, out_dir, stem)


__all__ = ["LOAD_PANELS", "plot_load", "plot_load_cost", "plot_pool_levels", "plot_timeseries", "run_context",
           "smoothing_window"]
