"""A TLS failure between the network's processes, named (docs/network.md, "When a certificate does not match").

A node, the controller and ``net status`` call each other over mutual TLS.
When a call fails because of a certificate, :func:`tls_problem` says which
certificate and what is wrong with it, in the words an operator acts on:

- this side refused the other's certificate (``ssl.SSLCertVerificationError``,
  OpenSSL's ``verify_code``): **expired** (or not yet valid), **wrong name or
  address** (the address called is not among its IP or DNS names), **unknown
  CA** (not issued by this deployment's CA), **wrong role** (its key usage does
  not allow the use, or its role URI is not the one expected at that address:
  :class:`WrongRole`);
- the other side refused this process's certificate: the TLS alert it sent
  (``unknown ca``, ``certificate expired``, ``bad certificate``...).

A TLS failure that is not about a certificate (a port scan, plain HTTP, a
client gone mid-handshake) is not logged by a server.

:func:`describe` is that, or the exception's type for any other failure;
:func:`warn` logs it at most once a minute per peer and problem. A server
logs the handshakes it refuses with :class:`LoggedSSLObject` (the server
contexts' ``sslobject_class``).
"""

from __future__ import annotations

import logging
import ssl
import time

logger = logging.getLogger("qkdseg.tls")

#: OpenSSL's X509_V_ERR_* codes (x509_vfy.h) -> what is wrong with the certificate.
_VERIFY = {
    9: "not yet valid", 10: "expired", 2: "unknown CA", 7: "unknown CA", 18: "unknown CA", 19: "unknown CA",
    20: "unknown CA", 21: "unknown CA", 24: "unknown CA", 62: "wrong name or address", 64: "wrong name or address",
    26: "wrong role", 23: "revoked",
}
#: TLS alerts a peer sends when it refuses this process's certificate (ssl.SSLError.reason) -> what it says.
_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "a bad certificate", "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "a certificate it "
    "cannot use", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "wrong role", "TLSV13_ALERT_CERTIFICATE_REQUIRED":
    "no certificate", "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked", "TLSV1_ALERT_ACCESS_DENIED": "access denied",
    "TLSV1_ALERT_DECRYPT_ERROR": "a certificate whose key does not match",
}


class WrongRole(ssl.SSLError):
    """The peer's certificate is valid, but its role URI is not the one expected at the address called."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def tls_problem(exc: BaseException) -> str | None:
    """What certificate problem made ``exc`` (a call's exception, with its causes), in words; ``None`` if none."""
    for e in _chain(exc):
        if isinstance(e, WrongRole):
            return f"wrong role: {e}"
        if isinstance(e, ssl.SSLCertVerificationError):
            what = _VERIFY.get(e.verify_code, "not trusted")
            return f"the peer's certificate: {what} ({e.verify_message})"
        if isinstance(e, ssl.SSLError) and getattr(e, "reason", None) in _ALERTS:
            return f"the peer refused this process's certificate: {_ALERTS[e.reason]} (TLS alert {e.reason})"
    for e in _chain(exc):  # an error of the SSL layer known by its text only
        text = str(e)
        if text.startswith("wrong role: "):  # .wire's check after the handshake (httpcore keeps no cause)
            return text[:300]
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return f"the peer's certificate is not trusted ({text[:200]})"
        for reason, what in _ALERTS.items():
            if reason in text:
                return f"the peer refused this process's certificate: {what} (TLS alert {reason})"
    return None


def describe(exc: BaseException) -> str:
    """:func:`tls_problem`, else the exception's type (a connection refused, a timeout...)."""
    return tls_problem(exc) or type(exc).__name__


_LOGGED: dict[tuple[str, str], float] = {}


def warn(peer: str, problem: str, *, log: logging.Logger = logger) -> None:
    """Log ``problem`` with ``peer`` at warning, at most once a minute per peer and problem."""
    now = time.monotonic()
    key = (peer, problem)
    if now - _LOGGED.get(key, -1e9) >= 60.0:
        _LOGGED[key] = now
        if len(_LOGGED) > 1000:
            _LOGGED.clear()
        log.warning("TLS with %s failed: %s", peer, problem)


def report(peer: str, exc: BaseException) -> str:
    """:func:`describe` of ``exc``, logged (:func:`warn`) when it is a certificate problem."""
    problem = tls_problem(exc)
    if problem is not None:
        warn(peer, problem)
    return problem or type(exc).__name__


class LoggedSSLObject(ssl.SSLObject):
    """The server side's TLS object: a handshake it refuses for a certificate (the client's expired, of another CA,
    none) is logged with the problem named (asyncio logs none of them), and the TLS alert that says why is sent
    before the connection is closed (asyncio drops it), so that the client can name it too."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError):  # asyncio's "again"
            raise
        except ssl.SSLError as err:
            problem = tls_problem(err) or ("the client sent no certificate" if err.reason ==
                                           "PEER_DID_NOT_RETURN_A_CERTIFICATE" else None)
            if problem is not None:  # not a port scan, a plain-HTTP call or a client gone mid-handshake
                proto = _protocol()
                transport = getattr(proto, "_transport", None)
                peer = transport.get_extra_info("peername") if transport is not None else None
                # the client's host only: one line a minute per host and problem, whatever its ports
                warn(f"the client at {peer[0]}" if peer else "a client", problem)
                flush = getattr(proto, "_process_outgoing", None)
                if flush is not None:
                    try:
                        flush()  # the alert, written now: asyncio closes the transport without it
                    except Exception as exc:  # noqa: BLE001 -- the alert is a courtesy; the refusal stands
                        logger.debug("the TLS alert was not sent (%s)", exc)
            raise


def _protocol():
    """asyncio's SSL protocol that called :meth:`LoggedSSLObject.do_handshake` (it holds the transport; asyncio gives
    the TLS object no way to it); ``None`` when it is not found."""
    import sys

    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        proto = frame.f_locals.get("self")
        if hasattr(proto, "_transport") and hasattr(proto, "_outgoing"):
            return proto
        frame = frame.f_back
    return None
