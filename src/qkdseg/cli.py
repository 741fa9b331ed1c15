"""The ``qkdseg`` command: a thin adapter over the Python API.

User errors (a bad file, an unknown node, a bad value, a bad or missing
option, an output location that cannot be written) print one line,
``qkdseg: error: ...``, on standard error and exit with status 2; no
traceback. ``--help`` stays rich. Text output escapes control characters in
ids and names read from files.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import importlib

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from .errors import InvalidRequest, QkdsegError

def _click_classes(name: str) -> tuple[type, ...]:
    """Click's exception class ``name`` from typer's bundled copy and from
    click itself (typer releases differ in which one they raise)."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_CLICK_ERROR = _click_classes("ClickException")
_USAGE_ERROR = _click_classes("UsageError")
_NO_ARGS = _click_classes("NoArgsIsHelpError")
_ABORT = _click_classes("Abort")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    """Control characters (newlines, terminal escapes) as visible escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def _fail(message: str) -> None:
    typer.echo(f"qkdseg: error: {_one_line(message)}", err=True)


def _quiet_broken_pipe() -> None:
    """The reader closed our stdout (``qkdseg ... | head``): stop quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a descriptor
        pass


class _OneLineGroup(TyperGroup):
    """The top-level command group: every usage error (a missing or unknown
    option, a bad value for a typed option) of every command and sub-app as
    one ``qkdseg: error: ...`` line with status 2, instead of Click's panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as err:  # the help was printed
            rv = err.exit_code
        except _CLICK_ERROR as err:
            ctx = getattr(err, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            hint = f" (see '{ctx.command_path} --help')" if isinstance(err, _USAGE_ERROR) and ctx is not None else ""
            _fail(f"{where}{err.format_message().replace('Value error, ', '')}{hint}")
            rv = 2
        except _ABORT:
            _fail("aborted")
            rv = 1
        except QkdsegError as err:  # raised by a command without its own handler
            _fail(str(err))
            rv = 2
        except BrokenPipeError:
            _quiet_broken_pipe()
            rv = 0
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            _quiet_broken_pipe()
            rv = 0
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineGroup,
    help="Segment-based multipath key distribution in partially-trusted relay QKD networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topology_app = typer.Typer(help="Generate, list and inspect topologies.", no_args_is_help=True)
app.add_typer(topology_app, name="topology")
from .kms.cli import kms_app  # noqa: E402  (the key service's commands; the server itself loads lazily)

app.add_typer(kms_app, name="kms")
from .net.cli import controller_app, net_app, node_app  # noqa: E402  (the network of key service processes)

app.add_typer(net_app, name="net")
app.add_typer(node_app, name="node")
app.add_typer(controller_app, name="controller")

NET_HELP = "A network: a .json/.graphml/.gml file, 'example', or 'topohub:GROUP/NAME[?trusted=K&p=P&seed=S]'."


def _user_errors(func):
    """Turn a :class:`QkdsegError`, or an operating-system error on a file the
    user named, into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QkdsegError as err:
            _fail(str(err))
            raise typer.Exit(2) from None
        except BrokenPipeError:
            raise
        except OSError as err:
            if err.errno == errno.EPIPE:
                raise
            target = f"{err.filename}: " if err.filename else ""
            _fail(f"{target}{err.strerror or err}")
            raise typer.Exit(2) from None
        except MemoryError:
            _fail("out of memory (try a smaller network or fewer trials)")
            raise typer.Exit(2) from None

    return wrapper


def _txt(value: Any) -> str:
    """A value from a file (an id, a name) for text output: control characters
    escaped, no Rich markup."""
    return escape(_one_line(str(value)))


#: Bounds of the sweep commands' counts: far above any real run, low enough
#: that a typo fails at once instead of running for days or exhausting memory.
MAX_TRIALS = 10_000_000
MAX_REQUESTS = 1_000_000
MAX_WORKERS = 1024


def _check_range(value: Optional[int], option: str, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidRequest(f"{option} {value}: must lie in [{lo}, {hi}]")


def _check_seed(seed: Optional[int], option: str = "--seed") -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise InvalidRequest(f"{option} {seed}: must be a whole number in [0, 2**63)")


def _check_out_dir(out: Path, option: str = "--out") -> None:
    """Fail before any work when ``out`` cannot be a writable directory."""
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{option} {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidRequest(f"{option} {out}: cannot create the directory: {err.strerror or err}") from None
    probe = out / f".qkdseg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InvalidRequest(f"{option} {out}: cannot write there: {err.strerror or err}") from None


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
    title = f"{_txt(r.algorithm)}: {_txt(r.source)} \u2192 {_txt(r.destination)} on {_txt(network.name)}"
    if r.blocked:
        con.print(f"{title}: [bold red]BLOCKED[/] (no usable path)")
        if r.reconstruction is not None:
            con.print(f"key length at epsilon={r.reconstruction.epsilon:g}: 0 bits (blocked)")
        if plot is not None:
            con.print(f"plot                 {_txt(plot)}: the network with both ends marked, no route (blocked)")
        return
    table = Table(title=title, title_justify="left")
    for col in ("segment", "from", "to", "path", "relays", "Psec(path)", "segment security"):
        table.add_column(col, justify="right" if col in ("relays", "Psec(path)", "segment security") else "left")
    for j, seg in enumerate(r.segments, 1):
        for k, path in enumerate(seg.paths):
            psec = 1.0
            for v in path[1:-1]:
                psec *= network.p(v)
            table.add_row(
                str(j) if k == 0 else "",
                _txt(seg.source) if k == 0 else "",
                _txt(seg.target) if k == 0 else "",
                " \u2192 ".join(map(_txt, path)),
                str(len(path) - 2),
                f"{psec:.4f}",
                f"{seg.security:.6f}" if k == 0 else "",
            )
    con.print(table)
    arrow = " \u2192 "
    con.print(f"segment nodes        {arrow.join(map(_txt, r.segment_nodes))}")
    con.print(f"security (exact)     {r.security:.6f}")
    label = "security (claimed)  " if r.algorithm == "msp" else "security (indep.)   "
    con.print(f"{label} {r.security_independent:.6f}")
    con.print(f"block bits           {r.block_bits}")
    con.print(f"consumed bits        {r.consumed_bits}  ({r.hops} hops)")
    con.print(f"key consumption rate {r.key_consumption_rate:.6f}")
    if r.reconstruction is not None:
        _print_reconstruction(con, r)
    if plot is not None:
        con.print(f"plot                 {_txt(plot)}")


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
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of nodes (above 200: the scalable generator, which keeps the largest component).")] = 100,
    trusted: Annotated[Optional[int], typer.Option("--trusted", "-t", help="Number of trusted relays (default: a tenth of the nodes).")] = None,
    p: Annotated[float, typer.Option("--p", help="Security probability of untrusted relays.")] = 0.8,
    pool_bits: Annotated[int, typer.Option("--pool-bits", help="Key pool per link, bits.")] = 100_000,
    trusted_p: Annotated[float, typer.Option("--trusted-p", help="Security probability of trusted relays.")] = 1.0,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Waxman distance decay, networkx naming (default 0.15 * (100/n)**0.7; selects the dense generator).")] = None,
    beta: Annotated[float, typer.Option("--beta", help="Waxman link-probability scale (networkx naming).")] = 0.5,
    mean_degree: Annotated[Optional[float], typer.Option("--mean-degree", help="Target mean degree (default 6.6; selects the scalable generator).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (recorded in the file).")] = 0,
) -> None:
    """Generate a seeded random topology and write it to a file (docs/topologies.md)."""
    from .topology import generate, write_network
    from .topology.formats import format_of

    _check_seed(seed)
    format_of(out, None)  # a bad suffix fails before the work
    if out.is_dir():
        raise InvalidRequest(f"--out {out}: is a directory")
    net = generate(kind, nodes, trusted=trusted, p=p, pool_bits=pool_bits, trusted_p=trusted_p, alpha=alpha,
                   beta=beta, mean_degree=mean_degree, seed=seed)
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
    table = Table(title=f"network {_txt(s['name'])}", title_justify="left", show_header=False)
    for k, v in s.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else _txt(v))
    trusted = network.trusted_nodes
    shown = ", ".join(_txt(v) for v in trusted[:SHOW_TRUSTED])
    if len(trusted) > SHOW_TRUSTED:
        shown += f", ... ({len(trusted)} in all)"
    table.add_row("trusted nodes", shown or "-")
    _console().print(table)


#: ``topology show`` lists at most this many trusted nodes.
SHOW_TRUSTED = 20


@app.command()
@_user_errors
def demo(
    requests: Annotated[int, typer.Option("--requests", help="Random requests on the Waxman network.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Waxman network and the request pairs.")] = 7,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
) -> None:
    """Every algorithm on the built-in example and on a seeded 100-node Waxman network."""
    from .demo import demo_rows

    _check_range(requests, "--requests", 1, MAX_REQUESTS)
    _check_seed(seed)
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
    con.print(f"emulate {_txt(algorithm)}: {_txt(s)} \u2192 {_txt(d)} on {_txt(network.name)}, {trials} trials, B={out['block_bits']} bits, seed {seed}")
    if out["blocked"]:
        con.print("[bold red]BLOCKED[/] (no usable path): nothing relayed")
        return
    lo, hi = out["ci95"]
    arrow = " \u2192 "
    con.print(f"segment nodes        {arrow.join(map(_txt, out['route']['segment_nodes']))}")
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

    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_range(trials, "--trials", 1, MAX_TRIALS)
    _check_range(sensitivity_trials, "--sensitivity-trials", 0, MAX_TRIALS)
    _check_out_dir(out)  # before the sweep, not after it
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
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: a new folder 'redrawn' beside the results, so their own report stays).")] = None,
) -> None:
    """Redraw the figures and the report from saved results, without recomputing."""
    from .experiments import read_results, render
    from .experiments.study import plot_study, write_study_report

    df = read_results(results)
    target = out or (results if results.is_dir() else results.parent) / "redrawn"
    _check_out_dir(target, "--out" if out is not None else "output directory")
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
    placement: Annotated[bool, typer.Option("--placement", help="Instead: the trusted-relay placement study (docs/placement.md).")] = False,
    waxman_seeds: Annotated[int, typer.Option("--waxman-seeds", help="Placement study: 100-node Waxman networks.")] = 20,
    budgets: Annotated[str, typer.Option("--budgets", help="Placement study: budgets k, comma-separated.")] = "5,10,20",
    no_zoo: Annotated[bool, typer.Option("--no-zoo", help="Placement study: Waxman networks only.")] = False,
    demands: Annotated[str, typer.Option("--demands", help="Placement study: demands of every network (all, sample:N, gravity).")] = "sample:500",
    swap_max_k: Annotated[int, typer.Option("--swap-max-k", help="Placement study: run swap (one pass) only up to this budget.")] = 10,
    exact_budgets: Annotated[str, typer.Option("--exact-budgets", help="Placement study: budgets of the exact optimum, comma-separated.")] = "2,3",
    max_placements: Annotated[int, typer.Option("--max-placements", help="Placement study: exact only where there are at most this many subsets.")] = 4000,
) -> None:
    """SMR against the baselines on every real topology of a group (or, with --placement, where to add trusted relays)."""
    from .experiments import write_results
    from .experiments.study import plot_study, run_study, write_study_report

    if placement:
        from .experiments.placement import plot_placement_study, run_placement_study, write_placement_report

        try:
            ks = sorted({int(x) for x in budgets.split(",") if x.strip()})
            eks = sorted({int(x) for x in exact_budgets.split(",") if x.strip()})
        except ValueError:
            raise InvalidRequest(f"--budgets {budgets!r} / --exact-budgets {exact_budgets!r}: use whole numbers separated by commas") from None
        if not ks or ks[0] < 0:
            raise InvalidRequest(f"--budgets {budgets!r}: need at least one budget >= 0")
        if waxman_seeds < 0:
            raise InvalidRequest(f"--waxman-seeds {waxman_seeds}: must be at least 0")
        _check_seed(seed)
        _check_out_dir(out)
        df = run_placement_study(waxman_seeds=waxman_seeds, zoo=not no_zoo, min_nodes=min_nodes, budgets=ks, seed=seed,
                                 p=p, waxman_demands=demands, zoo_demands=demands, swap_max_k=swap_max_k,
                                 exact_budgets=eks, max_placements=max_placements, workers=workers, progress=not quiet)
        path = write_results(df, out, stem="placement")
        figs = plot_placement_study(df, out)
        header = (f"`qkdseg study --placement --waxman-seeds {waxman_seeds} --budgets {budgets} --seed {seed} --p {p}"
                  f"{' --no-zoo' if no_zoo else ''} --min-nodes {min_nodes} --demands {demands} --swap-max-k {swap_max_k} "
                  f"--exact-budgets {exact_budgets} --max-placements {max_placements}`: {df['network'].nunique()} networks, {len(df)} rows.")
        report = write_placement_report(df, out, header=header)
        typer.echo(f"wrote {path}, {', '.join(map(str, figs))}, {report}")
        return
    _check_seed(seed)
    _check_range(requests, "--requests", 1, MAX_REQUESTS)
    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_out_dir(out)  # before the study, not after it
    df = run_study(topologies, requests=requests, seed=seed, trusted=trusted if trusted < 1 else int(trusted), p=p,
                   min_nodes=min_nodes, workers=workers, progress=not quiet)
    path = write_results(df, out)
    figs = plot_study(df, out)
    header = (f"`qkdseg study --topologies {topologies} --requests {requests} --seed {seed} --trusted {trusted} --p {p}`: "
              f"{df['network'].nunique()} networks, {len(df)} rows.")
    report = write_study_report(df, out, header=header)
    typer.echo(f"wrote {path}, {', '.join(map(str, figs))}, {report}")


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


@app.command()
@_user_errors
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("out-sim"),
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Load sweep on a Dask scheduler tcp://HOST:PORT.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Load sweep: local processes (default: all cores).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="Load sweep: local backend.")] = Backend.processes,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Time-dynamic run: pools that refill, requests that arrive, blocking over time (docs/model.md section 9)."""
    from .experiments.simulation import run_and_write, run_load_sweep, write_sweep

    _check_seed(seed)
    if sum(x is not None for x in (rate, rates, trace)) != 1:
        raise InvalidRequest("give exactly one of --rate, --rates (a load sweep) or --trace")
    if workers is not None and workers < 1:
        raise InvalidRequest(f"--workers {workers}: must be at least 1")
    if replications < 1:
        raise InvalidRequest(f"--replications {replications}: must be at least 1")
    if replications > 1 and rates is None:
        raise InvalidRequest("--replications needs a load sweep: use --rates (one rate is fine)")
    algs = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    if not algs:
        raise InvalidRequest(f"--algorithms {algorithms!r}: name at least one algorithm")
    from .routing import get_algorithm

    for a in algs:
        get_algorithm(a)
    network = _load(net, None)
    _check_out_dir(out)
    command = _sim_command(ctx.params)
    common = dict(algorithms=algs, epsilon=epsilon, ttl=ttl, seed=seed, link_rate_bps=link_rate,
                  reconstruction=reconstruction.value)
    if rates is not None:
        try:
            grid = [float(x) for x in rates.split(",") if x.strip()]
        except ValueError:
            raise InvalidRequest(f"--rates {rates!r}: must be numbers separated by commas") from None
        df, timings = run_load_sweep(network, grid, duration=duration, replications=replications, key_bits=key_bits,
                                     pairs=pairs, arrivals=arrivals, backend=backend.value, workers=workers,
                                     scheduler=scheduler, progress=not quiet, **common)
        params = {"network": network.name, "nodes": network.n_nodes, "links": network.n_links, "rates": grid,
                  "replications": replications, "duration": duration, "key_bits": key_bits, "pairs": pairs,
                  "arrivals": arrivals, **common, "algorithms": list(algs)}
        info = write_sweep(df, out, command=command, params=params)
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
        from .sim import read_trace

        if trace is not None:
            reqs = read_trace(trace, network, key_bits=key_bits, epsilon=epsilon, seed=seed)
            kw = dict(requests=reqs)
        else:
            kw = dict(rate=rate, duration=duration, key_bits=key_bits, pairs=pairs, arrivals=arrivals)
        info = run_and_write(network, out, command=command, interval=interval, progress=not quiet, **common, **kw)
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


class PlaceObjective(str, Enum):
    security = "security"
    worst = "worst"
    keys = "keys"


class PlaceMethod(str, Enum):
    greedy = "greedy"
    swap = "swap"
    exact = "exact"
    random = "random"
    degree = "degree"
    betweenness = "betweenness"
    closeness = "closeness"
    k_center = "k-center"


class Lazy(str, Enum):
    celf = "celf"
    bound = "bound"
    none = "none"


@app.command()
@_user_errors
def place(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    budget: Annotated[int, typer.Option("--budget", "-k", help="Nodes to make trusted.")],
    objective: Annotated[PlaceObjective, typer.Option("--objective", help="security (weighted mean), worst (minimum) or keys (mean key bits at --epsilon).")] = PlaceObjective.security,
    method: Annotated[PlaceMethod, typer.Option("--method", "-m", help="Placement method.")] = PlaceMethod.greedy,
    demands: Annotated[str, typer.Option("--demands", help="all, sample:N, gravity, or a file of source,destination[,weight] lines.")] = "all",
    seed: Annotated[int, typer.Option("--seed", help="Seed of sample:N and of the random method.")] = 0,
    epsilon: Annotated[float, typer.Option("--epsilon", "-e", help="Security level of the keys objective.")] = 0.9,
    lazy: Annotated[Lazy, typer.Option("--lazy", help="Greedy's lazy evaluation: celf, bound (always plain greedy's choice) or none.")] = Lazy.celf,
    max_passes: Annotated[int, typer.Option("--max-passes", help="Swap: passes at most.")] = 5,
    max_placements: Annotated[int, typer.Option("--max-placements", help="Exact: refuse more subsets than this.")] = 200_000,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write placement.json and network.json (the network with the nodes trusted) here.")] = None,
    curve: Annotated[Optional[str], typer.Option("--curve", help="A..B: also draw the objective against k for every method (needs --out).")] = None,
    curve_methods: Annotated[str, typer.Option("--curve-methods", help="Comma-separated methods of --curve (swap and exact run once per k).")] = "greedy,random,degree,betweenness,closeness,k-center",
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Choose BUDGET nodes to make trusted so that SMR's keys are as secure as possible (docs/placement.md)."""
    from .placement import METHODS, place as do_place, place_curve

    _check_seed(seed)
    ks = None
    methods = []
    if curve is not None:
        from .experiments.placement import parse_range

        if out is None:
            raise InvalidRequest("--curve needs --out DIR (where the figure goes)")
        ks = parse_range(curve)
        methods = [m.strip() for m in curve_methods.split(",") if m.strip()]
        for m in methods:
            if m not in METHODS:
                raise InvalidRequest(f"--curve-methods: unknown method {m!r} (use {', '.join(METHODS)})")
    if out is not None:
        _check_out_dir(out)
    network = _load(net, default_p)
    r = do_place(network, budget, objective=objective.value, method=method.value, demands=demands, seed=seed,
                 epsilon=epsilon, lazy=lazy.value, max_passes=max_passes, max_placements=max_placements, progress=not quiet)
    doc = {"network": network.name, **r.to_dict()}
    written = []
    if out is not None:
        from .topology import write_network

        written.append(write_network(r.apply(network), out / "network.json"))
        if ks is not None:
            from .experiments.placement import plot_curve

            kw = {"objective": objective.value, "demands": demands, "seed": seed, "epsilon": epsilon, "lazy": lazy.value,
                  "max_passes": max_passes, "max_placements": max_placements}
            values = place_curve(network, ks, methods, progress=not quiet, **kw)
            doc["curve"] = {"k": ks, "values": values}
            unit = "mean key bits" if objective is PlaceObjective.keys else ("worst security" if objective is PlaceObjective.worst else "mean security")
            written += plot_curve(values, ks, out, ylabel=f"{unit} over the demands",
                                  title=f"{network.name}: {objective.value} against k, demands {demands}, seed {seed}")
        path = out / "placement.json"
        path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.insert(0, path)
    if fmt is Fmt.json:
        _dump(doc)
        return
    con = _console()
    unit = "bits" if objective is PlaceObjective.keys else "probability"
    con.print(f"place {r.method} on {_txt(network.name)}: k={r.budget}, objective {r.objective} ({unit}), "
              f"demands {_txt(demands)} ({r.demands['count']}), seed {seed}")
    table = Table()
    for col in ("step", "node", "objective", "gain"):
        table.add_column(col, justify="left" if col == "node" else "right")
    table.add_row("0", "-", f"{r.initial:.6f}", "")
    prev = r.initial
    for i, (v, val) in enumerate(zip(r.nodes, r.trace), 1):
        table.add_row(str(i), _txt(v), f"{val:.6f}", f"{val - prev:+.6f}")
        prev = val
    con.print(table)
    con.print(f"objective            {r.value:.6f} (from {r.initial:.6f})")
    con.print(f"routings             {r.routings} demand routings")
    if written:
        con.print("wrote                " + ", ".join(_txt(p) for p in written))


def main() -> None:
    """Entry point of the ``qkdseg`` console script."""
    app(prog_name="qkdseg")


if __name__ == "__main__":  # pragma: no cover
    main()
