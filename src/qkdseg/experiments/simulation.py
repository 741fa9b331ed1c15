"""``qkdseg simulate``: time-dynamic runs to files (docs/model.md section 9).

- :func:`write_run`: one run (every algorithm on one trace) ->
  ``requests.parquet``, ``timeseries.parquet``, ``levels.parquet``,
  ``timeseries.png/svg`` (served key throughput and blocking over time),
  ``pool_levels.png/svg`` (links by time), ``report.md`` and ``run.json``.
- :func:`run_load_sweep` / :func:`write_sweep`: the grid rates x
  replications on the experiments' backends (local processes, Dask), one
  task per (rate, replication) running every algorithm on its trace ->
  ``sweep.parquet`` (one row per rate, replication and algorithm),
  ``load.png/svg`` (blocking ratio, served key throughput, key utilisation
  and mean security against offered load, 95% CIs), ``report.md`` and
  ``run.json``.

The figures are drawn by :mod:`.simplots`.

No output holds a timing, so one seed gives byte-identical files whatever
the backend and the worker count; timings are printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..network import Network
from ..sim import Simulation, poisson_requests, simulate
from .figures import _alg_rank, summarise
from .runner import _iter_dask, _iter_processes, warm_up
from .simplots import plot_load, plot_load_cost, plot_pool_levels, plot_timeseries, run_context
from .spec import trial_seed

#: Columns of ``sweep.parquet``, in order.
SWEEP_COLUMNS = (
    "rate", "replication", "seed", "algorithm", "offered_key_bps", "requests", "served", "blocked", "blocking",
    "served_key_bits", "throughput_bps", "mean_security", "mean_consumed_bits", "mean_hops", "mean_wait",
    "no_route", "epsilon_unmet", "short", "few_paths", "failed", "consumed_link_bits", "generated_bits",
    "key_utilisation",
)


def _parquet(df, path: Path) -> Path:
    df.to_parquet(path, index=False, engine="pyarrow", compression="zstd")
    return path


# -- one run ----------------------------------------------------------------------------------------
def summary_table(requests_df, duration: float, algorithms=None):
    """Per algorithm: requests, served, blocking, throughput (bits/s), mean security, consumption, waits, reasons.

    ``algorithms`` (default: those in the rows) gives the rows' order; an algorithm without requests gets
    zero counts and NaN means.
    """
    import pandas as pd

    if algorithms is None:
        algorithms = sorted(requests_df["algorithm"].unique(), key=_alg_rank)
    rows = []
    for alg in algorithms:
        d = requests_df[requests_df["algorithm"] == alg]
        served = d[d["served"]]
        n = len(d)
        reasons = d.loc[d["outcome"] == "blocked", "reason"].value_counts()
        rows.append({
            "algorithm": alg,
            "requests": n,
            "served": len(served),
            "blocked": int((d["outcome"] == "blocked").sum()),
            "blocking": float((d["outcome"] == "blocked").sum() / n) if n else float("nan"),
            "throughput_bps": float(served["key_bits"].sum() / duration) if duration > 0 else float("nan"),
            "mean_security": float(served["security"].mean()) if len(served) else float("nan"),
            "mean_consumed_bits": float(served["consumed_bits"].mean()) if len(served) else float("nan"),
            "mean_hops": float(served["hops"].mean()) if len(served) else float("nan"),
            "mean_wait": float(served["wait"].mean()) if len(served) else float("nan"),
            "no_route": int(reasons.get("no_route", 0)),
            "epsilon_unmet": int(reasons.get("epsilon", 0)),
            "short": int(reasons.get("short", 0)),
            "few_paths": int(reasons.get("few_paths", 0)),  # threshold sharing: a segment of m <= T paths
            "failed": int(reasons.get("failed", 0)),  # relay failures: no key survived, the bits spent
        })
    return pd.DataFrame(rows)


def _fmt(v, digits=4) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _markdown(df, cols: list[tuple[str, str, int]]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], dg) for c, _, dg in cols) + " |")
    return lines


def write_run(res, network: Network, out_dir: str | Path, *, command: str) -> dict[str, Any]:
    """Write a :func:`~qkdseg.simulate` result: tables, figures, report.md, run.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        _parquet(res.requests, out / "requests.parquet"),
        _parquet(res.timeseries, out / "timeseries.parquet"),
        _parquet(res.levels, out / "levels.parquet"),
    ]
    info = res.info
    ctx = run_context(info["network"], info["epsilon"], info["key_bits"], info["duration"], rate=info["rate"])
    files += plot_timeseries(res.timeseries, out, context=ctx)
    files += plot_pool_levels(res.levels, network.arrays.pool_bits, out, context=ctx)
    table = summary_table(res.requests, info["duration"], info["algorithms"])
    gen = info.get("generated_bits", {})
    table["key_utilisation"] = [info["debited_bits"][a] / gen[a] if gen.get(a) else float("nan") for a in table["algorithm"]]
    lines = [
        "# Time-dynamic run",
        "",
        f"Command: `{command}`",
        "",
        f"Network `{info['network']}`: {info['nodes']} nodes, {info['links']} links. {info['requests']} requests over "
        f"{info['duration']:g} s ({info['arrivals']} arrivals, {info['pairs']} pairs), key size {info['key_bits']} bits, "
        f"epsilon {info['epsilon']}, ttl {info['ttl']:g} s, reconstruction `{info['reconstruction']}`, links without a "
        f"rate at {info['link_rate_bps']:g} bit/s, seed {info['seed']}"
        + (f", threshold sharing tolerating {info['tolerate']}" if info.get("tolerate") else "")
        + (f", each relay failing with probability {info['relay_failure']:g}" if info.get("relay_failure") else "")
        + ". Model: docs/model.md section 9.",
        "",
        "| algorithm | requests | served | blocked | blocking | served key throughput (kb/s) | mean security "
        "(served) | mean consumed bits | mean hops | mean wait (s) | no route | epsilon unmet | short | few paths | "
        "failed | key utilisation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['algorithm']} | {r['requests']} | {r['served']} | {r['blocked']} | {_fmt(r['blocking'])} | "
            f"{_fmt(r['throughput_bps'] / 1000.0, 2)} | {_fmt(r['mean_security'], 6)} | {_fmt(r['mean_consumed_bits'], 0)} | "
            f"{_fmt(r['mean_hops'], 2)} | {_fmt(r['mean_wait'], 4)} | {r['no_route']} | {r['epsilon_unmet']} | {r['short']} | "
            f"{r['few_paths']} | {r['failed']} | {_fmt(r['key_utilisation'])} |"
        )
    lines += [
        "",
        "Blocking: blocked / requests. Key utilisation: link bits consumed by served requests / link bits generated "
        "(the full pools at the start plus what every link produced during the run, bits lost to a full pool "
        "included; docs/model.md section 9).",
        "",
        "Figures: `timeseries.png` (served key throughput and blocking over time, moving averages; the window is in "
        "its title), `pool_levels.png` (every link's level over time). Tables: `requests.parquet`, "
        "`timeseries.parquet`, `levels.parquet`.",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    run = {"command": command, **{k: v for k, v in info.items() if k != "stats"}}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return {"files": [str(p) for p in files] + [str(report), str(out / "run.json")], "summary": table}


def run_and_write(network: Network, out_dir: str | Path, *, command: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`~qkdseg.simulate` then :func:`write_run`; also returns the run's timings."""
    warm_up(kwargs.get("algorithms", ()))
    res = simulate(network, **kwargs)
    info = write_run(res, network, out_dir, command=command)
    info["stats"] = res.info["stats"]
    return info


# -- load sweep -------------------------------------------------------------------------------------
def sim_chunk(spec: dict, part: list) -> list[dict]:
    """Rows of the (rate, replication) pairs of ``part`` (a task of the sweep)."""
    net: Network = spec["network"]
    rows = []
    for rate, rep in part:
        seed = trial_seed(spec["seed"], rep)
        req = poisson_requests(net, rate, spec["duration"], seed=seed, key_bits=spec["key_bits"], epsilon=spec["epsilon"],
                               pairs=spec["pairs"], arrivals=spec["arrivals"])
        for alg in spec["algorithms"]:
            sim = Simulation(net, req, alg, ttl=spec["ttl"], reconstruction=spec["reconstruction"],
                             link_rate_bps=spec["link_rate_bps"], interval=spec["duration"] + spec["ttl"],
                             options=spec["options"].get(alg), **spec.get("shared", {})).run()
            d = sim.requests_frame()
            s = summary_table(d, spec["duration"], [alg]).iloc[0].to_dict()
            row = {"rate": float(rate), "replication": int(rep), "seed": seed, "algorithm": alg,
                   "offered_key_bps": float(rate) * spec["key_bits"]}
            s.pop("algorithm")
            row.update(s)
            row["served_key_bits"] = int(d.loc[d["served"], "key_bits"].sum()) if len(d) else 0
            row["consumed_link_bits"] = int(sim.levels.consumed.sum())
            row["generated_bits"] = sim.generated_bits()
            row["key_utilisation"] = sim.key_utilisation()
            row["_seconds"] = sim.stats["run_seconds"]
            row["_routing_seconds"] = sim.stats["routing_seconds"]
            rows.append(row)
    return rows


def run_load_sweep(
    network: Network,
    rates,
    *,
    duration: float,
    replications: int = 1,
    algorithms=("smr", "msp", "disjoint", "single"),
    key_bits: int = 256,
    epsilon: float = 0.9,
    ttl: float = 0.0,
    seed: int = 0,
    pairs: str = "uniform",
    arrivals: str = "poisson",
    link_rate_bps: float = 100_000.0,
    reconstruction: str | None = None,
    options: dict | None = None,
    backend: str = "processes",
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    sharing: str = "xor",
    tolerate: int = 0,
    relay_failure: float = 0.0,
):
    """The grid ``rates x replications``, every algorithm on each trace; returns ``(rows, timings)``.

    ``sharing``, ``tolerate``, ``relay_failure``: as :class:`~qkdseg.sim.Simulation` takes them.

    ``rows``: a DataFrame with :data:`SWEEP_COLUMNS`, sorted by rate,
    replication and algorithm order, whatever the backend. ``timings``: the
    summed engine and routing seconds per algorithm.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rates = [float(r) for r in rates]
    if not rates:
        raise InvalidRequest("--rates: give at least one rate")
    for r in rates:
        if not np.isfinite(r) or r <= 0:
            raise InvalidRequest(f"rate {r:g} must be a positive number of requests per second")
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
        raise InvalidRequest(f"replications={replications!r} must be a positive integer")
    if scheduler is not None:
        backend = "dask"
    if backend not in ("processes", "serial", "dask"):
        raise InvalidRequest(f"unknown backend {backend!r} (use processes, serial or dask)")
    algorithms = tuple(algorithms)
    spec = {"network": network, "duration": float(duration), "key_bits": key_bits, "epsilon": epsilon, "ttl": float(ttl),
            "seed": seed, "pairs": pairs, "arrivals": arrivals, "link_rate_bps": link_rate_bps,
            "reconstruction": reconstruction, "algorithms": algorithms, "options": dict(options or {}),
            "shared": {"sharing": sharing, "tolerate": tolerate, "relay_failure": relay_failure}}
    # validate everything once, here, before any worker starts
    poisson_requests(network, rates[0], duration, seed=seed, key_bits=key_bits, epsilon=epsilon, pairs=pairs,
                     arrivals=arrivals)
    for alg in algorithms:
        Simulation(network, poisson_requests(network, 1.0, 1.0), alg, ttl=ttl, reconstruction=reconstruction,
                   link_rate_bps=link_rate_bps, options=spec["options"].get(alg), **spec["shared"])
    # the biggest tasks first, so that the pool's last tasks are small ones
    parts = [[(r, k)] for r in sorted(rates, reverse=True) for k in range(replications)]
    workers = workers or os.cpu_count() or 1
    if backend == "processes":
        warm_up(algorithms)
    rows: list[dict] = []
    with tqdm(total=len(parts), desc="simulate", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        if backend == "serial" or (backend == "processes" and workers == 1):
            it = ((len(p), sim_chunk(spec, p)) for p in parts)
        elif backend == "processes":
            it = _iter_processes(spec, parts, workers, func=sim_chunk)
        else:
            it = _iter_dask(spec, parts, scheduler, func=sim_chunk)
        for n, part_rows in it:
            rows.extend(part_rows)
            bar.update(n)
    alg_order = {a: i for i, a in enumerate(algorithms)}
    rows.sort(key=lambda r: (r["rate"], r["replication"], alg_order[r["algorithm"]]))
    timings: dict[str, dict[str, float]] = {}
    for r in rows:
        t = timings.setdefault(r["algorithm"], {"seconds": 0.0, "routing_seconds": 0.0, "requests": 0})
        t["seconds"] += r.pop("_seconds")
        t["routing_seconds"] += r.pop("_routing_seconds")
        t["requests"] += r["requests"]
    df = pd.DataFrame(rows)
    return df[list(SWEEP_COLUMNS)].reset_index(drop=True), timings


def sweep_summary(df):
    """Mean and 95% CI of blocking, throughput, key utilisation and mean security per (rate, algorithm)."""
    return summarise(df, "rate", [c for c in ("blocking", "throughput_bps", "key_utilisation", "mean_security") if c in df])


#: The metrics of :func:`paired_differences`, with their report labels and scales.
PAIRED_METRICS = (("served", "served keys", 1.0), ("throughput_bps", "throughput (kb/s)", 1e-3),
                  ("mean_consumed_bits", "bits per key (kb)", 1e-3), ("mean_security", "mean security", 1.0),
                  ("blocking", "blocking", 1.0))


def paired_differences(df, reference: str):
    """``algorithm - reference`` per (rate, replication), on the same trace (common random numbers).

    One row per rate and algorithm other than ``reference``: ``n`` pairs and, per metric of
    :data:`PAIRED_METRICS`, ``<m>_diff`` (mean difference), ``<m>_ci`` (95% half-width, Student t
    with ``n - 1`` degrees of freedom; NaN for one pair) and ``<m>_above`` (pairs where the
    algorithm's value is the larger). Served-key bits per key is each run's ``mean_consumed_bits``
    (the simulator serves one key per request).
    """
    import pandas as pd
    from scipy.stats import t as student_t

    metrics = [m for m, _, _ in PAIRED_METRICS]
    ref = df[df["algorithm"] == reference].set_index(["rate", "replication"])[metrics]
    rows = []
    for alg in [a for a in dict.fromkeys(df["algorithm"]) if a != reference]:
        other = df[df["algorithm"] == alg].set_index(["rate", "replication"])[metrics]
        diff = (other - ref).dropna(how="all")
        for rate, d in diff.groupby(level="rate", sort=True):
            n = len(d)
            row = {"rate": float(rate), "algorithm": alg, "reference": reference, "n": n}
            q = float(student_t.ppf(0.975, n - 1)) if n > 1 else float("nan")
            for m in metrics:
                v = d[m].astype(float).dropna()
                row[f"{m}_diff"] = float(v.mean()) if len(v) else float("nan")
                row[f"{m}_ci"] = q * float(v.std(ddof=1)) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
                row[f"{m}_above"] = int((v > 0).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def write_sweep(df, out_dir: str | Path, *, command: str, params: dict) -> dict[str, Any]:
    """``sweep.parquet``, ``load.png/svg``, ``report.md`` (the table with 95% CIs) and ``run.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [_parquet(df, out / "sweep.parquet")]
    ctx = run_context(params["network"], params["epsilon"], params["key_bits"], params["duration"])
    files += plot_load(df, out, context=ctx)
    s = sweep_summary(df)
    lines = [
        "# Load sweep",
        "",
        f"Command: `{command}`",
        "",
        f"Network `{params['network']}`: {params['nodes']} nodes, {params['links']} links. Each point: "
        f"{params['replications']} replication(s) of {params['duration']:g} s, key size {params['key_bits']} bits, "
        f"epsilon {params['epsilon']}, ttl {params['ttl']:g} s; replication r has the trace seed "
        f"`trial_seed({params['seed']}, r)`, shared by every rate and algorithm. Means with 95% confidence "
        "half-widths (1.96 standard errors over replications). Model: docs/model.md section 9. Blocking ratio: "
        "blocked / requests. Key utilisation: link bits consumed by served requests / link bits generated (the "
        "full pools at the start plus what the links produced, overflow included).",
        "",
        "| rate (req/s) | algorithm | n | blocking ratio | served key throughput (kb/s) | key utilisation "
        "| mean security (served) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for _, r in s.iterrows():
        lines.append(
            f"| {r['rate']:g} | {r['algorithm']} | {int(r['n'])} | {r['blocking_mean']:.4f} ± {r['blocking_ci']:.4f} | "
            f"{r['throughput_bps_mean'] / 1000:.2f} ± {r['throughput_bps_ci'] / 1000:.2f} | "
            f"{r['key_utilisation_mean']:.4f} ± {r['key_utilisation_ci']:.4f} | "
            f"{_fmt(float(r['mean_security_mean']), 6)} ± {_fmt(float(r['mean_security_ci']), 6)} |"
        )
    lines += ["", "Figure: `load.png`. Rows: `sweep.parquet` (one per rate, replication and algorithm).", ""]
    algs = list(params.get("algorithms") or dict.fromkeys(df["algorithm"]))
    if len(algs) > 1 and int(df["replication"].nunique()) > 1:
        files += plot_load_cost(df, out, context=ctx)
        lines += _paired_lines(df, algs[0])
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (out / "run.json").write_text(json.dumps({"command": command, **params}, indent=2) + "\n", encoding="utf-8")
    return {"files": [str(p) for p in files] + [str(report), str(out / "run.json")], "summary": s}


def _paired_lines(df, reference: str) -> list[str]:
    s = summarise(df, "rate", ["served", "mean_consumed_bits"])
    lines = [
        "## Served keys and bits per key",
        "",
        "| rate (req/s) | algorithm | served keys | bits per served key (kb) |",
        "|---:|---|---:|---:|",
    ]
    for _, r in s.iterrows():
        lines.append(f"| {r['rate']:g} | {r['algorithm']} | {r['served_mean']:.1f} ± {r['served_ci']:.1f} | "
                     f"{r['mean_consumed_bits_mean'] / 1000:.2f} ± {r['mean_consumed_bits_ci'] / 1000:.2f} |")
    lines += [
        "",
        f"## Paired differences against `{reference}`",
        "",
        f"Each replication's value minus `{reference}`'s on the same trace (common random numbers); mean, 95% "
        "half-width (Student t, n - 1 degrees of freedom) and in how many pairs the algorithm's value is the larger. "
        "Figure: `load_cost.png` (bits per served key against load).",
        "",
        "| rate (req/s) | algorithm | n | " + " | ".join(label for _, label, _ in PAIRED_METRICS) + " |",
        "|---:|---|---:|" + "---:|" * len(PAIRED_METRICS),
    ]
    for _, r in paired_differences(df, reference).iterrows():
        n = int(r["n"])
        cells = []
        for m, _, scale in PAIRED_METRICS:
            digits = 6 if m in ("mean_security", "blocking") else 2
            cells.append(f"{r[m + '_diff'] * scale:+.{digits}f} ± {_fmt(float(r[m + '_ci'] * scale), digits)} "
                         f"({int(r[m + '_above'])}/{n})")
        lines.append(f"| {r['rate']:g} | {r['algorithm']} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]
