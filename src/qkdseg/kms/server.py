"""Start the key service: configuration -> network -> store -> service -> uvicorn over mutual TLS."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path

import numpy as np

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
    from .app import listen_socket

    return listen_socket(host, port, what)


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


def service_metrics(service: KeyService, kind: str = "kms"):
    """The :class:`.metrics.Metrics` of ``service`` (``kind``: kms, or the network's controller), hooked to its group commit."""
    from .. import __version__
    from ..keys.levels import READY, STATES, pool_states
    from .metrics import Metrics

    a = service.arrays
    names = [f"{a.node_ids[a.edge_u[k]]}-{a.node_ids[a.edge_v[k]]}" for k in range(a.n_links)]
    cap = service.levels.capacity
    ready_bits = np.ceil(cap * 0.5).astype(np.int64)  # the dashboard's thresholds (monitor.DEFAULT_READY_SHARE)
    empty_bits = service.cfg.key_size
    state = [np.full(a.n_links, READY, dtype=np.int8)]

    def links():
        service.refill(service.clock())
        lv = service.levels.level
        state[0] = pool_states(lv, ready_bits, empty_bits, state[0])
        consumed = service.levels.consumed
        return [(names[k], int(lv[k]), int(cap[k]), int(consumed[k]), STATES[int(state[0][k])])
                for k in range(a.n_links)]

    def db_bytes():
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(str(service.store.db_path) + suffix).stat().st_size
        return total

    gauges = {
        "qkdseg_store_database_bytes": ("Size of the SQLite database and its WAL file, bytes.", db_bytes),
        "qkdseg_audit_head_seq": ("Sequence number of the last audit record in the chain.",
                                  lambda: service.store.audit_seq),
        "qkdseg_keys_waiting": ("Issued keys waiting for their slave's dec_keys.", lambda: len(service.keys)),
        "qkdseg_spare_keys": ("Relayed keys kept for later requests (not issued yet).",
                              lambda: sum(len(q) for q in service.spares.values())),
        "qkdseg_ready": ("1 when /readyz answers ready, else 0.", lambda: 1.0 if kms_ready(service)["ready"] else 0.0),
    }
    m = Metrics(kind, __version__, links=links, gauges=gauges)
    service.committer.on_commit = m.observe_commit
    return m


def kms_ready(service: KeyService, kind: str = "kms") -> dict:
    """``/readyz``: the store open and writable, the audit chain checked at start, a link holding a key's worth."""
    from .metrics import ready_body

    store = service.store
    failed = service.committer.failed
    store_ok = store.db is not None and failed is None
    rep = getattr(store, "audit_at_start", None)
    if rep is None:
        audit = (False, "not checked")
    elif rep.problems:
        audit = (True, f"checked at start: {rep.records} records, {len(rep.problems)} problem(s) accepted "
                       "(--accept-broken-audit, audited)")
    else:
        audit = (True, f"checked at start: {rep.records} records intact; head seq {store.audit_seq} now")
    service.refill(service.clock())
    size = service.cfg.key_size
    n = int((service.levels.level >= size).sum())
    return ready_body(kind, {
        "store": (store_ok, "open" if store_ok else f"failed ({type(failed).__name__}); restart the service"
                  if failed is not None else "closed"),
        "audit_chain": audit,
        "key_material": (n > 0, f"{n} of {service.arrays.n_links} links hold at least key_size={size} bits"),
    })


def kms_health(service: KeyService, metrics) -> dict:
    import os

    from .metrics import health_body

    return health_body("kms", metrics, kme_id=service.cfg.kme_id, pid=os.getpid())


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8443, *, access_log: bool = False,
          log_level: str = "warning", log_format: str = "text", dashboard_port: int | None = None,
          dashboard_host: str = "127.0.0.1", dashboard_public: bool = False, metrics_port: int | None = None,
          on_listening=None, accept_broken_audit: bool = False) -> None:
    """Serve ETSI GS QKD 014 from ``DIR`` until SIGINT or SIGTERM; prints the URL it listens on.

    With ``dashboard_port``, the operator dashboard is served too, on
    ``dashboard_host`` (loopback unless ``dashboard_public``, and then with
    the access token, over TLS), with ``/metrics``, ``/healthz`` and
    ``/readyz``; its URL is printed as well. With ``metrics_port``, those
    three are also served alone over plain HTTP on 127.0.0.1.
    ``on_listening(port, dashboard_port)`` is called once all listen.
    """
    import uvicorn

    from . import logs
    from .app import create_app
    from .metrics import instrument

    _Server = _server_class()

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
    try:
        for line in service.changes:
            logs.say(line, err=True)
        metrics = service_metrics(service)
        service.warm()  # compile the routing kernels now, not on the first request
        ctx = tls_context(service.cfg)
        token = None
        if dashboard_port is not None and not is_loopback(dashboard_host):
            token = read_dashboard_token(service.cfg)
        sock = _listen(host, port, "ETSI 014")
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


def _serve_all(service, server, sock, metrics, token: str | None, host: str, port: int | None,
               metrics_port: int | None, *, log_level: str, on_listening, bound: int) -> None:
    """Run the ETSI 014 ``server``, the dashboard and the metrics port on one event loop until a signal stops all.

    The dashboard keeps no access log: a first request's ``?token=`` would be written there.
    """
    import asyncio

    import uvicorn

    from . import logs
    from .app import QuickCloseH11Protocol
    from .metrics import ops_app, ops_routes

    def health():
        return kms_health(service, metrics)

    def ready():
        return kms_ready(service)

    companions = []
    dbound = None
    monitor = None
    if port is not None:
        from .dashboard import create_dashboard
        from .monitor import Monitor

        monitor = Monitor(service)
        dsock = _listen(host, port, "dashboard")
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
        msock = _listen("127.0.0.1", metrics_port, "metrics")
        mconfig = uvicorn.Config(ops_app(metrics, health, ready), http=QuickCloseH11Protocol, access_log=False,
                                 log_level=log_level, log_config=None, lifespan="off", timeout_graceful_shutdown=5)
        companions.append((type(server)(mconfig), msock))
        logs.say(f"metrics on http://127.0.0.1:{msock.getsockname()[1]}/metrics (and /healthz, /readyz)")
    for other, _ in companions:
        other.captures = False
    server.companions = [other for other, _ in companions]
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
