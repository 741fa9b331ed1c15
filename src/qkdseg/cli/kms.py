"""``qkdseg kms``: set up, serve and audit the ETSI GS QKD 014 key service (docs/kms.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .common import out_path
from .errors import user_errors

kms_app = typer.Typer(help="The ETSI GS QKD 014 key service: init, serve, audit.", no_args_is_help=True)


def _need_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InvalidRequest("the key service needs the 'kms' extra: pip install 'qkdseg[kms]'") from None


@kms_app.command("init")
@user_errors
def init(
    directory: Annotated[Path, typer.Argument(help="The service directory to create.", show_default=False, parser=out_path)],
    network: Annotated[str, typer.Option("--network", help="A network: file, 'example' or 'topohub:...'.")],
    sae: Annotated[list[str], typer.Option("--sae", help="SAE_ID=NODE (repeat; at least two).")],
    security_level: Annotated[float, typer.Option("--security-level", help="Default security level of a key.")] = 0.9,
    key_size: Annotated[int, typer.Option("--key-size", help="Default key size, bits.")] = 256,
    algorithm: Annotated[str, typer.Option("--algorithm", help="Routing algorithm.")] = "smr",
    kme_id: Annotated[str, typer.Option("--kme-id", help="This KME's id.")] = "KME_qkdseg",
    key_ttl: Annotated[float, typer.Option("--key-ttl", help="Seconds an issued key waits for its slave.")] = 3600.0,
    no_pki: Annotated[bool, typer.Option("--no-pki", help="Write no test PKI (bring your own CA and certificates).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing kms.toml.")] = False,
) -> None:
    """Write DIR/kms.toml, a test PKI in DIR/pki/ and the storage key."""
    from ..topology import load
    from ..kms.config import CONFIG_NAME, KmsConfig, check_sae_id, write_config
    from ..kms.pki import make_pki
    from ..kms.store import load_or_make_storage_key

    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"{directory}: exists and is not a directory")
    if (directory / CONFIG_NAME).exists() and not force:
        raise InvalidRequest(f"{directory / CONFIG_NAME}: already exists (use --force to overwrite)")
    saes: dict[str, str] = {}
    for item in sae:
        name, sep, node = item.partition("=")
        if not sep or not node:
            raise InvalidRequest(f"--sae {item!r} must be SAE_ID=NODE")
        check_sae_id(name, "--sae: SAE id")
        if name in saes:
            raise InvalidRequest(f"--sae: SAE id {name!r} given twice")
        saes[name] = node
    spec = network
    if not (spec == "example" or spec.startswith("topohub:")):
        path = Path(spec)
        net = load(path)
        spec = str(path.resolve())
    else:
        net = load(spec)
    for name, node in saes.items():
        net.resolve(node)  # names the node when it is not in the network
    cfg = KmsConfig(network=spec, saes=saes, security_level=security_level, key_size=key_size, algorithm=algorithm,
                    kme_id=kme_id, key_ttl_s=key_ttl, _dir=directory)
    cfg.check()
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, cfg)
    if not no_pki:
        make_pki(directory / "pki", list(saes), kme_id)
    load_or_make_storage_key(cfg.path(cfg.storage_key))
    token_path = cfg.path(cfg.dashboard_token)
    if force or not token_path.exists():
        import secrets

        from ..kms.pki import write_secret

        write_secret(token_path, (secrets.token_urlsafe(32) + "\n").encode())
    typer.echo(f"wrote {directory / CONFIG_NAME}" + ("" if no_pki else f", {directory / 'pki'}/ (test CA, server and "
               f"{len(saes)} SAE certificates)") + f", {cfg.path(cfg.storage_key)}, {token_path}")
    typer.echo(f"start it with: qkdseg kms serve {directory}")


@kms_app.command("serve")
@user_errors
def serve(
    directory: Annotated[Path, typer.Argument(help="The service directory (kms init).", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port; the URL is printed).")] = 8443,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (method, path, status).")] = False,
    dashboard_port: Annotated[int | None, typer.Option(
        "--dashboard-port", help="Also serve the read-only operator dashboard on this port (0: any free port).",
        show_default=False)] = None,
    dashboard_host: Annotated[str, typer.Option("--dashboard-host", help="Address of the dashboard.")] = "127.0.0.1",
    dashboard_public: Annotated[bool, typer.Option(
        "--dashboard-public", help="Allow a non-loopback --dashboard-host: then over TLS, with DIR/dashboard.token.",
    )] = False,
) -> None:
    """Serve ETSI GS QKD 014 over HTTPS with required client certificates, until SIGINT/SIGTERM."""
    _need_server_extra()
    for name, val in (("--port", port), ("--dashboard-port", dashboard_port)):
        if val is not None and not 0 <= val <= 65535:
            raise InvalidRequest(f"{name} {val} must be in 0..65535")
    from ..kms.server import serve as run

    run(directory, host, port, access_log=access_log, dashboard_port=dashboard_port, dashboard_host=dashboard_host,
        dashboard_public=dashboard_public)


@kms_app.command("demo")
@user_errors
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Service directory (default: a new temporary one).",
                                                  show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", help="ETSI 014 port (0: any free port).")] = 8443,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", help="Dashboard port (0: any free port).")] = 8080,
    rate: Annotated[float, typer.Option("--rate", help="Key requests per second.")] = 4.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the traffic.")] = 0,
) -> None:
    """Serve a key service on the example network with its dashboard and live ETSI 014 traffic (Ctrl-C stops)."""
    _need_server_extra()
    for name, val in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 0 <= val <= 65535:
            raise InvalidRequest(f"{name} {val} must be in 0..65535")
    if not 0 < rate <= 1000:
        raise InvalidRequest(f"--rate {rate} must be in (0, 1000] requests per second")
    if directory is not None and directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"--dir {directory}: exists and is not a directory")
    from ..kms.demo import run_demo

    run_demo(directory, port, dashboard_port, rate, seed)


@kms_app.command("audit")
@user_errors
def audit(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain (the default action).")] = True,
) -> None:
    """Check DIR/audit.jsonl's hash chain; exit 1 if a line was edited, removed or reordered."""
    from ..kms.store import AUDIT_NAME, verify_audit

    if not (directory / AUDIT_NAME).exists() and not (directory / "kms.sqlite3").exists():
        raise InvalidRequest(f"{directory}: no audit log here (no {AUDIT_NAME})")
    n, problems = verify_audit(directory)
    if problems:
        for p in problems:
            typer.echo(f"{directory / AUDIT_NAME}: {p}")
        typer.echo(f"audit chain BROKEN: {len(problems)} problem(s) in {n} records")
        raise typer.Exit(1)
    typer.echo(f"audit chain intact: {n} records")
