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
DEFAULT_REASONS = {400: "bad_request", 401: "unauthorized", 503: "unavailable"}


class KmsError(QkdsegError):
    """A request the key service refuses: the HTTP status, the message and optional details.

    ``reason`` is a short code for counting refusals (``no_key_material``,
    ``level_unmet``, ``key_not_found``...; by default from the status), and
    ``request`` what the refused request asked for (``level``, ``size``,
    ``number``) where it was known.
    """

    def __init__(self, status: int, message: str, details: list[dict] | None = None, *, reason: str | None = None):
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
        raise KmsError(400, f"number={number!r} must be a positive integer")
    if number > cfg.max_key_per_request:
        raise KmsError(400, f"number={number} exceeds max_key_per_request={cfg.max_key_per_request}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise KmsError(400, f"size={size!r} must be a positive integer (bits)")
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
        for ext in exts:
            for key, val in ext.items():
                if key != EXTENSION_LEVEL:
                    if name == "extension_mandatory":
                        unsupported.append({"extension_mandatory_unsupported": f"{key} is not supported"})
                    else:
                        ignored.append(key)
                    continue
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0.0 <= val <= 1.0 or math.isnan(val):
                    raise KmsError(400, f"{name}: {EXTENSION_LEVEL}={val!r} must be a probability in [0, 1]")
                if name == "extension_mandatory" or source != "extension_mandatory":
                    level, source, mandatory = float(val), name, name == "extension_mandatory"
    if unsupported:
        raise KmsError(400, MSG_EXT_UNSUPPORTED, unsupported)
    return KeyRequest(number, size, level, source, mandatory, tuple(ignored))

