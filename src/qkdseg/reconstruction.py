"""Key reconstruction (paper section III.C, MODEL.md section 4).

Every path of every segment delivers one key *piece* of ``B`` bits. A
reconstruction scheme turns a route's pieces into *global keys*: a global key
has exactly one *part* per segment, a part being a group of that segment's
pieces XORed (or, for ``reuse``, hashed) into one segment key. The global key
is relayed hop by hop under the segment keys, so it stays secret iff every
one of its parts does (and the segment nodes relaying it are safe).

Four schemes, all pure functions with the signature::

    scheme(p, segments, chain, epsilon, block_bits, **options) -> Reconstruction

where ``p`` is the node security array, ``segments[j]`` the node-index paths
of segment ``j``, and ``chain`` the interior segment nodes. They are
registered in :data:`SCHEMES`:

``xor-all``
    All pieces of a segment into one part; one global key, kept only if it
    meets ``epsilon``.
``paper``
    The paper's flexible reconstruction: a priority queue per segment
    (merge the two weakest keys), balanced matching across segments, and the
    paper's stopping rule. docs/reconstruction.md works an example by hand.
``optimal``
    The most global keys that meet ``epsilon``, solved exactly as an integer
    program with :func:`scipy.optimize.milp` (a pattern formulation over the
    minimal feasible keys, see :func:`optimal`). Capped in size and time;
    when capped it says so and never returns fewer keys than ``paper``.
``reuse``
    Key reuse: combinations of a segment's pieces hashed with HKDF-SHA256
    (:func:`derive_key`); one piece may feed several keys. These keys are
    *computational*, and the information-theoretic ceiling is reported
    beside them.

Security. Inside a segment, a part is secret iff one of its paths has all its
relays safe; its security is computed exactly (:func:`qkdseg.security.exact_security`),
so relays shared between paths (possible with ``trusted_p < 1``) are handled.
A key's reported ``security`` is the exact probability that every part stays
secret and every chain node is safe. Decisions (merging, matching, the
integer program) use the product of the parts' exact securities times the
chain's, which equals the exact value when no risky relay is shared between
segments and is otherwise a lower bound (all these events are increasing in
the set of safe nodes, so by Harris' inequality they are positively
correlated): a key accepted on the product always meets ``epsilon`` exactly.

A key meets the level when ``security >= epsilon - TOLERANCE``
(:data:`TOLERANCE` absorbs floating-point rounding at exact ties such as
``0.5``).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidRequest
from .security import exact_security

Path = Sequence[int]

#: Absolute slack in "security >= epsilon" (floating-point rounding only).
TOLERANCE = 1e-12

#: Defaults of the ``optimal`` planner's caps.
OPTIMAL_MAX_CHOICES = 4096  # distinct parts per segment it enumerates
OPTIMAL_MAX_COLUMNS = 20_000  # minimal feasible keys (integer-program columns)
OPTIMAL_TIME_LIMIT = 10.0  # seconds, enumeration + milp

#: Default cap of the ``reuse`` scheme: combinations per segment.
REUSE_MAX_COMBINATIONS = 1023


# -- results -----------------------------------------------------------------
@dataclass(frozen=True)
class KeyPart:
    """One part of a global key: a group of one segment's pieces.

    Attributes
    ----------
    segment : int
        Index of the segment.
    paths : tuple of int
        Indices into that segment's paths (sorted).
    """

    segment: int
    paths: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"segment": self.segment, "paths": list(self.paths)}


@dataclass(frozen=True)
class GlobalKey:
    """One end-to-end key.

    Attributes
    ----------
    security : float
        Exact probability that every part (and every chain node) stays secret.
    bits : int
        Length, bits (the block size ``B``).
    computational : bool
        ``True`` for ``reuse`` keys (hash-derived, computational secrecy only).
    parts : tuple of KeyPart
        Exactly one per segment, in segment order.
    """

    security: float
    bits: int
    computational: bool
    parts: tuple[KeyPart, ...]

    def to_dict(self) -> dict:
        return {
            "security": self.security,
            "bits": self.bits,
            "computational": self.computational,
            "parts": [p.to_dict() for p in self.parts],
        }


@dataclass(frozen=True)
class Reconstruction:
    """The result of a reconstruction scheme.

    Attributes
    ----------
    scheme : str
    epsilon : float
        The requested security level.
    block_bits : int
        ``B``, the size of every piece and every global key, bits.
    global_keys : tuple of GlobalKey
        Every one meets ``epsilon``; strongest first.
    optimal : bool or None
        ``optimal`` only: ``True`` when the integer program was solved to
        proven optimality, ``False`` when a cap was hit (``status`` says which).
    status : str
        One line on how the result was reached.
    information_theoretic_bound_bits : int or None
        ``reuse`` only: ``min_j n_j * B``, the most secret entropy the route
        can carry end to end whatever the hashing (``n_j`` pieces in segment j).
    """

    scheme: str
    epsilon: float
    block_bits: int
    global_keys: tuple[GlobalKey, ...]
    optimal: bool | None = None
    status: str = "ok"
    information_theoretic_bound_bits: int | None = None
    details: dict = field(default_factory=dict, compare=False)

    @property
    def n_keys(self) -> int:
        return len(self.global_keys)

    @property
    def key_bits(self) -> int:
        """Key length at level ``epsilon``: total bits of the global keys."""
        return sum(k.bits for k in self.global_keys)

    def to_dict(self) -> dict:
        out = {
            "scheme": self.scheme,
            "epsilon": self.epsilon,
            "key_bits": self.key_bits,
            "block_bits": self.block_bits,
            "global_keys": [k.to_dict() for k in self.global_keys],
            "status": self.status,
        }
        if self.optimal is not None:
            out["optimal"] = self.optimal
        if self.information_theoretic_bound_bits is not None:
            out["information_theoretic_bound_bits"] = self.information_theoretic_bound_bits
        return out


# -- security of groups ------------------------------------------------------
def meets(security: float, epsilon: float) -> bool:
    """``security >= epsilon`` up to :data:`TOLERANCE`."""
    return security >= epsilon - TOLERANCE


class _Evaluator:
    """Exact group and key securities of one route, memoised."""

    def __init__(self, p: np.ndarray, segments: Sequence[Sequence[Path]], chain: Sequence[int]):
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
            if not self.within_shared:
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


def _validate(segments, epsilon: float, block_bits: int) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
    if isinstance(block_bits, bool) or not isinstance(block_bits, (int, np.integer)) or block_bits < 0:
        raise InvalidRequest(f"block_bits={block_bits!r} must be a non-negative integer")


def _empty(segments) -> bool:
    return not segments or any(len(seg) == 0 for seg in segments)


def _sorted_keys(keys: list[GlobalKey]) -> tuple[GlobalKey, ...]:
    return tuple(sorted(keys, key=lambda k: (-k.security, [p.paths for p in k.parts])))


# -- xor-all -----------------------------------------------------------------
def xor_all(p, segments, chain=(), epsilon: float = 0.0, block_bits: int = 0) -> Reconstruction:
    """All pieces of every segment into one global key (kept if it meets ``epsilon``).

    Its security is the route's end-to-end security (MODEL.md section 6).

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, 1])
    >>> r = xor_all(p, [[[0, 1, 3], [0, 2, 3]]], epsilon=0.7, block_bits=8)
    >>> r.n_keys, r.global_keys[0].security, r.global_keys[0].parts[0].paths
    (1, 0.75, (0, 1))
    """
    _validate(segments, epsilon, block_bits)
    if _empty(segments):
        return Reconstruction("xor-all", float(epsilon), int(block_bits), (), status="no path")
    ev = _Evaluator(p, segments, chain)
    key = ev.make_key([range(len(seg)) for seg in segments], int(block_bits))
    if meets(key.security, epsilon):
        return Reconstruction("xor-all", float(epsilon), int(block_bits), (key,))
    return Reconstruction("xor-all", float(epsilon), int(block_bits), (), status="the XOR of all pieces does not meet epsilon")


# -- paper ---------------------------------------------------------------------
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


# -- optimal -------------------------------------------------------------------
class _Capped(Exception):
    pass


def _classes(ev: _Evaluator, j: int) -> list[list[int]]:
    """Interchangeable pieces of segment ``j``: equal security, no shared relay anywhere."""
    n = len(ev.segments[j])
    if ev.within_shared or ev.cross_shared:
        return [[i] for i in range(n)]
    by_q: dict[float, list[int]] = {}
    for i in range(n):
        by_q.setdefault(ev.q[j][i], []).append(i)
    return [by_q[q] for q in sorted(by_q, reverse=True)]


def optimal(
    p,
    segments,
    chain=(),
    epsilon: float = 0.0,
    block_bits: int = 0,
    *,
    max_choices: int = OPTIMAL_MAX_CHOICES,
    max_columns: int = OPTIMAL_MAX_COLUMNS,
    time_limit: float = OPTIMAL_TIME_LIMIT,
) -> Reconstruction:
    """The most global keys that meet ``epsilon``, exactly (integer program).

    Formulation (docs/reconstruction.md). Pieces of a segment with equal
    security are interchangeable when no relay is shared, so they form a
    *class*; otherwise every piece is its own class. A *pattern* takes, per
    segment, a count of pieces from each class. A pattern is *feasible* when
    the product of its parts' securities (times the chain's) meets
    ``epsilon``, and *minimal* when dropping any one piece makes it
    infeasible. Any set of K disjoint feasible keys can be shrunk, key by
    key, to minimal patterns, so the optimum is

        maximise sum_c z_c
        s.t.     sum_c count_c(j, class) * z_c <= size(j, class)  for every class
                 z_c integer >= 0

    over the minimal feasible patterns ``c``: a small integer program with
    integer coefficients (no logarithms, no tolerance on the security test,
    which is done exactly in Python while enumerating). With relays shared
    between segments, feasibility is the exact key security.

    Caps: at most ``max_choices`` distinct parts per segment, ``max_columns``
    minimal patterns, and ``time_limit`` seconds in all. When one is hit the
    result says so (``optimal=False`` and ``status``) and is the better of
    the solver's incumbent and :func:`paper`'s answer, so it never has fewer
    keys than ``paper``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    _validate(segments, epsilon, block_bits)
    B = int(block_bits)
    eps = float(epsilon)
    base = paper(p, segments, chain, eps, B)
    if _empty(segments):
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no path")
    start = time.monotonic()
    ev = _Evaluator(p, segments, chain)
    k = len(segments)
    classes = [_classes(ev, j) for j in range(k)]

    def fallback(reason: str, incumbent: tuple[GlobalKey, ...] = ()) -> Reconstruction:
        keys = incumbent if len(incumbent) > base.n_keys else base.global_keys
        src = "the solver's incumbent" if len(incumbent) > base.n_keys else "the paper's answer"
        return Reconstruction("optimal", eps, B, keys, optimal=False, status=f"{reason}; returning {src}")

    # Upper bound on the number of keys: pieces per segment.
    kmax = min(len(seg) for seg in segments)
    # Every choice (count vector per class) of each segment and its exact part security.
    choices: list[list[tuple[float, tuple[int, ...]]]] = []
    for j in range(k):
        sizes = [len(c) for c in classes[j]]
        n_choices = math.prod(s + 1 for s in sizes) - 1
        if n_choices > max_choices:
            return fallback(f"size cap: segment {j} has {n_choices} distinct parts (max_choices={max_choices})")
        lst = []
        for counts in itertools.product(*(range(s + 1) for s in sizes)):
            if not any(counts):
                continue
            idx = [i for c, cls in zip(counts, classes[j]) for i in cls[:c]]
            sec = ev.group_sec(j, idx)
            if meets(sec * ev.chain_sec, eps) or ev.cross_shared:
                lst.append((sec, counts))
        lst.sort(key=lambda t: -t[0])
        choices.append(lst)
    if any(not lst for lst in choices):
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no part can meet epsilon")

    def concrete(pattern) -> list[list[int]]:
        return [[i for c, cls in zip(counts, classes[j]) for i in cls[:c]] for j, counts in enumerate(pattern)]

    full = [tuple(len(c) for c in classes[j]) for j in range(k)]

    def sec_of(pattern) -> float:
        if ev.cross_shared:
            return ev.key_sec(concrete(pattern))
        return ev.chain_sec * math.prod(_part_sec(j, c) for j, c in enumerate(pattern))

    part_cache: dict[tuple[int, tuple[int, ...]], float] = {}

    def _part_sec(j: int, counts: tuple[int, ...]) -> float:
        key = (j, counts)
        v = part_cache.get(key)
        if v is None:
            idx = [i for c, cls in zip(counts, classes[j]) for i in cls[:c]]
            v = ev.group_sec(j, idx) if any(counts) else 0.0
            part_cache[key] = v
        return v

    def feasible(pattern) -> bool:
        if any(not any(c) for c in pattern):
            return False
        return meets(sec_of(pattern), eps)

    def minimal(pattern) -> bool:
        for j, counts in enumerate(pattern):
            for ci, c in enumerate(counts):
                if c:
                    smaller = list(pattern)
                    smaller[j] = counts[:ci] + (c - 1,) + counts[ci + 1 :]
                    if feasible(smaller):
                        return False
        return True

    columns: list[tuple] = []
    maxsec = [_part_sec(j, full[j]) for j in range(k)]
    visited = [0]

    def dfs(j: int, chosen: list, prod: float) -> None:
        visited[0] += 1
        if visited[0] % 1024 == 0 and time.monotonic() - start > time_limit:
            raise _Capped(f"time cap: {time_limit:g} s reached while enumerating patterns")
        if j == k:
            pat = tuple(chosen)
            if feasible(pat) and minimal(pat):
                columns.append(pat)
                if len(columns) > max_columns:
                    raise _Capped(f"size cap: more than {max_columns} minimal patterns (max_columns)")
            return
        rest = math.prod(maxsec[j + 1 :])
        for sec, counts in choices[j]:
            if ev.cross_shared:
                bound = ev.key_sec(concrete(chosen + [counts] + full[j + 1 :]))
            else:
                bound = ev.chain_sec * prod * sec * rest
            if not meets(bound, eps):
                if ev.cross_shared:
                    continue
                break  # choices are sorted by security: no later one can do better
            dfs(j + 1, chosen + [counts], prod * sec)

    def r_of(j: int, counts: tuple[int, ...]) -> float:
        """sec(part) / sec(part less its most useful piece): a key stays minimal only
        while its security is below ``epsilon`` times this ratio."""
        worst = 0.0
        for ci, c in enumerate(counts):
            if c:
                smaller = counts[:ci] + (c - 1,) + counts[ci + 1 :]
                worst = max(worst, _part_sec(j, smaller) if any(smaller) else 0.0)
        return math.inf if worst == 0.0 else _part_sec(j, counts) / worst

    # Independent case: windowed enumeration. A minimal key's security lies in
    # [eps, eps * min_j r_j); the last segment's part is looked up in that window.
    ratio = [[r_of(j, counts) for _, counts in choices[j]] for j in range(k)] if not ev.cross_shared else []
    neg = [[-sec for sec, _ in choices[j]] for j in range(k)]
    minsec = [choices[j][-1][0] for j in range(k)]
    slack = 1.0 + 1e-9

    def dfs_fast(j: int, chosen: list, prod: float, R: float) -> None:
        visited[0] += 1
        if visited[0] % 256 == 0 and time.monotonic() - start > time_limit:
            raise _Capped(f"time cap: {time_limit:g} s reached while enumerating patterns")
        base_p = ev.chain_sec * prod
        if j == k - 1:
            lo = (eps - TOLERANCE) / base_p / slack
            hi = (eps - TOLERANCE) * R / base_p * slack if math.isfinite(R) else math.inf
            i0 = bisect.bisect_left(neg[j], -hi) if math.isfinite(hi) else 0
            i1 = bisect.bisect_right(neg[j], -lo)
            for idx in range(i0, i1):
                pat = tuple(chosen + [choices[j][idx][1]])
                if feasible(pat) and minimal(pat):
                    columns.append(pat)
                    if len(columns) > max_columns:
                        raise _Capped(f"size cap: more than {max_columns} minimal patterns (max_columns)")
            return
        rest_max = math.prod(maxsec[j + 1 :])
        rest_min = math.prod(minsec[j + 1 :])
        for idx, (sec, counts) in enumerate(choices[j]):
            if not meets(base_p * sec * rest_max, eps):
                break  # sorted by security: no later choice can do better
            R2 = min(R, ratio[j][idx])
            if math.isfinite(R2) and base_p * sec * rest_min >= (eps - TOLERANCE) * R2 * slack:
                continue  # every completion would stay feasible without one of its pieces
            dfs_fast(j + 1, chosen + [counts], prod * sec, R2)

    try:
        if ev.cross_shared:
            dfs(0, [], 1.0)
        else:
            dfs_fast(0, [], 1.0, math.inf)
    except _Capped as cap:
        return fallback(str(cap))
    if not columns:
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no key can meet epsilon")

    # Rows: one per (segment, class).
    rows = [(j, ci, len(cls)) for j in range(k) for ci, cls in enumerate(classes[j])]
    A = np.zeros((len(rows), len(columns)))
    for col, pat in enumerate(columns):
        r = 0
        for j in range(k):
            for ci in range(len(classes[j])):
                A[r, col] = pat[j][ci]
                r += 1
    cap = np.array([s for *_, s in rows], dtype=float)
    remaining = time_limit - (time.monotonic() - start)
    if remaining <= 0:
        return fallback(f"time cap: {time_limit:g} s reached before solving")
    res = milp(
        c=-np.ones(len(columns)),
        integrality=np.ones(len(columns)),
        bounds=Bounds(0, kmax),
        constraints=LinearConstraint(A, -np.inf, cap),
        options={"time_limit": remaining, "mip_rel_gap": 0.0},
    )
    incumbent: tuple[GlobalKey, ...] = ()
    if res.x is not None:
        z = np.round(res.x).astype(int)
        if np.all(A @ z <= cap + 1e-9) and np.all(z >= 0):
            used = [[0] * len(classes[j]) for j in range(k)]
            keys = []
            for col, times in enumerate(z):
                for _ in range(times):
                    parts = []
                    for j, counts in enumerate(columns[col]):
                        idx = []
                        for ci, c in enumerate(counts):
                            idx += classes[j][ci][used[j][ci] : used[j][ci] + c]
                            used[j][ci] += c
                        parts.append(idx)
                    keys.append(ev.make_key(parts, B))
            if all(meets(key.security, eps) for key in keys):
                incumbent = _sorted_keys(keys)
    if res.status == 0 and len(incumbent) == round(-res.fun):
        if len(incumbent) >= base.n_keys:
            return Reconstruction(
                "optimal",
                eps,
                B,
                incumbent,
                optimal=True,
                status=f"optimal ({len(columns)} minimal patterns)",
                details={"patterns": len(columns)},
            )
        # Cannot happen for an exact solve; keep the guarantee anyway.
        return fallback("solver optimum below the paper's answer (numerical trouble)")
    if res.status == 0:
        return fallback("solver answer failed verification", incumbent)
    return fallback(f"time cap: milp stopped ({res.message.strip()})", incumbent)


# -- reuse ---------------------------------------------------------------------
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


#: Name -> scheme.
SCHEMES = {"xor-all": xor_all, "paper": paper, "optimal": optimal, "reuse": reuse}

#: Name -> one line for ``qkdseg algorithms``.
SCHEME_DESCRIPTIONS = {
    "xor-all": "All pieces of a segment XORed into one part; one global key if it meets epsilon",
    "paper": "The paper's flexible reconstruction: merge the two weakest keys per segment, balanced matching (default)",
    "optimal": "Most keys meeting epsilon, exact integer program (scipy milp); capped in size and time, never below paper",
    "reuse": "Combinations of pieces hashed with HKDF-SHA256: more keys, computational secrecy only",
}

#: Name -> {option: description} (keyword options of the scheme functions).
SCHEME_OPTIONS = {
    "xor-all": {},
    "paper": {},
    "optimal": {
        "max_choices": f"distinct parts per segment it enumerates (default {OPTIMAL_MAX_CHOICES})",
        "max_columns": f"minimal feasible keys in the integer program (default {OPTIMAL_MAX_COLUMNS})",
        "time_limit": f"seconds for enumeration + milp (default {OPTIMAL_TIME_LIMIT:g})",
    },
    "reuse": {"max_combinations": f"combinations per segment (default {REUSE_MAX_COMBINATIONS})"},
}


def reconstruct(name: str, p, segments, chain=(), epsilon: float = 0.0, block_bits: int = 0, **options) -> Reconstruction:
    """Run the scheme ``name`` (a key of :data:`SCHEMES`) with its options."""
    from .errors import UnknownAlgorithm

    try:
        func = SCHEMES[name]
    except KeyError:
        raise UnknownAlgorithm(f"unknown reconstruction scheme {name!r} (known: {', '.join(SCHEMES)})") from None
    for key in options:
        if key not in SCHEME_OPTIONS[name]:
            allowed = ", ".join(sorted(SCHEME_OPTIONS[name])) or "none"
            raise InvalidRequest(f"reconstruction {name!r} has no option {key!r} (options: {allowed})")
    return func(p, segments, chain, epsilon, block_bits, **options)


__all__ = [
    "GlobalKey",
    "KeyPart",
    "Reconstruction",
    "SCHEMES",
    "balanced_matching",
    "derive_key",
    "meets",
    "optimal",
    "paper",
    "reconstruct",
    "reuse",
    "xor_all",
]
