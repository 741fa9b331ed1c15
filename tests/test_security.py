"""Exact, independent and Monte Carlo security against brute force."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkers import brute_state_security
from qkdseg import SecurityError, exact_security, independent_security, montecarlo_security


@st.composite
def overlapping_routes(draw):
    """Random segments of random paths over a small relay pool, so relays are
    often shared within and across segments; random risky chain nodes."""
    n = draw(st.integers(3, 10))
    p = np.array(draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0]), min_size=n, max_size=n)))
    n_seg = draw(st.integers(1, 3))
    segments = []
    for _ in range(n_seg):
        n_paths = draw(st.integers(1, 4))
        seg = []
        for _ in range(n_paths):
            rel = draw(st.lists(st.integers(0, n - 1), max_size=4, unique=True))
            seg.append([-1, *rel, -2])  # ends are not relays; never looked at
        segments.append(seg)
    chain = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
    return p, segments, chain


@given(overlapping_routes())
def test_exact_matches_brute_force(case):
    """Exact security equals enumeration of every compromise state."""
    p, segments, chain = case
    pd = dict(enumerate(p))
    assert exact_security(p, segments, chain) == pytest.approx(brute_state_security(pd, segments, chain), abs=1e-12)


@given(overlapping_routes())
def test_independent_never_below_exact_within_a_segment(case):
    """Within one segment (XOR of pieces) shared relays only ever make the
    textbook formula optimistic (Harris-FKG). Across segments the events are
    ANDed and sharing can help, so no such order holds there."""
    p, segments, _ = case
    for seg in segments:
        assert independent_security(p, [seg]) >= exact_security(p, [seg]) - 1e-12


def test_shared_relay_strictly_below_claim():
    p = np.array([0.5, 0.5, 0.5])
    segs = [[[-1, 0, 1, -2], [-1, 0, 2, -2]]]
    assert exact_security(p, segs) == pytest.approx(0.375)
    assert independent_security(p, segs) == pytest.approx(0.4375)


def test_chain_node_must_hold():
    p = np.array([0.9, 0.5])
    # one segment, relay 0; chain node 1 (a risky trusted relay)
    assert exact_security(p, [[[-1, 0, -2]]], chain=[1]) == pytest.approx(0.45)
    # chain node also relays in a path: exact handles the dependence
    assert exact_security(p, [[[-1, 1, -2], [-1, 0, -2]]], chain=[1]) == pytest.approx(0.5)


def test_empty_and_limits():
    p = np.full(40, 0.5)
    assert exact_security(p, []) == 0.0 and exact_security(p, [[]]) == 0.0
    segs = [[[-1, *range(30), -2], [-1, *range(30), -2]]]
    with pytest.raises(SecurityError, match="30 relays are shared"):
        exact_security(p, segs)


@pytest.mark.parametrize("seed", range(6))
def test_montecarlo_within_ci(seed):
    rng = np.random.default_rng(100 + seed)
    p = rng.uniform(0.3, 1.0, 12)
    segs = [[[-1, *rng.choice(12, 3, replace=False).tolist(), -2] for _ in range(3)] for _ in range(2)]
    chain = [int(rng.integers(12))]
    est = montecarlo_security(p, segs, chain, samples=200_000, seed=seed)
    exact = exact_security(p, segs, chain)
    assert est.ci_low - 1e-3 <= exact <= est.ci_high + 1e-3
    assert abs(est.value - exact) < 4 * np.sqrt(exact * (1 - exact) / est.samples) + 1e-9


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, from its textbook formula."""
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_montecarlo_seeded_and_reported():
    p = np.array([0.5, 0.7, 0.9])
    segs = [[[-1, 0, 1, -2], [-1, 1, 2, -2]]]
    a = montecarlo_security(p, segs, samples=50_000, seed=5)
    b = montecarlo_security(p, segs, samples=50_000, seed=5)
    assert a == b and a.to_dict()["seed"] == 5 and a.samples == 50_000
    assert montecarlo_security(p, segs, samples=50_000, seed=6) != a
    # the interval is the Wilson interval of the reported count
    k = round(a.value * a.samples)
    assert k == a.value * a.samples
    assert (a.ci_low, a.ci_high) == pytest.approx(wilson_by_hand(k, a.samples), abs=1e-15)


def test_montecarlo_interval_covers_the_exact_value_at_its_rate():
    """Over R seeded repetitions the 95% interval must cover the exact value
    (relay 1 shared: 0.7 * (1 - 0.5 * 0.1) = 0.665) about 95% of the time. The
    count of covering runs is Binomial(R, 0.95) for a correct interval; it
    must fall inside that law's central 1 - 2e-4 range, which excludes the
    mean coverage of a 90% or a 99% interval."""
    from scipy.stats import binom

    p = np.array([0.5, 0.7, 0.9])
    segs = [[[-1, 0, 1, -2], [-1, 1, 2, -2]]]
    exact = exact_security(p, segs)
    assert exact == pytest.approx(0.7 * (1 - 0.5 * 0.1))
    reps, n = 1000, 500
    covered = 0
    for seed in range(reps):
        est = montecarlo_security(p, segs, samples=n, seed=seed)
        covered += est.ci_low <= exact <= est.ci_high
    lo, hi = binom.ppf(1e-4, reps, 0.95), binom.isf(1e-4, reps, 0.95)
    assert lo <= covered <= hi, (covered, lo, hi)
    # the range excludes what a 90% or a 99% interval would cover on average
    assert reps * 0.90 < lo and reps * 0.99 > hi
