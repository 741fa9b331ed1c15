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
        if uri in ("urn:qkdseg:controller", "urn:qkdseg:admin", "urn:qkdseg:operator"):  # admin: changes of
            return Role(uri.rsplit(":", 1)[1], None)  # membership (.membership); operator: net status elsewhere
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
    from .tlsfail import LoggedSSLObject

    ctx.sslobject_class = LoggedSSLObject  # a handshake it refuses is logged, the certificate problem named
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


#: Seconds a client keeps an idle connection to another node or the controller (their listeners keep one 30 s).
KEEPALIVE_S = 25.0


def async_client(ctx: ssl.SSLContext, max_connections: int = 64, expect=None):
    """An httpx client over ``ctx`` with TCP_NODELAY (without it each small request waits ~40 ms for a delayed ACK),
    its idle connections kept :data:`KEEPALIVE_S` (a new TLS handshake costs milliseconds), and the cheap check of
    an idle connection (:class:`_Backend`). ``expect(host, port)``: the :class:`Role` whose certificate must answer
    at that address (``None``: any of the CA's); another is refused (:class:`.tlsfail.WrongRole`)."""
    import socket

    import httpx

    transport = httpx.AsyncHTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                         limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections,
                                                             keepalive_expiry=KEEPALIVE_S))
    pool = getattr(transport, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = _Backend(expect)
    return httpx.AsyncClient(transport=transport, timeout=10.0)


def _readable(sock) -> bool:
    """Whether ``sock`` has bytes to read now (an idle connection the server closed); a closed socket is."""
    import select

    if sock is None or sock.fileno() < 0:
        return True
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


class _Stream:
    """httpcore's asyncio stream, with its raw socket looked up once: httpcore asks every idle connection of the pool
    whether it is readable before each request, and anyio answers that by building all of a TLS stream's attributes
    (about 0.1 ms each time, times the connections, times the requests)."""

    def __init__(self, inner, expect: Role | None = None) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")
        self._expect = expect

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        stream = _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))
        if self._expect is not None:
            msg = role_mismatch(stream.get_extra_info("ssl_object"), self._expect, str(server_hostname))
            if msg is not None:
                import httpcore

                await stream.aclose()
                raise httpcore.ConnectError(f"wrong role: {msg}")  # named by .tlsfail.tls_problem
        return stream

    def get_extra_info(self, info: str):
        if info == "is_readable":
            return _readable(self._sock)
        if info == "socket":
            return self._sock
        return self._inner.get_extra_info(info)


def role_mismatch(ssl_object, want: Role, where: str) -> str | None:
    """Why the certificate the peer of ``ssl_object`` presented (at ``where``) is not of role ``want``; ``None``
    when it is (or when there is none to read)."""
    der = ssl_object.getpeercert(True) if ssl_object is not None else None  # positional: the C object's too
    if not der:
        return None
    from cryptography import x509

    got = role_of(x509.load_der_x509_certificate(der))
    if got == want:
        return None

    def who(r: Role | None) -> str:
        return "no role" if r is None else f"{r.kind} {r.ident}" if r.ident else r.kind

    return f"{where} presents the certificate of {who(got)}, not of {who(want)}"


def check_peer(response, want: Role, where: str) -> None:
    """:class:`.tlsfail.WrongRole` when the certificate that answered ``response`` (httpx's) is not of role ``want``."""
    stream = response.extensions.get("network_stream")
    msg = role_mismatch(stream.get_extra_info("ssl_object") if stream is not None else None, want, where)
    if msg is not None:
        from .tlsfail import WrongRole

        raise WrongRole(msg)


class _Backend:
    """httpcore's asyncio (anyio) network backend whose streams are :class:`_Stream`."""

    def __init__(self, expect=None) -> None:
        import httpcore

        self._inner = httpcore.AnyIOBackend()
        self._expect = expect

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _Stream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options),
                       self._expect(host, port) if self._expect is not None else None)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")


def role(request) -> Role | None:
    return request.scope.get("state", {}).get(ROLE_KEY)


#: Node id -> why this process refuses its certificate (``net remove-node``: .membership): 403 on every route.
REMOVED: dict[str, str] = {}


def require(request, kind: str) -> Role:
    r = role(request)
    if r is not None and r.kind == "node" and r.ident in REMOVED:
        raise Problem(403, "Forbidden", f"node {r.ident!r} was removed from the network ({REMOVED[r.ident]}); its "
                                        "certificate is refused", reason="removed")
    if r is None or r.kind != kind:
        from .tlsfail import warn

        warn(f"a caller of role {r.kind if r else 'none'}", f"wrong role: {request.url.path} is for the {kind} role")
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
            return malformed(err).response()

    return wrapped


def malformed(err: Exception) -> Problem:
    """The 400 of a message whose fields the handler could not read: the missing field by name, else what was
    wrong with a value (never only an exception's class)."""
    if isinstance(err, KeyError):
        why = f"the field {str(err.args[0])[:64]!r} is missing" if err.args else "a field is missing"
    elif isinstance(err, OverflowError):
        why = "a number is out of range"
    else:
        why = f"a field has the wrong type or value ({str(err)[:160]})"
    return Problem(400, "Bad Request", f"malformed message: {why}")


async def read_json(request) -> dict:
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise Problem(400, "Bad Request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return data
