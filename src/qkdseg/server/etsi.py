"""The ETSI GS QKD 014 vocabulary shared by every key service: the caller, a key request, the errors.

Light on purpose (no routing, no numpy): the in-process service
(:mod:`.service`) and the network's nodes (:mod:`qkdseg.net.node`) both
serve the one ETSI 014 front end (:mod:`.app`) with it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

from ..errors import QkdsegError

EXTENSION_LEVEL = "qkdseg_security_level"

# The messages ETSI GS QKD 014 V1.1.1 gives verbatim (section 6, Table 13 examples).
MSG_NOT_FOUND = "one or more keys specified are not found on KME"
MSG_EXT_UNSUPPORTED = "not all extension_mandatory parameters are supported"
MSG_EXT_UNMET = "not all extension_mandatory request options could be met"
MSG_SIZE_8 = "size shall be a multiple of 8"


#: A refusal's reason code by HTTP status, where the raise site names none (docs/kms.md, dashboard).
DEFAULT_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                   413: "too_large", 503: "unavailable"}

#: Caller-supplied text (field names, SAE ids of the path, values) is cut to this many characters in answers
#: and audit records; a message to MAX_MESSAGE characters, details to MAX_DETAILS entries (docs/kms.md, "Limits").
CLIP = 64
MAX_MESSAGE = 512
MAX_DETAILS = 8


def clip(value: Any, n: int = CLIP) -> str:
    """``repr(value)``, a text cut to its first ``n`` characters (and its length), for caller-supplied text in messages.

    >>> clip("x" * 1000, 8)
    "'xxxxxxxx'... (1000 characters)"
    >>> clip(5)
    '5'
    """
    if isinstance(value, str):
        return repr(value) if len(value) <= n else repr(value[:n]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def clip_names(names: list, n: int = 5) -> str:
    """The first ``n`` names, each clipped, and how many more."""
    shown = ", ".join(clip(x) if not isinstance(x, str) or len(x) > CLIP else x for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


class KmsError(QkdsegError):
    """A request the key service refuses: the HTTP status, the message and optional details.

    ``reason`` is a short code for counting refusals (``no_key_material``,
    ``level_unmet``, ``key_not_found``...; by default from the status), and
    ``request`` what the refused request asked for (``level``, ``size``,
    ``number``) where it was known.
    """

    def __init__(self, status: int, message: str, details: list[dict] | None = None, *, reason: str | None = None):
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
        if details:
            details = [{str(k)[:CLIP]: (v[:MAX_MESSAGE] if isinstance(v, str) else v) for k, v in d.items()}
                       for d in details[:MAX_DETAILS]] + (
                [{"more": f"{len(details) - MAX_DETAILS} more"}] if len(details) > MAX_DETAILS else [])
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.reason = reason or DEFAULT_REASONS.get(status, f"status_{status}")
        self.request: dict | None = None

    def body(self) -> dict:
        out: dict[str, Any] = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Caller:
    """The authenticated SAE behind a request: its id (the certificate's CN) and the certificate's SHA-256."""

    sae: str
    fingerprint: str


@dataclass(frozen=True)
class KeyRequest:
    """A validated ``enc_keys`` request."""

    number: int
    size: int
    level: float
    level_source: str  # "default", "extension_mandatory" or "extension_optional"
    mandatory: bool
    ignored: tuple[str, ...] = ()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_key_request(cfg, number: Any, size: Any, ext_mandatory: Any, ext_optional: Any, additional: Any) -> KeyRequest:
    """Check a key request's fields (Table 10) against ``cfg`` (its ``key_size``, ``min_key_size``, ``max_key_size``,
    ``max_key_per_request``, ``security_level``); :class:`KmsError` 400 names the one at fault."""
    number = 1 if number is None else number
    size = cfg.key_size if size is None else size
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise KmsError(400, f"number={clip(number)} must be a positive integer")
    if number > cfg.max_key_per_request:
        raise KmsError(400, f"number={number} exceeds max_key_per_request={cfg.max_key_per_request}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise KmsError(400, f"size={clip(size)} must be a positive integer (bits)")
    if size % 8:
        raise KmsError(400, MSG_SIZE_8)
    if not cfg.min_key_size <= size <= cfg.max_key_size:
        raise KmsError(400, f"size={size} is outside [min_key_size, max_key_size] = [{cfg.min_key_size}, {cfg.max_key_size}]")
    if additional not in (None, []):
        if not isinstance(additional, list):
            raise KmsError(400, "additional_slave_SAE_IDs must be an array of SAE ids")
        raise KmsError(400, "additional_slave_SAE_IDs is not supported: this KME's max_SAE_ID_count is 0")
    level, source, mandatory, ignored = cfg.security_level, "default", False, []
    unsupported = []
    for name, exts in (("extension_mandatory", ext_mandatory), ("extension_optional", ext_optional)):
        if exts is None:
            continue
        if not isinstance(exts, list) or not all(isinstance(e, dict) for e in exts):
            raise KmsError(400, f"{name} must be an array of objects")
        seen: set[str] = set()
        for ext in exts:
            for key, val in ext.items():
                if key in seen:  # (duplicate keys in one object are refused by the JSON parser)
                    raise KmsError(400, f"{name}: {clip(key) if len(key) > CLIP else key} is given twice "
                                        "(two values for one parameter)")
                seen.add(key)
                if key != EXTENSION_LEVEL:
                    if name == "extension_mandatory":
                        unsupported.append({"extension_mandatory_unsupported":
                                            f"{key if len(key) <= CLIP else clip(key)} is not supported"})
                    elif len(ignored) < MAX_DETAILS:
                        ignored.append(key if len(key) <= CLIP else clip(key))
                    continue
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0.0 <= val <= 1.0 or math.isnan(val):
                    raise KmsError(400, f"{name}: {EXTENSION_LEVEL}={clip(val)} must be a probability in [0, 1]")
                if name == "extension_mandatory" or source != "extension_mandatory":
                    level, source, mandatory = float(val), name, name == "extension_mandatory"
    if unsupported:
        raise KmsError(400, MSG_EXT_UNSUPPORTED, unsupported)
    return KeyRequest(number, size, level, source, mandatory, tuple(ignored))
