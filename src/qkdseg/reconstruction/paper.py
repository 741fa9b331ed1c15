"""The ``paper`` scheme: the paper's flexible key reconstruction (section III.C).

A priority queue per segment (merge the two weakest keys), balanced matching
across segments, and the paper's stopping rule; docs/reconstruction.md works
an example by hand. :func:`paper_key_counts` gives its key counts at several
levels in one pass, for sweeps.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .evaluator import _Evaluator
from .registry import register
from .result import Reconstruction, _empty, _sorted_keys, _validate, meets


def balanced_matching(groups: Sequence[Sequence[tuple[float, object]]]) -> list[tuple[float, list]]:
    """The paper's balanced matching of equally many keys per segment.

    ``groups[j]`` lists segment ``j``'s keys as ``(security, payload)``. The
    segments are folded left to right: the matched keys so far, strongest
    first, meet the next segment's keys weakest first; a match's security is
    the product. Ties keep the given order (stable sorts).

    >>> balanced_matching([[(0.9, "a"), (0.5, "b")], [(0.6, "x"), (0.8, "y")]])
    [(0.54, ['a', 'x']), (0.4, ['b', 'y'])]
    """
    counts = {len(g) for g in groups}
    if len(counts) != 1:
        raise ValueError(f"balanced matching needs equal counts, got {[len(g) for g in groups]}")
    matched = [(sec, [payload]) for sec, payload in groups[0]]
    for g in groups[1:]:
        desc = sorted(matched, key=lambda m: -m[0])
        asc = sorted(g, key=lambda k: k[0])
        matched = [(a[0] * b[0], a[1] + [b[1]]) for a, b in zip(desc, asc)]
    return matched


def _merge_to(ev: _Evaluator, j: int, heap: list, count: int) -> None:
    """Merge the two weakest keys of segment ``j`` until it holds ``count``."""
    while len(heap) > count:
        s1, f1, g1 = heapq.heappop(heap)
        s2, f2, g2 = heapq.heappop(heap)
        g = tuple(sorted(g1 + g2))
        heapq.heappush(heap, (ev.group_sec(j, g), g[0], g))



@register(
    "paper",
    "The paper's flexible reconstruction: merge the two weakest keys per segment, balanced matching (default)",
)
def paper(p, segments, chain=(), epsilon: float = 0.0, block_bits: int = 0) -> Reconstruction:
    """The paper's flexible key reconstruction (section III.C), faithfully.

    Per segment a priority queue holds the segment's keys, weakest first
    (ties: the key holding the lowest path index). A round takes the two
    weakest keys of a segment out and puts their XOR back. The loop ends
    when the counts are equal across segments and the weakest global key of
    the balanced matching meets ``epsilon``.

    Interpretation (docs/reconstruction.md): a merge in one segment never
    changes another segment's queue, so the state at each common count ``c``
    is the same whatever order the segments merge in: segment ``j`` after
    ``n_j - c`` merges. The rule therefore checks ``c = min_j n_j``, then
    ``c - 1``, ... and stops at the first ``c`` whose matching meets
    ``epsilon``. If not even ``c = 1`` (the XOR of everything) does, no key
    is delivered.

    >>> import numpy as np
    >>> p = np.array([1, .6, .6, .3, .3, 1])
    >>> seg = [[0, 1, 5], [0, 2, 5], [0, 3, 5], [0, 4, 5]]
    >>> r = paper(p, [seg], epsilon=0.7, block_bits=1)
    >>> [round(k.security, 4) for k in r.global_keys], r.global_keys[0].parts[0].paths
    ([0.9216], (0, 1, 2, 3))
    >>> [round(rd["weakest"], 4) for rd in r.details["rounds"]]
    [0.3, 0.51, 0.6, 0.9216]
    """
    _validate(segments, epsilon, block_bits)
    B = int(block_bits)
    if _empty(segments):
        return Reconstruction("paper", float(epsilon), B, (), status="no path")
    ev = _Evaluator(p, segments, chain)
    rounds = []
    for c, matched, weakest in _paper_rounds(ev, segments):
        rounds.append({"keys_per_segment": c, "weakest": weakest})
        if meets(weakest, epsilon):
            keys = [ev.make_key(parts, B) for _, parts in matched]
            return Reconstruction("paper", float(epsilon), B, _sorted_keys(keys), details={"rounds": rounds})
    return Reconstruction(
        "paper", float(epsilon), B, (), status="even the XOR of all pieces does not meet epsilon", details={"rounds": rounds}
    )


def _paper_rounds(ev: _Evaluator, segments):
    """The paper's rounds: ``(c, matched, weakest)`` for ``c = min_j n_j``
    down to 1 keys per segment, ``weakest`` the smallest exact security of
    the matched global keys."""
    heaps = []
    for j, seg in enumerate(segments):
        h = [(ev.group_sec(j, (i,)), i, (i,)) for i in range(len(seg))]
        heapq.heapify(h)
        heaps.append(h)
    for c in range(min(len(seg) for seg in segments), 0, -1):
        for j, h in enumerate(heaps):
            _merge_to(ev, j, h, c)
        groups = [[(s, g) for s, _, g in sorted(h)] for h in heaps]
        matched = balanced_matching(groups)
        weakest = min(ev.key_sec(parts) for _, parts in matched)
        yield c, matched, weakest


def paper_key_counts(p, segments, chain=(), epsilons: Sequence[float] = (0.5, 0.7, 0.9)) -> list[int]:
    """Number of global keys ``paper`` delivers at each level, in one pass.

    Equal to ``[paper(p, segments, chain, e).n_keys for e in epsilons]``
    (the rounds do not depend on epsilon, only where they stop), for sweeps
    that need several levels of one route.

    >>> import numpy as np
    >>> p = np.array([1, .6, .6, .3, .3, 1])
    >>> paper_key_counts(p, [[[0, 1, 5], [0, 2, 5], [0, 3, 5], [0, 4, 5]]], epsilons=(0.3, 0.55, 0.7, 0.95))
    [4, 2, 1, 0]
    """
    for e in epsilons:
        _validate(segments, e, 0)
    if _empty(segments):
        return [0 for _ in epsilons]
    out: list[int | None] = [None] * len(epsilons)
    for c, _, weakest in _paper_rounds(_Evaluator(p, segments, chain), segments):
        for k, e in enumerate(epsilons):
            if out[k] is None and meets(weakest, e):
                out[k] = c
        if all(v is not None for v in out):
            break
    return [v or 0 for v in out]
