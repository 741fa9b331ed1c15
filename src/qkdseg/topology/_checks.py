"""Argument checks shared by the generators: every bad value is a
:class:`~qkdseg.errors.NetworkError` naming the generator and the argument."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NetworkError
from ..network import MAX_POOL_BITS, check_count, check_probability

#: Seeds are whole numbers in [0, 2**63) (numpy's generators take any
#: non-negative integer; the bound keeps them in the int64 columns of results).
MAX_SEED = 2**63 - 1


def check_real(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NetworkError(f"{what}={value!r} must be a number")
    out = float(value)
    if not math.isfinite(out):
        raise NetworkError(f"{what}={value!r} must be finite")
    return out


def check_common(who: str, n: Any, *, p: Any, trusted_p: Any, pool_bits: Any, seed: Any, max_nodes: int) -> None:
    """Types and ranges of the arguments every generator takes."""
    check_count(n, f"{who}: nodes", maximum=max_nodes)
    check_probability(p, f"{who}: p")
    check_probability(trusted_p, f"{who}: trusted_p")
    check_count(pool_bits, f"{who}: pool_bits", maximum=MAX_POOL_BITS)
    check_count(seed, f"{who}: seed", maximum=MAX_SEED)
