"""``qkdseg net sign|sae cert|bundle``, ``node keygen``, ``controller keygen``: enrolment across hosts (docs/network.md,
"Deploying one node per host"); the commands join the groups of :mod:`.net`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .errors import user_errors
from .net import controller_app, net_app, node_app

sae_app = typer.Typer(help="The SAEs' client certificates.", no_args_is_help=True)
net_app.add_typer(sae_app, name="sae")


@net_app.command("sign")
@user_errors
def sign(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (net init).", show_default=False)],
    csr: Annotated[list[Path], typer.Argument(help="Node or controller CSRs (node keygen, controller keygen).",
                                              show_default=False)],
    ca_key: Annotated[Path, typer.Option("--ca-key", help="The CA's private key (net init --ca-key-out).",
                                         show_default=False)],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="The certificate to write (one CSR; default: "
                                             "node.crt or controller.crt beside each CSR).", show_default=False)] = None,
) -> None:
    """Check each CSR's name, role and address against the deployment's inventory and write its certificate."""
    from ..net.enroll import sign as run

    if out is not None and len(csr) > 1:
        raise InvalidRequest(f"-o {out}: one certificate file for {len(csr)} CSRs; leave -o out (each certificate "
                             "is written beside its CSR)")
    for one in csr:
        path, who = run(directory, one, ca_key, out)
        typer.echo(f"wrote {path}: the certificate of {who}")


@sae_app.command("cert")
@user_errors
def sae_cert(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (net init).", show_default=False)],
    sae: Annotated[str, typer.Argument(help="The SAE's id (one of net init's --sae).", show_default=False)],
    ca_key: Annotated[Path, typer.Option("--ca-key", help="The CA's private key.", show_default=False)],
    csr: Annotated[Path | None, typer.Option("--csr", help="The SAE's CSR (CN = its id; SAN URI urn:qkdseg:sae:<id>): its key stays with it; "
                                             "without one a new key is written to DIR/pki/SAE.key.",
                                             show_default=False)] = None,
) -> None:
    """Write DIR/pki/SAE.crt (and SAE.key without --csr), signed by the network's CA."""
    from ..net.enroll import sae_cert as run

    path = run(directory, sae, ca_key, csr)
    typer.echo(f"wrote {path}" + ("" if csr is not None else f" and {path.with_suffix('.key')}"))


@net_app.command("bundle")
@user_errors
def bundle(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (net init).", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="The archive to write (tar.gz); with --all a directory "
                                      "(node-<dir>.tar.gz, controller.tar.gz, ...).", show_default=False)],
    node: Annotated[str | None, typer.Option("--node", help="The node's id.", show_default=False)] = None,
    every: Annotated[bool, typer.Option("--all", help="One archive per process: every node's and controller's.")
                     ] = False,
    controller: Annotated[bool, typer.Option("--controller", help="The controller's bundle.")] = False,
    name: Annotated[str, typer.Option("--name", help="With --controller: which one (controller-1, ... of "
                                                     "replicated controllers).")] = "controller",
) -> None:
    """One host's archive: exactly its process's directory (no other node's secret) and a README."""
    from ..net.bundle import bundle as run, bundle_all

    if every:
        if node is not None or controller:
            raise InvalidRequest("--all writes every process's archive: not with --node or --controller")
        for path in bundle_all(directory, out):
            typer.echo(f"wrote {path}")
        return
    got = run(directory, out, node=node, controller=name if controller else None)
    typer.echo(f"wrote {out}: {got['kind']} {got['name']}, {len(got['files'])} files and README.txt")


@node_app.command("keygen")
@user_errors
def node_keygen(directory: Annotated[Path, typer.Argument(help="The node's directory (from its bundle).",
                                                          show_default=False)]) -> None:
    """On the node's host: its private key, storage and audit keys (0600), its sealed link seeds and node.csr."""
    from ..net.enroll import node_keygen as run

    typer.echo(f"wrote {run(directory)}: have it signed ('qkdseg net sign DIR node.csr --ca-key ...')")


@controller_app.command("keygen")
@user_errors
def controller_keygen(directory: Annotated[Path, typer.Argument(help="The controller's directory (from its bundle).",
                                                                show_default=False)]) -> None:
    """On the controller's host: its private key, storage and audit keys (0600) and controller.csr."""
    from ..net.enroll import controller_keygen as run

    typer.echo(f"wrote {run(directory)}: have it signed ('qkdseg net sign DIR controller.csr --ca-key ...')")
