"""Start the key service: configuration -> network -> store -> service -> uvicorn over mutual TLS."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import sys
from pathlib import Path

from ..errors import InvalidRequest
from .config import KmsConfig, load_config
from .service import KeyService
from .store import Store, load_or_make_storage_key


def open_service(directory: str | Path, **service_options) -> KeyService:
    """Load ``DIR/kms.toml``, its network and its database into a :class:`KeyService`."""
    from ..topology import load

    d = Path(directory)
    cfg = load_config(d)
    spec = cfg.network
    if not (spec == "example" or spec.startswith("topohub:")):
        spec = str(cfg.path(spec))
    network = load(spec)
    store = Store(d, load_or_make_storage_key(cfg.path(cfg.storage_key)), durability=cfg.durability)
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
        the process before the database is closed and checkpointed.
        """

        @contextlib.contextmanager
        def capture_signals(self):
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8443, *, access_log: bool = False,
          log_level: str = "warning") -> None:
    """Serve ETSI GS QKD 014 from ``DIR`` until SIGINT or SIGTERM; prints the URL it listens on."""
    import uvicorn

    from .app import PeerCertH11Protocol, create_app

    _Server = _server_class()

    service = open_service(directory)
    try:
        ctx = tls_context(service.cfg)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise InvalidRequest(f"cannot listen on {host}:{port}: {err.strerror}") from None
        sock.listen(1024)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(service),
            http=PeerCertH11Protocol,
            ssl_context_factory=lambda _cfg, _default: ctx,
            ssl_certfile=str(service.cfg.path(service.cfg.cert)),
            access_log=access_log,
            log_level=log_level,
            lifespan="on",
            timeout_keep_alive=30,
        )
        server = _Server(config)
        shown = f"[{host}]" if ":" in host else host
        print(f"qkdseg kms: ETSI GS QKD 014 on https://{shown}:{bound}/api/v1/keys/ "
              f"(KME {service.cfg.kme_id}, {len(service.sae_node)} SAEs, network {service.network.name!r})", flush=True)
        server.run(sockets=[sock])
    finally:
        service.close()
    print("qkdseg kms: stopped", file=sys.stderr, flush=True)
