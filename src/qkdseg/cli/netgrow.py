"""``qkdseg net add-node|add-link|remove-link|remove-node|sae add|sae remove``: a running network grown and shrunk
(docs/network.md, "Growing and shrinking a running network"); the commands join the groups of :mod:`.net` and
:mod:`.netenroll`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .errors import user_errors
from .net import net_app
from .netenroll import sae_app

_DIR = Annotated[Path, typer.Argument(help="The deployment directory (net init; its controller running).",
                                      show_default=False)]
_FORMAT = Annotated[str, typer.Option("--format", help="text or json.")]
_RATE = Annotated[float | None, typer.Option("--rate", help="The new link's key rate, bits/s (default: the "
                                                            "network's default).", show_default=False)]
_CA_KEY = Annotated[Path | None, typer.Option("--ca-key", help="The CA's private key (default: DIR/pki/ca.key).",
                                              show_default=False)]


def _fmt(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise InvalidRequest(f"--format {fmt!r} must be text or json")


def _say(out: dict, fmt: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps(out, indent=1))
        return
    typer.echo(f"{out['op']}: topology version {out['topology_version']}, applied by {len(out['applied'])} "
               f"process(es) in {out['seconds']:.2f} s")
    for v, why in out["not_applied"].items():
        typer.echo(f"  node {v}: {why} (it reads the change from its files at its next start)")
    for v in out.get("unlinked", []):
        typer.echo(f"  node {v}: no link left (no key reaches its SAEs until 'qkdseg net add-link')")
    for k in ("directory", "bundle", "certificate"):
        if k in out:
            typer.echo(f"  {k}: {out[k]}")


@sae_app.command("add")
@user_errors
def sae_add(
    directory: _DIR,
    sae: Annotated[str, typer.Argument(help="SAE_ID=NODE: the new SAE and the node it is attached to.",
                                       show_default=False)],
    ca_key: _CA_KEY = None,
    fmt: _FORMAT = "text",
) -> None:
    """Register an SAE at a node of the running network (no restart); its certificate when the CA key is here."""
    _fmt(fmt)
    from ..net.grow import sae_add as run

    name, eq, node = sae.partition("=")
    if not eq or not name or not node:
        raise InvalidRequest(f"SAE {sae!r}: expected SAE_ID=NODE")
    _say(run(directory, name, node, ca_key), fmt)


@sae_app.command("remove")
@user_errors
def sae_remove(
    directory: _DIR,
    sae: Annotated[str, typer.Argument(help="The SAE's id.", show_default=False)],
    fmt: _FORMAT = "text",
) -> None:
    """Unregister an SAE; its waiting keys are voided at both ends."""
    _fmt(fmt)
    from ..net.grow import sae_remove as run

    _say(run(directory, sae), fmt)


@net_app.command("add-link")
@user_errors
def add_link(
    directory: _DIR,
    u: Annotated[str, typer.Argument(help="One end (a node id).", show_default=False)],
    v: Annotated[str, typer.Argument(help="The other end.", show_default=False)],
    rate: _RATE = None,
    fmt: _FORMAT = "text",
) -> None:
    """Add a link between two nodes of the running network; planned over from the next request."""
    _fmt(fmt)
    from ..net.grow import add_link as run

    _say(run(directory, u, v, rate), fmt)


@net_app.command("remove-link")
@user_errors
def remove_link(
    directory: _DIR,
    u: Annotated[str, typer.Argument(help="One end.", show_default=False)],
    v: Annotated[str, typer.Argument(help="The other end.", show_default=False)],
    fmt: _FORMAT = "text",
) -> None:
    """Remove a link: planned around from the next request, its remaining key destroyed at both ends."""
    _fmt(fmt)
    from ..net.grow import remove_link as run

    _say(run(directory, u, v), fmt)


@net_app.command("add-node")
@user_errors
def add_node(
    directory: _DIR,
    ident: Annotated[str, typer.Option("--id", help="The new node's id.", show_default=False)],
    address: Annotated[str, typer.Option("--address", help="HOST:PORT it listens on.", show_default=False)],
    link: Annotated[list[str], typer.Option("--link", help="A node to link it to (repeat).", show_default=False)],
    trusted: Annotated[bool, typer.Option("--trusted", help="A trusted relay.")] = False,
    p: Annotated[float | None, typer.Option("--p", help="An untrusted node's probability of not being "
                                                        "compromised (default 0.8; a trusted one's is 1).",
                                            show_default=False)] = None,
    rate: _RATE = None,
    ca_key: _CA_KEY = None,
    fmt: _FORMAT = "text",
) -> None:
    """Add a node and its links (its directory; a bundle with enrolment); 'net up DIR' then starts it."""
    _fmt(fmt)
    from ..net.grow import add_node as run

    _say(run(directory, ident, address, link, trusted=trusted, p=p, rate=rate, ca_key=ca_key), fmt)


@net_app.command("remove-node")
@user_errors
def remove_node(
    directory: _DIR,
    ident: Annotated[str, typer.Argument(help="The node's id.", show_default=False)],
    fmt: _FORMAT = "text",
) -> None:
    """Remove a node, its links and its SAEs; its certificate refused by every other process from now on."""
    _fmt(fmt)
    from ..net.grow import remove_node as run

    _say(run(directory, ident), fmt)
