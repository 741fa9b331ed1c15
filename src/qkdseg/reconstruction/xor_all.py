"""The ``xor-all`` scheme: every piece of a segment into one part, one global key."""

from __future__ import annotations

from .evaluator import _Evaluator
from .registry import register
from .result import Reconstruction, _empty, _validate, meets


@register("xor-all", "All pieces of a segment XORed into one part; one global key if it meets epsilon")
def xor_all(p, segments, chain=(), epsilon: float = 0.0, block_bits: int = 0, *, tolerate: int = 0) -> Reconstruction:
    """All pieces of every segment into one global key (kept if it meets ``epsilon``).

    Its security is the route's end-to-end security (docs/model.md section 6).
    With ``tolerate = T > 0`` (``route(..., sharing="threshold")``, not an
    option of the registry) each segment's part is shared k-of-m over all its
    ``m`` paths instead of XORed, ``k = m - T`` (docs/model.md section 4a).

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, 1])
    >>> r = xor_all(p, [[[0, 1, 3], [0, 2, 3]]], epsilon=0.7, block_bits=8)
    >>> r.n_keys, r.global_keys[0].security, r.global_keys[0].parts[0].paths
    (1, 0.75, (0, 1))
    """
    _validate(segments, epsilon, block_bits)
    if _empty(segments):
        return Reconstruction("xor-all", float(epsilon), int(block_bits), (), status="no path")
    ev = _Evaluator(p, segments, chain, tolerate)
    key = ev.make_key([range(len(seg)) for seg in segments], int(block_bits))
    if meets(key.security, epsilon):
        return Reconstruction("xor-all", float(epsilon), int(block_bits), (key,))
    joined = f"the threshold sharing (tolerate {tolerate})" if tolerate else "the XOR"
    return Reconstruction("xor-all", float(epsilon), int(block_bits), (), status=f"{joined} of all pieces does not meet epsilon")

