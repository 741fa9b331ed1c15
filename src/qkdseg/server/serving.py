"""Run a server process: its listener, the metrics port and the dashboard on one event loop, and a clean stop.

``kms serve``, ``node serve`` and ``controller serve`` all run through :func:`serve`:

- the main application over mutual TLS on a socket already listening;
- with ``metrics_port``: ``/metrics``, ``/healthz`` and ``/readyz`` over plain
  HTTP on 127.0.0.1 (docs/deploy.md);
- with ``dashboard``: the operator dashboard of a key service (and those
  three routes), on loopback, or over TLS with the access token elsewhere.

A SIGINT or SIGTERM stops them all (:func:`qkdseg.server.http.graceful_server`):
each listener stops accepting, idle connections are closed, a request in
flight gets :data:`GRACE_S` seconds to finish (then it is cancelled: its
handler voids what it had started), the application's lifespan ends; then
:func:`serve` returns and the caller closes its store (which checkpoints the
WAL) and says ``stopped``, and the process exits 0. A signal that comes while
the process is still starting (inside :func:`stop_signals`) stops it as soon
as it has started, the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

#: Seconds a request in flight gets to finish at a stop (then it is cancelled); the whole stop stays under 10 s.
GRACE_S = 5.0


@contextlib.contextmanager
def stop_signals():
    """From here a SIGINT/SIGTERM is remembered (the list yielded) until the server captures the signals: a stop
    asked for while opening the store or compiling is a clean stop once started, never a kill half-way."""
    early: list[int] = []
    before = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        before = {sig: signal.signal(sig, lambda sig, _frame: early.append(sig))
                  for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield early
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def private_files() -> None:
    """Every file this server process creates from now on is 0600 and every directory 0700 (docs/deploy.md)."""
    os.umask(0o077)


@contextlib.contextmanager
def profiled(name: str):
    """Profiling: with ``QKDSEG_PROFILE_DIR`` set, a cProfile of what runs inside, written to ``NAME.prof`` there."""
    if not os.environ.get("QKDSEG_PROFILE_DIR"):
        yield
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(os.environ["QKDSEG_PROFILE_DIR"], f"{name}.prof"))


def serve(app, sock, *, http: type, ctx, certfile, keep_alive_s: float, ops: tuple, log_level: str,
          access_log: bool = False, request_logger: str = "qkdseg.request", metrics_port: int | None = None,
          dashboard: dict | None = None, early: list | None = None, announce: str | None = None,
          on_listening=None, watchdog=None) -> None:
    """Serve ``app`` over ``ctx`` on ``sock`` (and the side listeners) until SIGINT/SIGTERM; see the module.

    ``ops`` (``(metrics, health, ready)``): every request is timed into the
    metrics, gets a request id and (at ``info``) a log line of
    ``request_logger``; the metrics port and the dashboard serve them.
    ``dashboard`` (``service``, ``host``, ``port``): the dashboard of that
    key service. ``early``: :func:`stop_signals`'s list. ``announce``: the
    line that says where ``app`` listens, written first, then one line per
    side listener, then ``on_listening(port, dashboard_port)`` is called.
    ``watchdog`` (:class:`.watchdog.Watchdog`, ``--exit-after-unready``) is given the way to stop them all.
    """
    import asyncio

    import uvicorn

    from .http import graceful_server
    from .logs import say
    from .metrics import instrument

    server_class = graceful_server()
    app = instrument(_cut_short(app, lambda: server.should_exit), ops[0], request_logger)
    config = uvicorn.Config(app, http=http,
                            ssl_context_factory=lambda _cfg, _default: ctx, ssl_certfile=str(certfile),
                            access_log=access_log, log_level=log_level, log_config=None, lifespan="on",
                            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=GRACE_S)
    server = server_class(config)
    server.early = early if early is not None else []
    sides, lines, monitor, dbound = [], [], None, None
    if dashboard is not None:
        monitor, dconfig, dsock, line = _dashboard(dashboard, ops, log_level)
        sides.append((server_class(dconfig), dsock))
        dbound = dsock.getsockname()[1]
        lines.append(line)
    if metrics_port is not None:
        mconfig, msock, line = _metrics(metrics_port, ops, log_level)
        sides.append((server_class(mconfig), msock))
        lines.append(line)
    for other, _ in sides:
        other.captures = False  # the main server takes the signals and tells the others
    server.companions = [other for other, _ in sides]
    if watchdog is not None:
        from .watchdog import stop_servers

        watchdog.stoppers.append(lambda: stop_servers(server, *server.companions))
    if monitor is not None:
        server.on_exit = [monitor.stop]  # a flag only: a signal handler must not touch the loop
    for line in ([announce] if announce else []) + lines:
        say(line)
    if on_listening is not None:
        on_listening(sock.getsockname()[1], dbound)
    if not sides:
        server.run(sockets=[sock])
        return

    async def run_all() -> None:
        tasks = [asyncio.ensure_future(server.serve(sockets=[sock]))]
        tasks += [asyncio.ensure_future(other.serve(sockets=[s])) for other, s in sides]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # a stop, or one of them failed
        for other in (server, *server.companions):
            other.should_exit = True
        if monitor is not None:
            monitor.close()
        await asyncio.gather(*tasks)

    asyncio.run(run_all())


#: The answer to a request the stop cut short (503, JSON as every error of the servers)
CUT_SHORT = {"message": "the server stopped before this request completed; no key was delivered by it: ask again "
                        "(at another server or after the restart)"}


def _cut_short(app, stopping):
    """``app``, where a request still running when the stop's grace ran out (uvicorn cancels it) is answered 503
    with :data:`CUT_SHORT` instead of a bare 500 (its handler has voided what it started: docs/deploy.md)."""
    import asyncio
    import json

    body = json.dumps(CUT_SHORT).encode()

    async def wrapped(scope, receive, send):
        started = False

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watch)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started or not stopping():
                raise
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    return wrapped


def _side_config(app, log_level: str, **more):
    import uvicorn

    from .http import QuickCloseH11Protocol

    return uvicorn.Config(app, http=QuickCloseH11Protocol, access_log=False, log_level=log_level, log_config=None,
                          timeout_graceful_shutdown=GRACE_S, **more)


def _metrics(port: int, ops: tuple, log_level: str):
    from .http import listen_socket
    from .metrics import ops_app

    sock = listen_socket("127.0.0.1", port, "metrics")
    line = f"metrics on http://127.0.0.1:{sock.getsockname()[1]}/metrics (and /healthz, /readyz)"
    return _side_config(ops_app(*ops), log_level, lifespan="off"), sock, line


def _dashboard(spec: dict, ops: tuple, log_level: str):
    """The dashboard keeps no access log: a first request's ``?token=`` would be written there."""
    from .dashboard import create_dashboard
    from .http import listen_socket
    from .metrics import ops_routes
    from .monitor import Monitor
    from .tls import is_loopback, read_dashboard_token

    svc, host = spec["service"], spec["host"]
    token = None if is_loopback(host) else read_dashboard_token(svc.cfg)
    monitor = Monitor(svc, stocks=spec.get("stocks"))  # the network's: the nodes' reports (net/controller.py)
    sock = listen_socket(host, int(spec["port"]), "dashboard")
    tls = {"ssl_certfile": str(svc.cfg.path(svc.cfg.cert)),
           "ssl_keyfile": str(svc.cfg.path(svc.cfg.key))} if token is not None else {}
    app = create_dashboard(monitor, token=token, secure_cookie=token is not None, routes=ops_routes(*ops),
                           open_paths=("/healthz",))
    shown = f"[{host}]" if ":" in host else host
    line = (f"dashboard on {'https' if token else 'http'}://{shown}:{sock.getsockname()[1]}/dashboard/"
            + (" (access token: DIR/dashboard.token)" if token is not None else "")
            + " (and /metrics, /healthz, /readyz)")
    return monitor, _side_config(app, log_level, lifespan="on", **tls), sock, line
