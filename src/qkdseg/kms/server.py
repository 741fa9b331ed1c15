"""Start the key service: configuration -> network -> store -> service -> uvicorn over mutual TLS."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..errors import InvalidRequest
from ..server.core import open_state
from ..server.health import kms_health, kms_ready, service_metrics
from ..server.http import graceful_server, listen_socket
from ..server.tls import is_loopback, read_dashboard_token, tls_context
from ..server.watchdog import DEFAULT_EXIT_AFTER_S, Watchdog, stop_servers
from .service import KeyService


def open_service(directory: str | Path, *, accept_broken_audit: bool = False, **service_options) -> KeyService:
    """Load ``DIR/kms.toml``, its network and its database into a :class:`KeyService`."""
    return open_state(directory, KeyService, accept_broken_audit=accept_broken_audit, **service_options)


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8443, *, access_log: bool = False,
          log_level: str = "warning", log_format: str = "text", dashboard_port: int | None = None,
          dashboard_host: str = "127.0.0.1", dashboard_public: bool = False, metrics_port: int | None = None,
          on_listening=None, accept_broken_audit: bool = False,
          exit_after_unready: float = DEFAULT_EXIT_AFTER_S) -> int:
    """Serve ETSI GS QKD 014 from ``DIR`` until SIGINT or SIGTERM; prints the URL it listens on. Returns the exit
    status: 0, or 1 after ``exit_after_unready`` seconds of a failing store (:mod:`qkdseg.server.watchdog`).

    With ``dashboard_port``, the operator dashboard is served too, on
    ``dashboard_host`` (loopback unless ``dashboard_public``, and then with
    the access token, over TLS), with ``/metrics``, ``/healthz`` and
    ``/readyz``; its URL is printed as well. With ``metrics_port``, those
    three are also served alone over plain HTTP on 127.0.0.1.
    ``on_listening(port, dashboard_port)`` is called once all listen.
    """
    import uvicorn

    from ..server import logs
    from ..server.frontend import create_app, service_protocol
    from ..server.metrics import instrument

    _Server = graceful_server()

    if dashboard_port is not None and not is_loopback(dashboard_host) and not dashboard_public:
        raise InvalidRequest(f"--dashboard-host {dashboard_host} is not a loopback address: add --dashboard-public "
                             "(the dashboard then needs the access token in DIR/dashboard.token)")
    logs.configure(log_level, log_format, prefix="qkdseg kms")
    # from here a SIGTERM/SIGINT is remembered until the server captures them (a stop during start-up is a clean stop)
    early: list = []
    before = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        before = {sig: signal.signal(sig, lambda sig, _frame: early.append(sig)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        service = open_service(directory, accept_broken_audit=accept_broken_audit)
    except BaseException:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        raise
    service.watchdog = Watchdog(service.store.health, exit_after_unready, probes=[lambda: service.committer.probe()])
    try:
        for line in service.changes:
            logs.say(line, err=True)
        metrics = service_metrics(service)
        service.warm()  # compile the routing kernels now, not on the first request
        ctx = tls_context(service.cfg)
        token = None
        if dashboard_port is not None and not is_loopback(dashboard_host):
            token = read_dashboard_token(service.cfg)
        sock = listen_socket(host, port, "ETSI 014")
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            instrument(create_app(service), metrics, "qkdseg.kms.request"),
            http=service_protocol(service),
            ssl_context_factory=lambda _cfg, _default: ctx,
            ssl_certfile=str(service.cfg.path(service.cfg.cert)),
            access_log=access_log,
            log_level=log_level,
            log_config=None,
            lifespan="on",
            timeout_keep_alive=service.cfg.keep_alive_s,
        )
        server = _Server(config)
        server.early = early
        shown = f"[{host}]" if ":" in host else host
        logs.say(f"ETSI GS QKD 014 on https://{shown}:{bound}/api/v1/keys/ "
                 f"(KME {service.cfg.kme_id}, {len(service.sae_node)} SAEs, network {service.network.name!r})")
        _serve_all(service, server, sock, metrics, token, dashboard_host, dashboard_port, metrics_port,
                   log_level=log_level, on_listening=on_listening, bound=bound)
    finally:
        service.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    logs.say("stopped", err=True)
    return service.watchdog.exit_status


def _serve_all(service, server, sock, metrics, token: str | None, host: str, port: int | None,
               metrics_port: int | None, *, log_level: str, on_listening, bound: int) -> None:
    """Run the ETSI 014 ``server``, the dashboard and the metrics port on one event loop until a signal stops all.

    The dashboard keeps no access log: a first request's ``?token=`` would be written there.
    """
    import asyncio

    import uvicorn

    from ..server import logs
    from ..server.http import QuickCloseH11Protocol
    from ..server.metrics import ops_app, ops_routes

    def health():
        return kms_health(service, metrics)

    def ready():
        return kms_ready(service)

    companions = []
    dbound = None
    monitor = None
    if port is not None:
        from ..server.dashboard import create_dashboard
        from ..server.monitor import Monitor

        monitor = Monitor(service)
        dsock = listen_socket(host, port, "dashboard")
        dbound = dsock.getsockname()[1]
        tls = {"ssl_certfile": str(service.cfg.path(service.cfg.cert)),
               "ssl_keyfile": str(service.cfg.path(service.cfg.key))} if token is not None else {}
        dconfig = uvicorn.Config(create_dashboard(monitor, token=token, secure_cookie=token is not None,
                                                  routes=ops_routes(metrics, health, ready), open_paths=("/healthz",)),
                                 http=QuickCloseH11Protocol, access_log=False, log_level=log_level, log_config=None,
                                 lifespan="on", timeout_graceful_shutdown=10, **tls)
        companions.append((type(server)(dconfig), dsock))
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if token is not None else "http"
        logs.say(f"dashboard on {scheme}://{shown}:{dbound}/dashboard/"
                 + (" (access token: DIR/dashboard.token)" if token is not None else "")
                 + " (and /metrics, /healthz, /readyz)")
    if metrics_port is not None:
        msock = listen_socket("127.0.0.1", metrics_port, "metrics")
        mconfig = uvicorn.Config(ops_app(metrics, health, ready), http=QuickCloseH11Protocol, access_log=False,
                                 log_level=log_level, log_config=None, lifespan="off", timeout_graceful_shutdown=5)
        companions.append((type(server)(mconfig), msock))
        logs.say(f"metrics on http://127.0.0.1:{msock.getsockname()[1]}/metrics (and /healthz, /readyz)")
    for other, _ in companions:
        other.captures = False
    server.companions = [other for other, _ in companions]
    service.watchdog.stoppers.append(lambda: stop_servers(server, *server.companions))
    if monitor is not None:
        server.on_exit = [monitor.stop]  # a flag only: a signal handler must not touch the loop
    if on_listening is not None:
        on_listening(bound, dbound)
    if not companions:
        server.run(sockets=[sock])
        return

    async def run_all() -> None:
        tasks = [asyncio.ensure_future(server.serve(sockets=[sock]))]
        tasks += [asyncio.ensure_future(other.serve(sockets=[s])) for other, s in companions]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        for other, _ in companions:
            other.should_exit = True
        if monitor is not None:
            monitor.close()
        await asyncio.gather(*tasks)

    asyncio.run(run_all())
