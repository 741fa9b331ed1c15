"""Security of a set of segment paths (MODEL.md sections 2 and 5).

A route is described by its segments, each a list of paths (node-index lists,
ends included), and by its *chain*: the interior segment nodes
``t1..t(k-1)`` that relay the global key. The global key stays secret iff

    every chain node is uncompromised, and
    in every segment, at least one path has all its relays uncompromised.

Relays are the interior nodes of a path. Every node ``v`` is compromised
independently with probability ``1 - p[v]``; nodes with ``p = 1`` never are.

Three evaluators, all pure functions:

- :func:`exact_security`: exact for any paths, shared relays included. It
  conditions on the relays that occur in more than one path (``2^s`` states,
  enumerated as arrays); given those, every path is independent.
- :func:`independent_security`: the textbook product formula, which assumes
  no relay is shared. It over-estimates security when one is.
- :func:`montecarlo_security`: samples compromised sets, vectorised and
  seeded, and reports a 95% Wilson confidence interval.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidRequest, SecurityError

Path = Sequence[int]
Segments = Sequence[Sequence[Path]]

#: Largest number of shared relays :func:`exact_security` enumerates (2^s states).
MAX_SHARED_RELAYS = 22


def _clauses(p: np.ndarray, segments: Segments, chain: Sequence[int]) -> list[list[frozenset]]:
    """Segments as lists of relay sets (risky relays only, p < 1); the chain
    becomes one more single-path segment."""
    out = [[frozenset(v for v in path[1:-1] if p[v] < 1.0) for path in seg] for seg in segments]
    risky_chain = frozenset(v for v in chain if p[v] < 1.0)
    if risky_chain:
        out.append([risky_chain])
    return out


def independent_security(p: np.ndarray, segments: Segments, chain: Sequence[int] = ()) -> float:
    """Textbook security: ``prod_j (1 - prod_P (1 - Psec(P))) * prod_chain p``.

    Exact only when no relay is shared between paths (MODEL.md section 2).

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments : list of lists of paths
        Node-index paths per segment, ends included.
    chain : list of int
        Interior segment nodes (they relay the global key).

    Returns
    -------
    float
        Probability in [0, 1]; 0 when some segment has no path.
    """
    if not segments:
        return 0.0
    total = 1.0
    for seg in _clauses(p, segments, chain):
        miss = 1.0
        for relays in seg:
            miss *= 1.0 - float(np.prod([p[v] for v in relays])) if relays else 0.0
        total *= 1.0 - miss
    return total


def exact_security(
    p: np.ndarray,
    segments: Segments,
    chain: Sequence[int] = (),
    *,
    max_shared: int = MAX_SHARED_RELAYS,
) -> float:
    """Exact probability that the global key stays secret.

    Conditions on the ``s`` relays that occur in more than one path (every
    one of the ``2^s`` states at once, as arrays); given a state, the paths
    are independent and the textbook formula is exact.

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments : list of lists of paths
        Node-index paths per segment, ends included.
    chain : list of int
        Interior segment nodes (they relay the global key).
    max_shared : int
        Refuse more shared relays than this (cost grows as ``2^s``).

    Returns
    -------
    float
        Probability in [0, 1]; 0 when some segment has no path.

    Raises
    ------
    SecurityError
        When more than ``max_shared`` relays are shared.

    Examples
    --------
    Two paths through one shared relay 1 (p = 0.5) and private relays 2, 3
    (p = 0.5): secret iff 1 is safe and 2 or 3 is, ``0.5 * 0.75``.

    >>> import numpy as np
    >>> p = np.array([1, .5, .5, .5, 1])
    >>> exact_security(p, [[[0, 1, 2, 4], [0, 1, 3, 4]]])
    0.375
    >>> independent_security(p, [[[0, 1, 2, 4], [0, 1, 3, 4]]])
    0.4375
    """
    if not segments or any(len(seg) == 0 for seg in segments):
        return 0.0
    clauses = _clauses(p, segments, chain)
    counts = Counter(v for seg in clauses for relays in seg for v in relays)
    shared = sorted(v for v, c in counts.items() if c > 1)
    s = len(shared)
    if s == 0:
        return independent_security(p, segments, chain)
    if s > max_shared:
        raise SecurityError(
            f"exact security: {s} relays are shared between paths (limit {max_shared}); use the montecarlo evaluator"
        )
    bit = {v: k for k, v in enumerate(shared)}
    states = np.arange(1 << s, dtype=np.int64)  # bit k set: shared relay k is secure
    weight = np.ones(states.size)
    for k, v in enumerate(shared):
        on = (states >> k) & 1
        weight *= np.where(on == 1, p[v], 1.0 - p[v])
    total = weight
    for seg in clauses:
        miss = np.ones(states.size)
        for relays in seg:
            q = math.prod(float(p[v]) for v in relays if v not in bit)
            mask = sum(1 << bit[v] for v in relays if v in bit)
            alive = (states & mask) == mask
            miss = miss * np.where(alive, 1.0 - q, 1.0)
        total = total * (1.0 - miss)
    return float(min(1.0, max(0.0, total.sum())))


@dataclass(frozen=True)
class SecurityEstimate:
    """A Monte Carlo estimate of the global key's security.

    Attributes
    ----------
    value : float
        Fraction of sampled compromise states in which the key stays secret.
    ci_low, ci_high : float
        95% Wilson score interval.
    samples : int
        Number of sampled compromise states.
    seed : int
        Seed of ``numpy.random.default_rng`` that drew them.
    """

    value: float
    ci_low: float
    ci_high: float
    samples: int
    seed: int

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.ci_low, self.ci_high], "samples": self.samples, "seed": self.seed}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    phat = successes / n
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def montecarlo_security(
    p: np.ndarray,
    segments: Segments,
    chain: Sequence[int] = (),
    *,
    samples: int = 100_000,
    seed: int = 0,
    chunk: int = 1 << 16,
) -> SecurityEstimate:
    """Estimate the security by sampling compromise states (vectorised).

    Each sample draws every relevant relay's state at once; a path survives
    when none of its relays is compromised (a matrix product with the
    path-relay incidence matrix), a segment when one of its paths survives.

    Parameters
    ----------
    p : array of float
        Security probability of every node, by index.
    segments, chain
        As for :func:`exact_security`.
    samples : int
        Number of compromise states to draw.
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same estimate.
    chunk : int
        Samples drawn per block (bounds memory).
    """
    if samples <= 0:
        raise InvalidRequest(f"montecarlo: samples={samples} must be positive")
    if not segments or any(len(seg) == 0 for seg in segments):
        lo, hi = wilson_interval(0, samples)
        return SecurityEstimate(0.0, lo, hi, samples, seed)
    clauses = _clauses(p, segments, chain)
    relays = sorted({v for seg in clauses for r in seg for v in r})
    col = {v: k for k, v in enumerate(relays)}
    paths = [r for seg in clauses for r in seg]
    seg_of = np.repeat(np.arange(len(clauses)), [len(seg) for seg in clauses])
    inc = np.zeros((max(len(relays), 1), len(paths)), dtype=np.float32)
    for j, r in enumerate(paths):
        for v in r:
            inc[col[v], j] = 1.0
    prob = np.array([p[v] for v in relays], dtype=np.float64)
    rng = np.random.default_rng(seed)
    secret = 0
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        if relays:
            compromised = (rng.random((m, len(relays))) >= prob).astype(np.float32)
            alive = (compromised @ inc) == 0.0
        else:
            alive = np.ones((m, len(paths)), dtype=bool)
        seg_ok = np.ones(m, dtype=bool)
        for j in range(len(clauses)):
            seg_ok &= alive[:, seg_of == j].any(axis=1)
        secret += int(seg_ok.sum())
        done += m
    lo, hi = wilson_interval(secret, samples)
    return SecurityEstimate(secret / samples, lo, hi, samples, seed)


#: Name -> evaluator returning a float probability.
EVALUATORS = {
    "exact": exact_security,
    "independent": independent_security,
    "montecarlo": lambda p, segments, chain=(), **kw: montecarlo_security(p, segments, chain, **kw).value,
}
