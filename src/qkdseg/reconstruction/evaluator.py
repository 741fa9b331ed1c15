"""Exact securities of a route's piece groups and global keys, memoised."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..security.exact import _exact_security as exact_security  # routes here are valid: no argument checks
from ..security.threshold import _threshold_security
from .result import GlobalKey, KeyPart

Path = Sequence[int]


class _Evaluator:
    """Exact group and key securities of one route, memoised.

    ``tolerate = T > 0``: each part is shared k-of-m (``sharing = "threshold"``, ``k = m - T``) and is
    secret iff at least ``T + 1`` of its paths are intact (:func:`~qkdseg.security.threshold_security`).
    """

    def __init__(self, p: np.ndarray, segments: Sequence[Sequence[Path]], chain: Sequence[int], tolerate: int = 0):
        self.tolerate = int(tolerate)
        self.p = np.asarray(p, dtype=float)
        self.segments = [[list(path) for path in seg] for seg in segments]
        self.chain = list(chain)
        self.chain_sec = math.prod(float(self.p[v]) for v in self.chain)
        risky = [[frozenset(v for v in path[1:-1] if self.p[v] < 1.0) for path in seg] for seg in self.segments]
        self.q = [[math.prod(float(self.p[v]) for v in r) for r in seg] for seg in risky]
        # A risky node in two segments' relay sets, or a risky chain node that relays: products are only bounds.
        seen: dict[int, int] = {}
        cross = False
        within = False
        for j, seg in enumerate(risky):
            inseg: set[int] = set()
            for r in seg:
                if inseg & r:
                    within = True
                inseg |= r
            for v in inseg:
                if v in seen and seen[v] != j:
                    cross = True
                seen.setdefault(v, j)
        if any(self.p[v] < 1.0 and v in seen for v in self.chain):
            cross = True
        self.cross_shared = cross
        self.within_shared = within
        self._group: dict[tuple[int, tuple[int, ...]], float] = {}

    def group_sec(self, j: int, idx: Sequence[int]) -> float:
        """Exact security of the XOR of segment ``j``'s pieces ``idx``."""
        key = (j, tuple(sorted(idx)))
        val = self._group.get(key)
        if val is None:
            if self.tolerate:
                val = _threshold_security(self.p, [[self.segments[j][i] for i in key[1]]], (), self.tolerate)
            elif not self.within_shared:
                miss = 1.0
                for i in key[1]:
                    miss *= 1.0 - self.q[j][i]
                val = 1.0 - miss
            else:
                val = exact_security(self.p, [[self.segments[j][i] for i in key[1]]])
            self._group[key] = val
        return val

    def key_sec(self, parts: Sequence[Sequence[int]]) -> float:
        """Exact security of a global key with ``parts[j]`` pieces of segment ``j``."""
        if self.tolerate:
            paths = [[self.segments[j][i] for i in idx] for j, idx in enumerate(parts)]
            return _threshold_security(self.p, paths, self.chain, self.tolerate)
        if not self.cross_shared:
            return self.chain_sec * math.prod(self.group_sec(j, idx) for j, idx in enumerate(parts))
        return exact_security(self.p, [[self.segments[j][i] for i in idx] for j, idx in enumerate(parts)], self.chain)

    def make_key(self, parts: Sequence[Sequence[int]], bits: int, computational: bool = False) -> GlobalKey:
        return GlobalKey(
            security=self.key_sec(parts),
            bits=bits,
            computational=computational,
            parts=tuple(KeyPart(j, tuple(sorted(int(i) for i in idx))) for j, idx in enumerate(parts)),
        )
