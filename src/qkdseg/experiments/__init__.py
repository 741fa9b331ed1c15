"""Experiments: sweeps (compute -> results file), figures and reports (file
-> figure). Nothing here is imported by the core library.

>>> from qkdseg.experiments import paper_spec
>>> spec = paper_spec(trials=2)
>>> [f.name for f in spec.figures], spec.n_units
(['fig5', 'fig6'], 34)
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from .figures import plot_figure, summarise
from .report import claims_table, judge, write_report
from .runner import read_results, run_sweep, write_results
from .spec import REPRODUCE_ALGORITHMS, FigureSpec, SweepSpec, paper_spec, trial_seed


def render(df, out_dir: str | Path, *, header: str = "", sensitivity=None) -> dict[str, Any]:
    """Figures and report of saved rows (no recomputation); ``sensitivity``:
    the rows of the MSP-beta sweeps, if any."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for fig in sorted(df["figure"].unique()):
        figures += [str(p) for p in plot_figure(df, fig, out)]
    report = write_report(df, out, header=header, sensitivity=sensitivity)
    return {"figures": figures, "report": str(report), "claims": claims_table(df, sensitivity=sensitivity)}


def reproduce(
    trials: int = 1000,
    seed: int = 0,
    out_dir: str | Path = "out",
    *,
    backend: str = "processes",
    workers: int | None = None,
    scheduler: Any = None,
    fmt: str = "parquet",
    progress: bool = True,
    sensitivity_trials: int | None = None,
    level_trials: int | None = None,
) -> dict[str, Any]:
    """The paper's evaluation (Fig. 5 and 6) end to end: rows, figures, report.

    Runs :data:`~qkdseg.experiments.spec.REPRODUCE_ALGORITHMS` (the paper's
    four and ``smr-exact``), then MSP alone at every beta of
    :data:`~qkdseg.experiments.sensitivity.SENSITIVITY_BETAS` on the first
    ``sensitivity_trials`` trials (default ``min(trials, 200)``; 0 skips it).
    Writes to ``out_dir``: ``results.parquet`` (or ``.csv``),
    ``sensitivity.parquet`` (or ``.csv``), ``fig5.png``/``.svg``,
    ``fig6.png``/``.svg``, ``report.md`` and ``run.json`` (spec, runtime,
    machine). Then ``smr-level`` on the first ``level_trials`` trials of the
    Fig. 5 points (default ``min(trials, 200)``; 0 skips it):
    ``level.parquet``, ``fig_level.png``/``.svg`` and ``level.md``
    (:mod:`qkdseg.experiments.level`). Returns a summary dict with the claims and
    ``files``, every file written.
    """
    from .sensitivity import DEFAULT_SENSITIVITY_TRIALS, SENSITIVITY_BETAS, SENSITIVITY_STEM, run_sensitivity

    spec = paper_spec(trials=trials, seed=seed, algorithms=REPRODUCE_ALGORITHMS)
    n_sens = min(trials, DEFAULT_SENSITIVITY_TRIALS if sensitivity_trials is None else sensitivity_trials)
    if n_sens < 0:
        raise InvalidRequest(f"sensitivity trials={sensitivity_trials} must be non-negative")
    from .level import DEFAULT_LEVEL_TRIALS, run_level, write_level

    n_level = min(trials, DEFAULT_LEVEL_TRIALS if level_trials is None else level_trials)
    if n_level < 0:
        raise InvalidRequest(f"level trials={level_trials} must be non-negative")
    kw = {"backend": backend, "workers": workers, "scheduler": scheduler, "progress": progress}
    df, seconds = _timed_sweep(spec, **kw)
    sens, sens_seconds = None, 0.0
    if n_sens:
        t0 = time.perf_counter()
        sens = run_sensitivity(n_sens, seed, SENSITIVITY_BETAS, **kw)
        sens_seconds = time.perf_counter() - t0
    out = Path(out_dir)
    results = write_results(df, out, fmt=fmt)
    files = [results]
    if sens is not None:
        files.append(write_results(sens, out, fmt=fmt, stem=SENSITIVITY_STEM))
    header = (
        f"Spec: `qkdseg reproduce --trials {trials} --seed {seed}`; {len(df)} rows "
        f"({spec.n_units} trial-points x {len(spec.algorithms)} algorithms), reconstruction `{spec.reconstruction}`. "
        f"Each row's topology is `qkdseg.waxman(100, trusted=n_trusted, p=p_untrusted, seed=seed)`."
    )
    info = render(df, out, header=header, sensitivity=sens)
    level_seconds = 0.0
    if n_level:
        t0 = time.perf_counter()
        lv = write_level(df, run_level(n_level, seed), out, fmt=fmt, command=f"qkdseg reproduce --trials {trials} --seed {seed}")
        level_seconds = time.perf_counter() - t0
        info = {**info, "figures": [*info["figures"], *(f for f in lv["files"] if f.endswith((".png", ".svg")))]}
        files += [f for f in lv["files"] if not f.endswith((".png", ".svg"))]
    run = {
        "command": f"qkdseg reproduce --trials {trials} --seed {seed}",
        "spec": spec.to_dict(),
        "rows": len(df),
        "seconds": round(seconds, 2),
        "sensitivity": {"trials": n_sens, "betas": list(SENSITIVITY_BETAS), "rows": 0 if sens is None else len(sens),
                        "seconds": round(sens_seconds, 2)},
        **({"level": {"trials": n_level, "seconds": round(level_seconds, 2)}} if n_level else {}),
        "backend": "dask" if scheduler is not None else backend,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    files = [str(p) for p in files] + info["figures"] + [info["report"], str(out / "run.json")]
    return {"results": str(results), "seconds": seconds + sens_seconds + level_seconds, "files": files, **info}


def _timed_sweep(spec: SweepSpec, **kwargs):
    t0 = time.perf_counter()
    df = run_sweep(spec, **kwargs)
    return df, time.perf_counter() - t0


__all__ = [
    "FigureSpec",
    "SweepSpec",
    "claims_table",
    "judge",
    "paper_spec",
    "plot_figure",
    "read_results",
    "render",
    "reproduce",
    "run_sweep",
    "summarise",
    "trial_seed",
    "write_report",
    "write_results",
]
