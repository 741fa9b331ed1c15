"""What the node and controller processes share: mutual TLS 1.3, certificate roles, problem details.

- Every process listens with TLS 1.3, a client certificate required from the
  deployment's CA, and calls the others with its own certificate.
- The caller's role is the SAN URI of its certificate (``urn:qkdseg:node:ID``,
  ``urn:qkdseg:controller``, ``urn:qkdseg:sae:ID``), read once per connection
  by :class:`RolePeerProtocol`. For the ETSI 014 routes the caller's SAE id is
  the CN only when the certificate's role is that SAE; a node's or the
  controller's certificate is never taken for an SAE.
- Errors of the relay and control APIs are RFC 9457 problem details
  (``application/problem+json``).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.responses import Response

from ..server.http import STATE_KEY, PeerCertH11Protocol
from ..server.etsi import Caller
from ..server.storehealth import CommitFailed

ROLE_KEY = "qkdseg_role"


@dataclass(frozen=True)
class Role:
    """A caller's role from its certificate: ``kind`` (node, controller, sae) and ``ident`` (text)."""

    kind: str
    ident: str | None


def role_of(cert) -> Role | None:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri == "urn:qkdseg:controller":
            return Role("controller", None)
        for kind in ("node", "sae"):
            prefix = f"urn:qkdseg:{kind}:"
            if uri.startswith(prefix):
                return Role(kind, unquote(uri[len(prefix):]))
    return None


class RolePeerProtocol(PeerCertH11Protocol):
    """uvicorn's h11 protocol with the peer's role in each request's state, and the SAE id only for SAEs."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        role = None
        if der:
            from cryptography import x509

            from ..server.pki import common_name

            cert = x509.load_der_x509_certificate(der)
            role = role_of(cert)
            caller = self.app_state.get(STATE_KEY)
            if caller is not None and not (role and role.kind == "sae" and role.ident == common_name(cert)):
                # not an SAE certificate: an id no SAE can have (':' is not allowed in SAE ids)
                who = f"urn:qkdseg:{role.kind}:{role.ident}" if role else "urn:qkdseg:unknown"
                self.app_state = {**self.app_state, STATE_KEY: Caller(who, caller.fingerprint)}
        self.app_state = {**self.app_state, ROLE_KEY: role}


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    from ..server.tls import load_tls_files

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_tls_files(ctx, cert, key, ca)  # one line naming a missing or damaged file
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    from ..server.tls import load_tls_files

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # as ssl.create_default_context: hostnames checked, CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_tls_files(ctx, cert, key, ca)
    return ctx


class Problem(Exception):
    """An RFC 9457 problem: ``status``, ``title``, ``detail`` and extension members."""

    def __init__(self, status: int, title: str, detail: str = "", **ext: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.ext = status, title, detail, ext

    def response(self) -> Response:
        body = {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail, **self.ext}
        return Response(json.dumps(body, separators=(",", ":")), status_code=self.status,
                        media_type="application/problem+json")


def async_client(ctx: ssl.SSLContext, max_connections: int = 64):
    """An httpx client over ``ctx`` with TCP_NODELAY (without it each small request waits ~40 ms for a delayed ACK)."""
    import socket

    import httpx

    transport = httpx.AsyncHTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                         limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections))
    return httpx.AsyncClient(transport=transport, timeout=10.0)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")


def role(request) -> Role | None:
    return request.scope.get("state", {}).get(ROLE_KEY)


def require(request, kind: str) -> Role:
    r = role(request)
    if r is None or r.kind != kind:
        raise Problem(403, "Forbidden", f"this API is for the {kind} role; the caller's certificate has role "
                                        f"{r.kind if r else 'none'}")
    return r


def problem_routes(handler):
    """A route handler whose :class:`Problem` becomes its problem+json response (and bad JSON a 400)."""
    import functools

    @functools.wraps(handler)
    async def wrapped(request):
        try:
            return await handler(request)
        except Problem as p:
            return p.response()
        except CommitFailed as err:  # a write of this server's store failed: nothing of the message was stored
            return Problem(503, "Service Unavailable", err.message, reason=err.reason, status_020="failed").response()
        except (ValueError, KeyError, TypeError, OverflowError) as err:  # OverflowError: int(1e400)
            return Problem(400, "Bad Request", f"malformed message: {type(err).__name__}").response()

    return wrapped


async def read_json(request) -> dict:
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise Problem(400, "Bad Request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return data


def run_uvicorn(app, host: str, port: int, ctx: ssl.SSLContext, certfile: Path, on_ready=None, *,
                http: type | None = None, keep_alive_s: float = 30.0, ops=None, metrics_port: int | None = None,
                log_level: str = "warning", dashboard: dict | None = None, watchdog=None) -> None:
    """Serve ``app`` over ``ctx`` until SIGINT/SIGTERM (the app's lifespan closes its stores).

    ``ops`` (``(metrics, health, ready)``, :mod:`.ops`) times every request into the metrics and gives it a
    request id; with ``metrics_port``, ``/metrics``, ``/healthz`` and ``/readyz`` are served over plain HTTP on
    127.0.0.1 at that port, on the same event loop. ``dashboard`` (``service``, ``host``, ``port``): the operator
    dashboard of that key service on the same loop, as ``kms serve --dashboard-port`` runs it (over TLS with the
    access token off loopback). ``watchdog`` (:class:`qkdseg.server.watchdog.Watchdog`) is given the way to stop
    every listener.
    """
    import asyncio

    import uvicorn

    from ..server.http import QuickCloseH11Protocol, listen_socket as listen
    from ..server.logs import say
    from ..server.watchdog import stop_servers

    sock = listen(host, port)
    if ops is not None:
        from ..server.metrics import instrument

        app = instrument(app, ops[0])
    config = uvicorn.Config(app, http=http or RolePeerProtocol, ssl_context_factory=lambda _c, _d: ctx,
                            ssl_certfile=str(certfile), access_log=False, log_level=log_level, log_config=None,
                            lifespan="on", timeout_keep_alive=keep_alive_s)
    sides: list = []  # (server, socket, monitor or None, the line that announces it)
    if ops is not None and metrics_port is not None:
        from ..server.metrics import ops_app

        msock = listen("127.0.0.1", metrics_port)
        side = uvicorn.Server(uvicorn.Config(ops_app(*ops), http=QuickCloseH11Protocol, access_log=False,
                                             log_level=log_level, log_config=None, lifespan="off",
                                             timeout_graceful_shutdown=5))
        sides.append((side, msock, None,
                      f"metrics on http://127.0.0.1:{msock.getsockname()[1]}/metrics (and /healthz, /readyz)"))
    if dashboard is not None:
        from ..server.dashboard import create_dashboard
        from ..server.monitor import Monitor
        from ..server.tls import is_loopback, read_dashboard_token

        svc, dhost = dashboard["service"], dashboard["host"]
        token = None if is_loopback(dhost) else read_dashboard_token(svc.cfg)
        monitor = Monitor(svc)
        dsock = listen(dhost, int(dashboard["port"]), "dashboard")
        tls = {"ssl_certfile": str(svc.cfg.path(svc.cfg.cert)),
               "ssl_keyfile": str(svc.cfg.path(svc.cfg.key))} if token is not None else {}
        dserver = uvicorn.Server(uvicorn.Config(
            create_dashboard(monitor, token=token, secure_cookie=token is not None), http=QuickCloseH11Protocol,
            access_log=False, log_level=log_level, log_config=None, lifespan="on", timeout_graceful_shutdown=10,
            **tls))
        shown = f"[{dhost}]" if ":" in dhost else dhost
        sides.append((dserver, dsock, monitor,
                      f"dashboard on {'https' if token else 'http'}://{shown}:{dsock.getsockname()[1]}/dashboard/"
                      + (" (access token: DIR/dashboard.token)" if token else "")))
    if not sides:
        server = uvicorn.Server(config)
        if watchdog is not None:
            watchdog.stoppers.append(lambda: stop_servers(server))
        if on_ready is not None:
            on_ready()
        server.run(sockets=[sock])
        return

    class Main(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # one signal stops them all
            super().handle_exit(sig, frame)
            for other, _, monitor, _ in sides:
                other.handle_exit(sig, frame)
                if monitor is not None:
                    monitor.stop()  # a flag only: a signal handler must not touch the loop

    for other, *_ in sides:
        other.capture_signals = lambda: _no_capture()  # the main server takes the signals
    server = Main(config)
    if watchdog is not None:
        watchdog.stoppers.append(lambda: stop_servers(server, *(other for other, *_ in sides)))
    if on_ready is not None:
        on_ready()
    for *_, line in sides:
        say(line)

    async def run_all() -> None:
        tasks = [asyncio.ensure_future(server.serve(sockets=[sock]))]
        tasks += [asyncio.ensure_future(other.serve(sockets=[s])) for other, s, _, _ in sides]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        for other, _, monitor, _ in sides:
            other.should_exit = True
            if monitor is not None:
                monitor.close()
        await asyncio.gather(*tasks)

    asyncio.run(run_all())


def _no_capture():
    import contextlib

    return contextlib.nullcontext()
