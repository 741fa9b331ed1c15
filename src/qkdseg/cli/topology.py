"""``qkdseg topology``: generate, list and inspect topologies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest
from .common import NET_HELP, OUT_PATH, Fmt, _check_seed, _console, _dump, _load, _txt, _write_atomic
from .errors import user_errors

topology_app = typer.Typer(help="Generate, list and inspect topologies.", no_args_is_help=True)


@topology_app.command("generate")
@user_errors
def topology_generate(
    kind: Annotated[str, typer.Argument(help="Generator: waxman.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.json, .graphml or .gml).", **OUT_PATH)],
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of nodes (above 200: the scalable generator, which keeps the largest component).")] = 100,
    trusted: Annotated[Optional[int], typer.Option("--trusted", "-t", help="Number of trusted relays (default: a tenth of the nodes).")] = None,
    p: Annotated[float, typer.Option("--p", help="Security probability of untrusted relays.")] = 0.8,
    pool_bits: Annotated[int, typer.Option("--pool-bits", help="Key pool per link, bits.")] = 100_000,
    trusted_p: Annotated[float, typer.Option("--trusted-p", help="Security probability of trusted relays.")] = 1.0,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Waxman distance decay, networkx naming (default 0.15 * (100/n)**0.7; selects the dense generator).")] = None,
    beta: Annotated[float, typer.Option("--beta", help="Waxman link-probability scale (networkx naming).")] = 0.5,
    mean_degree: Annotated[Optional[float], typer.Option("--mean-degree", help="Target mean degree (default 6.6; selects the scalable generator).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (recorded in the file).")] = 0,
    rates: Annotated[str, typer.Option("--rates", help="Link key rates: 'none' (the key service's default rate) or "
                                       "'physics' (decoy-state BB84 from each link's length; docs/model.md).")] = "none",
) -> None:
    """Generate a seeded random topology and write it to a file (docs/topologies.md)."""
    from ..topology import generate, write_network
    from ..topology.formats import format_of

    from ..topology.waxman import WAXMAN_MAX_NODES

    _check_seed(seed)
    if rates not in ("none", "physics"):
        raise InvalidRequest(f"--rates {rates!r} must be 'none' or 'physics'")
    if nodes < 2:
        raise InvalidRequest(f"--nodes {nodes}: a network needs at least 2 nodes")
    if alpha is not None and nodes > WAXMAN_MAX_NODES:
        raise InvalidRequest(f"--nodes {nodes} --alpha {alpha:g}: --alpha selects the dense generator, which takes at most "
                             f"{WAXMAN_MAX_NODES} nodes; leave --alpha out (or use --mean-degree) for the scalable one")
    format_of(out, None)  # a bad suffix fails before the work
    if out.is_dir():
        raise InvalidRequest(f"--out {out}: is a directory")
    net = generate(kind, nodes, trusted=trusted, p=p, pool_bits=pool_bits, trusted_p=trusted_p, alpha=alpha,
                   beta=beta, mean_degree=mean_degree, seed=seed)
    rate_note = ""
    if rates == "physics":
        from ..topology.physics import apply_physics_rates

        span = apply_physics_rates(net)
        rate_note = f", link rates {span['min']:.4g}..{span['max']:.4g} bit/s (decoy-state BB84)"
    _write_atomic(out, lambda tmp: write_network(net, tmp))
    s = net.summary()
    kept = "" if s["nodes"] == nodes else f" (of the {nodes} asked: the scalable generator keeps the largest connected component)"
    typer.echo(f"wrote {out}: {s['nodes']} nodes{kept}, {s['links']} links, {s['trusted']} trusted, "
               f"mean degree {s['mean_degree']:.2f}, seed {seed}{rate_note}")


@topology_app.command("list")
@user_errors
def topology_list(
    group: Annotated[Optional[str], typer.Option("--group", help="Only this topohub group (topozoo, sndlib, ...).")] = None,
) -> None:
    """List the built-in networks and the topohub topologies."""
    from ..topology import BUILTIN, topohub_names

    if group is None:
        for name in BUILTIN:
            typer.echo(name)
    names = topohub_names(group)
    if group is not None and not names:
        raise InvalidRequest(f"no topohub group {group!r}")
    for name in names:
        typer.echo(f"topohub:{name}")


@topology_app.command("show")
@user_errors
def topology_show(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Print a network's counts, mean degree and connectivity."""
    network = _load(net, default_p)
    s = network.summary()
    g = network.graph
    rates = [d["rate_bps"] for *_, d in g.edges(data=True) if d.get("rate_bps") is not None]
    model = g.graph.get("rate_model")
    extra = {"rate_bps_min": min(rates) if rates else None, "rate_bps_max": max(rates) if rates else None,
             "links_with_rate": len(rates), "rate_model": model}
    if fmt is Fmt.json:
        _dump({**s, **extra, "trusted_nodes": list(network.trusted_nodes)})
        return
    table = Table(title=f"network {_txt(s['name'])}", title_justify="left", show_header=False)
    for k, v in s.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else _txt(v))
    if rates:
        table.add_row("link rate_bps", f"{min(rates):.4g} .. {max(rates):.4g} ({len(rates)} of {s['links']} links)")
    else:
        table.add_row("link rate_bps", "- (none given: the key service's default_rate_bps)")
    if model:
        table.add_row("rate model", _txt(model))
    trusted = network.trusted_nodes
    shown = ", ".join(_txt(v) for v in trusted[:SHOW_TRUSTED])
    if len(trusted) > SHOW_TRUSTED:
        shown += f", ... ({len(trusted)} in all)"
    table.add_row("trusted nodes", shown or "-")
    _console().print(table)


#: ``topology show`` lists at most this many trusted nodes.
SHOW_TRUSTED = 20
