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
import socket
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .pki import fingerprint
from .etsi import Caller, KmsError

if TYPE_CHECKING:
    from .service import KeyService

STATE_KEY = "qkdseg_caller"
logger = logging.getLogger("qkdseg.kms")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


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


class PeerCertH11Protocol(QuickCloseH11Protocol):
    """:class:`QuickCloseH11Protocol`, plus the TLS peer's identity in every request's ``state``."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # a per-connection copy: uvicorn copies app_state into each request's scope["state"]
        self.app_state = {**self.app_state, STATE_KEY: _caller_from_der(der)}
        super().connection_made(transport)


def _caller(request: Request) -> Caller:
    caller = request.scope.get("state", {}).get(STATE_KEY)
    if caller is None:  # only reachable without TLS client authentication: refuse
        raise KmsError(401, "a client certificate is required")
    return caller


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise KmsError(400, f"{name}={raw!r} must be an integer") from None


async def _json_body(request: Request, fields: set[str]) -> dict:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise KmsError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise KmsError(400, "the request body must be a JSON object")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise KmsError(400, f"unknown field(s) in the request body: {', '.join(unknown)}")
    return data


def create_app(service: KeyService, *, expiry: bool = True, routes: list | None = None) -> Starlette:
    """The Starlette application serving ``service`` under ``/api/v1/keys/``.

    ``service`` is a :class:`.service.KeyService` or a network node's service (:mod:`qkdseg.net.node`), which
    offers the same methods; ``routes`` are more routes served by the same application (a node's relay and
    control APIs).
    """

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
                raise KmsError(400, f"unknown query parameter(s): {', '.join(unknown)}")
            data: dict = {"number": _int_param(request, "number"), "size": _int_param(request, "size")}
        else:
            data = await _json_body(request, {"number", "size", "additional_slave_SAE_IDs",
                                              "extension_mandatory", "extension_optional"})
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
            unknown = sorted(set(request.query_params) - {"key_ID"})
            if unknown:
                raise KmsError(400, f"unknown query parameter(s): {', '.join(unknown)}")
        else:
            data = await _json_body(request, {"key_IDs", "key_IDs_extension"})
            items = data.get("key_IDs")
            if not isinstance(items, list) or not items:
                raise KmsError(400, "key_IDs must be a non-empty array of {\"key_ID\": ...} objects")
            ids = []
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str):
                    raise KmsError(400, "every element of key_IDs must be an object with a string key_ID")
                ids.append(item["key_ID"])
        return JSONResponse(await service.dec_keys(caller, master, ids))

    async def on_kms_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KmsError)
        path = request.url.path
        op = path.rsplit("/", 1)[-1] if path.startswith("/api/v1/keys/") else path
        peer = request.path_params.get("sae") if hasattr(request, "path_params") else None
        caller = request.scope.get("state", {}).get(STATE_KEY)
        try:
            await service.deny(exc, caller, op, peer)
        except Exception:  # noqa: BLE001 -- the store has failed; the answer still goes out
            pass
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code)

    async def on_error(request: Request, exc: Exception) -> Response:
        # the exception's type and traceback only: no message of this package carries key bytes
        logger.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                     exc_info=exc)
        return JSONResponse({"message": "key data access error (internal error; see the server log)"}, status_code=503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.get_running_loop().create_task(service.expiry_loop()) if expiry else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    routes = [
        Route("/api/v1/keys/{sae}/status", status, methods=["GET"]),
        Route("/api/v1/keys/{sae}/enc_keys", enc_keys, methods=["GET", "POST"]),
        Route("/api/v1/keys/{sae}/dec_keys", dec_keys, methods=["GET", "POST"]),
        *(routes or ()),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={KmsError: on_kms_error, HTTPException: on_http_error, Exception: on_error},
        lifespan=lifespan,
        max_body_size=1 << 20,
    )
