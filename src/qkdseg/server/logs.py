"""The servers' logs: ``--log-level`` and ``--log-format text|json`` (docs/deploy.md, "Logs").

In ``json`` mode every line a server writes (stdout and stderr) is one JSON
object: ``time`` (UTC, ISO 8601 with milliseconds), ``level`` (lower case),
``logger``, ``message``, and ``http_request_id`` while a request is being
answered (the same id is in the answer's ``X-Request-ID`` header and in the
audit records the request writes). No log line carries key bytes: the
package's messages name keys by nothing but counts, and a request's key
material never reaches a logger.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sys
import time

LEVELS = ("critical", "error", "warning", "info", "debug")
FORMATS = ("text", "json")
#: The id of the HTTP request being answered (set by the servers' request wrapper).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("qkdseg_http_request_id", default=None)
#: Loggers a server's handler is put on (uvicorn's own included, so its lines follow the format).
LOGGERS = ("qkdseg", "uvicorn", "uvicorn.error", "uvicorn.access")

_format = "text"
_prefix = "qkdseg"


def new_request_id() -> str:
    """A fresh request id: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _iso(record.created), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        rid = getattr(record, "http_request_id", None) or REQUEST_ID.get()
        if rid:
            out["http_request_id"] = rid
        for name in ("method", "path", "status", "duration_ms", "endpoint"):
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def configure(level: str = "warning", fmt: str = "text", prefix: str = "qkdseg") -> None:
    """Send the package's and uvicorn's logs to stderr at ``level`` in ``fmt`` (text: ``PREFIX: LEVEL: message``)."""
    global _format, _prefix
    _format, _prefix = fmt, prefix
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s: %(message)s"))
    for name in LOGGERS:
        log = logging.getLogger(name)
        for old in [h for h in log.handlers if getattr(h, "_qkdseg", False)]:
            log.removeHandler(old)
        handler._qkdseg = True  # type: ignore[attr-defined]
        if name == "qkdseg" or name == "uvicorn":
            log.addHandler(handler)
        log.propagate = name not in ("qkdseg", "uvicorn")  # uvicorn.error/access reach the "uvicorn" handler
        log.setLevel(level.upper())


def say(message: str, *, err: bool = False) -> None:
    """A server's own line (where it listens, that it stopped): as text, or in ``json`` mode a JSON line (level notice)."""
    stream = sys.stderr if err else sys.stdout
    if _format == "json":
        line = json.dumps({"time": _iso(time.time()), "level": "notice", "logger": _prefix, "message": message},
                          separators=(",", ":"))
    else:
        line = f"{_prefix}: {message}"
    print(line, file=stream, flush=True)
