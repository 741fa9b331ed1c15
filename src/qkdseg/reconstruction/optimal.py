"""The ``optimal`` scheme: the most global keys that meet ``epsilon``, exactly.

An integer program over the minimal feasible key *patterns*, solved with
:func:`scipy.optimize.milp` (docs/reconstruction.md). :func:`optimal` runs it
in named steps:

1. :func:`_classes`: interchangeable pieces of each segment;
2. :func:`_part_choices`: every part (count vector over the classes) of each
   segment, with its exact security, strongest first;
3. :class:`_Patterns`: the enumeration of the minimal feasible patterns (a
   windowed search when no relay is shared between segments, a plain
   branch-and-bound otherwise);
4. :func:`_solve`: the integer program over those patterns;
5. :func:`_keys_of`: the solution turned into concrete, verified global keys.

Capped in size and time; when capped it says so and never returns fewer keys
than ``paper``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time

import numpy as np

from ..errors import InvalidRequest
from .evaluator import _Evaluator
from .paper import paper
from .registry import register
from .result import TOLERANCE, GlobalKey, Reconstruction, _empty, _sorted_keys, _validate, meets

#: Defaults of the ``optimal`` planner's caps.
OPTIMAL_MAX_CHOICES = 4096  # distinct parts per segment it enumerates
OPTIMAL_MAX_COLUMNS = 20_000  # minimal feasible keys (integer-program columns)
OPTIMAL_TIME_LIMIT = 10.0  # seconds, enumeration + milp


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


Choice = tuple[float, tuple[int, ...]]  # (exact part security, count per class)


def _part_choices(ev: _Evaluator, classes: list[list[list[int]]], eps: float, max_choices: int) -> list[list[Choice]]:
    """Every part of each segment (a count vector over its classes) and its
    exact security, strongest first; parts that cannot meet ``eps`` even with
    every other segment at full strength are left out (unless relays are
    shared between segments, where products are only bounds).

    Raises :class:`_Capped` when a segment has more than ``max_choices`` parts.
    """
    choices: list[list[Choice]] = []
    for j in range(len(classes)):
        sizes = [len(c) for c in classes[j]]
        n_choices = math.prod(s + 1 for s in sizes) - 1
        if n_choices > max_choices:
            raise _Capped(f"size cap: segment {j} has {n_choices} distinct parts (max_choices={max_choices})")
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
    return choices


class _Patterns:
    """The minimal feasible patterns of one route: the integer program's columns.

    A pattern is a tuple with one count vector per segment. Feasible: its
    key security (exact, or the product of exact part securities when no
    relay is shared between segments) meets ``eps``. Minimal: dropping any
    one piece makes it infeasible. :meth:`enumerate` fills :attr:`columns`.
    """

    def __init__(
        self,
        ev: _Evaluator,
        classes: list[list[list[int]]],
        choices: list[list[Choice]],
        eps: float,
        *,
        start: float,
        time_limit: float,
        max_columns: int,
    ):
        self.ev = ev
        self.classes = classes
        self.choices = choices
        self.eps = eps
        self.k = len(classes)
        self.start = start
        self.time_limit = time_limit
        self.max_columns = max_columns
        self.full = [tuple(len(c) for c in classes[j]) for j in range(self.k)]
        self.columns: list[tuple] = []
        self.visited = 0
        self._part_cache: dict[tuple[int, tuple[int, ...]], float] = {}
        self.maxsec = [self.part_sec(j, self.full[j]) for j in range(self.k)]

    # -- securities ------------------------------------------------------------
    def concrete(self, pattern) -> list[list[int]]:
        """The piece indices of each segment's part."""
        return [[i for c, cls in zip(counts, self.classes[j]) for i in cls[:c]] for j, counts in enumerate(pattern)]

    def part_sec(self, j: int, counts: tuple[int, ...]) -> float:
        """Exact security of segment ``j``'s part ``counts`` (0 when empty), memoised."""
        key = (j, counts)
        v = self._part_cache.get(key)
        if v is None:
            idx = [i for c, cls in zip(counts, self.classes[j]) for i in cls[:c]]
            v = self.ev.group_sec(j, idx) if any(counts) else 0.0
            self._part_cache[key] = v
        return v

    def sec_of(self, pattern) -> float:
        ev = self.ev
        if ev.cross_shared:
            return ev.key_sec(self.concrete(pattern))
        return ev.chain_sec * math.prod(self.part_sec(j, c) for j, c in enumerate(pattern))

    def feasible(self, pattern) -> bool:
        if any(not any(c) for c in pattern):
            return False
        return meets(self.sec_of(pattern), self.eps)

    def minimal(self, pattern) -> bool:
        for j, counts in enumerate(pattern):
            for ci, c in enumerate(counts):
                if c:
                    smaller = list(pattern)
                    smaller[j] = counts[:ci] + (c - 1,) + counts[ci + 1 :]
                    if self.feasible(smaller):
                        return False
        return True

    def ratio(self, j: int, counts: tuple[int, ...]) -> float:
        """sec(part) / sec(part less its most useful piece): a key stays minimal only
        while its security is below ``epsilon`` times this ratio."""
        worst = 0.0
        for ci, c in enumerate(counts):
            if c:
                smaller = counts[:ci] + (c - 1,) + counts[ci + 1 :]
                worst = max(worst, self.part_sec(j, smaller) if any(smaller) else 0.0)
        return math.inf if worst == 0.0 else self.part_sec(j, counts) / worst

    # -- enumeration -----------------------------------------------------------
    def _tick(self, every: int) -> None:
        self.visited += 1
        if self.visited % every == 0 and time.monotonic() - self.start > self.time_limit:
            raise _Capped(f"time cap: {self.time_limit:g} s reached while enumerating patterns")

    def _keep(self, pat: tuple) -> None:
        if self.feasible(pat) and self.minimal(pat):
            self.columns.append(pat)
            if len(self.columns) > self.max_columns:
                raise _Capped(f"size cap: more than {self.max_columns} minimal patterns (max_columns)")

    def enumerate(self) -> list[tuple]:
        """Fill and return :attr:`columns`; raises :class:`_Capped` at a cap."""
        if self.ev.cross_shared:
            self._search_shared(0, [], 1.0)
        else:
            self._prepare_windows()
            self._search_windowed(0, [], 1.0, math.inf)
        return self.columns

    def _search_shared(self, j: int, chosen: list, prod: float) -> None:
        """Branch and bound on the exact key security (relays shared between segments)."""
        self._tick(1024)
        if j == self.k:
            self._keep(tuple(chosen))
            return
        for sec, counts in self.choices[j]:
            # The exact security with every later segment at full strength bounds
            # every completion (security grows with the set of pieces). Products
            # do not bound it here, and choices are not sorted by it: no early stop.
            bound = self.ev.key_sec(self.concrete(chosen + [counts] + self.full[j + 1 :]))
            if not meets(bound, self.eps):
                continue
            self._search_shared(j + 1, chosen + [counts], prod * sec)

    def _prepare_windows(self) -> None:
        # Independent case: windowed enumeration. A minimal key's security lies in
        # [eps, eps * min_j r_j); the last segment's part is looked up in that window.
        k, choices = self.k, self.choices
        self._ratio = [[self.ratio(j, counts) for _, counts in choices[j]] for j in range(k)]
        self._neg = [[-sec for sec, _ in choices[j]] for j in range(k)]
        self._minsec = [choices[j][-1][0] for j in range(k)]

    def _search_windowed(self, j: int, chosen: list, prod: float, R: float) -> None:
        """Windowed search (no relay shared between segments): products are exact."""
        eps, choices = self.eps, self.choices
        slack = 1.0 + 1e-9
        self._tick(256)
        base_p = self.ev.chain_sec * prod
        if j == self.k - 1:
            lo = (eps - TOLERANCE) / base_p / slack
            hi = (eps - TOLERANCE) * R / base_p * slack if math.isfinite(R) else math.inf
            i0 = bisect.bisect_left(self._neg[j], -hi) if math.isfinite(hi) else 0
            i1 = bisect.bisect_right(self._neg[j], -lo)
            for idx in range(i0, i1):
                self._keep(tuple(chosen + [choices[j][idx][1]]))
            return
        rest_max = math.prod(self.maxsec[j + 1 :])
        rest_min = math.prod(self._minsec[j + 1 :])
        for idx, (sec, counts) in enumerate(choices[j]):
            if not meets(base_p * sec * rest_max, eps):
                break  # sorted by security: no later choice can do better
            R2 = min(R, self._ratio[j][idx])
            if math.isfinite(R2) and base_p * sec * rest_min >= (eps - TOLERANCE) * R2 * slack:
                continue  # every completion would stay feasible without one of its pieces
            self._search_windowed(j + 1, chosen + [counts], prod * sec, R2)


def _solve(columns: list[tuple], classes: list[list[list[int]]], kmax: int, time_limit: float):
    """The integer program: the most keys, each class used at most its size.

    Returns ``(res, A, cap)``: scipy's result, the constraint matrix (one row
    per (segment, class), one column per pattern) and the class sizes.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    k = len(classes)
    rows = [(j, ci, len(cls)) for j in range(k) for ci, cls in enumerate(classes[j])]
    A = np.zeros((len(rows), len(columns)))
    for col, pat in enumerate(columns):
        r = 0
        for j in range(k):
            for ci in range(len(classes[j])):
                A[r, col] = pat[j][ci]
                r += 1
    cap = np.array([s for *_, s in rows], dtype=float)
    res = milp(
        c=-np.ones(len(columns)),
        integrality=np.ones(len(columns)),
        bounds=Bounds(0, kmax),
        constraints=LinearConstraint(A, -np.inf, cap),
        options={"time_limit": time_limit, "mip_rel_gap": 0.0},
    )
    return res, A, cap


def _keys_of(
    ev: _Evaluator, classes: list[list[list[int]]], columns: list[tuple], res, A: np.ndarray, cap: np.ndarray, B: int, eps: float
) -> tuple[GlobalKey, ...]:
    """The solver's answer as concrete global keys (distinct pieces handed out
    class by class), or ``()`` when there is none or it fails verification."""
    if res.x is None:
        return ()
    k = len(classes)
    z = np.round(res.x).astype(int)
    if not (np.all(A @ z <= cap + 1e-9) and np.all(z >= 0)):
        return ()
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
        return _sorted_keys(keys)
    return ()


@register(
    "optimal",
    "Most keys meeting epsilon, exact integer program (scipy milp); capped in size and time, never below paper",
    {
        "max_choices": f"distinct parts per segment it enumerates (default {OPTIMAL_MAX_CHOICES})",
        "max_columns": f"minimal feasible keys in the integer program (default {OPTIMAL_MAX_COLUMNS})",
        "time_limit": f"seconds for enumeration + milp (default {OPTIMAL_TIME_LIMIT:g})",
    },
)
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
    _validate(segments, epsilon, block_bits)
    for name, value in (("max_choices", max_choices), ("max_columns", max_columns)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidRequest(f"optimal: {name}={value!r} must be a positive whole number")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.integer, np.floating)) \
            or not time_limit >= 0:
        raise InvalidRequest(f"optimal: time_limit={time_limit!r} must be a number of seconds >= 0")
    B = int(block_bits)
    eps = float(epsilon)
    base = paper(p, segments, chain, eps, B)
    if _empty(segments):
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no path")
    start = time.monotonic()
    ev = _Evaluator(p, segments, chain)
    classes = [_classes(ev, j) for j in range(len(segments))]

    def fallback(reason: str, incumbent: tuple[GlobalKey, ...] = ()) -> Reconstruction:
        keys = incumbent if len(incumbent) > base.n_keys else base.global_keys
        src = "the solver's incumbent" if len(incumbent) > base.n_keys else "the paper's answer"
        return Reconstruction("optimal", eps, B, keys, optimal=False, status=f"{reason}; returning {src}")

    # 1-2. Parts per segment.
    try:
        choices = _part_choices(ev, classes, eps, max_choices)
    except _Capped as cap:
        return fallback(str(cap))
    if any(not lst for lst in choices):
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no part can meet epsilon")
    # 3. Columns: the minimal feasible patterns.
    patterns = _Patterns(ev, classes, choices, eps, start=start, time_limit=time_limit, max_columns=max_columns)
    try:
        columns = patterns.enumerate()
    except _Capped as cap:
        return fallback(str(cap))
    if not columns:
        return Reconstruction("optimal", eps, B, (), optimal=True, status="no key can meet epsilon")
    # 4. The integer program; the upper bound on the number of keys is the pieces per segment.
    remaining = time_limit - (time.monotonic() - start)
    if remaining <= 0:
        return fallback(f"time cap: {time_limit:g} s reached before solving")
    kmax = min(len(seg) for seg in segments)
    res, A, cap = _solve(columns, classes, kmax, remaining)
    # 5. Concrete keys, verified.
    incumbent = _keys_of(ev, classes, columns, res, A, cap, B, eps)
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
