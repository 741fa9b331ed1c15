"""Start the key service: configuration -> network -> store -> service -> uvicorn over mutual TLS."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidRequest
from ..server.core import open_state
from ..server.health import kms_health, kms_ready, service_metrics
from ..server.http import listen_socket
from ..server.tls import is_loopback, read_dashboard_token, tls_context
from ..server.watchdog import DEFAULT_EXIT_AFTER_S, Watchdog
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
    The stop: :mod:`qkdseg.server.serving` (exit 0, the database checkpointed).
    """
    from ..server import logs, serving
    from ..server.frontend import create_app, service_protocol

    if dashboard_port is not None and not is_loopback(dashboard_host) and not dashboard_public:
        raise InvalidRequest(f"--dashboard-host {dashboard_host} is not a loopback address: add --dashboard-public "
                             "(the dashboard then needs the access token in DIR/dashboard.token)")
    logs.configure(log_level, log_format, prefix="qkdseg kms")
    serving.private_files()
    with serving.stop_signals() as early:
        service = open_service(directory, accept_broken_audit=accept_broken_audit)
        service.watchdog = Watchdog(service.store.health, exit_after_unready,
                                    probes=[lambda: service.committer.probe()])
        try:
            for line in service.changes:
                logs.say(line, err=True)
            metrics = service_metrics(service)
            service.warm()  # compile the routing kernels now, not on the first request
            ctx = tls_context(service.cfg)
            if dashboard_port is not None and not is_loopback(dashboard_host):
                read_dashboard_token(service.cfg)  # refused before listening when missing
            sock = listen_socket(host, port, "ETSI 014")
            shown = f"[{host}]" if ":" in host else host
            dash = None if dashboard_port is None else {"service": service, "host": dashboard_host,
                                                        "port": dashboard_port}
            serving.serve(create_app(service), sock, http=service_protocol(service), ctx=ctx,
                          certfile=service.cfg.path(service.cfg.cert), keep_alive_s=service.cfg.keep_alive_s,
                          ops=(metrics, lambda: kms_health(service, metrics), lambda: kms_ready(service)),
                          log_level=log_level, access_log=access_log, request_logger="qkdseg.kms.request",
                          metrics_port=metrics_port, dashboard=dash, early=early, on_listening=on_listening,
                          watchdog=service.watchdog,
                          announce=f"ETSI GS QKD 014 on https://{shown}:{sock.getsockname()[1]}/api/v1/keys/ "
                                   f"(KME {service.cfg.kme_id}, {len(service.sae_node)} SAEs, network "
                                   f"{service.network.name!r})")
        finally:
            service.close()
    logs.say("stopped", err=True)
    return service.watchdog.exit_status
