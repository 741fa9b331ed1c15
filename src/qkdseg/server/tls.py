"""The servers' TLS and access: the server's TLS context, loopback addresses, the dashboard's access token."""

from __future__ import annotations

import ssl

from ..errors import InvalidRequest
from .config import KmsConfig


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
