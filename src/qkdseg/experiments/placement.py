"""Placement figures and the placement study (``qkdseg place --curve``,
``qkdseg study --placement``; docs/placement.md).

The study runs every placement method on seeded 100-node Waxman networks
(no trusted relay to start with, untrusted relays at ``p``) and on the
Topology Zoo networks with at least ``min_nodes`` nodes, and tabulates the
objective at each budget per method, the gain of greedy over the best
centrality heuristic, and greedy's gap to the exact optimum where the
exact optimum is feasible. Seeds: Waxman network ``i`` is
``waxman(100, trusted=0, p=p, seed=trial_seed(seed, i))``; a Zoo network
``k`` (in name order) keeps no trusted relay; demand sampling and
``random`` use ``trial_seed(seed, k)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from .runner import process_pool
from .spec import trial_seed

#: Line style per placement method.
METHOD_STYLES = {
    "greedy": ("#d62728", "-", "o"),
    "swap": ("#9467bd", "--", "s"),
    "exact": ("#000000", ":", "*"),
    "random": ("#7f7f7f", "-", "x"),
    "degree": ("#1f77b4", "-", "^"),
    "betweenness": ("#2ca02c", "-", "v"),
    "closeness": ("#ff7f0e", "-", "D"),
    "k-center": ("#8c564b", "-", "P"),
}
#: Centrality heuristics (greedy's gain is measured against the best of these).
HEURISTICS = ("degree", "betweenness", "closeness", "k-center")


def parse_range(text: str) -> list[int]:
    """``"0..30"`` -> ``[0, 1, ..., 30]`` (also ``"5"`` -> ``[0..5]``)."""
    lo_text, sep, hi_text = text.partition("..")
    try:
        lo, hi = (int(lo_text), int(hi_text)) if sep else (0, int(lo_text))
    except ValueError:
        raise InvalidRequest(f"--curve {text!r}: use A..B with whole numbers, e.g. 0..30") from None
    if lo < 0 or hi < lo:
        raise InvalidRequest(f"--curve {text!r}: need 0 <= A <= B")
    return list(range(lo, hi + 1))


def plot_curve(curve: dict[str, list], ks: list[int], out_dir: str | Path, *, title: str, ylabel: str,
               stem: str = "curve") -> list[Path]:
    """Objective against budget, one line per method, to ``stem.png``/``.svg``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .figures import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for m, vals in curve.items():
        colour, style, marker = METHOD_STYLES.get(m, ("#17becf", "-", "."))
        xs = [k for k, v in zip(ks, vals) if v is not None]
        ys = [v for v in vals if v is not None]
        ax.plot(xs, ys, style, color=colour, marker=marker, ms=3.5, lw=1.5, label=m)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trusted relays added (budget k)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, stem)


# -- the study -------------------------------------------------------------------------
def _networks(waxman_seeds: int, seed: int, zoo: bool, min_nodes: int) -> list[tuple[str, Any]]:
    """``(name, (kind, arg))`` of every network of the study."""
    nets = []
    for i in range(waxman_seeds):
        s = trial_seed(seed, i)
        nets.append((f"waxman-100/seed={s}", ("waxman", s)))
    if zoo:
        from .study import study_networks

        for key in study_networks("zoo", min_nodes):
            nets.append((key, ("zoo", key)))
    return nets


def _build(make: tuple, p: float):
    from ..topology import load_topohub, waxman

    kind, arg = make
    if kind == "waxman":
        return waxman(100, trusted=0, p=p, seed=arg)
    return load_topohub(arg, trusted=0, p=p, seed=0)


def study_unit(name: str, make: tuple, index: int, opts: dict) -> list[dict[str, Any]]:
    """Rows of one network: every method at every budget (picklable unit)."""
    from ..placement import place

    net = _build(make, opts["p"])
    seed = trial_seed(opts["seed"], index)
    ks = [k for k in opts["budgets"] if k <= net.n_nodes - len(net.trusted_nodes)]
    demands = opts["waxman_demands"] if name.startswith("waxman") else opts["zoo_demands"]
    rows = []
    base = {"network": name, "nodes": net.n_nodes, "links": net.n_links, "p": opts["p"], "seed": seed, "demands": demands}
    kw = {"objective": opts["objective"], "demands": demands, "seed": seed}
    for m in ("greedy", *opts["baselines"]):
        if not ks:
            break
        r = place(net, max(ks), method=m, **kw)
        full = [r.initial, *r.trace]
        for k in ks:
            rows.append({**base, "method": m, "k": k, "value": full[k], "nodes_chosen": json.dumps(list(r.nodes[:k]))})
    for k in ks:
        if "swap" in opts["methods"] and k <= opts["swap_max_k"]:
            r = place(net, k, method="swap", max_passes=opts["swap_passes"], **kw)
            rows.append({**base, "method": "swap", "k": k, "value": r.value, "nodes_chosen": json.dumps(list(r.nodes))})
    for k in opts["exact_budgets"]:
        import math

        n_cand = net.n_nodes - len(net.trusted_nodes)
        if k <= n_cand and math.comb(n_cand, k) <= opts["max_placements"]:
            r = place(net, k, method="exact", max_placements=opts["max_placements"], **kw)
            g = place(net, k, method="greedy", **kw)
            rows.append({**base, "method": "exact", "k": k, "value": r.value, "nodes_chosen": json.dumps(list(r.nodes))})
            rows.append({**base, "method": "greedy@exact", "k": k, "value": g.value, "nodes_chosen": json.dumps(list(g.nodes))})
    return rows


def run_placement_study(
    *,
    waxman_seeds: int = 20,
    zoo: bool = True,
    min_nodes: int = 20,
    budgets=(5, 10, 20),
    seed: int = 0,
    p: float = 0.8,
    objective: str = "security",
    waxman_demands: str = "sample:500",
    zoo_demands: str = "sample:500",
    methods=("greedy", "swap", "random", "degree", "betweenness", "closeness", "k-center"),
    swap_max_k: int = 10,
    swap_passes: int = 1,
    exact_budgets=(2, 3),
    max_placements: int = 4_000,
    workers: int | None = None,
    progress: bool = True,
):
    """Rows (DataFrame) of every network, method and budget."""
    import os

    import pandas as pd
    from tqdm.auto import tqdm

    if not 0 <= p <= 1:
        raise InvalidRequest(f"p={p} is outside [0, 1]")
    nets = _networks(waxman_seeds, seed, zoo, min_nodes)
    if not nets:
        raise InvalidRequest("placement study: no network (no Waxman seed and no Zoo network)")
    opts = {
        "seed": seed, "p": p, "objective": objective, "budgets": sorted(set(budgets)), "methods": tuple(methods),
        "baselines": tuple(m for m in methods if m not in ("greedy", "swap", "exact")),
        "swap_max_k": swap_max_k, "swap_passes": swap_passes, "exact_budgets": tuple(exact_budgets),
        "max_placements": max_placements, "waxman_demands": waxman_demands, "zoo_demands": zoo_demands,
    }
    workers = workers or os.cpu_count() or 1
    rows: list[dict] = []
    with tqdm(total=len(nets), desc="placement study", unit="network", disable=not progress) as bar:
        if workers == 1:
            for i, (name, make) in enumerate(nets):
                rows += study_unit(name, make, i, opts)
                bar.update(1)
        else:
            with process_pool(workers) as pool:
                futs = [pool.submit(study_unit, name, make, i, opts) for i, (name, make) in enumerate(nets)]
                for fut in futs:
                    rows += fut.result()
                    bar.update(1)
    return pd.DataFrame(rows)


def placement_table(df) -> dict[str, Any]:
    """Mean objective per (family, method, k); greedy's gain over the best
    heuristic per network; greedy's gap to the exact optimum."""
    df = df.copy()
    df["family"] = np.where(df["network"].str.startswith("waxman"), "waxman-100", "topology-zoo")
    main = df[~df["method"].isin(["exact", "greedy@exact"])]
    table = main.pivot_table(index=["family", "k"], columns="method", values="value", aggfunc="mean")
    w = main.pivot_table(index=["family", "network", "k"], columns="method", values="value", aggfunc="first")
    heur = [h for h in HEURISTICS if h in w]
    gains = None
    if "greedy" in w and heur:
        best_h = w[heur].max(axis=1)
        gains = (w["greedy"] - best_h).groupby(level=["family", "k"]).agg(["mean", "min", "max"])
        wins = (w["greedy"] >= best_h - 1e-12).groupby(level=["family", "k"]).mean()
        gains["greedy_at_least_best_heuristic"] = wins
    gap = None
    ex = df[df["method"].isin(["exact", "greedy@exact"])]
    if not ex.empty:
        e = ex.pivot_table(index=["family", "network", "k"], columns="method", values="value", aggfunc="first")
        diff = e["exact"] - e["greedy@exact"]
        gap = diff.groupby(level=["family", "k"]).agg(["mean", "max", "count"])
        gap["optimal_share"] = (diff <= 1e-12).groupby(level=["family", "k"]).mean()
    return {"table": table, "gains": gains, "gap": gap}


def write_placement_report(df, out_dir: str | Path, header: str = "") -> Path:
    """``placement.md``: the tables of :func:`placement_table`."""
    t = placement_table(df)
    lines = ["# qkdseg study --placement: where to add trusted relays", ""]
    if header:
        lines += [header, ""]
    table = t["table"]
    methods = list(table.columns)
    lines += ["## Mean objective per method and budget", "",
              "| family | k | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for (fam, k), r in table.iterrows():
        lines.append(f"| {fam} | {k} | " + " | ".join("-" if np.isnan(r[m]) else f"{r[m]:.4f}" for m in methods) + " |")
    if t["gains"] is not None:
        g = t["gains"]
        lines += ["", "## Greedy minus the best centrality heuristic (per network, then averaged)", "",
                  "| family | k | mean | min | max | share of networks where greedy >= best heuristic |", "|---|---|---|---|---|---|"]
        for (fam, k), r in g.iterrows():
            lines.append(f"| {fam} | {k} | {r['mean']:+.4f} | {r['min']:+.4f} | {r['max']:+.4f} | {100 * r['greedy_at_least_best_heuristic']:.0f}% |")
    if t["gap"] is not None:
        g = t["gap"]
        lines += ["", "## Exact optimum minus greedy, where enumeration is feasible", "",
                  "| family | k | mean gap | largest gap | networks | greedy optimal |", "|---|---|---|---|---|---|"]
        for (fam, k), r in g.iterrows():
            lines.append(f"| {fam} | {k} | {r['mean']:.5f} | {r['max']:.5f} | {int(r['count'])} | {100 * r['optimal_share']:.0f}% |")
    path = Path(out_dir) / "placement.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_placement_study(df, out_dir: str | Path) -> list[Path]:
    """Mean objective against budget per method, one panel per family."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    from .figures import save_figure

    t = placement_table(df)["table"]
    fams = list(dict.fromkeys(t.index.get_level_values("family")))
    fig, axes = plt.subplots(1, len(fams), figsize=(6.5 * len(fams), 4.5), dpi=110, squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sub = t.xs(fam, level="family")
        for m in sub.columns:
            colour, style, marker = METHOD_STYLES.get(m, ("#17becf", "-", "."))
            s = sub[m].dropna()
            ax.plot(s.index, s.values, style, color=colour, marker=marker, ms=4, lw=1.5, label=m)
        ax.set_title(fam, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trusted relays added (budget k)")
        ax.set_ylabel("mean security over the demands")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "placement")


__all__ = ["parse_range", "placement_table", "plot_curve", "plot_placement_study", "run_placement_study",
           "write_placement_report"]
