"""``qkdseg net|node|controller``: set up, run and inspect a network of key service processes (docs/network.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidRequest
from .common import (_check_seed, MAX_KEY_COUNT_OPTION, SAE_MAX_WAITING_OPTION, SAE_RATE_OPTION,
                     STOCK_KEYS_OPTION, STOCK_LEVEL_OPTION, STOCK_OPTION, STOCK_SIZE_OPTION, _need_server_extra,
                     STOCK_POLICY_OPTION, STOCK_HIT_OPTION, SHARING_OPTION, TOLERATE_OPTION, sharing_fields,
                     _parse_algorithm_options, _parse_saes, check_log_options)
from .errors import user_errors

net_app = typer.Typer(help="A key service network: one KME process per node and a controller.", no_args_is_help=True)
node_app = typer.Typer(help="One node's KME (ETSI 014, relay, control).", no_args_is_help=True)
controller_app = typer.Typer(help="The network's controller (routes and plans; no key material).",
                             no_args_is_help=True)


@net_app.command("init")
@user_errors
def init(
    directory: Annotated[Path, typer.Argument(help="The deployment directory to create.", show_default=False)],
    network: Annotated[str, typer.Option("--network", help="A network: file, 'example' or 'topohub:...'.")],
    sae: Annotated[list[str], typer.Option("--sae", help="SAE_ID=NODE (repeat; at least two).")],
    security_level: Annotated[float, typer.Option("--security-level", help="Default security level of a key.")] = 0.9,
    key_size: Annotated[int, typer.Option("--key-size", help="Default key size, bits.")] = 256,
    algorithm: Annotated[str, typer.Option("--algorithm", help="Routing algorithm.")] = "smr",
    reconstruction: Annotated[str | None, typer.Option("--reconstruction", show_default=False, help="paper (the "
                                                       "default), optimal or xor-all (with --tolerate).")] = None,
    algorithm_option: Annotated[list[str], typer.Option(
        "--algorithm-option", help="NAME=VALUE: an option of the routing algorithm (repeat; 'qkdseg algorithms' "
                                   "lists them), e.g. shared_relays=true for msp.", show_default=False)] = [],
    port: Annotated[int | None, typer.Option("--port", show_default=False, help="The port of every listener (each "
                                             "node has its own address; default 8443). Not with --inventory, which "
                                             "gives every address.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing deployment.")] = False,
    link_source: Annotated[str, typer.Option("--link-source", help="Where link keys come from: 'emulated' (a seeded "
                                             "keystream per link) or 'device' (QKD devices over ETSI 014: writes "
                                             "the device emulator's directory DIR/devices/).")] = "emulated",
    link_seeds: Annotated[str | None, typer.Option(
        "--link-seeds", help="Who draws an emulated link's seed: 'admin' (net init, here) or 'agree' (the link's two "
                             "ends, over their mutual TLS, at their first start). Default: 'agree' with --enroll, "
                             "else 'admin'.")] = None,
    max_skip_bits: Annotated[int | None, typer.Option(
        "--max-skip-bits", help="How far (bits) a neighbour may move a node's link counter or mark in one claim "
                                "(further on: refused, audited, the link reported suspect); default: each link's "
                                "pool size.", show_default=False)] = None,
    retention: Annotated[float, typer.Option("--retention", help="Seconds each node keeps a finished relay message's "
                                             "row (its idempotency window).")] = 3600.0,
    clock_skew: Annotated[float, typer.Option("--clock-skew", help="Seconds the nodes' clocks may differ (a message "
                                              "older than the retention less this is refused).")] = 60.0,
    audit_max_mb: Annotated[float, typer.Option("--audit-max-mb", help="Rotate each server's audit.jsonl past this "
                                                "size (MB; 0: never).")] = 64.0,
    key_ttl: Annotated[float, typer.Option("--key-ttl", help="Seconds an issued key waits for its slave (and a spare "
                                           "or stocked key is kept) before it is deleted.")] = 3600.0,
    stock: Annotated[list[str], STOCK_OPTION] = [],
    stock_keys: Annotated[str | None, STOCK_KEYS_OPTION] = None,
    stock_level: Annotated[float | None, STOCK_LEVEL_OPTION] = None,
    stock_size: Annotated[int | None, STOCK_SIZE_OPTION] = None,
    stock_policy: Annotated[str | None, STOCK_POLICY_OPTION] = None,
    stock_hit: Annotated[float | None, STOCK_HIT_OPTION] = None,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", help="hosts.toml: each process's HOST:PORT (docs/network.md, \"Deploying one node per "
                            "host\"); default: loopback.", show_default=False)] = None,
    enroll: Annotated[bool, typer.Option(
        "--enroll", help="Write no private, storage or audit key: each host makes its own ('node keygen', "
                         "'controller keygen') and 'net sign' certifies it; needs --ca-key-out.")] = False,
    ca_key_out: Annotated[Path | None, typer.Option(
        "--ca-key-out", help="Write the CA's private key here (outside DIR), not in DIR/pki/.",
        show_default=False)] = None,
    max_key_count: Annotated[int, MAX_KEY_COUNT_OPTION] = 100_000,
    sae_max_waiting: Annotated[int, SAE_MAX_WAITING_OPTION] = 0,
    sae_rate: Annotated[float, SAE_RATE_OPTION] = 0.0,
    suspect_after: Annotated[int, typer.Option("--suspect-after", metavar="N", help="A relay node whose last N relay "
                                               "runs failed (none through it confirmed since) is excluded from "
                                               "planning as suspect.")] = 3,
    suspect_for: Annotated[float, typer.Option("--suspect-for", metavar="SECONDS", help="How long a suspect node is "
                                               "excluded (or until 'net clear-suspect').")] = 600.0,
    sharing: Annotated[str | None, SHARING_OPTION] = None,
    tolerate: Annotated[int | None, TOLERATE_OPTION] = None,
) -> None:
    """Write DIR/pki/, DIR/controller/ and DIR/nodes/<node>/ (each node holds only its own links' seeds)."""
    from ..net.layout import init_network
    from ..server.stockconfig import stock_table

    if force and (directory / "nodes.json").exists():
        from ..net.procs import running

        up_now = running(directory)
        if up_now:
            raise InvalidRequest(f"{directory}: the network is running ({len(up_now)} process(es): "
                                 f"{', '.join(up_now[:3])}{', ...' if len(up_now) > 3 else ''}); 'qkdseg net down "
                                 f"{directory}' (and stop its processes on the other hosts) before --force")
    if inventory is not None and port is not None:
        raise InvalidRequest(f"--port {port}: the inventory {inventory} gives every process's HOST:PORT; leave --port "
                             "out (or change the ports in the inventory)")
    saes = _parse_saes(sae)
    out = init_network(directory, network, saes, security_level=security_level, key_size=key_size,
                       algorithm=algorithm, port=8443 if port is None else port, force=force,
                       **sharing_fields(sharing, tolerate, reconstruction),
                       algorithm_options=_parse_algorithm_options(algorithm_option), link_source=link_source,
                       max_skip_bits=max_skip_bits, retention=retention, clock_skew=clock_skew,
                       audit_max_mb=audit_max_mb, key_ttl_s=key_ttl, link_seeds=link_seeds,
                       stock=stock_table(stock, stock_keys, stock_level, stock_size, security_level=security_level,
                                         key_size=key_size, policy=stock_policy, hit=stock_hit),
                       inventory=inventory, enroll=enroll, ca_key_out=ca_key_out,
                       quotas={"max_key_count": max_key_count, "sae_max_waiting": sae_max_waiting,
                               "sae_rate": sae_rate}, suspect=(suspect_after, suspect_for))
    typer.echo(f"wrote {directory}/: {out['nodes']} nodes, {out['links']} links, {out['saes']} SAEs; "
               f"controller on {out['controller']}")
    if "devices" in out:
        typer.echo(f"wrote {directory}/devices/: the QKD device emulator on {out['devices']} (net up starts it)")
    if ca_key_out is not None:
        typer.echo(f"the CA's private key is in {ca_key_out} (not in {directory}); keep it off the hosts")
    if enroll:
        typer.echo(f"next: 'qkdseg net bundle {directory} --node ID -o FILE' (and --controller) for each host; there "
                   "'qkdseg node keygen' / 'controller keygen'; here 'qkdseg net sign' each CSR and 'qkdseg net sae "
                   "cert' each SAE")
    else:
        typer.echo(f"start it with: qkdseg net up {directory}")


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    replicated = any("leader" in r for r in rows)
    t = Table("node", "role", "pid", "address", "ETSI 014 URL", "healthy", *(("name", "leader") if replicated else ()))
    for r in rows:
        more = (r["name"], {True: "yes", False: "no"}.get(r["leader"], "-")) if replicated else ()
        t.add_row(r["node"] or "-", r["role"], "remote" if r.get("remote") else str(r["pid"] or "-"), r["address"],
                  r["etsi014_url"] or "-",
                  "yes" if r["healthy"] else f"no: {r['problem']}" if r.get("problem") else "no", *more)
    Console(width=140).print(t)


@net_app.command("up")
@user_errors
def up(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (net init).", show_default=False)],
    detach: Annotated[bool, typer.Option("--detach", help="Leave the processes running ('net down' stops them).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for every health check.")] = 120.0,
    dashboard_port: Annotated[int | None, typer.Option(
        "--dashboard-port", min=1, max=65535, show_default=False,
        help="The controller serves the operator dashboard on 127.0.0.1 at this port.")] = None,
    controllers: Annotated[int | None, typer.Option(
        "--controllers", min=1, max=9, show_default=False,
        help="Run this many controllers over etcd (one leads; default 1, or as DIR/cluster.json says).")] = None,
    etcd: Annotated[int | None, typer.Option(
        "--etcd", show_default=False,
        help="Start an etcd cluster of this many members on loopback ports (Debian's etcd-server).")] = None,
    faults: Annotated[bool | None, typer.Option(
        "--faults", show_default=False,
        help="Put a fault proxy on every link ('qkdseg net fault' sets delay, loss and cuts).")] = None,
    metrics_port_base: Annotated[int | None, typer.Option(
        "--metrics-port-base", show_default=False,
        help="Metrics on 127.0.0.1: the controller at this port, the i-th node of nodes.json at this + 1 + i "
             "(net status --format json lists each metrics_url).")] = None,
    log_format: Annotated[str | None, typer.Option(
        "--log-format", show_default=False, help="Every server's log format: text or json.")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", show_default=False,
        help="Every server's log level: critical, error, warning, info, debug.")] = None,
    port_range: Annotated[str | None, typer.Option(
        "--port-range", show_default=False,
        help="LO-HI: the ports net up picks (etcd members, other controllers, fault proxies); "
             "default 20000-60000.")] = None,
) -> None:
    """Start the controller and one process per node; wait until each is healthy; stop all on SIGINT/SIGTERM."""
    _need_server_extra()
    from ..net.cluster import parse_port_range
    from ..net.procs import up as run, wait_foreground

    if log_format is not None or log_level is not None:
        check_log_options(log_level or "warning", log_format or "text")
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise InvalidRequest(f"--timeout {timeout:g}: seconds to wait for the health checks, more than 0 and at most "
                             "3600")
    if etcd is not None and etcd not in (1, 3):
        raise InvalidRequest(f"--etcd {etcd}: 1 or 3 members (an even count tolerates no more failures than the odd "
                             "one below it, and etcd's quorum of 2 of 2 stops at the first failure)")
    ports = None if port_range is None else parse_port_range(port_range)
    rows = run(directory, timeout=timeout, dashboard_port=dashboard_port, controllers=controllers, etcd=etcd,
               faults=faults, metrics_port_base=metrics_port_base, log_format=log_format, log_level=log_level,
               port_range=ports)
    _table(rows)
    remote = sum(1 for r in rows if r.get("remote"))
    if remote:
        typer.echo(f"{remote} process(es) run on other hosts (remote): each is started there ('qkdseg net bundle'; "
                   "its README)")
    if dashboard_port is not None:
        typer.echo(f"dashboard: http://127.0.0.1:{dashboard_port}/dashboard/")
    if metrics_port_base is not None:
        typer.echo(f"metrics: http://127.0.0.1:{metrics_port_base}/metrics (the controller), then one port per node "
                   "(net status --format json: metrics_url)")
    if remote == len(rows):
        return  # nothing runs here: nothing to wait for or stop
    if detach:
        typer.echo(f"running; stop with: qkdseg net down {directory}")
        return
    typer.echo("running; Ctrl-C stops every process")
    wait_foreground(directory)


@net_app.command("down")
@user_errors
def down(directory: Annotated[Path, typer.Argument(help="The deployment directory.", show_default=False)]) -> None:
    """Stop every process of a network started with 'net up --detach'."""
    from ..net.procs import down as run

    n, notes = run(directory)
    typer.echo(f"stopped {n} process(es)")
    stuck = [line for line in notes if line.endswith("did not stop")]
    for line in notes:
        if line not in stuck:
            typer.echo(f"qkdseg: warning: {line}", err=True)
    if stuck:
        raise InvalidRequest("; ".join(stuck))


_RESTORED = ("at its next start a node voids every key it holds (the SAEs ask again) and sends on new key streams "
             "of its links (docs/deploy.md, \"Backup and restore\")")


@net_app.command("restore")
@user_errors
def restore(directory: Annotated[Path, typer.Argument(help="The deployment directory, put back from a backup.",
                                                      show_default=False)]) -> None:
    """Mark every node of a deployment put back from a backup as restored (before 'net up')."""
    from ..net.restore import mark
    from ..server.files import load_json

    names = load_json(directory / "nodes.json", "the deployment's list of nodes",
                      missing=f"{directory}: not a network directory (no nodes.json; run 'qkdseg net init' first)")
    for name in names.values():
        mark(directory / "nodes" / str(name))
    typer.echo(f"marked {len(names)} node(s) restored: {_RESTORED}")


@node_app.command("restore")
@user_errors
def node_restore(directory: Annotated[Path, typer.Argument(help="The node's directory (DIR/nodes/<node>), put back "
                                                           "from a backup.", show_default=False)]) -> None:
    """Mark a node's directory put back from a backup as restored (before it starts)."""
    from ..net.restore import mark

    mark(directory)
    typer.echo(f"marked {directory} restored: {_RESTORED}")


@net_app.command("fault")
@user_errors
def fault(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (net up --faults).", show_default=False)],
    link: Annotated[str, typer.Option("--link", help="The link, U-V (node ids).", show_default=False)],
    delay: Annotated[str | None, typer.Option("--delay", help="Hold each chunk this long each way: 50ms, 0.2s.",
                                              show_default=False)] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Lose (reset the connection at) this share of chunks: "
                                                            "5%, 0.05.", show_default=False)] = None,
    cut: Annotated[bool, typer.Option("--cut", help="Close the link's connections and refuse new ones.")] = False,
    heal: Annotated[bool, typer.Option("--heal", help="Clear every fault of the link.")] = False,
) -> None:
    """Delay, lose or cut the traffic of one link (through its fault proxy), or heal it."""
    from ..net.faults import parse_delay, parse_loss, set_fault

    out = set_fault(directory, link, delay_ms=None if delay is None else parse_delay(delay),
                    loss=None if loss is None else parse_loss(loss), cut=cut, heal=heal)
    typer.echo(f"link {out['link']}: delay {out['delay_ms']:g} ms, loss {out['loss'] * 100:g}%, "
               f"{'cut' if out['cut'] else 'up'}")


@net_app.command("chaos")
@user_errors
def chaos(
    directory: Annotated[Path, typer.Argument(help="A network started by 'net up' (best: --controllers 3 --etcd 3 "
                                                   "--faults).", show_default=False)],
    duration: Annotated[float, typer.Option("--duration", help="Seconds of faults and traffic.")] = 120.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fault schedule.")] = 0,
    rate: Annotated[float, typer.Option("--rate", help="Key requests per second per SAE pair.")] = 2.0,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Kill relays and leaders, delay, lose and cut links, while SAEs request keys; report what survived
    (exit 1 when a key mismatched, a link bit was used twice or a key could not be fetched)."""
    from ..net.chaos import chaos as run, format_report

    if fmt not in ("text", "json"):
        raise InvalidRequest(f"--format {fmt!r} must be text or json")
    if not 0 < duration <= 3600:
        raise InvalidRequest(f"--duration {duration:g}: must be more than 0 and at most 3600 s")
    if not 0 < rate <= 50:
        raise InvalidRequest(f"--rate {rate:g}: must be more than 0 and at most 50 requests/s")
    _check_seed(seed)
    rep = run(directory, duration, seed, rate)
    typer.echo(json.dumps(rep, indent=1) if fmt == "json" else format_report(rep))
    if rep["mismatched_keys"] or rep["bits_reused"] or rep["unfetchable_keys"]:
        raise typer.Exit(1)


@net_app.command("clear-suspect")
@user_errors
def clear_suspect(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (its network up).", show_default=False)],
    node: Annotated[str, typer.Argument(help="The node named suspect (net status --format json: excluded).",
                                        show_default=False)],
) -> None:
    """Plan through a node named suspect again now (it was excluded for --suspect-for seconds; audited)."""
    out = _clear_suspect(directory, node)
    typer.echo(f"node {out['node']}: {'no longer suspect' if out['cleared'] else 'was not suspect'}; excluded now: "
               f"{json.dumps(out['excluded'])}")


def _clear_suspect(directory, node: str) -> dict:
    """``qkdseg net clear-suspect DIR NODE``: ask the controller (each of them; the leader answers) to plan through
    ``node`` again; one-line :class:`InvalidRequest` when none answers or the node is unknown."""
    from pathlib import Path

    import httpx

    from ..net.procs import processes
    from ..net.tlsfail import describe
    from ..net.wire import client_context

    d = Path(directory)
    c = d / "controller"
    if not (c / "controller.crt").exists():
        raise InvalidRequest(f"{d}: not a network's directory (no controller/controller.crt; run 'qkdseg net init')")
    ctx = client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
    procs = processes(d)
    nodes = [p["node"] for p in procs if p["role"] == "node"]
    if str(node) not in nodes:  # the controller would say so: said before asking it
        raise InvalidRequest(f"NODE {node!r}: not a node of the network ({', '.join(nodes[:20])})")
    why = "no controller is configured"
    for p in [p for p in procs if p["role"] == "controller"]:
        try:
            with httpx.Client(verify=ctx, timeout=10.0) as cl:
                r = cl.post(f"https://{p['address']}/control/v1/suspects/clear", json={"node": str(node)})
        except httpx.HTTPError as err:
            why = f"the controller at {p['address']} does not answer ({describe(err)}; is the network up?)"
            continue
        if r.status_code == 200:
            return r.json()
        detail = r.json().get("detail", r.text[:200]) if r.headers.get("content-type", "").endswith("json") else \
            r.text[:200]
        if r.status_code == 404:
            raise InvalidRequest(f"NODE {node!r}: {detail}")
        why = f"the controller at {p['address']} answered {r.status_code}: {detail}"
    raise InvalidRequest(f"{d}: {why}")


@net_app.command("status")
@user_errors
def status(
    directory: Annotated[Path, typer.Argument(help="The deployment directory.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Per process: role, node, pid, address, ETSI 014 URL, healthy (its health check)."""
    from ..net.procs import status as run

    if fmt not in ("table", "json"):
        raise InvalidRequest(f"--format {fmt!r} must be table or json")
    rows = run(directory)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=1))
    else:
        _table(rows)


@node_app.command("serve")
@user_errors
def node_serve(
    directory: Annotated[Path, typer.Argument(help="The node's directory (DIR/nodes/<node>).", show_default=False)],
    tap: Annotated[Path | None, typer.Option(
        "--tap", help="TEST ONLY, the adversary's tap: record the plaintext pieces this node handles to this file "
                      "(refused unless QKDSEG_ALLOW_TAP=1).", show_default=False)] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve /metrics, /healthz and /readyz over plain HTTP on 127.0.0.1 at this port "
        "(0: any free port; docs/deploy.md).", show_default=False)] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "warning",
    log_format: Annotated[str, typer.Option("--log-format", help="text, or json: one JSON object per line.")] = "text",
    exit_after_unready: Annotated[float, typer.Option(
        "--exit-after-unready", envvar="QKDSEG_EXIT_AFTER_UNREADY_S", metavar="SECONDS",
        help="Exit with status 1 after the store has failed writes this long, so that the supervisor restarts "
             "it (0: never).")] = 30.0,
) -> None:
    """Serve one node's KME: ETSI 014 to its SAEs, relay to its neighbours, control from the controller."""
    _need_server_extra()
    _check_ops(metrics_port, log_level, log_format, exit_after_unready)
    from ..net.node import serve_node

    status = serve_node(directory, tap=tap, metrics_port=metrics_port, log_level=log_level, log_format=log_format,
                        exit_after_unready=exit_after_unready)
    if status:
        raise typer.Exit(status)


@controller_app.command("serve")
@user_errors
def controller_serve(
    directory: Annotated[Path, typer.Argument(help="The controller's directory (DIR/controller).", show_default=False)],
    capture: Annotated[Path | None, typer.Option(
        "--capture", help="TEST ONLY: record every request body the controller receives (and the nodes' answers) "
                          "to this file (refused unless QKDSEG_ALLOW_CAPTURE=1).", show_default=False)] = None,
    dashboard_port: Annotated[int | None, typer.Option(
        "--dashboard-port", min=0, max=65535, show_default=False,
        help="Serve the operator dashboard on this port (0: any free port), fed by the nodes' reports.")] = None,
    dashboard_host: Annotated[str, typer.Option("--dashboard-host", help="The dashboard's address.")] = "127.0.0.1",
    dashboard_public: Annotated[bool, typer.Option(
        "--dashboard-public", help="Allow a non-loopback --dashboard-host (then TLS and the access token of "
                                   "DIR/dashboard.token).")] = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve /metrics, /healthz and /readyz over plain HTTP on 127.0.0.1 at this port "
        "(0: any free port; docs/deploy.md).", show_default=False)] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "warning",
    log_format: Annotated[str, typer.Option("--log-format", help="text, or json: one JSON object per line.")] = "text",
    store: Annotated[str | None, typer.Option(
        "--store", help="etcd://HOST:PORT[,HOST:PORT...]: keep the state in etcd and lead by an etcd lease (several "
                        "controllers; default: the embedded SQLite store).", show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="HOST:PORT to listen on (default: the address in net.json).", show_default=False)] = None,
    exit_after_unready: Annotated[float, typer.Option(
        "--exit-after-unready", envvar="QKDSEG_EXIT_AFTER_UNREADY_S", metavar="SECONDS",
        help="Exit with status 1 after the store has failed writes this long, so that the supervisor restarts "
             "it (0: never).")] = 30.0,
) -> None:
    """Serve the controller: plans and reservations for the nodes; it never holds key material."""
    _need_server_extra()
    _check_ops(metrics_port, log_level, log_format, exit_after_unready)
    from ..net.controller import serve_controller

    if store is not None:
        from ..net.replica import parse_store

        parse_store(store)
    if address is not None:
        from ..net.replica import parse_address

        parse_address(address, "--address")
    status = serve_controller(directory, capture=capture, dashboard_port=dashboard_port,
                              dashboard_host=dashboard_host, dashboard_public=dashboard_public,
                              metrics_port=metrics_port, log_level=log_level, log_format=log_format, store=store,
                              address=address, exit_after_unready=exit_after_unready)
    if status:
        raise typer.Exit(status)


def _check_ops(metrics_port: int | None, log_level: str, log_format: str, exit_after_unready: float = 30.0) -> None:
    from ..server.watchdog import check_exit_after

    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise InvalidRequest(f"--metrics-port {metrics_port} must be in 0..65535")
    check_log_options(log_level, log_format)
    check_exit_after(exit_after_unready)
