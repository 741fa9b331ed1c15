"""The ``reuse`` scheme: combinations of a segment's pieces hashed with HKDF-SHA256.

Computational keys only; the information-theoretic ceiling is reported
beside them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidRequest
from .evaluator import _Evaluator
from .paper import balanced_matching
from .registry import register
from .result import Reconstruction, _empty, _sorted_keys, _validate, meets

#: Default cap of the ``reuse`` scheme: combinations per segment.
REUSE_MAX_COMBINATIONS = 1023


def derive_key(pieces: Sequence[bytes], bits: int, info: bytes = b"qkdseg-reuse") -> bytes:
    """Hash key pieces into one key of ``bits`` bits with HKDF-SHA256.

    The pieces are concatenated (each prefixed by its 4-byte length) as the
    input keying material. HKDF-SHA256 outputs at most 8160 bytes per call,
    so longer keys are expanded in blocks, block ``b`` with ``info || b``.
    A nonlinear function is what the paper asks for: XOR-combining
    overlapping subsets would leak one key through the others.

    >>> k = derive_key([b"\\x01" * 16, b"\\x02" * 16], 256)
    >>> len(k), k == derive_key([b"\\x01" * 16, b"\\x02" * 16], 256), k == derive_key([b"\\x02" * 16], 256)
    (32, True, False)
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if bits <= 0:
        return b""
    ikm = b"".join(len(x).to_bytes(4, "big") + bytes(x) for x in pieces)
    n_bytes = (bits + 7) // 8
    out = bytearray()
    block = 0
    while len(out) < n_bytes:
        length = min(255 * 32, n_bytes - len(out))
        out += HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info + block.to_bytes(4, "big")).derive(ikm)
        block += 1
    extra = 8 * n_bytes - bits
    if extra:
        out[-1] &= (0xFF << extra) & 0xFF
    return bytes(out)



@register(
    "reuse",
    "Combinations of pieces hashed with HKDF-SHA256: more keys, computational secrecy only",
    {"max_combinations": f"combinations per segment (default {REUSE_MAX_COMBINATIONS})"},
)
def reuse(
    p,
    segments,
    chain=(),
    epsilon: float = 0.0,
    block_bits: int = 0,
    *,
    max_combinations: int = REUSE_MAX_COMBINATIONS,
) -> Reconstruction:
    """Key reuse: every combination of a segment's pieces, hashed (HKDF).

    Per segment, every non-empty subset of its pieces (smallest subsets
    first, at most ``max_combinations``) is a candidate segment key
    ``derive_key(pieces)``; combinations whose security, times the best the
    other segments and the chain can offer, cannot meet ``epsilon`` are
    discarded. Each combination is used in at most one global key. The
    largest ``K`` whose ``K`` strongest combinations per segment, paired by
    the balanced matching, all meet ``epsilon`` gives the keys.

    The keys are computational (``computational=True``): the pieces of a
    segment carry at most ``n_j * B`` bits of secret entropy however they
    are hashed, so the route's information-theoretic ceiling,
    ``min_j n_j * B``, is reported in ``information_theoretic_bound_bits``.
    """
    _validate(segments, epsilon, block_bits)
    if isinstance(max_combinations, bool) or not isinstance(max_combinations, (int, np.integer)) or max_combinations < 1:
        raise InvalidRequest(f"reuse: max_combinations={max_combinations!r} must be a positive whole number")
    B = int(block_bits)
    eps = float(epsilon)
    if _empty(segments):
        return Reconstruction("reuse", eps, B, (), status="no path", information_theoretic_bound_bits=0)
    ev = _Evaluator(p, segments, chain)
    bound = min(len(seg) for seg in segments) * B
    best = [ev.group_sec(j, range(len(seg))) for j, seg in enumerate(segments)]
    cand: list[list[tuple[float, tuple[int, ...]]]] = []
    capped = False
    for j, seg in enumerate(segments):
        others = ev.chain_sec * math.prod(best[:j] + best[j + 1 :])
        lst = []
        n = len(seg)
        for size in range(1, n + 1):
            for combo in itertools.combinations(range(n), size):
                if len(lst) >= max_combinations:
                    capped = True
                    break
                sec = ev.group_sec(j, combo)
                if meets(sec * others, eps):
                    lst.append((sec, combo))
            if capped:
                break
        lst.sort(key=lambda t: (-t[0], len(t[1]), t[1]))
        cand.append(lst)
    status = "ok" if not capped else f"capped at {max_combinations} combinations per segment"
    kmax = min(len(c) for c in cand)
    for K in range(kmax, 0, -1):
        groups = [c[:K] for c in cand]
        matched = balanced_matching(groups)
        if not meets(ev.chain_sec * min(s for s, _ in matched), eps):
            continue
        keys = [ev.make_key(parts, B, computational=True) for _, parts in matched]
        if all(meets(key.security, eps) for key in keys):
            return Reconstruction(
                "reuse", eps, B, _sorted_keys(keys), status=status, information_theoretic_bound_bits=bound
            )
    return Reconstruction(
        "reuse", eps, B, (), status="no combination meets epsilon" if status == "ok" else status, information_theoretic_bound_bits=bound
    )
