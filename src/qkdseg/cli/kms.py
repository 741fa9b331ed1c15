"""``qkdseg kms``: set up, serve and audit the ETSI GS QKD 014 key service (docs/kms.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .common import (_check_seed, MAX_KEY_COUNT_OPTION, SAE_MAX_WAITING_OPTION, SAE_RATE_OPTION,
                     STOCK_KEYS_OPTION, STOCK_LEVEL_OPTION, STOCK_OPTION, STOCK_SIZE_OPTION, _need_server_extra,
                     STOCK_POLICY_OPTION, STOCK_HIT_OPTION, SHARING_OPTION, TOLERATE_OPTION, sharing_fields,
                     _parse_saes, check_log_options, out_path)
from .errors import user_errors

kms_app = typer.Typer(help="The ETSI GS QKD 014 key service: init, serve, demo, audit, sae, rotate-storage-key.",
                      no_args_is_help=True)


#: ``kms init`` flag of each ``kms.toml`` field, so a bad value names the flag (kms.toml is not written yet).
INIT_FLAGS = {"security_level": "--security-level", "key_size": "--key-size", "algorithm": "--algorithm",
              "kme_id": "--kme-id", "key_ttl_s": "--key-ttl", "min_key_size": "--min-key-size",
              "max_key_size": "--max-key-size", "max_key_per_request": "--max-key-per-request",
              "durability": "--durability", "default_rate_bps": "--default-rate", "saes": "--sae",
              "network": "--network", "audit_max_mb": "--audit-max-mb", "stock": "--stock",
              "max_key_count": "--max-key-count", "sae_max_waiting": "--sae-max-waiting", "sae_rate": "--sae-rate",
              "sharing": "--sharing", "tolerate": "--tolerate"}


@kms_app.command("init")
@user_errors
def init(
    directory: Annotated[Path, typer.Argument(help="The service directory to create.", show_default=False, parser=out_path)],
    network: Annotated[str, typer.Option("--network", help="A network: file, 'example' or 'topohub:...'.")],
    sae: Annotated[list[str], typer.Option("--sae", help="SAE_ID=NODE (repeat; at least two).")],
    security_level: Annotated[float, typer.Option("--security-level", help="Default security level of a key.")] = 0.9,
    key_size: Annotated[int, typer.Option("--key-size", help="Default key size, bits.")] = 256,
    min_key_size: Annotated[int, typer.Option("--min-key-size", help="Smallest key size accepted, bits.")] = 64,
    max_key_size: Annotated[int, typer.Option("--max-key-size", help="Largest key size accepted, bits.")] = 4096,
    max_key_per_request: Annotated[int, typer.Option("--max-key-per-request",
                                                     help="Most keys one enc_keys call may ask for.")] = 128,
    algorithm: Annotated[str, typer.Option("--algorithm", help="Routing algorithm.")] = "smr",
    kme_id: Annotated[str, typer.Option("--kme-id", help="This KME's id (not an SAE id).")] = "KME_qkdseg",
    key_ttl: Annotated[float, typer.Option("--key-ttl", help="Seconds an issued key waits for its slave.")] = 3600.0,
    durability: Annotated[str, typer.Option("--durability", help="full (survives power loss) or normal.")] = "full",
    default_rate: Annotated[int, typer.Option("--default-rate",
                                              help="Key rate (bit/s) of links whose network gives none.")] = 100_000,
    no_pki: Annotated[bool, typer.Option("--no-pki", help="Write no test PKI (bring your own CA and certificates).")] = False,
    new_pki: Annotated[bool, typer.Option("--new-pki", help="Make a new test CA and all certificates, replacing "
                                          "DIR/pki/ (every deployed SAE certificate stops working).")] = False,
    ca_key_out: Annotated[Path | None, typer.Option("--ca-key-out", help="Write the test CA's private key here, "
                                                    "not into DIR/pki/ (keep it off the server).",
                                                    show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite an existing kms.toml (only it: the PKI, keys and "
                                        "token are kept; see --new-pki).")] = False,
    link_source: Annotated[str, typer.Option("--link-source", help="Where link keys come from: 'emulated' (at each "
                                             "link's rate) or 'device' (QKD devices over ETSI 014: writes the "
                                             "device emulator's directory DIR/devices/).")] = "emulated",
    audit_max_mb: Annotated[float, typer.Option("--audit-max-mb", help="Rotate DIR/audit.jsonl into "
                                                "audit-<first seq>.jsonl past this size (MB; 0: never).")] = 64.0,
    stock: Annotated[list[str], STOCK_OPTION] = [],
    stock_keys: Annotated[str | None, STOCK_KEYS_OPTION] = None,
    stock_level: Annotated[float | None, STOCK_LEVEL_OPTION] = None,
    stock_size: Annotated[int | None, STOCK_SIZE_OPTION] = None,
    stock_policy: Annotated[str | None, STOCK_POLICY_OPTION] = None,
    stock_hit: Annotated[float | None, STOCK_HIT_OPTION] = None,
    max_key_count: Annotated[int, MAX_KEY_COUNT_OPTION] = 100_000,
    sae_max_waiting: Annotated[int, SAE_MAX_WAITING_OPTION] = 0,
    sae_rate: Annotated[float, SAE_RATE_OPTION] = 0.0,
    sharing: Annotated[str | None, SHARING_OPTION] = None,
    tolerate: Annotated[int | None, TOLERATE_OPTION] = None,
) -> None:
    """Write DIR/kms.toml, a test PKI in DIR/pki/, the storage and audit keys and the dashboard token."""
    from ..topology import load
    from ..server.config import CONFIG_NAME, KmsConfig, write_config
    from ..server.pki import make_pki
    from ..server.stockconfig import stock_table
    from ..server.storagekey import init_keys

    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"{directory}: exists and is not a directory")
    _kms_dir(directory)
    if (directory / CONFIG_NAME).exists() and not force:
        raise InvalidRequest(f"{directory / CONFIG_NAME}: already exists (use --force to rewrite it)")
    if no_pki and (new_pki or ca_key_out is not None):
        raise InvalidRequest("--no-pki makes no PKI: it cannot be combined with --new-pki or --ca-key-out")
    if link_source not in ("emulated", "device"):
        raise InvalidRequest(f"--link-source {link_source!r} must be 'emulated' or 'device'")
    saes = _parse_saes(sae)
    spec = network
    if not (spec == "example" or spec.startswith("topohub:")):
        path = Path(spec)
        net = load(path)
        spec = str(path.resolve())
    else:
        net = load(spec)
    for name, node in saes.items():
        net.resolve(node)  # names the node when it is not in the network
    cfg = KmsConfig(network=spec, saes=saes, security_level=security_level, key_size=key_size,
                    min_key_size=min_key_size, max_key_size=max_key_size, max_key_per_request=max_key_per_request,
                    algorithm=algorithm, kme_id=kme_id, key_ttl_s=key_ttl, durability=durability,
                    default_rate_bps=default_rate, audit_max_mb=audit_max_mb, max_key_count=max_key_count,
                    sae_max_waiting=sae_max_waiting, sae_rate=sae_rate, _dir=directory,
                    **sharing_fields(sharing, tolerate, None),
                    stock=stock_table(stock, stock_keys, stock_level, stock_size, security_level=security_level,
                                      key_size=key_size, policy=stock_policy, hit=stock_hit))
    cfg.check(flags=INIT_FLAGS)
    from ..api.checks import check_tolerate_fits

    check_tolerate_fits(net.arrays, cfg.tolerate, "--tolerate", cfg.algorithm, cfg.algorithm_options)
    devices = directory / "devices"
    if link_source == "device" and (devices / "device.toml").exists() and not force:
        raise InvalidRequest(f"{devices / 'device.toml'}: already exists (use --force to rewrite it)")
    pki_dir = directory / "pki"
    make_new_pki = not no_pki and (new_pki or not (pki_dir / "ca.crt").exists())
    if ca_key_out is not None and ca_key_out.is_dir():
        raise InvalidRequest(f"--ca-key-out {ca_key_out}: is a directory (name the file for the CA's private key)")
    if make_new_pki and ca_key_out is not None and ca_key_out.exists() and not new_pki:
        raise InvalidRequest(f"--ca-key-out {ca_key_out}: exists already (add --new-pki to replace it)")
    directory.mkdir(parents=True, exist_ok=True)
    # kms.toml is written last (atomically): an interrupted init leaves no kms.toml, and running it again
    # finishes the job; the PKI is made in a folder beside DIR/pki/ and renamed into place whole
    wrote = [str(directory / CONFIG_NAME)]
    if link_source == "device":
        from ..devices.emulator import init_devices

        dev_cfg, cfg.device_links = init_devices(devices, net, spec, key_size=key_size, default_rate_bps=default_rate)
        cfg.link_source = "device"
        cfg.check(flags=INIT_FLAGS)
        wrote.append(f"{devices}/ (the QKD device emulator of {len(dev_cfg.links)} links on "
                     f"https://{dev_cfg.host}:{dev_cfg.port})")
    if make_new_pki:
        _make_pki_whole(pki_dir, lambda d: make_pki(d, list(saes), kme_id, ca_key_path=ca_key_out))
        wrote.append(f"{pki_dir}/ (test CA, server and {len(saes)} SAE certificates"
                     + (f"; the CA's private key in {ca_key_out}" if ca_key_out is not None else "") + ")")
    elif not no_pki:
        missing = [name for name in saes if not (pki_dir / f"{name}.crt").exists()]
        if missing:
            typer.echo(f"note: kept {pki_dir}/; no certificate yet for {', '.join(missing)} "
                       f"(qkdseg kms sae cert {directory} ID)")
    for name in ("storage_key", "audit_key"):
        if not cfg.path(getattr(cfg, name)).exists():
            wrote.append(str(cfg.path(getattr(cfg, name))))
    init_keys(cfg)
    token_path = cfg.path(cfg.dashboard_token)
    if not token_path.exists():
        import secrets

        from ..server.pki import write_secret

        write_secret(token_path, (secrets.token_urlsafe(32) + "\n").encode())
        wrote.append(str(token_path))
    write_config(directory, cfg)
    typer.echo(f"wrote {', '.join(wrote)}")
    for line in unmet_level_warnings(cfg, net):
        typer.echo(f"warning: {line}", err=True)
    if link_source == "device":
        typer.echo(f"start the devices with: qkdseg device serve {devices}")
    typer.echo(f"start it with: qkdseg kms serve {directory}")


def _kms_dir(directory: Path) -> Path:
    """``directory``, refused where another command made it (a network's, a node's, its controller's, a device
    emulator's directory): a kms command would write a second service's files into it."""
    from ..server.files import refuse_other_kind

    refuse_other_kind(directory, "kms.toml", "a kms serve directory")
    return directory


def _make_pki_whole(pki_dir: Path, make) -> None:
    """``make(folder)`` in a staging folder beside ``pki_dir``, then renamed onto it (the old one removed last)."""
    import os
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix=".pki.", dir=pki_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # as mkdir would make it (mkdtemp's is 0700)
    old = pki_dir.parent / f".pki.old.{os.getpid()}"
    try:
        make(stage)
        if pki_dir.exists():
            os.replace(pki_dir, old)
        os.replace(stage, pki_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def unmet_level_warnings(cfg, net, max_pairs: int = 400) -> list[str]:
    """One line per SAE pair whose best route, with full pools, cannot meet the default level."""
    from ..api import route

    ids = sorted(cfg.saes)
    out = []
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]][:max_pairs]
    for a, b in pairs:
        s, d = net.resolve(str(cfg.saes[a])), net.resolve(str(cfg.saes[b]))
        if s == d:
            continue
        try:  # under the configured sharing (threshold: a segment with too few paths is named)
            r = route(net, s, d, algorithm=cfg.algorithm, block_bits=cfg.key_size, sharing=cfg.sharing,
                      tolerate=cfg.tolerate)
        except InvalidRequest as err:
            out.append(f"SAEs {a} and {b}: {err}")
            continue
        except Exception:  # noqa: BLE001 -- no route at all: said below
            r = None
        if r is None or r.blocked:
            out.append(f"SAEs {a} and {b}: no route between nodes {s} and {d}")
        elif r.security < cfg.security_level:
            out.append(f"SAEs {a} and {b}: the best route's exact security is {r.security:.6f}, below the default "
                       f"security level {cfg.security_level}: their requests at the default level will be refused")
    return out


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
    log_level: Annotated[str, typer.Option("--log-level", help="Server log level: critical, error, warning, info, "
                                           "debug.")] = "warning",
    accept_broken_audit: Annotated[bool, typer.Option(
        "--accept-broken-audit", help="Start although DIR/audit.jsonl's chain is broken (the acceptance is audited).",
    )] = False,
    dashboard_host: Annotated[str, typer.Option("--dashboard-host", help="Address of the dashboard.")] = "127.0.0.1",
    dashboard_public: Annotated[bool, typer.Option(
        "--dashboard-public", help="Allow a non-loopback --dashboard-host: then over TLS, with DIR/dashboard.token.",
    )] = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve /metrics, /healthz and /readyz over plain HTTP on 127.0.0.1 at this port "
        "(0: any free port); the dashboard's port serves them too.", show_default=False)] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text, or json: one JSON object per line "
                                            "(docs/deploy.md).")] = "text",
    exit_after_unready: Annotated[float, typer.Option(
        "--exit-after-unready", envvar="QKDSEG_EXIT_AFTER_UNREADY_S", metavar="SECONDS",
        help="Exit with status 1 after the store has failed writes this long, so that the supervisor restarts "
             "the service (0: never).")] = 30.0,
) -> None:
    """Serve ETSI GS QKD 014 over HTTPS with required client certificates, until SIGINT/SIGTERM."""
    _need_server_extra()
    _kms_dir(directory)
    from ..server.watchdog import check_exit_after

    check_exit_after(exit_after_unready)
    for name, val in (("--port", port), ("--dashboard-port", dashboard_port), ("--metrics-port", metrics_port)):
        if val is not None and not 0 <= val <= 65535:
            raise InvalidRequest(f"{name} {val} must be in 0..65535")
    check_log_options(log_level, log_format)
    from ..kms.server import serve as run

    status = run(directory, host, port, access_log=access_log, dashboard_port=dashboard_port,
                 dashboard_host=dashboard_host, dashboard_public=dashboard_public,
                 accept_broken_audit=accept_broken_audit, log_level=log_level, log_format=log_format,
                 metrics_port=metrics_port, exit_after_unready=exit_after_unready)
    if status:
        raise typer.Exit(status)


@kms_app.command("status")
@user_errors
def status(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print /readyz's JSON body instead of lines.")] = False,
) -> None:
    """Print /readyz's checks computed from DIR (read-only; the service may be running); exit 1 if not ready."""
    from ..kms.status import directory_status

    body = directory_status(_kms_dir(directory))
    if as_json:
        import json

        typer.echo(json.dumps(body, indent=2, sort_keys=True))
    else:
        typer.echo(f"{directory}: {'ready' if body['ready'] else 'NOT READY'} "
                   f"({'served now' if body['serving'] else 'not served now'})")
        for name, check in body["checks"].items():
            typer.echo(f"  {name}: {'ok' if check['ok'] else 'FAILED'}: {check['detail']}")
    if not body["ready"]:
        raise typer.Exit(1)


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
    _check_seed(seed)
    if directory is not None and directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"--dir {directory}: exists and is not a directory")
    if directory is not None:
        _kms_dir(directory)
    from ..kms.demo import run_demo

    run_demo(directory, port, dashboard_port, rate, seed)


@kms_app.command("audit")
@user_errors
def audit(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    verify: Annotated[bool, typer.Option("--verify", help="Check the keyed chain (the default action).")] = True,
    archive: Annotated[Path | None, typer.Option("--archive", help="A folder the rotated audit-<seq>.jsonl[.gz] "
                                                 "files were moved to (checked with those in DIR).",
                                                 show_default=False)] = None,
) -> None:
    """Check DIR's audit log, rotated files included (read-only); exit 1 if a line was edited, removed or
    reordered. DIR: a kms directory, a node's (DEPLOY/nodes/<node>) or the controller's (DEPLOY/controller)."""
    from ..server.auditseries import series
    from ..server.directory import check_audit_dir, directory_audit_key

    if not series(directory, archive) and not (directory / "kms.sqlite3").exists():
        try:  # initialised (its audit key is there), never served: no record yet, nothing to break
            directory_audit_key(directory)
        except InvalidRequest:
            raise InvalidRequest(f"{directory}: no audit log here (no audit.jsonl, no rotated audit-<seq>.jsonl)"
                                 ) from None
        typer.echo("audit chain intact: 0 records (not served yet: no audit.jsonl, no database)")
        return
    if archive is not None and not archive.is_dir():
        raise InvalidRequest(f"--archive {archive}: not a directory")
    key = directory_audit_key(directory, optional=True)  # a damaged key is an error, not a reason to check less
    if key is None:
        typer.echo(f"note: MACs not checked, only the links (no readable audit key in {directory})")
    rep = check_audit_dir(directory, key, archive)
    if rep.accepted:
        typer.echo(f"{len(rep.accepted)} earlier problem(s) accepted by 'kms serve --accept-broken-audit' "
                   f"(record seq {', '.join(map(str, rep.accepted_at))}):")
        for p in rep.accepted:
            typer.echo(f"  accepted: {p}")
    if rep.problems:
        for p in rep.problems:
            typer.echo(p)
        typer.echo(f"audit chain BROKEN: {len(rep.problems)} problem(s) in {rep.records} records")
        raise typer.Exit(1)
    typer.echo(f"audit chain intact: {rep.records} records" + ("" if key is not None else " (links only)"))


@kms_app.command("rotate-storage-key")
@user_errors
def rotate_storage_key(
    directory: Annotated[Path, typer.Argument(help="The service directory (not served while rotating).",
                                              show_default=False)],
) -> None:
    """Re-seal every stored key under a new storage key, in one transaction (the server must be stopped)."""
    from ..server.config import load_config
    from ..server.directory import rotate_storage_key as rotate

    n, path = rotate(load_config(_kms_dir(directory)))
    typer.echo(f"re-sealed {n} stored key(s) under a new storage key in {path}")


sae_app = typer.Typer(help="Manage the SAE registry and the SAEs' certificates (restart the service to apply).",
                      no_args_is_help=True)
kms_app.add_typer(sae_app, name="sae")

CA_KEY_HELP = "The CA's private key, if it is not in DIR/pki/ca.key (kms init --ca-key-out)."


@sae_app.command("add")
@user_errors
def sae_add(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    entry: Annotated[str, typer.Argument(help="SAE_ID=NODE", show_default=False)],
    days: Annotated[int, typer.Option("--days", help="Days the certificate is valid.")] = 825,
    ca_key: Annotated[Path | None, typer.Option("--ca-key", help=CA_KEY_HELP, show_default=False)] = None,
    no_cert: Annotated[bool, typer.Option("--no-cert", help="Issue no certificate (your own CA issues it).")] = False,
) -> None:
    """Register an SAE at a node in kms.toml and issue its certificate from DIR/pki's CA."""
    from ..topology import load
    from ..server.config import check_sae_id, load_config, write_config
    from ..server.pki import add_sae_cert

    cfg = load_config(_kms_dir(directory))
    name, sep, node = entry.partition("=")
    if not sep or not node:
        raise InvalidRequest(f"SAE {entry!r} must be SAE_ID=NODE")
    check_sae_id(name)
    if name in cfg.saes:
        raise InvalidRequest(f"SAE {name!r} is registered already (at node {cfg.saes[name]})")
    if not 1 <= days <= 36500:
        raise InvalidRequest(f"--days {days} must be in 1..36500")
    spec = cfg.network if cfg.network == "example" or cfg.network.startswith("topohub:") else str(cfg.path(cfg.network))
    load(spec).resolve(node)
    cfg.saes[name] = node
    cfg.check()
    if not no_cert:
        add_sae_cert(directory / "pki", name, ca_key_path=ca_key, days=days)
    write_config(directory, cfg)
    typer.echo(f"added SAE {name} at node {node} to {directory / 'kms.toml'}"
               + ("" if no_cert else f"; its certificate: {directory / 'pki' / (name + '.crt')} and .key")
               + " (restart the service to apply)")


@sae_app.command("remove")
@user_errors
def sae_remove(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The SAE id.", show_default=False)],
) -> None:
    """Remove an SAE from kms.toml (its certificate then gets 401; revoke it at your CA too)."""
    from ..server.config import load_config, write_config

    cfg = load_config(_kms_dir(directory))
    if name not in cfg.saes:
        raise InvalidRequest(f"SAE {name!r} is not registered in {directory / 'kms.toml'}")
    del cfg.saes[name]
    cfg.check()
    write_config(directory, cfg)
    typer.echo(f"removed SAE {name} from {directory / 'kms.toml'} (restart the service to apply; keys issued to it "
               "expire after key_ttl_s)")


@sae_app.command("cert")
@user_errors
def sae_cert(
    directory: Annotated[Path, typer.Argument(help="The service directory.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The SAE id.", show_default=False)],
    days: Annotated[int, typer.Option("--days", help="Days the certificate is valid.")] = 825,
    ca_key: Annotated[Path | None, typer.Option("--ca-key", help=CA_KEY_HELP, show_default=False)] = None,
) -> None:
    """Issue or renew an SAE's certificate (a new key pair) from DIR/pki's CA."""
    from ..server.config import load_config
    from ..server.pki import add_sae_cert

    cfg = load_config(_kms_dir(directory))
    if name not in cfg.saes:
        raise InvalidRequest(f"SAE {name!r} is not registered in {directory / 'kms.toml'} (kms sae add first)")
    if not 1 <= days <= 36500:
        raise InvalidRequest(f"--days {days} must be in 1..36500")
    add_sae_cert(directory / "pki", name, ca_key_path=ca_key, days=days)
    typer.echo(f"issued {directory / 'pki' / (name + '.crt')} and .key, valid {days} days")
