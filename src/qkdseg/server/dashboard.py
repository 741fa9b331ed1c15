"""The operator dashboard: a read-only page and its JSON API, on a port of its own (docs/kms.md, "Dashboard").

``qkdseg kms serve DIR --dashboard-port 8080`` serves it next to the ETSI
GS QKD 014 API, in the same process and on the same event loop, from a
:class:`~.monitor.Monitor` of the running :class:`~.service.KeyService`:

==================================  ===========================================
``GET /dashboard/``                 the page (plain HTML, CSS, JS and SVG)
``GET /dashboard/api/network``      nodes (position, kind, SAEs) and links
``GET /dashboard/api/pools``        every link's level (bits) and state now
``GET /dashboard/api/deliveries``   table rows, newest first (``?limit&after``)
``GET /dashboard/api/counters``     last minute and since start
``GET /dashboard/api/links/{k}``    link ``k``'s level over time (``?seconds``)
``GET /dashboard/api/stocks``       the key stocks: per pair (and node) level, target, hits, misses, refills
``GET /dashboard/api/events``       server-sent events: ``delivery``, ``pools``, ``counters``
==================================  ===========================================

On a loopback address nothing is asked of the caller. Bound to any other
address (``--dashboard-public``), every request needs the access token of
``DIR/dashboard.token``: ``Authorization: Bearer TOKEN``, ``?token=TOKEN``
(which sets an HttpOnly cookie, so the page's own requests carry it, and
redirects to the same path without the token) or that cookie; the dashboard is then served over TLS with the KME's server
certificate. No response carries key bytes; key ids are cut to 8 characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .monitor import Monitor, dumps as _dumps

COOKIE = "qkdseg_dashboard"
#: Most live event streams at once (each holds a queue on the service's event loop).
MAX_VIEWERS = 32
#: Seconds a live stream gathers events before it writes them (at most 20 writes a second per viewer).
BATCH_S = 0.05
STATIC = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}
#: The page loads nothing from another origin, and no script from anywhere but itself.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _dumps(content).encode()


def _static(name: str) -> bytes:
    return resources.files("qkdseg.server").joinpath("static", name).read_bytes()


def _int_arg(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        val = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name}={raw!r} must be an integer") from None
    if not lo <= val <= hi:
        raise HTTPException(400, f"{name}={val} must be in {lo}..{hi}")
    return val


def create_dashboard(monitor: Monitor, *, token: str | None = None, secure_cookie: bool = False,
                     run_monitor: bool = True, routes: list | None = None, open_paths: tuple[str, ...] = ()):
    """The dashboard application over ``monitor``; with ``token``, every request must carry it.

    ``routes`` are served too (``/metrics``, ``/healthz``, ``/readyz``: :func:`.metrics.ops_routes`), under the same
    token; a path in ``open_paths`` (``/healthz``: it tells only that the process answers) needs none.
    """
    extra_routes = list(routes or ())

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = []
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        given += [request.query_params.get("token") or "", request.cookies.get(COOKIE) or ""]
        return any(g and hmac.compare_digest(g.encode(), token.encode()) for g in given)

    def page(name: str):
        async def handler(request: Request) -> Response:
            if token is not None and request.query_params.get("token"):
                # the cookie, and the page again without the token in the address bar and the history
                resp: Response = RedirectResponse(request.url.path, status_code=303)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure_cookie,
                                path="/dashboard")
                return resp
            return Response(_static(name), media_type=STATIC[name])
        return handler

    async def network(request: Request) -> Response:
        return JSONResponse(monitor.network_view())

    async def pools(request: Request) -> Response:
        return JSONResponse(monitor.pools())

    async def deliveries(request: Request) -> Response:
        limit = _int_arg(request, "limit", 100, 1, 1000)
        after = _int_arg(request, "after", 0, 0, 2**62)
        return JSONResponse({"rows": monitor.deliveries(limit, after), "last_seq": monitor.seq})

    async def counters(request: Request) -> Response:
        return JSONResponse(monitor.counters())

    async def stocks(request: Request) -> Response:
        return JSONResponse(monitor.stocks())

    async def link(request: Request) -> Response:
        n = monitor.service.arrays.n_links
        raw = request.path_params["k"]
        try:
            k = int(raw)
        except ValueError:
            raise HTTPException(404, f"no link {raw!r}: links are numbered 0..{n - 1}") from None
        if not 0 <= k < n:
            raise HTTPException(404, f"no link {k}: links are numbered 0..{n - 1}")
        seconds = request.query_params.get("seconds")
        try:
            sec = None if seconds is None else float(seconds)
        except ValueError:
            raise HTTPException(400, f"seconds={seconds!r} must be a number") from None
        return JSONResponse(monitor.link_history(k, sec))

    async def events(request: Request) -> Response:
        if monitor.viewers >= MAX_VIEWERS:
            raise HTTPException(503, f"{MAX_VIEWERS} live viewers already; try again later")
        q = monitor.subscribe()

        async def stream():
            try:
                yield "retry: 2000\n\n"
                yield f"event: pools\ndata: {_dumps(monitor.pools())}\n\n"
                yield f"event: counters\ndata: {_dumps(monitor.counters())}\n\n"
                while not monitor.closing:
                    try:
                        event, text = await asyncio.wait_for(q.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"
                        continue
                    # a busy service makes many events a second: gather them for BATCH_S, then one write
                    await asyncio.sleep(BATCH_S)
                    batch = [(event, text)]
                    while not q.empty() and len(batch) < 500:
                        batch.append(q.get_nowait())
                    out = []
                    for event, text in batch:
                        if event == "close":
                            break
                        out.append(f"event: {event}\ndata: {text}\n\n")  # encoded once for every viewer
                        if event == "reload":
                            break
                    if out:
                        yield "".join(out)
                    if event in ("close", "reload"):
                        break
            finally:
                monitor.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def root(request: Request) -> Response:
        return RedirectResponse("/dashboard/", status_code=307)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.get_running_loop().create_task(monitor.run()) if run_monitor else None
        try:
            yield
        finally:
            monitor.close()
            if task is not None:
                task.cancel()

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/dashboard", root, methods=["GET"]),
        Route("/dashboard/", page("index.html"), methods=["GET"]),
        Route("/dashboard/dashboard.js", page("dashboard.js"), methods=["GET"]),
        Route("/dashboard/dashboard.css", page("dashboard.css"), methods=["GET"]),
        Route("/dashboard/api/network", network, methods=["GET"]),
        Route("/dashboard/api/pools", pools, methods=["GET"]),
        Route("/dashboard/api/deliveries", deliveries, methods=["GET"]),
        Route("/dashboard/api/counters", counters, methods=["GET"]),
        Route("/dashboard/api/links/{k}", link, methods=["GET"]),
        Route("/dashboard/api/stocks", stocks, methods=["GET"]),
        Route("/dashboard/api/events", events, methods=["GET"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: on_http_error}, lifespan=lifespan)
    extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def guarded(scope, receive, send):
        """Every answer, errors included, carries SECURITY_HEADERS; with a token, a request without it gets 401."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in extra if k not in have)]}
            await send(message)

        if scope.get("path") not in open_paths and not authorized(Request(scope)):
            deny = JSONResponse({"message": "the dashboard needs its access token (DIR/dashboard.token): "
                                            "Authorization: Bearer TOKEN, or ?token=TOKEN"},
                                status_code=401, headers={"www-authenticate": "Bearer"})
            await deny(scope, receive, send_with_headers)
            return
        await app(scope, receive, send_with_headers)

    return guarded  # type: ignore[return-value]
