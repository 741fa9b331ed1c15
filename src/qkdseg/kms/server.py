"""Start the key service: configuration -> network -> store -> service -> uvicorn over mutual TLS."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path

from ..errors import InvalidRequest
from .config import KmsConfig, load_config
from .service import KeyService
from .audit import load_audit_key
from .store import Store, load_storage_key


def open_store(cfg: KmsConfig, *, accept_broken_audit: bool = False) -> Store:
    """The store of ``cfg``'s directory: its lock taken, its storage key and audit chain checked (:class:`.store.Store`)."""
    return Store(cfg._dir, load_storage_key(cfg.path(cfg.storage_key)), load_audit_key(cfg.path(cfg.audit_key)),
                 durability=cfg.durability, accept_broken_audit=accept_broken_audit)


def open_service(directory: str | Path, *, accept_broken_audit: bool = False, **service_options) -> KeyService:
    """Load ``DIR/kms.toml``, its network and its database into a :class:`KeyService`."""
    from ..topology import load

    d = Path(directory)
    cfg = load_config(d)
    spec = cfg.network
    if not (spec == "example" or spec.startswith("topohub:")):
        spec = str(cfg.path(spec))
    network = load(spec)
    store = open_store(cfg, accept_broken_audit=accept_broken_audit)
    try:
        return KeyService(cfg, network, store, **service_options)
    except BaseException:
        store.close()
        raise


def tls_context(cfg: KmsConfig) -> ssl.SSLContext:
    """Server TLS: TLS 1.2 or later, the server's certificate, and a client certificate required from ``cfg.ca``."""
    for name in ("cert", "key", "ca"):
        if not cfg.path(getattr(cfg, name)).is_file():
            raise InvalidRequest(f"{cfg.path(getattr(cfg, name))}: no such file (kms.toml field '{name}')")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.path(cfg.cert), cfg.path(cfg.key))
        ctx.load_verify_locations(cafile=str(cfg.path(cfg.ca)))
    except (ssl.SSLError, OSError) as err:
        raise InvalidRequest(f"TLS set-up failed ({cfg.path(cfg.cert)}, {cfg.path(cfg.key)}, {cfg.path(cfg.ca)}): {err}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping with status 0 on SIGINT/SIGTERM after a graceful shutdown.

        uvicorn re-raises the signal once it has shut down, which would end
        the process before the database is closed and checkpointed. Servers
        in ``companions`` (the dashboard) and callables in ``on_exit`` are
        told to stop on the same signal; a companion captures no signal.
        """

        companions: list = []
        on_exit: list = []
        captures = True
        early: list = []  # signals that came before the server captured them (see serve())

        @contextlib.contextmanager
        def capture_signals(self):
            if not self.captures or threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            if self.early:  # a stop asked for while starting: stop as soon as started
                self.handle_exit(self.early[0], None)
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            for other in self.companions:
                other.handle_exit(sig, frame)
            for func in self.on_exit:
                func()

    return Server


def service_protocol(service: KeyService) -> type:
    """The h11 protocol of ``service``'s ETSI 014 port: peer certificates, the limits of its ``kms.toml``, refusals audited."""
    import asyncio

    from .app import PeerCertH11Protocol, limited_protocol
    from .service import KmsError

    tasks: set = set()

    def audited(proto, status: int, message: str) -> None:
        task = asyncio.get_running_loop().create_task(
            service.deny(KmsError(status, message), getattr(proto, "caller", None), "http"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    cfg = service.cfg
    return limited_protocol(PeerCertH11Protocol, header_timeout=cfg.header_timeout_s, body_timeout=cfg.body_timeout_s,
                            max_connections=cfg.max_connections, on_refusal=audited)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InvalidRequest(f"cannot listen on {host}:{port} ({what}): {err.strerror}") from None
    sock.listen(1024)
    return sock


def read_dashboard_token(cfg: KmsConfig) -> str:
    """The dashboard's access token from ``DIR/dashboard.token`` (``kms init`` writes it, mode 0600)."""
    path = cfg.path(cfg.dashboard_token)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such file (the dashboard's access token; 'qkdseg kms init' writes it, "
                             "or write 32+ random characters there, mode 0600)") from None
    if len(token) < 32:
        raise InvalidRequest(f"{path}: the access token must be at least 32 characters")
    if path.stat().st_mode & 0o077:
        raise InvalidRequest(f"{path}: mode {path.stat().st_mode & 0o777:o} lets others read the access token "
                             "(chmod 600 it)")
    return token


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8443, *, access_log: bool = False,
          log_level: str = "warning", dashboard_port: int | None = None, dashboard_host: str = "127.0.0.1",
          dashboard_public: bool = False, on_listening=None, accept_broken_audit: bool = False) -> None:
    """Serve ETSI GS QKD 014 from ``DIR`` until SIGINT or SIGTERM; prints the URL it listens on.

    With ``dashboard_port``, the operator dashboard is served too, on
    ``dashboard_host`` (loopback unless ``dashboard_public``, and then with
    the access token, over TLS); its URL is printed as well.
    ``on_listening(port, dashboard_port)`` is called once both listen.
    """
    import uvicorn

    from .app import create_app

    _Server = _server_class()

    if dashboard_port is not None and not is_loopback(dashboard_host) and not dashboard_public:
        raise InvalidRequest(f"--dashboard-host {dashboard_host} is not a loopback address: add --dashboard-public "
                             "(the dashboard then needs the access token in DIR/dashboard.token)")
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
    try:
        import logging

        logging.getLogger("qkdseg").setLevel(log_level.upper())
        if not logging.getLogger().handlers and not logging.getLogger("qkdseg").handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("qkdseg kms: %(levelname)s: %(message)s"))
            logging.getLogger("qkdseg").addHandler(handler)
        for line in service.changes:
            print(f"qkdseg kms: {line}", file=sys.stderr, flush=True)
        service.warm()  # compile the routing kernels now, not on the first request
        ctx = tls_context(service.cfg)
        token = None
        if dashboard_port is not None and not is_loopback(dashboard_host):
            token = read_dashboard_token(service.cfg)
        sock = _listen(host, port, "ETSI 014")
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(service),
            http=service_protocol(service),
            ssl_context_factory=lambda _cfg, _default: ctx,
            ssl_certfile=str(service.cfg.path(service.cfg.cert)),
            access_log=access_log,
            log_level=log_level,
            lifespan="on",
            timeout_keep_alive=service.cfg.keep_alive_s,
        )
        server = _Server(config)
        server.early = early
        shown = f"[{host}]" if ":" in host else host
        print(f"qkdseg kms: ETSI GS QKD 014 on https://{shown}:{bound}/api/v1/keys/ "
              f"(KME {service.cfg.kme_id}, {len(service.sae_node)} SAEs, network {service.network.name!r})", flush=True)
        if dashboard_port is None:
            if on_listening is not None:
                on_listening(bound, None)
            server.run(sockets=[sock])
        else:
            _serve_with_dashboard(service, server, sock, token, dashboard_host, dashboard_port, log_level=log_level,
                                  on_listening=on_listening, bound=bound)
    finally:
        service.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    print("qkdseg kms: stopped", file=sys.stderr, flush=True)


def _serve_with_dashboard(service, server, sock, token: str | None, host: str, port: int, *, log_level: str,
                          on_listening, bound: int, label: str = "kms") -> None:
    """Run the ETSI 014 ``server`` and the dashboard on one event loop until a signal stops both.

    The dashboard keeps no access log: a first request's ``?token=`` would be written there.
    """
    import asyncio

    import uvicorn

    from .dashboard import create_dashboard
    from .monitor import Monitor

    monitor = Monitor(service)
    dsock = _listen(host, port, "dashboard")
    dbound = dsock.getsockname()[1]
    tls = {"ssl_certfile": str(service.cfg.path(service.cfg.cert)),
           "ssl_keyfile": str(service.cfg.path(service.cfg.key))} if token is not None else {}
    from .app import QuickCloseH11Protocol

    dconfig = uvicorn.Config(create_dashboard(monitor, token=token, secure_cookie=token is not None),
                             http=QuickCloseH11Protocol, access_log=False, log_level=log_level, lifespan="on",
                             timeout_graceful_shutdown=10, **tls)
    dash = type(server)(dconfig)
    dash.captures = False
    server.companions = [dash]
    server.on_exit = [monitor.stop]  # a flag only: a signal handler must not touch the loop
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if token is not None else "http"
    print(f"qkdseg {label}: dashboard on {scheme}://{shown}:{dbound}/dashboard/"
          + (" (access token: DIR/dashboard.token)" if token is not None else ""), flush=True)
    if on_listening is not None:
        on_listening(bound, dbound)

    async def both() -> None:
        tasks = [asyncio.ensure_future(server.serve(sockets=[sock])),
                 asyncio.ensure_future(dash.serve(sockets=[dsock]))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = dash.should_exit = True
        monitor.close()
        await asyncio.gather(*tasks)

    asyncio.run(both())
