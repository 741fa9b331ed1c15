"""The servers' HTTP listener: uvicorn's h11 protocol with limits, the caller from the TLS peer certificate.

Both deployments (``kms serve`` and the network's nodes and controller) serve
over these protocols. The caller's SAE id is the common name of its TLS
client certificate, never the path, the body or a header. uvicorn (0.54)
does not offer the ASGI TLS extension, so :class:`PeerCertH11Protocol`, a
subclass of uvicorn's own h11 protocol, reads the verified peer certificate
once per connection and puts the caller into the request's ``state``
(``scope["state"]``). :class:`LimitedH11Protocol` answers an oversized or
slow request head itself, with a JSON 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import threading
from typing import Any

import h11
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from .etsi import Caller
from .pki import fingerprint

STATE_KEY = "qkdseg_caller"
#: Largest request head (request line and headers, bytes) and most header lines accepted (else a JSON 400).
MAX_HEAD_BYTES = 16384
MAX_HEADERS = 100


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def listen_socket(host: str, port: int, what: str | None = None) -> socket.socket:
    """A TCP socket listening on ``host:port`` (IPv6 when ``host`` has a colon); a one-line error when it cannot."""
    from ..errors import InvalidRequest

    if not host.strip():  # the socket layer reads an empty host as every interface: never what a careless '' meant
        raise InvalidRequest("cannot listen on an empty host" + (f" ({what})" if what else "")
                             + ": name an address (0.0.0.0 for every interface)")
    if not 0 <= port <= 65535:
        raise InvalidRequest(f"cannot listen on {host}:{port}" + (f" ({what})" if what else "")
                             + ": the port is not in 0..65535")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        holder = port_holder(port, host) if err.errno == errno.EADDRINUSE else None
        raise InvalidRequest(f"cannot listen on {host}:{port}" + (f" ({what})" if what else "")
                             + f": {err.strerror}" + (f" (held by {holder})" if holder else "")) from None
    sock.listen(1024)
    return sock


def port_holder(port: int, host: str | None = None) -> str | None:
    """``pid N (command)`` of a process listening on TCP ``host:port`` (from ``/proc``: Linux, processes this user may
    see), or ``None`` when it cannot be told. A listener on ``host``'s own address or on every interface (0.0.0.0,
    ::) holds it; one on another address of the same port does not (``host`` not an IP address: any address)."""
    import os
    from pathlib import Path

    wanted = _ip_bytes(host)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A":  # 0A: LISTEN
                addr, _, hexport = f[1].rpartition(":")
                if int(hexport, 16) == port and (wanted is None or _holds(_proc_ip(addr), wanted)):
                    inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    cmd = " ".join((proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
                    return f"pid {proc.name} ({cmd[:80]})"  # one line, whatever the arguments hold
        except OSError:
            continue
    return None


_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d, an IPv4 address in IPv6's table


def _ip_bytes(host: str | None) -> bytes | None:
    """``host``'s address as 16 bytes (IPv4 as ::ffff:a.b.c.d), or ``None`` when it is not an IP address."""
    import ipaddress

    try:
        ip = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return None
    return _MAPPED + ip.packed if ip.version == 4 else ip.packed


def _proc_ip(hexaddr: str) -> bytes:
    """An address of ``/proc/net/tcp[6]`` (hex, 32-bit words in this machine's byte order) as 16 bytes."""
    import struct

    raw = b"".join(struct.pack("=I", int(hexaddr[i:i + 8], 16)) for i in range(0, len(hexaddr), 8))
    return _MAPPED + raw if len(raw) == 4 else raw


def _holds(listener: bytes, wanted: bytes) -> bool:
    """Whether a listener on address ``listener`` keeps ``wanted`` (the same port) from being bound."""
    v4_any = listener == _MAPPED + bytes(4) and wanted.startswith(_MAPPED)  # 0.0.0.0 keeps every IPv4 address
    return listener == wanted or listener == bytes(16) or v4_any


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


def graceful_server() -> type:
    """uvicorn's ``Server`` class that stops with status 0 on SIGINT/SIGTERM (see its docstring)."""
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
