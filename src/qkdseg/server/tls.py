"""The servers' TLS and access: the server's TLS context, loopback addresses, the dashboard's access token."""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import InvalidRequest
from .config import KmsConfig


def load_tls_files(ctx: ssl.SSLContext, cert: Path, key: Path, ca: Path, source: str = "") -> None:
    """Load ``cert`` and ``key`` into ``ctx`` and trust ``ca``; one line naming the file at fault otherwise (a missing
    or unreadable file, a file that is not a PEM certificate or key, a key that is not the certificate's).
    ``source`` (e.g. ``"kms.toml field 'cert'"``) is said after each file, per file name: a dict or a text."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def named(path: Path, what: str) -> str:
        where = source.get(what, "") if isinstance(source, dict) else source
        return f"{path}" + (f" ({where})" if where else "")

    files = {"cert": (Path(cert), "certificate"), "key": (Path(key), "private key"), "ca": (Path(ca), "CA certificate")}
    data = {}
    for what, (path, kind) in files.items():
        try:
            data[what] = path.read_bytes()
        except FileNotFoundError:
            raise InvalidRequest(f"{named(path, what)}: no such file (the {kind})") from None
        except IsADirectoryError:
            raise InvalidRequest(f"{named(path, what)}: is a directory, not the {kind}") from None
        except OSError as err:
            raise InvalidRequest(f"{named(path, what)}: cannot read the {kind}: {err.strerror or err}") from None
    certs = {}
    for what in ("cert", "ca"):
        try:
            certs[what] = x509.load_pem_x509_certificate(data[what])
        except ValueError:
            path, kind = files[what]
            raise InvalidRequest(f"{named(path, what)}: not a PEM {kind} (damaged, or another file)") from None
    try:
        is_ca = certs["ca"].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:  # an X.509 v1 certificate: a CA by convention
        is_ca = True
    if not is_ca:
        raise InvalidRequest(f"{named(files['ca'][0], 'ca')}: not a CA certificate (basicConstraints CA:FALSE, an end "
                             "entity's): no peer's certificate can be verified against it")
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    for what in ("cert", "ca"):  # every peer would refuse the handshake: said now, not by each of them
        c, (path, kind) = certs[what], files[what]
        if c.not_valid_after_utc < now:
            raise InvalidRequest(f"{named(path, what)}: the {kind} expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M} "
                                 "UTC (issue a new one)")
        if c.not_valid_before_utc > now + dt.timedelta(minutes=5):
            raise InvalidRequest(f"{named(path, what)}: the {kind} is valid only from "
                                 f"{c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this host's clock right?)")
    try:
        serialization.load_pem_private_key(data["key"], password=None)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{named(files['key'][0], 'key')}: not an unencrypted PEM private key (damaged, or "
                             "another file)") from None
    try:
        ctx.load_cert_chain(files["cert"][0], files["key"][0])
    except ssl.SSLError as err:
        raise InvalidRequest(f"{named(files['key'][0], 'key')}: not the private key of {files['cert'][0]} "
                             f"({err.reason or err})") from None
    try:
        ctx.load_verify_locations(cafile=str(files["ca"][0]))
    except ssl.SSLError as err:
        raise InvalidRequest(f"{named(files['ca'][0], 'ca')}: cannot be trusted as a CA ({err.reason or err})") from None


def tls_context(cfg: KmsConfig, source: str = "kms.toml") -> ssl.SSLContext:
    """Server TLS: TLS 1.2 or later, the server's certificate, and a client certificate required from ``cfg.ca``
    (``source``: the configuration file that names the three files, for the errors)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_tls_files(ctx, cfg.path(cfg.cert), cfg.path(cfg.key), cfg.path(cfg.ca),
                   {name: f"{source} field '{name}'" for name in ("cert", "key", "ca")})
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
