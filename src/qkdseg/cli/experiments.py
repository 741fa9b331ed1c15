"""``qkdseg reproduce``, ``plot`` and ``study``: the paper's evaluation and the studies on real topologies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest
from .common import (MAX_REQUESTS, MAX_TRIALS, MAX_WORKERS, OUT_PATH, Backend, _check_number, _check_out_dir, _check_range,
                     _check_seed,
                     _console, staged_output)
from .errors import user_errors


def _print_claims(claims: list[dict]) -> None:
    table = Table(title="the paper's claims on this data", title_justify="left")
    robust = any("robust" in c for c in claims)
    for col in ("figure", "claim", "verdict", *(["robust to MSP's beta"] if robust else []), "numbers"):
        table.add_column(col, overflow="fold")
    for c in claims:
        verdict = "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]"
        table.add_row(c["figure"], c["claim"], verdict, *([c.get("robust", "-")] if robust else []), c["evidence"])
    _console().print(table)


@user_errors
def reproduce(
    trials: Annotated[int, typer.Option("--trials", help="Trials per point.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Master seed (recorded in every row).")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.", **OUT_PATH)] = Path("out"),
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Dask scheduler tcp://HOST:PORT (default: local processes).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local processes (default: all cores).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="Local backend.")] = Backend.processes,
    csv: Annotated[bool, typer.Option("--csv", help="Write results.csv instead of results.parquet.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    sensitivity_trials: Annotated[Optional[int], typer.Option("--sensitivity-trials", help="Trials per point of the MSP beta sensitivity (default min(trials, 200); 0: none).")] = None,
    level_trials: Annotated[Optional[int], typer.Option("--level-trials", help="Trials per Fig. 5 point of smr-level's fig_level (default min(trials, 200); 0: none).")] = None,
) -> None:
    """The paper's evaluation (Fig. 5 and 6): results, figures and a PASS/FAIL report."""
    from ..experiments import reproduce as do_reproduce

    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_range(trials, "--trials", 1, MAX_TRIALS)
    _check_range(sensitivity_trials, "--sensitivity-trials", 0, MAX_TRIALS)
    _check_range(level_trials, "--level-trials", 0, MAX_TRIALS)
    _check_out_dir(out)  # before the sweep, not after it
    with staged_output(out) as stage:
        info = do_reproduce(
            trials, seed, stage.dir, backend=backend.value, workers=workers, scheduler=scheduler,
            fmt="csv" if csv else "parquet", progress=not quiet, sensitivity_trials=sensitivity_trials,
            level_trials=level_trials,
        )
        files = [stage.final(p) for p in info["files"]]
    _print_claims(info["claims"])
    typer.echo(f"wrote {', '.join(map(str, files))} in {info['seconds']:.1f} s")


@user_errors
def plot(
    results: Annotated[Path, typer.Argument(help="results.parquet / results.csv, or the directory holding it.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: a new folder 'redrawn' beside the results, so their own report stays).", **OUT_PATH)] = None,
) -> None:
    """Redraw the figures and the report from saved results, without recomputing."""
    from ..experiments import read_results, render
    from ..experiments.study import plot_study, write_study_report

    df = read_results(results)
    target = out or (results if results.is_dir() else results.parent) / "redrawn"
    _check_out_dir(target, "--out" if out is not None else "output directory")
    if "network" in df.columns:
        with staged_output(target, last=("report.md",)) as stage:
            figs = [stage.final(p) for p in plot_study(df, stage.dir)]
            report = stage.final(write_study_report(df, stage.dir))
        typer.echo(f"wrote {', '.join(map(str, figs))}, {report}")
        return
    from ..experiments.sensitivity import sensitivity_path

    sens = sensitivity_path(results if results.is_dir() else results.parent)
    sens_df = read_results(sens) if sens is not None else None
    with staged_output(target, last=("report.md",)) as stage:
        info = render(df, stage.dir, header=f"Redrawn by `qkdseg plot {results}` from saved results.", sensitivity=sens_df)
        files = [stage.final(p) for p in [*info["figures"], info["report"]]]
    _print_claims(info["claims"])
    typer.echo(f"wrote {', '.join(map(str, files))}")


def _whole_numbers(text: str, option: str) -> list[int]:
    """``"5,10,20"`` -> ``[5, 10, 20]`` (sorted, distinct), naming the option and the bad item."""
    values = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            raise InvalidRequest(f"{option} {text!r}: an empty item (use whole numbers separated by commas)")
        try:
            values.add(int(item))
        except ValueError:
            raise InvalidRequest(f"{option} {text!r}: {item!r} is not a whole number (use whole numbers separated by commas)") from None
    return sorted(values)


#: The options of ``study --threshold`` (the others belong to the Zoo and placement studies).
_THRESHOLD_OPTIONS = {"threshold", "replications", "full", "requests", "seed", "out", "workers", "quiet"}


def _check_study_mode(ctx: typer.Context, threshold: bool) -> None:
    """Refuse an option given to the study it does not belong to (``--threshold`` or the others), naming it."""
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            continue
        flag = "--" + name.replace("_", "-")
        if threshold and name not in _THRESHOLD_OPTIONS:
            raise InvalidRequest(f"{flag} does not apply to study --threshold")
        if not threshold and name in ("replications", "full"):
            raise InvalidRequest(f"{flag} needs --threshold")


def _threshold_study(out: Path, requests: int, replications: int, seed: int, full: bool, workers, quiet: bool) -> None:
    """``study --threshold``: the study of :mod:`qkdseg.experiments.threshold` to ``out``."""
    import time

    from ..experiments import write_results
    from ..experiments.threshold import run_threshold_study
    from ..experiments.threshold_report import plot_threshold, write_threshold_report

    _check_seed(seed)
    _check_range(requests, "--requests", 2, MAX_REQUESTS)
    _check_range(replications, "--replications", 2, 10_000)
    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_out_dir(out)
    t0 = time.perf_counter()
    static, dynamic, sim = run_threshold_study(requests=requests, replications=replications, seed=seed, full=full,
                                               workers=workers, progress=not quiet)
    header = (f"`qkdseg study --threshold --requests {requests} --replications {replications} --seed {seed}"
              f"{' --full' if full else ''}`: {len(static)} static rows, {len(dynamic)} simulator runs.")
    with staged_output(out, last=("report.md",)) as stage:
        files = [write_results(static, stage.dir, stem="static"), write_results(dynamic, stage.dir, stem="dynamic"),
                 *plot_threshold(static, dynamic, stage.dir, sim),
                 write_threshold_report(static, dynamic, stage.dir, header=header, sim=sim)]
        files = [stage.final(f) for f in files]
    typer.echo(f"wrote {', '.join(map(str, files))} in {time.perf_counter() - t0:.1f} s")


@user_errors
def study(
    ctx: typer.Context,
    topologies: Annotated[str, typer.Option("--topologies", help="Topology group: zoo (Topology Zoo) or sndlib.")] = "zoo",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.", **OUT_PATH)] = Path("out-study"),
    requests: Annotated[int, typer.Option("--requests", help="Random requests per network.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Master seed.")] = 0,
    trusted: Annotated[float, typer.Option("--trusted", help="Trusted relays: a fraction (< 1) or a count.")] = 0.1,
    p: Annotated[float, typer.Option("--p", help="Security probability of untrusted relays.")] = 0.8,
    min_nodes: Annotated[int, typer.Option("--min-nodes", help="Only networks with at least this many nodes.")] = 20,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local processes (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    placement: Annotated[bool, typer.Option("--placement", help="Instead: the trusted-relay placement study (docs/placement.md).")] = False,
    waxman_seeds: Annotated[int, typer.Option("--waxman-seeds", help="Placement study: 100-node Waxman networks.")] = 20,
    budgets: Annotated[str, typer.Option("--budgets", help="Placement study: budgets k, comma-separated.")] = "5,10,20",
    no_zoo: Annotated[bool, typer.Option("--no-zoo", help="Placement study: Waxman networks only.")] = False,
    demands: Annotated[str, typer.Option("--demands", help="Placement study: demands of every network (all, sample:N, gravity).")] = "sample:500",
    swap_max_k: Annotated[int, typer.Option("--swap-max-k", help="Placement study: run swap (one pass) only up to this budget.")] = 10,
    exact_budgets: Annotated[str, typer.Option("--exact-budgets", help="Placement study: budgets of the exact optimum, comma-separated.")] = "2,3",
    max_placements: Annotated[int, typer.Option("--max-placements", help="Placement study: exact only where there are at most this many subsets.")] = 4000,
    threshold: Annotated[bool, typer.Option("--threshold", help="Instead: XOR against threshold sharing (issue 40; docs/algorithms.md).")] = False,
    replications: Annotated[int, typer.Option("--replications", help="Threshold study: simulator runs per network and scheme.")] = 3,
    full: Annotated[bool, typer.Option("--full", help="Threshold study: every point of the paper's Waxman grids.")] = False,
) -> None:
    """SMR against the baselines on every real topology of a group (or, with --placement, where to add trusted relays;
    with --threshold, XOR against threshold sharing)."""
    from ..experiments import write_results
    from ..experiments.study import plot_study, run_study, write_study_report

    _check_study_mode(ctx, threshold)
    if threshold:
        return _threshold_study(out, requests, replications, seed, full, workers, quiet)
    if placement:
        from ..experiments.placement import plot_placement_study, run_placement_study, write_placement_report

        ks, eks = _whole_numbers(budgets, "--budgets"), _whole_numbers(exact_budgets, "--exact-budgets")
        if not ks or ks[0] < 0:
            raise InvalidRequest(f"--budgets {budgets!r}: need at least one budget >= 0")
        if eks and eks[0] < 0:
            raise InvalidRequest(f"--exact-budgets {exact_budgets!r}: a budget is at least 0")
        if waxman_seeds < 0:
            raise InvalidRequest(f"--waxman-seeds {waxman_seeds}: must be at least 0")
        from ..placement.demands import check_spec

        check_spec(demands)
        _check_range(swap_max_k, "--swap-max-k", 0, 1_000_000)
        _check_range(max_placements, "--max-placements", 0, 10**12)
        _check_range(min_nodes, "--min-nodes", 0, 10**9)
        _check_range(workers, "--workers", 1, MAX_WORKERS)
        _check_number(p, "--p", hi=1.0)
        _check_seed(seed)
        _check_out_dir(out)
        df = run_placement_study(waxman_seeds=waxman_seeds, zoo=not no_zoo, min_nodes=min_nodes, budgets=ks, seed=seed,
                                 p=p, waxman_demands=demands, zoo_demands=demands, swap_max_k=swap_max_k,
                                 exact_budgets=eks, max_placements=max_placements, workers=workers, progress=not quiet)
        header = (f"`qkdseg study --placement --waxman-seeds {waxman_seeds} --budgets {budgets} --seed {seed} --p {p}"
                  f"{' --no-zoo' if no_zoo else ''} --min-nodes {min_nodes} --demands {demands} --swap-max-k {swap_max_k} "
                  f"--exact-budgets {exact_budgets} --max-placements {max_placements}`: {df['network'].nunique()} networks, {len(df)} rows.")
        with staged_output(out, last=("placement.md",)) as stage:
            files = [write_results(df, stage.dir, stem="placement"), *plot_placement_study(df, stage.dir),
                     write_placement_report(df, stage.dir, header=header)]
            files = [stage.final(f) for f in files]
        typer.echo(f"wrote {', '.join(map(str, files))}")
        return
    _check_seed(seed)
    _check_range(requests, "--requests", 1, MAX_REQUESTS)
    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_range(min_nodes, "--min-nodes", 0, 10**9)
    _check_number(p, "--p", hi=1.0)
    _check_number(trusted, "--trusted", what=" (a fraction below 1 or a whole count)")
    if trusted >= 1 and trusted != int(trusted):
        raise InvalidRequest(f"--trusted {trusted:g}: a count of trusted relays must be a whole number (or a fraction below 1)")
    _check_out_dir(out)  # before the study, not after it
    df = run_study(topologies, requests=requests, seed=seed, trusted=trusted if trusted < 1 else int(trusted), p=p,
                   min_nodes=min_nodes, workers=workers, progress=not quiet)
    header = (f"`qkdseg study --topologies {topologies} --requests {requests} --seed {seed} --trusted {trusted} --p {p}`: "
              f"{df['network'].nunique()} networks, {len(df)} rows.")
    with staged_output(out, last=("report.md",)) as stage:
        files = [write_results(df, stage.dir), *plot_study(df, stage.dir), write_study_report(df, stage.dir, header=header)]
        files = [stage.final(f) for f in files]
    typer.echo(f"wrote {', '.join(map(str, files))}")
