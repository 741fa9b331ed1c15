"""Running a sweep: chunks of trials on a backend, rows to a file.

Backends, all giving identical rows for one spec:

- ``serial``: this process (tests, debugging);
- ``processes`` (default): a local process pool on all cores;
- ``dask``: a Dask distributed cluster, ``scheduler="tcp://HOST:PORT"`` (or a
  ``distributed.Client`` object).

Rows are sorted canonically (figure, point, trial, algorithm order) before
they are written, so neither the backend nor the number of workers changes a
byte of the output.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from .spec import SweepSpec
from .trials import run_chunk

#: Column order of results files (docs/experiments.md); extra columns follow.
COLUMNS = (
    "figure", "algorithm", "p_untrusted", "n_trusted", "trial", "seed",
    "security", "consumed_bits", "key_consumption_rate",
    "key_bits_e50", "key_bits_e70", "key_bits_e90", "blocked",
    "security_independent", "segments", "paths", "hops",
    "point", "nodes", "links", "mean_degree", "source", "destination",
)


def chunks(trials: int, size: int) -> list[list[int]]:
    """Trial indices in chunks of ``size``."""
    return [list(range(i, min(i + size, trials))) for i in range(0, trials, size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="trial", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _sort_rows(rows: list[dict], spec: SweepSpec) -> list[dict]:
    fig_order = {f.name: i for i, f in enumerate(spec.figures)}
    alg_order = {a: i for i, a in enumerate(spec.algorithms)}
    return sorted(rows, key=lambda r: (fig_order[r["figure"]], r["point"], r["trial"], alg_order[r["algorithm"]]))


def _ignore_sigint() -> None:
    """A worker's initializer: Ctrl-C is the parent's to handle (it stops the
    workers), so a worker never prints a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A local process pool whose workers ignore SIGINT. When the body raises
    (Ctrl-C, an error in a task), the queued tasks are cancelled and the
    workers stopped at once instead of being waited for."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        yield pool
    except BaseException:
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            try:
                proc.terminate()
            except (OSError, AttributeError):  # pragma: no cover - already gone
                pass
        for proc in procs:
            proc.join(timeout=5)
        raise
    pool.shutdown(wait=True)


def _iter_processes(spec_dict: dict, parts: list[list], workers: int, func=run_chunk) -> Iterator[tuple[int, list[dict]]]:
    """``func(spec_dict, part)`` for every part in a local process pool, as they finish."""
    with process_pool(workers) as pool:
        futures = {pool.submit(func, spec_dict, part): len(part) for part in parts}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _iter_dask(spec_dict: dict, parts: list[list], scheduler: Any, func=run_chunk) -> Iterator[tuple[int, list[dict]]]:
    """``func(spec_dict, part)`` for every part on a Dask cluster, as they finish."""
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:  # pragma: no cover - a core dependency
        raise InvalidRequest("the Dask backend needs the 'distributed' package: pip install 'dask[distributed]'") from None
    own = not hasattr(scheduler, "submit")
    try:
        client = Client(scheduler, timeout=10) if own else scheduler
    except (OSError, TimeoutError, ValueError) as err:
        raise InvalidRequest(f"cannot reach the Dask scheduler {scheduler!r}: {err}") from None
    try:
        futures = client.map(func, [spec_dict] * len(parts), parts, pure=False)
        sizes = {f.key: len(p) for f, p in zip(futures, parts)}
        for fut in dask_completed(futures):
            yield sizes[fut.key], fut.result()
    finally:
        if own:
            client.close()


def warm_up(algorithms: Sequence[str]) -> None:
    """Run every algorithm once on the built-in example, so that compiled
    kernels (numba) are loaded before worker processes are forked from this
    one instead of being compiled in each of them."""
    from ..api import route
    from ..routing import get_algorithm
    from ..topology import example_network

    net = example_network()
    for name in algorithms:
        level = {"epsilon": 0.5} if "epsilon" in get_algorithm(name).options else {}  # smr-level needs one
        route(net, 0, 7, algorithm=name, **level)


def run_sweep(
    spec: SweepSpec,
    *,
    backend: str = "processes",
    workers: int | None = None,
    scheduler: Any = None,
    chunk_size: int | None = None,
    progress: bool = True,
    desc: str = "sweep",
) -> "pandas.DataFrame":  # noqa: F821
    """Run ``spec`` and return its rows as a DataFrame (canonical order).

    Parameters
    ----------
    spec : SweepSpec
    backend : {"processes", "serial", "dask"}
        ``dask`` is implied when ``scheduler`` is given.
    workers : int, optional
        Processes for the local pool (default: all cores).
    scheduler : str or distributed.Client, optional
        ``tcp://HOST:PORT`` of a Dask scheduler.
    chunk_size : int, optional
        Trials per task (default: about 8 tasks per worker).
    progress : bool
        Show a progress bar with the rate and an ETA.
    """
    import pandas as pd

    if scheduler is not None:
        backend = "dask"
    if backend not in ("processes", "serial", "dask"):
        raise InvalidRequest(f"unknown backend {backend!r} (use processes, serial or dask)")
    workers = workers or os.cpu_count() or 1
    if chunk_size is None:
        chunk_size = max(1, min(50, spec.trials // (8 * workers) or 1))
    parts = chunks(spec.trials, chunk_size)
    spec_dict = spec.to_dict()
    if backend == "processes":
        warm_up(spec.algorithms)
    rows: list[dict] = []
    points = spec.n_units // spec.trials if spec.trials else 0
    with _progress(spec.trials, f"{desc} ({points} points x {len(spec.algorithms)} algorithms per trial)", progress) as bar:
        if backend == "serial" or (backend == "processes" and workers == 1):
            it: Iterator = ((len(p), run_chunk(spec_dict, p)) for p in parts)
        elif backend == "processes":
            it = _iter_processes(spec_dict, parts, workers)
        else:
            if scheduler is None:
                raise InvalidRequest("the dask backend needs a scheduler address (tcp://HOST:PORT)")
            it = _iter_dask(spec_dict, parts, scheduler)
        for n, part_rows in it:
            rows.extend(part_rows)
            bar.update(n)
    rows = _sort_rows(rows, spec)
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df[cols].reset_index(drop=True)


def write_results(df, out_dir: str | Path, *, fmt: str = "parquet", stem: str = "results") -> Path:
    """Write rows to ``results.parquet`` (or ``results.csv``) in ``out_dir``
    (``stem`` names another file, e.g. ``sensitivity``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        path = out / f"{stem}.parquet"
        df.to_parquet(path, index=False, engine="pyarrow", compression="zstd")
    elif fmt == "csv":
        path = out / f"{stem}.csv"
        df.to_csv(path, index=False, float_format="%.17g")
    else:
        raise InvalidRequest(f"unknown results format {fmt!r} (use parquet or csv)")
    return path


def read_results(path: str | Path):
    """Read a results file (``.parquet`` or ``.csv``), or the one in a directory."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise InvalidRequest(f"{path}: no results.parquet or results.csv in this directory")
    if not p.is_file():
        raise InvalidRequest(f"{p}: no such file")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as err:  # pyarrow/pandas raise many kinds on a bad file
        raise InvalidRequest(f"{p}: cannot read results: {str(err).strip()}") from None
    kind = "network" if "network" in df.columns else "figure"  # a study's rows, or a sweep's
    missing = [c for c in (kind, "algorithm", "security", "consumed_bits") if c not in df.columns]
    if missing:
        raise InvalidRequest(f"{p}: not a qkdseg results file (missing columns {', '.join(missing)})")
    if len(df) == 0:
        raise InvalidRequest(f"{p}: no rows (nothing to draw)")
    for col in ("security", "consumed_bits"):
        values = pd.to_numeric(df[col], errors="coerce")
        empty = sorted(str(a) for a, v in values.groupby(df["algorithm"]) if v.isna().all())
        if empty:
            raise InvalidRequest(f"{p}: column {col} holds no number (all NaN) for {', '.join(empty)}")
    return df


__all__: Sequence[str] = ("COLUMNS", "chunks", "process_pool", "read_results", "run_sweep", "warm_up", "write_results")
