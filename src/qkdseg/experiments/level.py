"""The requested level at the least key (issue 23) beside the paper's figures.

:func:`run_level` routes the first ``trials`` trials of the paper's Fig. 5
points (100-node Waxman, 10 trusted relays, p = 0.50..0.95; the same seeds,
so the same topologies and pairs as ``results.parquet``) with ``smr-level``
at each level of :data:`LEVEL_EPSILONS`. :func:`level_efficiency` puts it
beside the full routes of ``results.parquet`` on the same trials: epsilon-key
bits per consumed bit, ``sum(key bits) / sum(consumed bits)`` over the
requests that get at least one key at epsilon (the others are refused and
consume nothing), the full routes' keys being the ``paper`` reconstruction's.
:func:`write_level` writes ``level.parquet`` (or ``.csv``), ``fig_level.png``
/ ``.svg`` and ``level.md``; the paper's own files are left as they are.
"""

from __future__ import annotations

from pathlib import Path

from ..api import route_indices
from .figures import COLOURS, _alg_rank, save_figure
from .spec import paper_spec, trial_seed
from .trials import TrialTopology, request_pair

#: Levels of the figure (columns ``key_bits_e50`` and ``key_bits_e90`` of the results).
LEVEL_EPSILONS = (0.5, 0.9)
#: Trials per point when ``reproduce`` is not told otherwise.
DEFAULT_LEVEL_TRIALS = 200
#: The full-route algorithms drawn beside it.
FULL_ROUTES = ("smr", "smr-exact", "disjoint")
#: Columns of ``level.parquet``.
LEVEL_COLUMNS = ("figure", "algorithm", "p_untrusted", "n_trusted", "trial", "seed", "epsilon", "met", "consumed_bits",
                 "key_bits", "security")


def run_level(trials: int, seed: int = 0, epsilons=LEVEL_EPSILONS):
    """``smr-level`` on the Fig. 5 points, the first ``trials`` trials of master seed ``seed``."""
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
            for eps in epsilons:
                r = route_indices(a, s, d, "smr-level", epsilon=float(eps))
                met = not r.blocked and r.level["met"]
                rows.append({"figure": fig5.name, "algorithm": "smr-level", "p_untrusted": float(p),
                             "n_trusted": int(n_trusted), "trial": t, "seed": s_seed, "epsilon": float(eps),
                             "met": bool(met), "consumed_bits": int(r.consumed_bits) if met else 0,
                             "key_bits": int(r.block_bits) if met else 0, "security": float(r.security)})
    return pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))


def level_efficiency(results, level):
    """Epsilon-key bits per consumed bit per (epsilon, p, algorithm), served requests only,
    the full routes on the same trials as ``level``; with the served count and bits per key."""
    import pandas as pd

    trials = set(level["trial"].unique())
    full = results[(results["figure"] == "fig5") & results["algorithm"].isin(FULL_ROUTES) & results["trial"].isin(trials)]
    rows = []
    for eps in sorted(level["epsilon"].unique()):
        col = f"key_bits_e{int(round(eps * 100))}"
        for p in sorted(level["p_untrusted"].unique()):
            parts = [(alg, full[(full["algorithm"] == alg) & (full["p_untrusted"] == p)], col) for alg in FULL_ROUTES]
            lv = level[(level["epsilon"] == eps) & (level["p_untrusted"] == p)]
            parts.append(("smr-level", lv, "key_bits"))
            for alg, d, kcol in parts:
                served = d[d[kcol] > 0]
                key, used = float(served[kcol].sum()), float(served["consumed_bits"].sum())
                rows.append({"epsilon": float(eps), "p_untrusted": float(p), "algorithm": alg, "requests": len(d),
                             "served": len(served), "key_bits_per_consumed_bit": key / used if used else float("nan"),
                             "consumed_bits_per_key_bit": used / key if key else float("nan")})
    return pd.DataFrame(rows)


def plot_level(eff, out_dir: str | Path, stem: str = "fig_level") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epss = sorted(eff["epsilon"].unique())
    fig, axes = plt.subplots(1, len(epss), figsize=(5.2 * len(epss), 4.2), dpi=110, squeeze=False)
    for ax, eps in zip(axes[0], epss):
        e = eff[eff["epsilon"] == eps]
        for alg in sorted(e["algorithm"].unique(), key=_alg_rank):
            r = e[e["algorithm"] == alg]
            ax.plot(r["p_untrusted"], r["key_bits_per_consumed_bit"], "-o", ms=3.5, lw=1.6, color=COLOURS.get(alg, "black"),
                    label=alg)
        ax.set_xlabel("security probability p of untrusted relays")
        ax.set_ylabel(f"key bits at epsilon = {eps:g} per consumed bit")
        ax.set_title(f"epsilon = {eps:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    n = int(eff["requests"].min()) if len(eff) else 0
    fig.suptitle(f"Fig. 5 points (10 trusted relays), {n} trials each: key delivered per key consumed", fontsize=10)
    return save_figure(fig, out_dir, stem)


def write_level(results, level, out_dir: str | Path, *, fmt: str = "parquet", command: str = "") -> dict:
    """``level.parquet`` (or ``.csv``), ``fig_level.png/svg`` and ``level.md``."""
    from .runner import write_results

    out = Path(out_dir)
    data = write_results(level, out, fmt=fmt, stem="level")
    eff = level_efficiency(results, level)
    figs = plot_level(eff, out)
    lines = ["# The requested level at the least key", "",
             f"`smr-level` (docs/algorithms.md) on the first {int(level['trial'].nunique())} trials of every Fig. 5 point "
             f"({command or 'qkdseg reproduce'}), beside the full routes of `results` on the same trials. "
             "Key bits at epsilon per consumed bit = sum of key bits / sum of consumed bits over the requests that get "
             "at least one key (the others are refused and consume nothing); the full routes' keys are the `paper` "
             "reconstruction's, smr-level's one key per request. Figure: `fig_level.png`.", "",
             "| epsilon | p | algorithm | served / requests | key bits per consumed bit | consumed bits per key bit |",
             "|---:|---:|---|---:|---:|---:|"]
    for _, r in eff.sort_values(["epsilon", "p_untrusted", "algorithm"], key=lambda s: s.map(_alg_rank)
                                if s.name == "algorithm" else s).iterrows():
        lines.append(f"| {r['epsilon']:g} | {r['p_untrusted']:.2f} | {r['algorithm']} | {int(r['served'])} / "
                     f"{int(r['requests'])} | {r['key_bits_per_consumed_bit']:.4f} | {r['consumed_bits_per_key_bit']:.2f} |")
    report = out / "level.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"files": [str(data), *map(str, figs), str(report)], "efficiency": eff}


__all__ = ["DEFAULT_LEVEL_TRIALS", "LEVEL_EPSILONS", "level_efficiency", "plot_level", "run_level", "write_level"]
