"""``qkdseg route`` and ``qkdseg algorithms``: one request's route, and the registries."""

from __future__ import annotations

from typing import Annotated, Optional
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InvalidRequest
from .common import NET_HELP, OUT_PATH, Fmt, Scheme, Sharing, _console, _dump, _load, _txt, _write_atomic
from .errors import user_errors


@user_errors
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
    shared_relays: Annotated[bool, typer.Option("--shared-relays", help="MSP: remove only the links of each path, so paths may share untrusted relays.")] = False,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", "-e", help="Security level: reconstruct global keys that each meet it.")] = None,
    reconstruction: Annotated[Optional[Scheme], typer.Option("--reconstruction", "-r", help="Reconstruction scheme (needs --epsilon; default paper).")] = None,
    sharing: Annotated[Sharing, typer.Option("--sharing", help="How a segment's pieces make its key: xor (all needed) or threshold (Shamir k-of-m, k = m - T).")] = Sharing.xor,
    tolerate: Annotated[int, typer.Option("--tolerate", help="threshold: lost paths a segment key survives (T >= 1).")] = 0,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the route to this image file (.png, .svg, .pdf).", **OUT_PATH)] = None,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Route one key request and print its paths, security and consumption."""
    from ..api import route as do_route
    from ..routing.registry import ALGORITHMS

    network = _load(net, default_p)
    s, d = network.resolve(src), network.resolve(dst)
    pairs = (("max_paths", max_paths), ("metric", metric), ("seed", seed), ("beta", beta), ("max_steps", max_steps))
    options = {k: v for k, v in pairs if v is not None}
    if shared_relays:
        options["shared_relays"] = True
    if reconstruction is not None and epsilon is None:
        raise InvalidRequest("--reconstruction needs --epsilon (the security level every global key must meet)")
    if epsilon is None and algorithm in ALGORITHMS and "epsilon" in ALGORITHMS[algorithm].options:
        raise InvalidRequest(f"--algorithm {algorithm} needs --epsilon (the request's security level it routes to)")
    r = do_route(
        network,
        s,
        d,
        algorithm=algorithm,
        block_bits=block_bits,
        epsilon=epsilon,
        reconstruction=reconstruction.value if reconstruction is not None else None,
        sharing=sharing.value,
        tolerate=tolerate,
        **options,
    )
    if plot is not None:
        from ..plot import plot_route

        if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InvalidRequest(f"--plot {plot}: use a .png, .svg or .pdf file name")
        try:
            _write_atomic(plot, lambda tmp: plot_route(network, r, tmp))
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
    if r.sharing == "threshold":
        con.print(f"sharing              threshold, tolerate {r.tolerate}: each segment key shared k-of-m over its "
                  f"m paths, k = m - {r.tolerate}")
    else:
        con.print("sharing              xor: each segment key is the XOR of its pieces")
    con.print(f"block bits           {r.block_bits}")
    con.print(f"consumed bits        {r.consumed_bits}  ({r.hops} hops)")
    con.print(f"key consumption rate {r.key_consumption_rate:.6f}")
    if r.level is not None:  # smr-level: against the full route over the same segment nodes
        met = "met" if r.level["met"] else "not met: the full route, no key"
        con.print(f"level {r.level['epsilon']:g}            {met}; saved {r.level['saved_bits']} of "
                  f"{r.level['full_consumed_bits']} bits (full route security {r.level['full_security']:.6f})")
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


@user_errors
def algorithms() -> None:
    """List every routing algorithm and reconstruction scheme with its options."""
    from ..reconstruction import SCHEME_DESCRIPTIONS, SCHEME_OPTIONS
    from ..routing import ALGORITHMS

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
