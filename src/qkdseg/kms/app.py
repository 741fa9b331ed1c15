"""The ETSI GS QKD 014 V1.1.1 HTTP API: thin routes over :class:`.service.KeyService`.

The routes parse the request, ask the service and write JSON. One
exception handler turns :class:`.service.KmsError` into the standard's
error body ``{"message": ..., "details": [...]}`` with its status code; every
non-200 answer, 401 included, has a JSON body (a real client crashes on an
empty one).

The caller's SAE id is the common name of its TLS client certificate, never
the path, the body or a header. uvicorn (0.54) does not offer the ASGI TLS
extension, so :class:`PeerCertH11Protocol`, a subclass of uvicorn's own h11
protocol, reads the verified peer certificate once per connection and puts
the caller into the request's ``state`` (``scope["state"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import socket
from typing import TYPE_CHECKING, Any

import h11

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .pki import fingerprint
from .etsi import CLIP, Caller, KmsError, clip, clip_names

if TYPE_CHECKING:
    from .service import KeyService

STATE_KEY = "qkdseg_caller"
#: Largest request head (request line and headers, bytes) and most header lines accepted (else a JSON 400).
MAX_HEAD_BYTES = 16384
MAX_HEADERS = 100
#: Deepest nesting of arrays and objects accepted in a request body (the standard's bodies need 3).
MAX_JSON_DEPTH = 32
_INT_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: no sign, no spaces, no '_', no other scripts' digits
logger = logging.getLogger("qkdseg.kms")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def listen_socket(host: str, port: int, what: str | None = None) -> socket.socket:
    """A TCP socket listening on ``host:port`` (IPv6 when ``host`` has a colon); a one-line error when it cannot."""
    from ..errors import InvalidRequest

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InvalidRequest(f"cannot listen on {host}:{port}" + (f" ({what})" if what else "")
                             + f": {err.strerror}") from None
    sock.listen(1024)
    return sock


def _caller_from_der(der: bytes | None) -> Caller | None:
    if not der:
        return None
    from cryptography import x509

    from .pki import common_name

    cert = x509.load_der_x509_certificate(der)
    return Caller(common_name(cert) or "", fingerprint(der))


class QuickCloseH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY on every connection, and a stop that does not wait on idle clients."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it only for sockets made with proto=IPPROTO_TCP; without it each
            # response waits ~40 ms for the client's delayed ACK (Nagle), see docs/kms.md
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def shutdown(self) -> None:
        """A graceful stop: an idle keep-alive connection is closed at once, a busy one after its response.

        uvicorn closes an idle connection with ``transport.close()``, which over
        TLS waits for the client's close_notify, up to asyncio's 30 s SSL
        shutdown timeout, and a pooled client that is not reading never sends
        it: every stop then took 30 s. Every response here has a
        Content-Length, so aborting an idle connection truncates nothing.
        """
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


class LimitedH11Protocol(QuickCloseH11Protocol):
    """:class:`QuickCloseH11Protocol` with the limits of docs/kms.md ("Limits") and JSON for malformed HTTP.

    - ``max_connections``: a connection beyond it is closed at once (counted
      after the TLS handshake; asyncio gives a handshake 60 s).
    - ``header_timeout``: from the connection's start, or from the first
      byte of a request after a keep-alive pause, to the end of its headers.
    - ``body_timeout``: from the end of the headers to the end of the body.
    - idle keep-alive connections: uvicorn's ``timeout_keep_alive``.
    - malformed HTTP (HTTP/0.9, a request line or headers over h11's 16 KiB,
      no Host): 400 with a JSON body, and ``on_refusal(protocol, status,
      message)`` is called (the key service audits it).

    :func:`limited_protocol` makes a subclass with the limits set.
    """

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 1024
    on_refusal = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None
        if len(self.server_state.connections) >= self.max_connections:
            logging.getLogger("qkdseg.kms").warning("max_connections=%d reached: a connection was closed",
                                                    self.max_connections)
            self.transport = transport
            transport.abort()
            return
        super().connection_made(transport)
        self._arm("header", self.header_timeout)
        parse = self.conn.next_event

        def next_event():  # h11 bounds only a head that arrives in pieces; bound a whole one too
            event = parse()
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > MAX_HEAD_BYTES or len(event.headers) > MAX_HEADERS:
                    raise h11.RemoteProtocolError("request head too large")
            return event

        self.conn.next_event = next_event

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._deadline_kind = kind
        self._deadline = self.loop.call_later(seconds, self._expired, kind)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, None

    def _expired(self, kind: str) -> None:
        self._deadline, self._deadline_kind = None, None
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if (kind == "header" and state is h11.IDLE) or (kind == "body" and state is h11.SEND_BODY):
            logging.getLogger("qkdseg.kms").info("a connection was cut: no complete request %s within %.3g s",
                                                 "headers" if kind == "header" else "body",
                                                 self.header_timeout if kind == "header" else self.body_timeout)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._deadline_kind != "body":
                self._arm("body", self.body_timeout)
        elif state is h11.IDLE:
            if self._deadline_kind != "header":  # the first bytes of a request after a keep-alive pause
                self._arm("header", self.header_timeout)
        else:
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self.flow is None:  # closed by the connection limit before it was set up
            return
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        message = ("malformed HTTP request (refused by the HTTP layer: HTTP/1.1 with a Host header, a request line "
                   f"and headers of at most {MAX_HEAD_BYTES} bytes, at most {MAX_HEADERS} headers)")
        body = json.dumps({"message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass
        self.transport.close()
        if self.on_refusal is not None:
            with contextlib.suppress(Exception):
                type(self).on_refusal(self, 400, message)


def limited_protocol(base: type, *, header_timeout: float, body_timeout: float, max_connections: int,
                     on_refusal=None) -> type:
    """A subclass of ``base`` (a :class:`LimitedH11Protocol`) with these limits (uvicorn's ``http=``)."""
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "body_timeout": body_timeout,
                                         "max_connections": max_connections,
                                         "on_refusal": staticmethod(on_refusal) if on_refusal else None})


class PeerCertH11Protocol(LimitedH11Protocol):
    """:class:`LimitedH11Protocol`, plus the TLS peer's identity in every request's ``state``."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # a per-connection copy: uvicorn copies app_state into each request's scope["state"]
        self.app_state = {**self.app_state, STATE_KEY: _caller_from_der(der)}
        super().connection_made(transport)

    @property
    def caller(self) -> Caller | None:
        return self.app_state.get(STATE_KEY)


def _caller(request: Request) -> Caller:
    caller = request.scope.get("state", {}).get(STATE_KEY)
    if caller is None:  # only reachable without TLS client authentication: refuse
        raise KmsError(401, "a client certificate is required")
    return caller


def _int_param(request: Request, name: str) -> int | None:
    """A query parameter as an integer: ASCII digits only, given at most once."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise KmsError(400, f"query parameter {name} is given twice (two values for one parameter)")
    raw = values[0]
    if not _INT_RE.fullmatch(raw):
        raise KmsError(400, f"{name}={clip(raw)} must be an integer (ASCII digits only)")
    return int(raw)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


_SPECIAL = re.compile(rb'[\\"\[\]{}]')


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects deeper than ``limit`` (checked before parsing).

    >>> too_deep(b"[" * 40 + b"]" * 40), too_deep(b'[["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]]')
    (True, False)
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_str, skip_to = 0, False, -1
    for m in _SPECIAL.finditer(body):
        i = m.start()
        if i < skip_to:
            continue
        c = body[i]
        if in_str:
            if c == 0x5C:
                skip_to = i + 2
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):
            depth -= 1
    return False


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (else 413, before reading more than the limit)."""
    too_big = KmsError(413, f"the request body exceeds max_body_bytes={limit} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise KmsError(408, "the request body did not arrive in time (body_timeout_s), or the client went away",
                       reason="timeout") from None
    return b"".join(chunks)


async def _json_body(request: Request, fields: set[str], limit: int) -> dict:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    if too_deep(body):
        raise KmsError(400, f"the request body nests arrays and objects too deep (more than {MAX_JSON_DEPTH})")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        raise KmsError(400, f"duplicate key {clip(err.args[0])} in the request body (two values for one parameter)") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise KmsError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise KmsError(400, "the request body must be a JSON object")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise KmsError(400, f"unknown field(s) in the request body: {clip_names(unknown)}")
    return data


def create_app(service: KeyService, *, expiry: bool = True, routes: list | None = None) -> Starlette:
    """The Starlette application serving ``service`` under ``/api/v1/keys/``.

    ``service`` is a :class:`.service.KeyService` or a network node's service (:mod:`qkdseg.net.node`), which
    offers the same methods; ``routes`` are more routes served by the same application (a node's relay and
    control APIs).
    """
    limit = service.cfg.max_body_bytes

    async def status(request: Request) -> Response:
        caller = _caller(request)
        result = service.status(caller, request.path_params["sae"])
        if inspect.isawaitable(result):  # a network node asks its controller
            result = await result
        return JSONResponse(result)

    async def enc_keys(request: Request) -> Response:
        caller = _caller(request)
        slave = request.path_params["sae"]
        if request.method == "GET":
            unknown = sorted(set(request.query_params) - {"number", "size"})
            if unknown:
                raise KmsError(400, f"unknown query parameter(s): {clip_names(unknown)}")
            data: dict = {"number": _int_param(request, "number"), "size": _int_param(request, "size")}
        else:
            data = await _json_body(request, {"number", "size", "additional_slave_SAE_IDs",
                                              "extension_mandatory", "extension_optional"}, limit)
        req = service.parse_key_request(data.get("number"), data.get("size"), data.get("extension_mandatory"),
                                        data.get("extension_optional"), data.get("additional_slave_SAE_IDs"))
        return JSONResponse(await service.enc_keys(caller, slave, req))

    async def dec_keys(request: Request) -> Response:
        caller = _caller(request)
        master = request.path_params["sae"]
        if request.method == "GET":
            ids = request.query_params.getlist("key_ID")
            if not ids:
                raise KmsError(400, "GET dec_keys needs ?key_ID=<uuid>")
            if len(ids) > 1:
                raise KmsError(400, "GET dec_keys takes one key_ID (POST a Key IDs body for more)")
            unknown = sorted(set(request.query_params) - {"key_ID"})
            if unknown:
                raise KmsError(400, f"unknown query parameter(s): {clip_names(unknown)}")
        else:
            data = await _json_body(request, {"key_IDs", "key_IDs_extension"}, limit)
            items = data.get("key_IDs")
            if not isinstance(items, list) or not items:
                raise KmsError(400, "key_IDs must be a non-empty array of {\"key_ID\": ...} objects")
            ids = []
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str):
                    raise KmsError(400, "every element of key_IDs must be an object with a string key_ID")
                ids.append(item["key_ID"])
        return JSONResponse(await service.dec_keys(caller, master, ids))

    async def refuse(request: Request, exc: KmsError) -> Response:
        """Audit the refusal ``exc`` of ``request`` and answer it with the standard's error body."""
        path = request.url.path
        op = path.rsplit("/", 1)[-1] if path.startswith("/api/v1/keys/") else path
        if request.method not in ("GET", "POST"):
            op = f"{request.method[:CLIP]} {op}"
        peer = request.path_params.get("sae") if hasattr(request, "path_params") else None
        caller = request.scope.get("state", {}).get(STATE_KEY)
        try:
            await service.deny(exc, caller, op, peer)
        except Exception:  # noqa: BLE001 -- the store has failed; the answer still goes out
            pass
        headers = {"Allow": "GET, POST"} if exc.status == 405 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def on_kms_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KmsError)
        return await refuse(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            message = f"method {clip(request.method)} is not allowed (the standard's methods here: GET, POST)"
        elif exc.status_code == 404:
            message = f"no such path: {clip(request.url.path)} (ETSI 014: /api/v1/keys/SAE/status|enc_keys|dec_keys)"
        else:
            message = str(exc.detail)[:200]
        return await refuse(request, KmsError(exc.status_code, message))

    async def on_error(request: Request, exc: Exception) -> Response:
        # the exception's type and traceback only: no message of this package carries key bytes
        logger.error("internal error on %s %s: %s", request.method, request.url.path[:CLIP], type(exc).__name__,
                     exc_info=exc)
        return await refuse(request, KmsError(503, "key data access error (internal error; see the server log)",
                                              reason="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(service.expiry_loop())] if expiry else []
        if getattr(service, "source_loop", None) is not None:  # a device feed fetches link keys meanwhile
            tasks.append(loop.create_task(service.source_loop()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    routes = [
        Route("/api/v1/keys/{sae}/status", status, methods=["GET"]),
        Route("/api/v1/keys/{sae}/enc_keys", enc_keys, methods=["GET", "POST"]),
        Route("/api/v1/keys/{sae}/dec_keys", dec_keys, methods=["GET", "POST"]),
        *(routes or ()),
    ]
    for route in routes:  # Starlette adds HEAD to every GET route: a HEAD enc_keys would issue a key unseen
        route.methods.discard("HEAD")
    return Starlette(
        routes=routes,
        exception_handlers={KmsError: on_kms_error, HTTPException: on_http_error, Exception: on_error},
        lifespan=lifespan,
    )
