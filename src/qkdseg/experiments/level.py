"""The requested level at the least key (issue 23) beside the paper's figures.

:func:`run_level` routes the first ``trials`` trials of the paper's Fig. 5
points (100-node Waxman, 10 trusted relays, p = 0.50..0.95; the same seeds,
so the same topologies and pairs as ``results.parquet``) with ``smr-level``
at each level of :data:`LEVEL_EPSILONS`, and, for the decomposition of its
gain, ``disjoint-subset``: the fewest-hop subset of ``disjoint``'s own paths
whose exact security meets the level (:func:`cheapest_subset`; no segment
node). :func:`level_efficiency` puts both beside the full routes of
``results.parquet`` on the same trials: epsilon-key bits per consumed bit,
``sum(key bits) / sum(consumed bits)`` over the requests that get at least
one key at epsilon (the others are refused and consume nothing), the full
routes' keys being the ``paper`` reconstruction's, with a 95% interval (delta
method for a ratio of sums) and the served count. :func:`decomposition`
splits ``smr-level``'s saving against ``disjoint``'s full route into subset
selection and segmenting. :func:`write_level` writes ``level.parquet`` (or
``.csv``), ``fig_level.png`` / ``.svg`` and ``level.md``; the paper's own
files are left as they are.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..api import route_indices
from ..reconstruction import meets
from ..security import route_security
from .figures import _alg_rank, save_figure, style
from .spec import paper_spec, trial_seed
from .trials import TrialTopology, request_pair

#: Levels of the figure (columns ``key_bits_e50`` and ``key_bits_e90`` of the results).
LEVEL_EPSILONS = (0.5, 0.9)
#: Trials per point when ``reproduce`` is not told otherwise.
DEFAULT_LEVEL_TRIALS = 200
#: The full-route algorithms drawn beside it.
FULL_ROUTES = ("smr", "smr-exact", "disjoint")
#: The subset of ``disjoint``'s paths (rows of ``level.parquet`` beside ``smr-level``'s).
SUBSET = "disjoint-subset"
#: Columns of ``level.parquet``.
LEVEL_COLUMNS = ("figure", "algorithm", "p_untrusted", "n_trusted", "trial", "seed", "epsilon", "met", "consumed_bits",
                 "key_bits", "security", "segments")
#: Largest path count whose subsets are all tried (2**12 subsets); beyond it only the first 12 paths.
MAX_SUBSET_PATHS = 12


def cheapest_subset(p: np.ndarray, paths: list, epsilon: float) -> tuple[list, float] | None:
    """The subset of one segment's ``paths`` with the fewest hops whose exact security meets ``epsilon``
    (ties: the more secure, then the earlier in enumeration order), with that security; ``None`` when
    not even every path together meets it.

    >>> p = np.array([1.0, 0.5, 0.9, 1.0])
    >>> cheapest_subset(p, [[0, 1, 3], [0, 2, 3]], 0.9)
    ([[0, 2, 3]], 0.9)
    >>> cheapest_subset(p, [[0, 1, 3], [0, 2, 3]], 0.99) is None
    True
    """
    paths = list(paths)[:MAX_SUBSET_PATHS]
    hops = [len(q) - 1 for q in paths]
    subsets = [c for k in range(1, len(paths) + 1) for c in itertools.combinations(range(len(paths)), k)]
    subsets.sort(key=lambda c: sum(hops[i] for i in c))
    best = None
    for c in subsets:
        h = sum(hops[i] for i in c)
        if best is not None and h > best[0]:
            break
        sec = route_security(p, [[paths[i] for i in c]])[0]
        if meets(sec, epsilon) and (best is None or sec > best[1]):
            best = (h, sec, c)
    return None if best is None else ([paths[i] for i in best[2]], best[1])


def run_level(trials: int, seed: int = 0, epsilons=LEVEL_EPSILONS):
    """``smr-level`` and ``disjoint-subset`` on the Fig. 5 points, the first ``trials`` trials of master
    seed ``seed``."""
    import pandas as pd

    spec = paper_spec(trials=trials, seed=seed)
    fig5 = spec.figures[0]
    rows = []
    for t in range(trials):
        s_seed = trial_seed(seed, t)
        topo = TrialTopology(spec, s_seed)
        s, d = request_pair(s_seed, spec.nodes)
        for p, n_trusted in fig5.points:
            a = topo.arrays(p, n_trusted)
            base = {"figure": fig5.name, "p_untrusted": float(p), "n_trusted": int(n_trusted), "trial": t, "seed": s_seed}
            full = route_indices(a, s, d, "disjoint")
            paths = [list(q) for q in full.index_paths[0]] if not full.blocked else []
            for eps in epsilons:
                r = route_indices(a, s, d, "smr-level", epsilon=float(eps))
                met = not r.blocked and r.level["met"]
                rows.append({**base, "algorithm": "smr-level", "epsilon": float(eps), "met": bool(met),
                             "consumed_bits": int(r.consumed_bits) if met else 0,
                             "key_bits": int(r.block_bits) if met else 0, "security": float(r.security),
                             "segments": len(r.segments)})
                sub = cheapest_subset(a.p, paths, float(eps)) if paths else None
                hops = sum(len(q) - 1 for q in sub[0]) if sub else 0
                rows.append({**base, "algorithm": SUBSET, "epsilon": float(eps), "met": sub is not None,
                             "consumed_bits": hops * full.block_bits, "key_bits": full.block_bits if sub else 0,
                             "security": sub[1] if sub else float(full.security), "segments": 1})
    return pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))


def ratio_ci(key, used) -> tuple[float, float]:
    """``sum(key) / sum(used)`` over requests and its 95% half-width (delta method for a ratio of sums:
    ``1.96 * sqrt(sum((key - R used)^2) / (n (n - 1))) / mean(used)``; NaN for fewer than two requests).

    >>> r, h = ratio_ci([1.0, 2.0, 0.0], [10.0, 10.0, 0.0])
    >>> round(r, 4), round(h, 4)
    (0.15, 0.0849)
    """
    y, x = np.asarray(key, dtype=np.float64), np.asarray(used, dtype=np.float64)
    n, sx = y.size, x.sum()
    if sx <= 0:
        return float("nan"), float("nan")
    r = float(y.sum() / sx)
    if n < 2:
        return r, float("nan")
    return r, float(1.959963984540054 * np.sqrt(((y - r * x) ** 2).sum() / (n * (n - 1))) / (sx / n))


def level_efficiency(results, level):
    """Epsilon-key bits per consumed bit per (epsilon, p, algorithm), with its 95% half-width (``ci``), the
    served count and bits per key; full routes from ``results`` on the trials of ``level``."""
    import pandas as pd

    trials = set(level["trial"].unique())
    full = results[(results["figure"] == "fig5") & results["algorithm"].isin(FULL_ROUTES) & results["trial"].isin(trials)]
    rows = []
    for eps in sorted(level["epsilon"].unique()):
        col = f"key_bits_e{int(round(eps * 100))}"
        for p in sorted(level["p_untrusted"].unique()):
            parts = [(alg, full[(full["algorithm"] == alg) & (full["p_untrusted"] == p)], col) for alg in FULL_ROUTES]
            lv = level[(level["epsilon"] == eps) & (level["p_untrusted"] == p)]
            parts += [(alg, lv[lv["algorithm"] == alg], "key_bits") for alg in (SUBSET, "smr-level")]
            for alg, d, kcol in parts:
                key = d[kcol].to_numpy(dtype=np.float64)
                used = np.where(key > 0, d["consumed_bits"].to_numpy(dtype=np.float64), 0.0)
                r, h = ratio_ci(key, used)
                rows.append({"epsilon": float(eps), "p_untrusted": float(p), "algorithm": alg, "requests": len(d),
                             "served": int((key > 0).sum()), "key_bits_per_consumed_bit": r, "ci": h,
                             "consumed_bits_per_key_bit": 1.0 / r if r > 0 else float("nan")})
    return pd.DataFrame(rows)


def decomposition(results, level):
    """Per epsilon, over the requests that ``disjoint``'s full route, ``disjoint-subset`` and ``smr-level``
    all serve: the share of the full route's bits each saves, and where segmenting (a segment chain)
    makes ``smr-level`` cheaper than the subset, or serves a request the subset cannot."""
    import pandas as pd

    trials = set(level["trial"].unique())
    full = results[(results["figure"] == "fig5") & (results["algorithm"] == "disjoint") & results["trial"].isin(trials)]
    rows = []
    for eps in sorted(level["epsilon"].unique()):
        col = f"key_bits_e{int(round(eps * 100))}"
        f = full.set_index(["p_untrusted", "trial"])
        w = {alg: level[(level["epsilon"] == eps) & (level["algorithm"] == alg)].set_index(["p_untrusted", "trial"])
             for alg in (SUBSET, "smr-level")}
        lv, sb = w["smr-level"], w[SUBSET]
        both = (f[col] > 0) & sb["met"] & lv["met"]
        fb, sbb, lvb = f.loc[both, "consumed_bits"].sum(), sb.loc[both, "consumed_bits"].sum(), lv.loc[both, "consumed_bits"].sum()
        cheaper = lv.loc[both, "consumed_bits"] < sb.loc[both, "consumed_bits"]
        rows.append({"epsilon": float(eps), "requests": len(lv), "served_all": int(both.sum()),
                     "saved_subset": 1 - sbb / fb, "saved_level": 1 - lvb / fb,
                     "chain_cheaper": int(cheaper.sum()), "chain_cheaper_share": float(cheaper.mean()),
                     "chain_cheaper_segmented": int((cheaper & (lv.loc[both, "segments"] > 1)).sum()),
                     "level_only": int((lv["met"] & ~sb["met"]).sum()), "subset_only": int((sb["met"] & ~lv["met"]).sum()),
                     "served_level": int(lv["met"].sum()), "served_subset": int(sb["met"].sum()),
                     "served_disjoint": int((f[col] > 0).sum())})
    return pd.DataFrame(rows)


def plot_level(eff, out_dir: str | Path, stem: str = "fig_level") -> list[Path]:
    """Top: key bits at epsilon per consumed bit with 95% bands, one panel per epsilon; bottom: served
    requests out of those routed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epss = sorted(eff["epsilon"].unique())
    fig, axes = plt.subplots(2, len(epss), figsize=(5.6 * len(epss), 7.6), dpi=110, squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [2.2, 1]}, layout="constrained")
    algs = sorted(eff["algorithm"].unique(), key=_alg_rank)
    for j, eps in enumerate(epss):
        e = eff[eff["epsilon"] == eps]
        top, bottom = axes[0][j], axes[1][j]
        for alg in algs:
            r = e[e["algorithm"] == alg]
            kw = style(alg, label=_LABELS.get(alg, alg))
            top.plot(r["p_untrusted"], r["key_bits_per_consumed_bit"], **kw)
            top.fill_between(r["p_untrusted"], r["key_bits_per_consumed_bit"] - r["ci"],
                             r["key_bits_per_consumed_bit"] + r["ci"], color=kw["color"], alpha=0.13, lw=0)
            bottom.plot(r["p_untrusted"], r["served"], **kw)
        top.set_ylabel(f"key bits at ε = {eps:g} per consumed bit")
        top.set_title(f"ε = {eps:g}: key delivered per key consumed (95% CI)", fontsize=10)
        bottom.set_ylabel(f"requests served (of {int(e['requests'].max())})")
        bottom.set_xlabel("security probability p of untrusted relays")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], **style(a, label=_LABELS.get(a, a))) for a in algs]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8.5, frameon=False,
               handlelength=3.2)
    n = int(eff["requests"].min()) if len(eff) else 0
    fig.suptitle(f"Fig. 5 points (100-node Waxman, 10 trusted relays), {n} trials each: served requests only", fontsize=10)
    return save_figure(fig, out_dir, stem)


_LABELS = {SUBSET: "disjoint-subset (cheapest subset of disjoint's paths)"}


def _decomposition_lines(dec) -> list[str]:
    lines = ["## Where the saving comes from: subset selection against segmenting", "",
             "Over the requests that `disjoint`'s full route, `disjoint-subset` (the fewest-hop subset of `disjoint`'s "
             "own paths meeting the level, no segment node) and `smr-level` all serve: the share of the full route's "
             "consumed bits each saves; then on how many of them `smr-level` is cheaper than the subset (only a "
             "segment chain can make it so), and the requests only one of the two serves.", "",
             "| epsilon | requests | served by all three | disjoint-subset saves | smr-level saves | smr-level cheaper "
             "(segment chain) | served only by smr-level | served only by the subset |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in dec.iterrows():
        lines.append(f"| {r['epsilon']:g} | {int(r['requests'])} | {int(r['served_all'])} | "
                     f"{100 * r['saved_subset']:.1f}% | {100 * r['saved_level']:.1f}% | {int(r['chain_cheaper'])} "
                     f"({100 * r['chain_cheaper_share']:.1f}%) | {int(r['level_only'])} | {int(r['subset_only'])} |")
    return lines + [""]


def write_level(results, level, out_dir: str | Path, *, fmt: str = "parquet", command: str = "") -> dict:
    """``level.parquet`` (or ``.csv``), ``fig_level.png/svg`` and ``level.md``."""
    from .runner import write_results

    out = Path(out_dir)
    data = write_results(level, out, fmt=fmt, stem="level")
    eff = level_efficiency(results, level)
    figs = plot_level(eff, out)
    lines = ["# The requested level at the least key", "",
             f"`smr-level` (docs/algorithms.md) on the first {int(level['trial'].nunique())} trials of every Fig. 5 point "
             f"({command or 'qkdseg reproduce'}), beside the full routes of `results` on the same trials and "
             "`disjoint-subset`. Key bits at epsilon per consumed bit = sum of key bits / sum of consumed bits over the "
             "requests that get at least one key (the others are refused and consume nothing), with a 95% half-width "
             "(delta method for a ratio of sums); the full routes' keys are the `paper` reconstruction's, smr-level's "
             "and the subset's one key per request. Figure: `fig_level.png`.", "",
             "| epsilon | p | algorithm | served / requests | key bits per consumed bit | consumed bits per key bit |",
             "|---:|---:|---|---:|---:|---:|"]
    for _, r in eff.sort_values(["epsilon", "p_untrusted", "algorithm"], key=lambda s: s.map(_alg_rank)
                                if s.name == "algorithm" else s).iterrows():
        lines.append(f"| {r['epsilon']:g} | {r['p_untrusted']:.2f} | {r['algorithm']} | {int(r['served'])} / "
                     f"{int(r['requests'])} | {r['key_bits_per_consumed_bit']:.4f} ± {r['ci']:.4f} | "
                     f"{r['consumed_bits_per_key_bit']:.2f} |")
    lines += ["", *_decomposition_lines(decomposition(results, level))]
    report = out / "level.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"files": [str(data), *map(str, figs), str(report)], "efficiency": eff}


__all__ = ["DEFAULT_LEVEL_TRIALS", "LEVEL_EPSILONS", "cheapest_subset", "decomposition", "level_efficiency",
           "plot_level", "ratio_ci", "run_level", "write_level"]
