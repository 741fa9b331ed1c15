"""The ``qkdseg`` command: a thin adapter over the Python API.

User errors (a bad file, an unknown node, a bad value) print one line,
``qkdseg: error: ...``, on standard error and exit with status 2; no
traceback.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import functools

import typer
from rich.console import Console
from rich.table import Table

from .errors import InvalidRequest, QkdsegError

app = typer.Typer(
    help="Segment-based multipath key distribution in partially-trusted relay QKD networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topology_app = typer.Typer(help="Generate, list and inspect topologies.", no_args_is_help=True)
app.add_typer(topology_app, name="topology")
from .kms.cli import kms_app  # noqa: E402  (the key service's commands; the server itself loads lazily)

app.add_typer(kms_app, name="kms")

NET_HELP = "A network: a .json/.graphml/.gml file, 'example', or 'topohub:GROUP/NAME[?trusted=K&p=P&seed=S]'."


def _user_errors(func):
    """Turn a :class:`QkdsegError` into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QkdsegError as err:
            typer.echo(f"qkdseg: error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


class Fmt(str, Enum):
    text = "text"
    json = "json"


class Scheme(str, Enum):
    paper = "paper"
    optimal = "optimal"
    reuse = "reuse"
    xor_all = "xor-all"


def _console() -> Console:
    return Console(width=160 if not sys.stdout.isatty() else None, highlight=False)


def _dump(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, allow_nan=False))


def _load(net: str, default_p: Optional[float]):
    from .topology import load

    return load(net, default_p=default_p)


@app.command()
@_user_errors
def route(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    src: Annotated[str, typer.Option("--src", help="Source node id.")],
    dst: Annotated[str, typer.Option("--dst", help="Destination node id.")],
    algorithm: Annotated[str, typer.Option("--algorithm", "-a", help="Routing algorithm (see `qkdseg algorithms`).")] = "smr",
    max_paths: Annotated[Optional[int], typer.Option("--max-paths", help="Paths per segment (default: unlimited).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="SMR segment-node distance: hops or length.")] = None,
    block_bits: Annotated[Optional[int], typer.Option("--block-bits", help="Key piece size B in bits (default: smallest pool used).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="MSP: seed of the random walks (default 0).")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="MSP: bias towards the destination (default 1).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="MSP: steps per walk before it gives up.")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", "-e", help="Security level: reconstruct global keys that each meet it.")] = None,
    reconstruction: Annotated[Optional[Scheme], typer.Option("--reconstruction", "-r", help="Reconstruction scheme (needs --epsilon; default paper).")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the route to this image file (.png, .svg, .pdf).")] = None,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Route one key request and print its paths, security and consumption."""
    from .api import route as do_route

    network = _load(net, default_p)
    s, d = network.resolve(src), network.resolve(dst)
    pairs = (("max_paths", max_paths), ("metric", metric), ("seed", seed), ("beta", beta), ("max_steps", max_steps))
    options = {k: v for k, v in pairs if v is not None}
    if reconstruction is not None and epsilon is None:
        raise InvalidRequest("--reconstruction needs --epsilon (the security level every global key must meet)")
    r = do_route(
        network,
        s,
        d,
        algorithm=algorithm,
        block_bits=block_bits,
        epsilon=epsilon,
        reconstruction=reconstruction.value if reconstruction is not None else None,
        **options,
    )
    if plot is not None:
        from .plot import plot_route

        if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InvalidRequest(f"--plot {plot}: use a .png, .svg or .pdf file name")
        try:
            plot_route(network, r, plot)
        except OSError as err:
            raise InvalidRequest(f"--plot {plot}: cannot write: {err}") from None
    if fmt is Fmt.json:
        _dump(r.to_dict())
        return
    con = _console()
    title = f"{r.algorithm}: {r.source} \u2192 {r.destination} on {network.name}"
    if r.blocked:
        con.print(f"{title}: [bold red]BLOCKED[/] (no usable path)")
        if r.reconstruction is not None:
            con.print(f"key length at epsilon={r.reconstruction.epsilon:g}: 0 bits (blocked)")
        return
    table = Table(title=title, title_justify="left")
    for col in ("segment", "from", "to", "path", "relays", "Psec(path)", "segment security"):
        table.add_column(col, justify="right" if col in ("relays", "Psec(path)", "segment security") else "left")
    p = network.graph.nodes
    for j, seg in enumerate(r.segments, 1):
        for k, path in enumerate(seg.paths):
            psec = 1.0
            for v in path[1:-1]:
                psec *= p[v]["p"]
            table.add_row(
                str(j) if k == 0 else "",
                str(seg.source) if k == 0 else "",
                str(seg.target) if k == 0 else "",
                " \u2192 ".join(map(str, path)),
                str(len(path) - 2),
                f"{psec:.4f}",
                f"{seg.security:.6f}" if k == 0 else "",
            )
    con.print(table)
    arrow = " \u2192 "
    con.print(f"segment nodes        {arrow.join(map(str, r.segment_nodes))}")
    con.print(f"security (exact)     {r.security:.6f}")
    label = "security (claimed)  " if r.algorithm == "msp" else "security (indep.)   "
    con.print(f"{label} {r.security_independent:.6f}")
    con.print(f"block bits           {r.block_bits}")
    con.print(f"consumed bits        {r.consumed_bits}  ({r.hops} hops)")
    con.print(f"key consumption rate {r.key_consumption_rate:.6f}")
    if r.reconstruction is not None:
        _print_reconstruction(con, r)
    if plot is not None:
        con.print(f"plot                 {plot}")


def _print_reconstruction(con: Console, r) -> None:
    rec = r.reconstruction
    kind = "computational keys" if rec.scheme == "reuse" else "global keys"
    table = Table(title=f"reconstruction {rec.scheme} at epsilon={rec.epsilon:g}: {rec.n_keys} {kind}", title_justify="left")
    for col in ("key", "security", "bits", "parts (segment: path numbers)"):
        table.add_column(col, justify="left" if col.startswith("parts") else "right")
    for i, key in enumerate(rec.global_keys, 1):
        parts = "  ".join(f"{p.segment + 1}: {','.join(str(x + 1) for x in p.paths)}" for p in key.parts)
        table.add_row(str(i), f"{key.security:.6f}", str(key.bits), parts)
    if rec.global_keys:
        con.print(table)
    else:
        con.print(f"reconstruction {rec.scheme} at epsilon={rec.epsilon:g}: no key meets the level ({rec.status})")
    con.print(f"key length at eps    {rec.key_bits} bits ({rec.n_keys} keys of {rec.block_bits} bits)")
    per = r.consumed_bits_per_key_bit
    con.print(f"consumed per key bit {per:.3f}" if per is not None else "consumed per key bit - (no key delivered)")
    if rec.information_theoretic_bound_bits is not None:
        con.print(
            f"information-theoretic bound {rec.information_theoretic_bound_bits} bits "
            "(reuse keys are computational: hashing adds no secret entropy)"
        )
    if rec.optimal is not None:
        con.print(f"optimal              {'proven' if rec.optimal else 'NOT proven'}: {rec.status}")


@app.command()
@_user_errors
def algorithms() -> None:
    """List every routing algorithm and reconstruction scheme with its options."""
    from .reconstruction import SCHEME_DESCRIPTIONS, SCHEME_OPTIONS
    from .routing import ALGORITHMS

    con = _console()
    table = Table(title="routing algorithms", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    table.add_column("options")
    for a in ALGORITHMS.values():
        table.add_row(a.name, a.description, "\n".join(f"{k}: {v}" for k, v in a.options.items()) or "-")
    con.print(table)
    table = Table(title="reconstruction schemes (route --epsilon E --reconstruction NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    table.add_column("options")
    for name, desc in SCHEME_DESCRIPTIONS.items():
        table.add_row(name, desc, "\n".join(f"{k}: {v}" for k, v in SCHEME_OPTIONS[name].items()) or "-")
    con.print(table)


@topology_app.command("generate")
@_user_errors
def topology_generate(
    kind: Annotated[str, typer.Argument(help="Generator: waxman.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.json, .graphml or .gml).")],
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of nodes.")] = 100,
    trusted: Annotated[int, typer.Option("--trusted", "-t", help="Number of trusted relays.")] = 10,
    p: Annotated[float, typer.Option("--p", help="Security probability of untrusted relays.")] = 0.8,
    pool_bits: Annotated[int, typer.Option("--pool-bits", help="Key pool per link, bits.")] = 100_000,
    trusted_p: Annotated[float, typer.Option("--trusted-p", help="Security probability of trusted relays.")] = 1.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Waxman distance decay (networkx naming).")] = 0.15,
    beta: Annotated[float, typer.Option("--beta", help="Waxman link-probability scale (networkx naming).")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (recorded in the file).")] = 0,
) -> None:
    """Generate a seeded random topology and write it to a file."""
    from .topology import waxman, write_network

    if kind != "waxman":
        raise InvalidRequest(f"unknown generator {kind!r} (known: waxman)")
    net = waxman(nodes, trusted=trusted, p=p, pool_bits=pool_bits, trusted_p=trusted_p, alpha=alpha, beta=beta, seed=seed)
    write_network(net, out)
    s = net.summary()
    typer.echo(f"wrote {out}: {s['nodes']} nodes, {s['links']} links, {s['trusted']} trusted, mean degree {s['mean_degree']:.2f}, seed {seed}")


@topology_app.command("list")
@_user_errors
def topology_list(
    group: Annotated[Optional[str], typer.Option("--group", help="Only this topohub group (topozoo, sndlib, ...).")] = None,
) -> None:
    """List the built-in networks and the topohub topologies."""
    from .topology import BUILTIN, topohub_names

    if group is None:
        for name in BUILTIN:
            typer.echo(name)
    names = topohub_names(group)
    if group is not None and not names:
        raise InvalidRequest(f"no topohub group {group!r}")
    for name in names:
        typer.echo(f"topohub:{name}")


@topology_app.command("show")
@_user_errors
def topology_show(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Print a network's counts, mean degree and connectivity."""
    network = _load(net, default_p)
    s = network.summary()
    if fmt is Fmt.json:
        _dump(s)
        return
    table = Table(title=f"network {s['name']}", title_justify="left", show_header=False)
    for k, v in s.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    table.add_row("trusted nodes", ", ".join(map(str, network.trusted_nodes)) or "-")
    _console().print(table)


@app.command()
@_user_errors
def demo(
    requests: Annotated[int, typer.Option("--requests", help="Random requests on the Waxman network.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Waxman network and the request pairs.")] = 7,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
) -> None:
    """Every algorithm on the built-in example and on a seeded 100-node Waxman network."""
    from .demo import demo_rows

    if requests < 1:
        raise InvalidRequest(f"--requests {requests}: must be at least 1")
    rows = demo_rows(requests=requests, seed=seed)
    if fmt is Fmt.json:
        _dump(rows)
        return
    table = Table(
        title=f"qkdseg demo, means per request: example 0->7; waxman n=100 trusted=10 p=0.8 seed={seed}, {requests} random pairs",
        title_justify="left",
    )
    cols = {
        "network": "network", "algorithm": "algorithm", "requests": "requests", "security": "security",
        "security_independent": "sec. indep.", "segments": "segments", "paths": "paths", "hops": "hops",
        "consumed_bits": "consumed bits", "key_consumption_rate": "consumption rate", "blocked": "blocked",
    }
    for c, label in cols.items():
        table.add_column(label, justify="left" if c in ("network", "algorithm") else "right", no_wrap=True)
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            if c in ("security", "security_independent"):
                cells.append(f"{v:.4f}")
            elif c == "key_consumption_rate":
                cells.append(f"{v:.4f}")
            elif c == "consumed_bits":
                cells.append(f"{v:,.0f}")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    _console().print(table)


@app.command()
@_user_errors
def emulate(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    src: Annotated[str, typer.Option("--src", help="Source node id.")],
    dst: Annotated[str, typer.Option("--dst", help="Destination node id.")],
    algorithm: Annotated[str, typer.Option("--algorithm", "-a", help="Routing algorithm (see `qkdseg algorithms`).")] = "smr",
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", "-e", help="Also execute the reconstruction at this level; per-key secrecy.")] = None,
    reconstruction: Annotated[Optional[Scheme], typer.Option("--reconstruction", "-r", help="Reconstruction scheme (needs --epsilon; default paper).")] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Runs, each from full pools with a fresh compromised set.")] = 1000,
    block_bits: Annotated[int, typer.Option("--block-bits", help="Key piece size B in bits (a multiple of 8).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the compromised-set draws.")] = 0,
    max_paths: Annotated[Optional[int], typer.Option("--max-paths", help="Paths per segment (default: unlimited).")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Relay real key material over a route, many times, against a sampled adversary (docs/keys.md)."""
    from .keys import emulate as do_emulate

    network = _load(net, default_p)
    s, d = network.resolve(src), network.resolve(dst)
    if reconstruction is not None and epsilon is None:
        raise InvalidRequest("--reconstruction needs --epsilon (the security level every global key must meet)")
    out = do_emulate(
        network,
        s,
        d,
        algorithm,
        trials=trials,
        block_bits=block_bits,
        seed=seed,
        epsilon=epsilon,
        reconstruction=reconstruction.value if reconstruction is not None else None,
        record_compromised=fmt is Fmt.json,
        options={"max_paths": max_paths} if max_paths is not None else None,
    )
    if fmt is Fmt.json:
        _dump(out)
        return
    con = _console()
    con.print(f"emulate {algorithm}: {s} \u2192 {d} on {network.name}, {trials} trials, B={out['block_bits']} bits, seed {seed}")
    if out["blocked"]:
        con.print("[bold red]BLOCKED[/] (no usable path): nothing relayed")
        return
    lo, hi = out["ci95"]
    arrow = " \u2192 "
    con.print(f"segment nodes        {arrow.join(map(str, out['route']['segment_nodes']))}")
    con.print(f"keys identical       {out['keys_identical']} / {trials} trials (both ends, byte for byte)")
    con.print(f"empirical secrecy    {out['empirical_secrecy']:.4f}  (95% CI {lo:.4f} .. {hi:.4f}; xor-all key)")
    con.print(f"exact security       {out['exact_security']:.4f}  (standard error {out['standard_error']:.4f})")
    con.print(f"bits consumed        {out['bits_consumed']}  ({out['consumed_bits_per_trial']} per trial)")
    if "global_keys" in out:
        kind = "computational keys" if out["reconstruction"] == "reuse" else "global keys"
        table = Table(
            title=f"reconstruction {out['reconstruction']} at epsilon={out['epsilon']:g}: {len(out['global_keys'])} {kind}",
            title_justify="left",
        )
        for col in ("key", "exact", "empirical", "95% CI", "identical"):
            table.add_column(col, justify="right")
        for k in out["global_keys"]:
            table.add_row(
                str(k["key"] + 1),
                f"{k['exact_security']:.4f}",
                f"{k['empirical_secrecy']:.4f}",
                f"{k['ci95'][0]:.4f} .. {k['ci95'][1]:.4f}",
                str(k["keys_identical"]),
            )
        con.print(table)


class Backend(str, Enum):
    processes = "processes"
    serial = "serial"


def _print_claims(claims: list[dict]) -> None:
    table = Table(title="the paper's claims on this data", title_justify="left")
    robust = any("robust" in c for c in claims)
    for col in ("figure", "claim", "verdict", *(["robust to MSP's beta"] if robust else []), "numbers"):
        table.add_column(col, overflow="fold")
    for c in claims:
        verdict = "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]"
        table.add_row(c["figure"], c["claim"], verdict, *([c.get("robust", "-")] if robust else []), c["evidence"])
    _console().print(table)


@app.command()
@_user_errors
def reproduce(
    trials: Annotated[int, typer.Option("--trials", help="Trials per point.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Master seed (recorded in every row).")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("out"),
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Dask scheduler tcp://HOST:PORT (default: local processes).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local processes (default: all cores).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="Local backend.")] = Backend.processes,
    csv: Annotated[bool, typer.Option("--csv", help="Write results.csv instead of results.parquet.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    sensitivity_trials: Annotated[Optional[int], typer.Option("--sensitivity-trials", help="Trials per point of the MSP beta sensitivity (default min(trials, 200); 0: none).")] = None,
) -> None:
    """The paper's evaluation (Fig. 5 and 6): results, figures and a PASS/FAIL report."""
    from .experiments import reproduce as do_reproduce

    if workers is not None and workers < 1:
        raise InvalidRequest(f"--workers {workers}: must be at least 1")
    info = do_reproduce(
        trials, seed, out, backend=backend.value, workers=workers, scheduler=scheduler,
        fmt="csv" if csv else "parquet", progress=not quiet, sensitivity_trials=sensitivity_trials,
    )
    _print_claims(info["claims"])
    typer.echo(f"wrote {info['results']}, {', '.join(info['figures'])}, {info['report']} in {info['seconds']:.1f} s")


@app.command()
@_user_errors
def plot(
    results: Annotated[Path, typer.Argument(help="results.parquet / results.csv, or the directory holding it.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: beside the results).")] = None,
) -> None:
    """Redraw the figures and the report from saved results, without recomputing."""
    from .experiments import read_results, render
    from .experiments.study import plot_study, write_study_report

    df = read_results(results)
    target = out or (results if results.is_dir() else results.parent)
    if "network" in df.columns:
        figs = [str(p) for p in plot_study(df, target)]
        report = write_study_report(df, target)
        typer.echo(f"wrote {', '.join(figs)}, {report}")
        return
    from .experiments.sensitivity import sensitivity_path

    sens = sensitivity_path(results if results.is_dir() else results.parent)
    info = render(df, target, header=f"Redrawn by `qkdseg plot {results}` from saved results.",
                  sensitivity=read_results(sens) if sens is not None else None)
    _print_claims(info["claims"])
    typer.echo(f"wrote {', '.join(info['figures'])}, {info['report']}")


@app.command()
@_user_errors
def study(
    topologies: Annotated[str, typer.Option("--topologies", help="Topology group: zoo (Topology Zoo) or sndlib.")] = "zoo",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("out-study"),
    requests: Annotated[int, typer.Option("--requests", help="Random requests per network.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Master seed.")] = 0,
    trusted: Annotated[float, typer.Option("--trusted", help="Trusted relays: a fraction (< 1) or a count.")] = 0.1,
    p: Annotated[float, typer.Option("--p", help="Security probability of untrusted relays.")] = 0.8,
    min_nodes: Annotated[int, typer.Option("--min-nodes", help="Only networks with at least this many nodes.")] = 20,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local processes (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """SMR against the baselines on every real topology of a group."""
    from .experiments import write_results
    from .experiments.study import plot_study, run_study, write_study_report

    df = run_study(topologies, requests=requests, seed=seed, trusted=trusted if trusted < 1 else int(trusted), p=p,
                   min_nodes=min_nodes, workers=workers, progress=not quiet)
    path = write_results(df, out)
    figs = plot_study(df, out)
    header = (f"`qkdseg study --topologies {topologies} --requests {requests} --seed {seed} --trusted {trusted} --p {p}`: "
              f"{df['network'].nunique()} networks, {len(df)} rows.")
    report = write_study_report(df, out, header=header)
    typer.echo(f"wrote {path}, {', '.join(map(str, figs))}, {report}")


def main() -> None:
    """Entry point of the ``qkdseg`` console script."""
    app(prog_name="qkdseg")


if __name__ == "__main__":  # pragma: no cover
    main()
