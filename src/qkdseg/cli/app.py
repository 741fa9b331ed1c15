"""The assembler: the ``qkdseg`` command from its groups, in the order ``--help`` lists them.

This is the top of the CLI package. Nothing in the package imports it; a new
command group is a module of its own (see docs/contributing.md) that this
module registers.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import demo, emulate, experiments, place, route, simulate
from .device import device_app
from .errors import _OneLineGroup
from .kms import kms_app
from .net import controller_app, net_app, node_app
from .netenroll import sign as _sign  # noqa: F401 -- registers net sign, sae cert, bundle; node/controller keygen
from .netgrow import add_node as _add_node  # noqa: F401 -- registers net add-node, add-link, remove-*, sae add|remove
from .topology import topology_app

app = typer.Typer(
    cls=_OneLineGroup,
    help="Segment-based multipath key distribution in partially-trusted relay QKD networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"qkdseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


app.add_typer(topology_app, name="topology")
app.add_typer(kms_app, name="kms")  # the key service's commands; the server itself loads lazily
app.add_typer(device_app, name="device")  # the QKD device emulator (ETSI 014 devices of the links)
app.add_typer(net_app, name="net")  # the network of key service processes (docs/network.md)
app.add_typer(node_app, name="node")
app.add_typer(controller_app, name="controller")
for command in (route.route, route.algorithms, demo.demo, emulate.emulate, experiments.reproduce, experiments.plot,
                experiments.study, simulate.simulate, place.place):
    app.command()(command)


def main() -> None:
    """Entry point of the ``qkdseg`` console script."""
    app(prog_name="qkdseg")
