"""The same comparison on real topologies (``qkdseg study``).

For every topohub topology of a group (``zoo`` = Internet Topology Zoo) with
at least ``min_nodes`` nodes: the trusted-relay rule of
:func:`qkdseg.load_topohub` (a fraction of the nodes, seeded random
placement, by default 10%), every untrusted relay at ``p``, and
``requests`` random source/destination pairs drawn inside the largest
connected component (some Zoo maps are not connected). Seeds: network ``k``
(in name order) uses ``trial_seed(seed, k)`` for its placement, its pairs and
MSP's walks. One row per network, request and algorithm. With ``level``
(default 0.9) also ``smr-level`` at that epsilon: one key per request when it
meets the level (``key_bits_e90`` its bits, ``consumed_bits`` what it takes;
0 and 0 when refused), so that the table can compare epsilon-key bits per
consumed bit with ``disjoint``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..api import route_indices
from ..errors import InvalidRequest
from ..topology import load_topohub, topohub_names
from .runner import process_pool
from .spec import PAPER_EPSILONS, REPRODUCE_ALGORITHMS, SweepSpec, eps_column, paper_spec, trial_seed
from .trials import evaluate

GROUPS = {"zoo": "topozoo", "topozoo": "topozoo", "sndlib": "sndlib"}


def study_networks(group: str = "zoo", min_nodes: int = 20) -> list[str]:
    """topohub keys of ``group`` with at least ``min_nodes`` nodes."""
    import topohub

    if group not in GROUPS:
        raise InvalidRequest(f"unknown topology group {group!r} (use {', '.join(GROUPS)})")
    out = []
    for key in topohub_names(GROUPS[group]):
        if len(topohub.get(key)["nodes"]) >= min_nodes:
            out.append(key)
    return out


def study_network(key: str, k: int, opts: dict) -> list[dict[str, Any]]:
    """Rows of one network (picklable unit for the process pool)."""
    seed = trial_seed(opts["seed"], k)
    net = load_topohub(key, trusted=opts["trusted"], p=opts["p"], seed=seed)
    a = net.arrays
    comp = max(nx.connected_components(net.graph), key=lambda c: (len(c), -min(a.index[v] for v in c)))
    members = np.array(sorted(a.index[v] for v in comp))
    rng = np.random.default_rng([seed, 2])
    spec = opts["spec"]
    rows = []
    for r in range(opts["requests"]):
        s, d = (int(x) for x in rng.choice(members, size=2, replace=False))
        base = {
            "network": key, "nodes": net.n_nodes, "links": net.n_links, "trusted": len(net.trusted_nodes),
            "p_untrusted": opts["p"], "request": r, "seed": seed,
            "source": a.node_ids[s], "destination": a.node_ids[d],
        }
        for row in evaluate(a, s, d, spec, seed * 1000 + r):
            rows.append({**base, **row})
        if opts.get("level") is not None:
            rows.append({**base, **_level_row(a, s, d, float(opts["level"]), spec.epsilons)})
    return rows


def _level_row(a, s: int, d: int, level: float, epsilons) -> dict[str, Any]:
    """``smr-level``'s row at ``level``: its key (one, of ``block_bits``) in that level's column, NaN in the others."""
    r = route_indices(a, s, d, "smr-level", epsilon=level)
    met = not r.blocked and r.level["met"]
    row: dict[str, Any] = {"algorithm": "smr-level", "security": r.security, "security_independent": r.security_independent,
                           "consumed_bits": r.consumed_bits if met else 0,
                           "key_consumption_rate": r.key_consumption_rate if met else 0.0, "blocked": r.blocked,
                           "segments": len(r.segments), "paths": len(r.paths), "hops": r.hops}
    for e in epsilons:
        row[eps_column(e)] = (r.block_bits if met else 0) if e == level else float("nan")
    return row


def run_study(
    group: str = "zoo",
    *,
    requests: int = 20,
    seed: int = 0,
    trusted: float = 0.1,
    p: float = 0.8,
    min_nodes: int = 20,
    algorithms=REPRODUCE_ALGORITHMS,
    epsilons=PAPER_EPSILONS,
    level: float | None = 0.9,
    workers: int | None = None,
    progress: bool = True,
):
    """Rows for every network of the group (DataFrame, canonical order); ``level``: also ``smr-level`` at that
    epsilon (one of ``epsilons``; ``None``: not)."""
    import os

    import pandas as pd
    from tqdm.auto import tqdm

    if requests < 1:
        raise InvalidRequest(f"requests={requests} must be at least 1")
    if not 0 <= p <= 1:
        raise InvalidRequest(f"p={p} is outside [0, 1]")
    keys = study_networks(group, min_nodes)
    if not keys:
        raise InvalidRequest(f"no topology of group {group!r} has at least {min_nodes} nodes")
    if level is not None and level not in epsilons:
        raise InvalidRequest(f"level={level} must be one of the epsilons {', '.join(f'{e:g}' for e in epsilons)}")
    spec: SweepSpec = paper_spec(trials=1, seed=seed, algorithms=tuple(algorithms), epsilons=tuple(epsilons))
    opts = {"seed": seed, "trusted": trusted, "p": p, "requests": requests, "spec": spec, "level": level}
    workers = workers or os.cpu_count() or 1
    rows: list[dict] = []
    with tqdm(total=len(keys), desc="study", unit="network", disable=not progress) as bar:
        if workers == 1:
            for k, key in enumerate(keys):
                rows += study_network(key, k, opts)
                bar.update(1)
        else:
            with process_pool(workers) as pool:
                futs = [pool.submit(study_network, key, k, opts) for k, key in enumerate(keys)]
                for fut in futs:
                    rows += fut.result()
                    bar.update(1)
    return pd.DataFrame(rows)


def key_per_bit(df, epsilon_col: str = "key_bits_e90"):
    """Per network and algorithm: epsilon-key bits per consumed bit, ``sum(key bits) / sum(consumed bits)``
    over the requests that get a key (a Series indexed by network and algorithm)."""
    served = df[df[epsilon_col] > 0]
    g = served.groupby(["network", "algorithm"])
    return g[epsilon_col].sum() / g["consumed_bits"].sum()


def study_table(df, epsilon_col: str = "key_bits_e90"):
    """Per network: mean security and key length of every algorithm; with
    ``disjoint`` rows also, for ``smr`` and ``smr-exact``, the mean gain in
    security over ``disjoint`` (``gain_<alg>``) and the share of requests
    where it is below ``disjoint`` (``below_<alg>``); with ``smr-level``
    rows, epsilon-key bits per consumed bit of ``smr-level`` and ``disjoint``
    (:func:`key_per_bit`) and their ratio (``level_over_disjoint``)."""
    t = df.pivot_table(index=["network", "nodes"], columns="algorithm", values=["security", epsilon_col], aggfunc="mean")
    t.columns = [f"{m}_{a}" for m, a in t.columns]
    algs = set(df["algorithm"].unique())
    if {"smr-level", "disjoint"} <= algs:
        kb = key_per_bit(df, epsilon_col).unstack("algorithm").reindex(columns=["disjoint", "smr-level"])
        for a in ("disjoint", "smr-level"):
            t[f"per_bit_{a}"] = kb[a].reindex(t.index.get_level_values("network")).to_numpy()
        t["level_over_disjoint"] = t["per_bit_smr-level"] / t["per_bit_disjoint"]
    if "disjoint" in algs:
        w = df.pivot_table(index=["network", "request"], columns="algorithm", values="security", aggfunc="first")
        for a in ("smr", "smr-exact"):
            if a in algs:
                diff = (w[a] - w["disjoint"]).groupby(level="network")
                t[f"gain_{a}"] = diff.mean().reindex(t.index, level="network").to_numpy()
                t[f"below_{a}"] = diff.apply(lambda x: float((x < -1e-12).mean())).reindex(t.index, level="network").to_numpy()
    return t.reset_index().sort_values("network").reset_index(drop=True)


def plot_study(df, out_dir: str | Path) -> list[Path]:
    """Scatter of per-network mean security, SMR against each baseline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .figures import COLOURS, save_figure

    t = study_table(df)
    gains = [a for a in ("smr", "smr-exact") if f"gain_{a}" in t]
    fig, axes = plt.subplots(1, 2 if gains else 1, figsize=(12 if gains else 6, 5.5), dpi=110, squeeze=False)
    ax = axes[0][0]
    for a in [c for c in ("msp", "disjoint", "single") if f"security_{c}" in t]:
        ax.scatter(t[f"security_{a}"], t["security_smr"], s=14, alpha=0.75, color=COLOURS.get(a), label=f"vs {a}")
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
    ax.set_xlabel("baseline mean security (per network)")
    ax.set_ylabel("SMR mean security (per network)")
    ax.set_title(f"Topology Zoo: {len(t)} networks; above the diagonal SMR wins", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if gains:
        ax = axes[0][1]
        order = t.sort_values(f"gain_{gains[-1]}", kind="stable").reset_index(drop=True)
        for a in reversed(gains):  # smr-exact (dots) first, smr (crosses) on top
            ax.plot(range(len(order)), order[f"gain_{a}"], "x" if a == "smr" else "o", ms=4, color=COLOURS.get(a), label=a)
        ax.axhline(0.0, color="black", lw=0.8, ls=":")
        ax.set_xlabel(f"network, sorted by {gains[-1]}'s gain")
        ax.set_ylabel("mean security gain over disjoint (per network)")
        ax.set_title("What segmenting buys over the same paths without segments", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, "study")


def write_study_report(df, out_dir: str | Path, header: str = "") -> Path:
    """``report.md``: SMR against the baselines per network."""
    t = study_table(df)
    algs = [a for a in ("smr", "smr-exact", "msp", "disjoint", "single") if f"security_{a}" in t]
    wins = {a: int((t["security_smr"] > t[f"security_{a}"] + 1e-12).sum()) for a in algs if a not in ("smr", "smr-exact")}
    gains = [a for a in ("smr", "smr-exact") if f"gain_{a}" in t]
    lines = ["# qkdseg study: SMR against the baselines on real topologies", ""]
    if header:
        lines += [header, ""]
    lines += [
        f"{len(t)} networks. SMR's mean security is higher than "
        + ", ".join(f"{a}'s on {w}" for a, w in wins.items())
        + " of them (strictly, by more than 1e-12).",
        "",
    ]
    if gains:
        w = df.pivot_table(index=["network", "request"], columns="algorithm", values="security", aggfunc="first")
        for a in gains:
            diff = w[a] - w["disjoint"]
            lines.append(
                f"- `{a}` over `disjoint`: mean gain {diff.mean():+.4f} per request; above it on "
                f"{int((t[f'gain_{a}'] > 1e-12).sum())} networks (mean), below it on {int((t[f'gain_{a}'] < -1e-12).sum())}; "
                f"below it on {100 * (diff < -1e-12).mean():.1f}% of the {len(diff)} requests (largest loss {max(0.0, -diff.min()):.4f})."
            )
        lines.append("")
    lines += [
        "![study](study.png)",
        "",
        "| network | nodes | " + " | ".join(f"security {a}" for a in algs)
        + "".join(f" | gain {a} | below {a}" for a in gains) + " | " + " | ".join(f"kb@0.9 {a}" for a in algs) + " |",
        "|---|---|" + "---|" * (2 * len(algs) + 2 * len(gains)),
    ]
    for _, r in t.iterrows():
        lines.append(
            f"| {r['network']} | {int(r['nodes'])} | "
            + " | ".join(f"{r[f'security_{a}']:.3f}" for a in algs)
            + "".join(f" | {r[f'gain_{a}']:+.4f} | {100 * r[f'below_{a}']:.0f}%" for a in gains)
            + " | "
            + " | ".join(f"{r[f'key_bits_e90_{a}'] / 1000:.0f}" for a in algs)
            + " |"
        )
    if "level_over_disjoint" in t:
        lines += ["", *_level_lines(df, t)]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _level_lines(df, t, epsilon_col: str = "key_bits_e90") -> list[str]:
    """The report's section on ``smr-level``: epsilon-key bits per consumed bit against ``disjoint``."""
    tot = df[df[epsilon_col] > 0].groupby("algorithm")[[epsilon_col, "consumed_bits"]].sum()
    tot = tot.reindex(["smr-level", "disjoint"])
    per_bit = tot[epsilon_col] / tot["consumed_bits"]
    ratio = per_bit["smr-level"] / per_bit["disjoint"]
    served = df[df[epsilon_col] > 0].groupby("algorithm").size()
    q = t["level_over_disjoint"].dropna()
    if q.empty:
        return ["## smr-level: key at epsilon 0.9 per consumed bit, against disjoint", "",
                "No network has a request that both `smr-level` and `disjoint` serve at 0.9.", ""]
    lines = ["## smr-level: key at epsilon 0.9 per consumed bit, against disjoint", "",
             f"Over all requests (sums of key bits over sums of consumed bits, served requests only): `smr-level` "
             f"{ratio:.2f}x `disjoint` ({int(served.get('smr-level', 0))} and {int(served.get('disjoint', 0))} requests "
             f"served). Per network: median {q.median():.2f}x, range {q.min():.2f}x to {q.max():.2f}x over {len(q)} "
             "networks where both serve a request.", "",
             "| network | nodes | served disjoint | served smr-level | key bits per consumed bit disjoint | smr-level | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    n_served = df[df[epsilon_col] > 0].groupby(["network", "algorithm"]).size().unstack("algorithm").fillna(0)
    for _, r in t.iterrows():
        ns = n_served.loc[r["network"]] if r["network"] in n_served.index else {}
        cells = [f"{r[c]:{f}}" if r[c] == r[c] else "-" for c, f in
                 (("per_bit_disjoint", ".4f"), ("per_bit_smr-level", ".4f"), ("level_over_disjoint", ".2f"))]
        lines.append(f"| {r['network']} | {int(r['nodes'])} | {int(ns.get('disjoint', 0) or 0)} | "
                     f"{int(ns.get('smr-level', 0) or 0)} | " + " | ".join(cells) + " |")
    return lines


__all__ = ["plot_study", "run_study", "study_networks", "study_table", "write_study_report", "eps_column"]
