"""``qkdseg device``: the QKD device emulator, ETSI GS QKD 014 devices for every link (docs/kms.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .common import _need_server_extra
from .errors import user_errors

device_app = typer.Typer(help="The QKD device emulator: each link's pair of devices as ETSI GS QKD 014 KMEs.",
                         no_args_is_help=True)


@device_app.command("serve")
@user_errors
def serve(
    directory: Annotated[Path, typer.Argument(help="The emulator's directory (kms init ... --link-source device "
                                              "writes DIR/devices/).", show_default=False)],
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: device.toml's).",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: device.toml's; the key service's "
                                             "kms.toml points there).", show_default=False)] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "warning",
) -> None:
    """Serve every link's emulated QKD devices over mutual TLS until SIGINT/SIGTERM."""
    _need_server_extra()
    if port is not None and not 0 <= port <= 65535:
        raise InvalidRequest(f"--port {port} must be in 0..65535")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise InvalidRequest(f"--log-level {log_level!r} must be critical, error, warning, info or debug")
    from ..devices.emulator import serve as run

    run(directory, host=host, port=port, log_level=log_level)
