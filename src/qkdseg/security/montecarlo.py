"""The Monte Carlo estimate of a route's security, with its 95% Wilson confidence interval.

Compromise states are sampled, vectorised and seeded: every relevant relay's
state at once per sample, bit-packed, 64 relays a word, and tested against
each path's relay mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from .clauses import Segments, _checked, _clauses


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
    when none of its relays is compromised (the states are bit-packed, 64
    relays a word, and tested against each path's relay mask), a segment
    when one of its paths survives.

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
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 0 < samples <= 10**12:
        raise InvalidRequest(f"montecarlo: samples={samples!r} must be a positive whole number (at most 10**12)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidRequest(f"montecarlo: seed={seed!r} must be a non-negative whole number")
    p = _checked(p, segments, chain)
    if not segments or any(len(seg) == 0 for seg in segments):
        lo, hi = wilson_interval(0, samples)
        return SecurityEstimate(0.0, lo, hi, samples, seed)
    clauses, _ = _clauses(p, segments, chain)
    relays = sorted({v for seg in clauses for r in seg for v in r})
    path_masks, clause_paths = _path_masks(clauses, relays)
    prob = np.array([p[v] for v in relays], dtype=np.float64)
    rng = np.random.default_rng(seed)
    secret = 0
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        seg_ok = np.ones(m, dtype=bool)
        if relays:
            compromised = rng.random((m, len(relays))) >= prob
            seg_ok &= _clauses_kept(compromised, path_masks, clause_paths)
        secret += int(seg_ok.sum())
        done += m
    lo, hi = wilson_interval(secret, samples)
    return SecurityEstimate(secret / samples, lo, hi, samples, seed)


def _path_masks(clauses: list[list[tuple]], relays: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every path's relay mask, bit-packed (``(paths, words)``: relay ``relays[k]`` is bit ``k % 64`` of word
    ``k // 64``), and each clause's rows in it."""
    col = {v: k for k, v in enumerate(relays)}
    paths = [r for seg in clauses for r in seg]
    seg_of = np.repeat(np.arange(len(clauses)), [len(seg) for seg in clauses])
    # bit-packed: each sample's compromised relays become ceil(R/64) words;
    # a path is alive iff its relay mask meets none of them
    words = max(1, (len(relays) + 63) // 64)
    path_masks = np.zeros((len(paths), words), dtype=np.uint64)
    for j, r in enumerate(paths):
        for v in r:
            k = col[v]
            path_masks[j, k // 64] |= np.uint64(1) << np.uint64(k % 64)
    clause_paths = [np.flatnonzero(seg_of == j) for j in range(len(clauses))]
    return path_masks, clause_paths


def _clauses_kept(compromised: np.ndarray, path_masks: np.ndarray, clause_paths: list[np.ndarray]) -> np.ndarray:
    """Per sample (a row of ``compromised``, one column per relay): whether every clause keeps a path that
    meets no compromised relay."""
    m = compromised.shape[0]
    words = path_masks.shape[1]
    packed = np.packbits(compromised, axis=1, bitorder="little")
    pad = words * 8 - packed.shape[1]
    if pad:
        packed = np.concatenate([packed, np.zeros((m, pad), dtype=np.uint8)], axis=1)
    bits = packed.view("<u8")  # (m, words): relay k is bit k % 64 of word k // 64
    seg_ok = np.ones(m, dtype=bool)
    for idx in clause_paths:
        ok = np.zeros(m, dtype=bool)
        for j in idx.tolist():
            hit = np.zeros(m, dtype=bool)
            for w in range(words):
                if path_masks[j, w]:
                    hit |= (bits[:, w] & path_masks[j, w]) != 0
            ok |= ~hit
        seg_ok &= ok
    return seg_ok
