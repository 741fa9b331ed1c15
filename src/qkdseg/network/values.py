"""Field values of the network model: bounds, the quantised cost scale, and the checks of one value."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NetworkError


#: Default key pool of a link in bits (the paper's 100 kb).
DEFAULT_POOL_BITS = 100_000

#: Node costs ``-log p`` are rounded to multiples of ``1 / COST_SCALE``. Sums of
#: such numbers are exact in float64 (up to 2**21), so equal products give
#: exactly equal path costs whatever the order of addition, and the hop
#: tie-break of ExDijkstra is never decided by rounding noise. Paths whose
#: security differs by less than about 1e-9 (relative) count as equally secure.
COST_SCALE = float(2**32)

#: Largest key pool of one link, bits (2**40, about 137 GB of key). Larger
#: values are rejected: sums over a million links must stay exact in int64.
MAX_POOL_BITS = 2**40

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise NetworkError(f"{where}: field 'trusted' must be a boolean, got {value!r}")


def _as_float(value: Any, where: str, field: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise NetworkError(f"{where}: field '{field}' must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise NetworkError(f"{where}: field '{field}' must be a number, got {_short(value)}") from None
    if math.isnan(out):
        raise NetworkError(f"{where}: field '{field}' is NaN")
    if math.isinf(out):
        raise NetworkError(f"{where}: field '{field}' is infinite")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_probability(value: Any, what: str, error: type = NetworkError) -> float:
    """``value`` as a float in [0, 1], or ``error`` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{what}={_short(value)} must be a probability in [0, 1]")
    out = float(value)
    if not 0.0 <= out <= 1.0:  # NaN fails too
        raise error(f"{what}={_short(value)} is outside [0, 1]")
    return out


def check_count(value: Any, what: str, *, minimum: int = 0, maximum: int | None = None, error: type = NetworkError) -> int:
    """``value`` as an int in ``[minimum, maximum]``, or ``error`` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise error(f"{what}={_short(value)} must be a whole number")
    if maximum is not None and not minimum <= value <= maximum:
        raise error(f"{what}={_short(value)} must lie in [{minimum}, {maximum}]")
    if value < minimum:
        raise error(f"{what}={_short(value)} must be at least {minimum}")
    return int(value)
