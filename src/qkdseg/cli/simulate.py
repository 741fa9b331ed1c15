"""``qkdseg simulate``: the time-dynamic run and the load sweep."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest
from .common import (NET_HELP, OUT_PATH, Backend, Scheme, Sharing, _check_number, _check_out_dir, _check_range,
                     _check_seed, _console, _load, _txt, sharing_fields, staged_output)
from .errors import user_errors


def _sim_command(params: dict) -> str:
    """The command of a simulate run as recorded in its outputs: every option that can change them, with its
    value (defaults included); not the output directory, workers, backend, scheduler or progress, so that
    reruns anywhere give identical files."""
    parts = ["qkdseg simulate", str(params["net"])]
    for name, value in params.items():
        if name in ("net", "out", "workers", "backend", "scheduler", "quiet") or value is None:
            continue
        parts.append(f"--{name.replace('_', '-')} {value.value if isinstance(value, Enum) else value}")
    return " ".join(parts)


def _run_supply(network, supply: str, *, out: Path, command: str, rate, rates, trace, duration: float,
                replications: int, algorithms: tuple, key_bits: int, epsilon: float, seed: int, pairs: str,
                arrivals: str, link_rate: float, reconstruction: str, hop_latency, stock_hit, key_ttl, supply_pairs,
                quiet: bool) -> None:
    """``simulate --supply``: every policy (and algorithm) on the same traces (qkdseg.experiments.supply)."""
    from ..experiments.supply import supply_runs, write_supply
    from ..sim import read_trace
    from ..sim.supply import DEFAULT_HOP_LATENCY_MS, DEFAULT_KEY_TTL_S, parse_supplies
    from ..supply import DEFAULT_HIT, check_hit

    supplies = parse_supplies(supply)
    hop = DEFAULT_HOP_LATENCY_MS if hop_latency is None else hop_latency
    _check_number(hop, "--hop-latency", what=" (milliseconds)")
    hit = check_hit(DEFAULT_HIT if stock_hit is None else stock_hit, "--stock-hit")
    ttl = DEFAULT_KEY_TTL_S if key_ttl is None else key_ttl
    _check_number(ttl, "--key-ttl", lo_open=True, what=" (seconds)")
    if supply_pairs is not None:
        _check_range(supply_pairs, "--supply-pairs", 1, network.n_nodes * (network.n_nodes - 1) // 2)
    grid: list = [rate]
    reqs = None
    if trace is not None:
        reqs = read_trace(trace, network, key_bits=key_bits, epsilon=epsilon, seed=seed)
        grid = [None]
    elif rates is not None:
        try:
            grid = [float(x) for x in rates.split(",")]
        except ValueError:
            raise InvalidRequest(f"--rates {rates!r}: must be numbers separated by commas") from None
        for x in grid:
            _check_number(x, "--rates", lo_open=True, what=" (requests per second)")

    def show(row: dict) -> None:
        if not quiet:
            typer.echo(f"  {row['algorithm']} {row['supply']}: hit {row['hit_rate']:.4f}, "
                       f"{row['mean_stocked_bits'] / 1000:.1f} kb stocked", err=True)

    df = supply_runs(network, supplies, algorithms=algorithms, rates=grid, duration=duration,
                     replications=replications, seed=seed, requests=reqs, key_bits=key_bits, epsilon=epsilon,
                     pairs=pairs, arrivals=arrivals, supply_pairs=supply_pairs, progress=show,
                     hop_latency_ms=hop, hit=hit, key_ttl=ttl, link_rate_bps=link_rate,
                     reconstruction=reconstruction)
    params = {"network": network.name, "nodes": network.n_nodes, "links": network.n_links, "supply": supply,
              "rates": grid, "replications": replications, "duration": duration, "key_bits": key_bits,
              "epsilon": epsilon, "seed": seed, "pairs": pairs, "arrivals": arrivals, "algorithms": list(algorithms),
              "hop_latency_ms": hop, "stock_hit": hit, "key_ttl": ttl, "supply_pairs": supply_pairs}
    with staged_output(out) as stage:
        info = write_supply(df, stage.dir, command=command, params=params, sweep=rates is not None)
        info["files"] = [str(stage.final(Path(p))) for p in info["files"]]
    table = Table(title=f"key supply on {_txt(network.name)} (mean over {replications} replication(s))",
                  title_justify="left")
    cols = ("rate", "algorithm", "supply", "hit rate", "wait p50 ms", "wait p99 ms", "served", "blocked",
            "mean stocked kb", "peak kb", "expired", "link bits/bit")
    for col in cols:
        table.add_column(col, justify="left" if col in ("algorithm", "supply") else "right")
    for _, r in info["summary"].iterrows():
        table.add_row(f"{r['rate']:g}", r["algorithm"], r["supply"], f"{r['hit_rate_mean']:.4f}",
                      f"{r['wait_p50_ms_mean']:.1f}", f"{r['wait_p99_ms_mean']:.1f}", f"{r['served_mean']:.0f}",
                      f"{r['blocked_mean']:.0f}", f"{r['mean_stocked_bits_mean'] / 1000:.2f}",
                      f"{r['peak_stocked_bits_mean'] / 1000:.2f}", f"{r['expired_keys_mean']:.0f}",
                      f"{r['link_bits_per_served_bit_mean']:.2f}")
    _console().print(table)
    typer.echo(f"wrote {', '.join(info['files'])}")


def _shared_as(ctx: typer.Context, network, sharing, tolerate, relay_failure, reconstruction) -> dict:
    """The run's ``reconstruction``, ``sharing``, ``tolerate`` and ``relay_failure`` (checked; the ones left
    at their defaults are left out): under threshold sharing the reconstruction is ``xor-all`` unless given."""
    from ..sim.engine import sim_sharing
    from ..sim.failures import check_relay_failure

    source = ctx.get_parameter_source("reconstruction")  # typer's own click: compared by name
    given = source is not None and source.name != "DEFAULT"
    name = "threshold" if sharing is Sharing.threshold else "xor"
    if tolerate is not None and sharing is None:
        raise InvalidRequest(f"--tolerate {tolerate} needs --sharing threshold")
    flags = sharing_fields(name, tolerate, reconstruction.value if given else None)  # one line naming the flag
    _, t, rec = sim_sharing(name, flags["tolerate"], flags["reconstruction"])
    from ..api.checks import check_tolerate_fits

    check_tolerate_fits(network.arrays, t, "--tolerate")
    out: dict = {"reconstruction": rec}
    if sharing is not None:
        out.update(sharing=name, tolerate=t)
    if relay_failure is not None:
        _check_number(relay_failure, "--relay-failure", hi=1.0)
        out["relay_failure"] = check_relay_failure(relay_failure)
    return out


@user_errors
def simulate(
    ctx: typer.Context,
    net: Annotated[str, typer.Argument(help=NET_HELP)],
    duration: Annotated[float, typer.Option("--duration", help="Arrival window, simulated seconds.")] = 3600.0,
    rate: Annotated[Optional[float], typer.Option("--rate", help="Requests per second (one run).")] = None,
    rates: Annotated[Optional[str], typer.Option("--rates", help="Load sweep: requests per second, comma-separated.")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Requests from a CSV/Parquet file (t, src, dst[, key_bits, epsilon]).")] = None,
    algorithms: Annotated[str, typer.Option("--algorithms", help="Comma-separated algorithms.")] = "smr,msp,disjoint,single",
    key_bits: Annotated[int, typer.Option("--key-bits", help="Key size of a request, bits.")] = 256,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Security level of a request.")] = 0.9,
    ttl: Annotated[float, typer.Option("--ttl", help="Longest wait of a request, seconds (0: blocked at once).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the arrivals and of MSP's walks.")] = 0,
    replications: Annotated[int, typer.Option("--replications", help="Load sweep: runs per rate (95% CIs).")] = 1,
    pairs: Annotated[str, typer.Option("--pairs", help="End nodes: uniform or gravity.")] = "uniform",
    arrivals: Annotated[str, typer.Option("--arrivals", help="poisson or ppbp (Poisson Pareto bursts).")] = "poisson",
    link_rate: Annotated[float, typer.Option("--link-rate", help="Key rate of links without rate_bps, bit/s.")] = 100_000.0,
    interval: Annotated[Optional[float], typer.Option("--interval", help="Time-series interval, s (default: at most 200 rows).")] = None,
    reconstruction: Annotated[Scheme, typer.Option("--reconstruction", help="Key reconstruction scheme.")] = Scheme.paper,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.", **OUT_PATH)] = Path("out-sim"),
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Load sweep on a Dask scheduler tcp://HOST:PORT.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Load sweep: local processes (default: all cores).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="Load sweep: local backend.")] = Backend.processes,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    supply: Annotated[Optional[str], typer.Option("--supply", help="Key supply policies, comma-separated: on-demand, "
                                                  "fixed:LOW:HIGH, adaptive (docs/model.md section 9).")] = None,
    hop_latency: Annotated[Optional[float], typer.Option("--hop-latency", metavar="MS", help="--supply: a relay's "
                                                         "time per hop, ms (default 5).")] = None,
    stock_hit: Annotated[Optional[float], typer.Option("--stock-hit", help="--supply adaptive: the share of "
                                                       "requests to serve from stock (default 0.99).")] = None,
    key_ttl: Annotated[Optional[float], typer.Option("--key-ttl", help="--supply: seconds a stocked key lives "
                                                     "unused (default 3600).")] = None,
    supply_pairs: Annotated[Optional[int], typer.Option("--supply-pairs", help="--supply: map the requests onto "
                                                        "this many pairs of nodes, drawn by the seed.")] = None,
    sharing: Annotated[Optional[Sharing], typer.Option("--sharing", help="How a segment's pieces make its key: xor "
                                                       "(default; all needed) or threshold (k-of-m, k = m - T).")] = None,
    tolerate: Annotated[Optional[int], typer.Option("--tolerate", help="--sharing threshold: lost paths a segment "
                                                    "key survives (T >= 1).")] = None,
    relay_failure: Annotated[Optional[float], typer.Option("--relay-failure", metavar="P", help="Each relay of a run "
                                                           "fails with probability P (drawn from the request's seed); a "
                                                           "failed run's bits are spent.")] = None,
) -> None:
    """Time-dynamic run: pools that refill, requests that arrive, blocking over time (docs/model.md section 9)."""
    from ..experiments.simulation import run_and_write, run_load_sweep, write_sweep

    _check_seed(seed)
    if sum(x is not None for x in (rate, rates, trace)) != 1:
        raise InvalidRequest("give exactly one of --rate, --rates (a load sweep) or --trace")
    if workers is not None and workers < 1:
        raise InvalidRequest(f"--workers {workers}: must be at least 1")
    _check_range(replications, "--replications", 1, 10_000)
    if scheduler is not None and rates is None:
        raise InvalidRequest("--scheduler runs a load sweep on Dask: use --rates (one rate is fine)")
    if replications > 1 and rates is None:
        raise InvalidRequest("--replications needs a load sweep: use --rates (one rate is fine)")
    _check_number(duration, "--duration", lo_open=True, what=" (simulated seconds)")
    _check_number(rate, "--rate", lo_open=True, what=" (requests per second)")
    _check_number(ttl, "--ttl", what=" (seconds; 0: blocked at once)")
    _check_number(epsilon, "--epsilon", hi=1.0)
    _check_number(link_rate, "--link-rate", what=" (bit/s; 0: links without rate_bps never refill)")
    _check_number(interval, "--interval", lo_open=True, what=" (seconds)")
    algs = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    if not algs:
        raise InvalidRequest(f"--algorithms {algorithms!r}: name at least one algorithm")
    twice = sorted({a for a in algs if algs.count(a) > 1})
    if twice:
        raise InvalidRequest(f"--algorithms {algorithms}: {', '.join(twice)} given more than once")
    from ..routing import get_algorithm

    for a in algs:
        get_algorithm(a)
    network = _load(net, None)
    _check_out_dir(out)
    command = _sim_command(ctx.params)
    shared = _shared_as(ctx, network, sharing, tolerate, relay_failure, reconstruction)
    if supply is None:
        given = [f for f, v in (("--hop-latency", hop_latency), ("--stock-hit", stock_hit), ("--key-ttl", key_ttl),
                                ("--supply-pairs", supply_pairs)) if v is not None]
        if given:
            raise InvalidRequest(f"{given[0]} needs --supply")
    else:
        given = [f for f, v in (("--sharing", sharing), ("--tolerate", tolerate), ("--relay-failure", relay_failure))
                 if v is not None]
        if given:
            raise InvalidRequest(f"{given[0]} is not supported with --supply (the supply study relays with XOR)")
        return _run_supply(network, supply, out=out, command=command, rate=rate, rates=rates, trace=trace,
                          duration=duration, replications=replications, algorithms=algs, key_bits=key_bits,
                          epsilon=epsilon, seed=seed, pairs=pairs, arrivals=arrivals, link_rate=link_rate,
                          reconstruction=reconstruction.value, hop_latency=hop_latency, stock_hit=stock_hit,
                          key_ttl=key_ttl, supply_pairs=supply_pairs, quiet=quiet)
    common = dict(algorithms=algs, epsilon=epsilon, ttl=ttl, seed=seed, link_rate_bps=link_rate, **shared)
    if rates is not None:
        if any(not x.strip() for x in rates.split(",")):
            raise InvalidRequest(f"--rates {rates!r}: an empty item (use numbers separated by commas)")
        try:
            grid = [float(x) for x in rates.split(",")]
        except ValueError:
            raise InvalidRequest(f"--rates {rates!r}: must be numbers separated by commas") from None
        df, timings = run_load_sweep(network, grid, duration=duration, replications=replications, key_bits=key_bits,
                                     pairs=pairs, arrivals=arrivals, backend=backend.value, workers=workers,
                                     scheduler=scheduler, progress=not quiet, **common)
        params = {"network": network.name, "nodes": network.n_nodes, "links": network.n_links, "rates": grid,
                  "replications": replications, "duration": duration, "key_bits": key_bits, "pairs": pairs,
                  "arrivals": arrivals, **common, "algorithms": list(algs)}
        with staged_output(out) as stage:
            info = write_sweep(df, stage.dir, command=command, params=params)
            info["files"] = [str(stage.final(p)) for p in info["files"]]
        s = info["summary"]
        table = Table(title=f"load sweep on {_txt(network.name)} ({replications} replication(s), 95% CI)", title_justify="left")
        for col in ("rate", "algorithm", "blocking", "throughput kb/s", "mean security"):
            table.add_column(col, justify="left" if col == "algorithm" else "right")
        for _, r in s.iterrows():
            table.add_row(f"{r['rate']:g}", r["algorithm"], f"{r['blocking_mean']:.4f} ± {r['blocking_ci']:.4f}",
                          f"{r['throughput_bps_mean'] / 1000:.2f} ± {r['throughput_bps_ci'] / 1000:.2f}",
                          f"{r['mean_security_mean']:.6f}")
        _console().print(table)
    else:
        from ..sim import read_trace

        if trace is not None:
            reqs = read_trace(trace, network, key_bits=key_bits, epsilon=epsilon, seed=seed)
            kw = dict(requests=reqs)
        else:
            kw = dict(rate=rate, duration=duration, key_bits=key_bits, pairs=pairs, arrivals=arrivals)
        with staged_output(out) as stage:
            info = run_and_write(network, stage.dir, command=command, interval=interval, progress=not quiet, **common, **kw)
            info["files"] = [str(stage.final(p)) for p in info["files"]]
        s = info["summary"]
        table = Table(title=f"simulate on {_txt(network.name)}", title_justify="left")
        for col in ("algorithm", "requests", "served", "blocking", "throughput kb/s", "mean security"):
            table.add_column(col, justify="left" if col == "algorithm" else "right")
        for _, r in s.iterrows():
            table.add_row(r["algorithm"], str(r["requests"]), str(r["served"]), f"{r['blocking']:.4f}",
                          f"{r['throughput_bps'] / 1000:.2f}", f"{r['mean_security']:.6f}")
        _console().print(table)
        counts = dict(zip(s["algorithm"], s["requests"]))
        timings = {a: {"seconds": st["run_seconds"], "routing_seconds": st["routing_seconds"], "requests": int(counts[a])}
                   for a, st in info["stats"].items()}
    for a, t in timings.items():
        rps = t["requests"] / t["seconds"] if t["seconds"] > 0 else float("inf")
        share = t["routing_seconds"] / t["seconds"] if t["seconds"] > 0 else 0.0
        typer.echo(f"{a}: {t['requests']} requests in {t['seconds']:.2f} s ({rps:.0f} requests/s), routing {share:.0%}")
    typer.echo(f"wrote {', '.join(info['files'])}")
