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

from .figures import plot_figure, summarise
from .report import claims_table, judge, write_report
from .runner import read_results, run_sweep, write_results
from .spec import FigureSpec, SweepSpec, paper_spec, trial_seed


def render(df, out_dir: str | Path, *, header: str = "") -> dict[str, Any]:
    """Figures and report of saved rows (no recomputation)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for fig in sorted(df["figure"].unique()):
        figures += [str(p) for p in plot_figure(df, fig, out)]
    report = write_report(df, out, header=header)
    return {"figures": figures, "report": str(report), "claims": claims_table(df)}


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
) -> dict[str, Any]:
    """The paper's evaluation (Fig. 5 and 6) end to end: rows, figures, report.

    Writes to ``out_dir``: ``results.parquet`` (or ``.csv``), ``fig5.png``/
    ``.svg``, ``fig6.png``/``.svg``, ``report.md`` and ``run.json`` (spec,
    runtime, machine). Returns a summary dict with the claims.
    """
    spec = paper_spec(trials=trials, seed=seed)
    df, seconds = _timed_sweep(spec, backend=backend, workers=workers, scheduler=scheduler, progress=progress)
    out = Path(out_dir)
    results = write_results(df, out, fmt=fmt)
    header = (
        f"Spec: `qkdseg reproduce --trials {trials} --seed {seed}`; {len(df)} rows "
        f"({spec.n_units} trial-points x {len(spec.algorithms)} algorithms), reconstruction `{spec.reconstruction}`. "
        f"Each row's topology is `qkdseg.waxman(100, trusted=n_trusted, p=p_untrusted, seed=seed)`."
    )
    info = render(df, out, header=header)
    run = {
        "command": f"qkdseg reproduce --trials {trials} --seed {seed}",
        "spec": spec.to_dict(),
        "rows": len(df),
        "seconds": round(seconds, 2),
        "backend": "dask" if scheduler is not None else backend,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return {"results": str(results), "seconds": seconds, **info}


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
