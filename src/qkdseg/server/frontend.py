"""The ETSI GS QKD 014 V1.1.1 front end: thin routes over a key service's methods.

The routes parse the request, ask the service (``status``, ``enc_keys``,
``dec_keys``, ``deny``: :class:`qkdseg.kms.service.KeyService` or a network
node's service, :mod:`qkdseg.net.etsi_node`) and write JSON. One exception
handler turns :class:`.etsi.KmsError` into the standard's error body
``{"message": ..., "details": [...]}`` with its status code; every non-200
answer, 401 included, has a JSON body (a real client crashes on an empty
one). The caller comes from the connection (:mod:`.http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .etsi import CLIP, Caller, KmsError, clip, clip_names
from .http import STATE_KEY, JSONResponse, PeerCertH11Protocol, limited_protocol

#: Deepest nesting of arrays and objects accepted in a request body (the standard's bodies need 3).
MAX_JSON_DEPTH = 32
_INT_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: no sign, no spaces, no '_', no other scripts' digits
logger = logging.getLogger("qkdseg.kms")


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


def create_app(service, *, expiry: bool = True, routes: list | None = None) -> Starlette:
    """The Starlette application serving ``service`` under ``/api/v1/keys/``.

    ``service`` is a :class:`qkdseg.kms.service.KeyService` or a network node's service (:mod:`qkdseg.net`),
    which offers the same methods; ``routes`` are more routes served by the same application (a node's relay and
    control APIs).
    """
    limit = service.cfg.max_body_bytes
    quotas = getattr(service, "quotas", None)  # sae_rate: each SAE's token bucket (.quota)

    def _admitted(request: Request) -> Caller:
        caller = _caller(request)
        if quotas is not None:
            quotas.admit(caller.sae)
        return caller

    async def status(request: Request) -> Response:
        caller = _admitted(request)
        result = service.status(caller, request.path_params["sae"])
        if inspect.isawaitable(result):  # a network node asks its controller
            result = await result
        return JSONResponse(result)

    async def enc_keys(request: Request) -> Response:
        caller = _admitted(request)
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
        caller = _admitted(request)
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
        if getattr(service, "stock_loop", None) is not None:  # kms serve's key stocks are refilled meanwhile
            tasks.append(loop.create_task(service.stock_loop()))
        if getattr(service, "watchdog", None) is not None:  # --exit-after-unready (.watchdog)
            tasks.append(loop.create_task(service.watchdog.run()))
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


def service_protocol(service) -> type:
    """The h11 protocol of ``service``'s ETSI 014 port: peer certificates, the limits of its ``kms.toml``, refusals audited."""
    tasks: set = set()

    def audited(proto, status: int, message: str) -> None:
        task = asyncio.get_running_loop().create_task(
            service.deny(KmsError(status, message), getattr(proto, "caller", None), "http"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    cfg = service.cfg
    return limited_protocol(PeerCertH11Protocol, header_timeout=cfg.header_timeout_s, body_timeout=cfg.body_timeout_s,
                            max_connections=cfg.max_connections, on_refusal=audited)
