"""The level epsilon at its edge, for ``paper``, ``optimal`` and ``reuse``.

docs/reconstruction.md: a key meets the level when
``security >= epsilon - 1e-12`` (the slack absorbs floating-point rounding at
exact ties). Each case below takes a key from the worked examples of
docs/reconstruction.md whose security is the level exactly, then moves the
level up so that the key sits at ``epsilon - TOL / 2`` and
``epsilon - 0.999 * TOL`` (inside the tolerance: it meets), at exactly
``epsilon - TOL`` in floating point (it meets: the comparison is ``>=``), and
at ``epsilon - 1.001 * TOL`` (just outside: it does not), with the arithmetic
written out. The key counts are worked by hand, not taken from
the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdseg.reconstruction import optimal, paper, paper_key_counts, reuse
from test_reconstruction import instance  # segment nodes 0..k, one private relay per piece

#: docs/reconstruction.md: "security >= epsilon - 1e-12".
TOL = 1e-12

#: Where the key sits against the level: name -> (epsilon from the key's security, meets?).
def at_tolerance(sec: float) -> float:
    """The float epsilon with ``epsilon - TOL == sec`` exactly."""
    eps = sec + TOL
    while eps - TOL > sec:
        eps = math.nextafter(eps, -math.inf)
    while eps - TOL < sec:
        eps = math.nextafter(eps, math.inf)
    assert eps - TOL == sec
    return eps


EDGES = {
    "equal": (lambda s: s, True),
    "half_tolerance": (lambda s: s + TOL / 2, True),
    "just_inside_tolerance": (lambda s: s + 0.999 * TOL, True),
    "exactly_at_tolerance": (at_tolerance, True),
    "just_outside_tolerance": (lambda s: s + 1.001 * TOL, False),
}


# -- paper: the worked example of docs/reconstruction.md --------------------------
# Segment 1: a=0.9, b=0.8, c=0.5, d=0.4; segment 2: x=0.9, y=0.6, z=0.5.
# c = 3: weakest 0.45. c = 2: bcd = 1 - 0.2*0.5*0.6 = 0.94, yz = 1 - 0.5*0.4 = 0.8,
#        keys a.x = 0.81 and bcd.yz = 0.94*0.8 = 0.752: the weakest is 0.752.
# c = 1: abcd = 1 - 0.1*0.2*0.5*0.6 = 0.994, xyz = 1 - 0.1*0.4*0.5 = 0.98,
#        one key 0.994*0.98 = 0.97412.
PAPER_WEAKEST = 0.94 * 0.8


@pytest.fixture(scope="module")
def worked():
    p, segs, chain = instance([[0.9, 0.8, 0.5, 0.4], [0.9, 0.6, 0.5]])
    weakest = min(k.security for k in paper(p, segs, chain, 0.7, 8).global_keys)
    # the code's float for 0.752 is within rounding of the hand value
    assert abs(weakest - PAPER_WEAKEST) < 1e-15
    return p, segs, chain, weakest


@pytest.mark.parametrize("edge", EDGES)
def test_paper_at_the_edge(worked, edge):
    p, segs, chain, weakest = worked
    level, meets = EDGES[edge]
    eps = level(weakest)
    r = paper(p, segs, chain, eps, 8)
    if meets:
        # the key bcd.yz at 0.752 still meets: c = 2, keys 0.81 and 0.752
        assert [round(k.security, 12) for k in r.global_keys] == [0.81, 0.752]
        expected = 2
    else:
        # 0.752 < eps - TOL: c = 2 fails, c = 1 gives the one key 0.97412
        assert [round(k.security, 12) for k in r.global_keys] == [round(0.994 * 0.98, 12)]
        expected = 1
    assert r.n_keys == expected
    # the sweeps' one-pass count agrees at the same level
    assert paper_key_counts(p, segs, chain, [eps]) == [expected]


# -- optimal: "where the greedy loses" (docs/reconstruction.md) ---------------------
# One segment, pieces A = B = 0.6, C = D = 0.3. Pairing each 0.6 with a 0.3 gives
# two keys of 1 - 0.4*0.7 = 0.72. Every other two-key split has a weaker key:
# {A,B}+{C,D} -> 0.51; a single piece -> at most 0.6; so 2 keys need eps <= 0.72,
# and above it one key (all four: 1 - 0.16*0.49 = 0.9216) is the most.
PAIR = 1 - 0.4 * 0.7


@pytest.fixture(scope="module")
def greedy_loses():
    p, segs, chain = instance([[0.6, 0.6, 0.3, 0.3]])
    r = optimal(p, segs, chain, 0.7, 8)
    assert r.optimal is True and r.n_keys == 2
    sec = min(k.security for k in r.global_keys)
    assert abs(sec - PAIR) < 1e-15
    return p, segs, chain, sec


@pytest.mark.parametrize("edge", EDGES)
def test_optimal_at_the_edge(greedy_loses, edge):
    p, segs, chain, sec = greedy_loses
    level, meets = EDGES[edge]
    eps = level(sec)
    r = optimal(p, segs, chain, eps, 8)
    assert r.optimal is True
    if meets:
        assert r.n_keys == 2
        assert sorted(sorted(k.parts[0].paths) for k in r.global_keys) in ([[0, 2], [1, 3]], [[0, 3], [1, 2]])
    else:
        assert r.n_keys == 1
    # the paper's greedy, on the same levels: rounds 0.3, 0.51, 0.6, 0.9216, so 1 key either way
    assert paper(p, segs, chain, eps, 8).n_keys == 1


# -- reuse: the same pieces, every combination -----------------------------------------
# size 1: 0.6, 0.6, 0.3, 0.3                       (none reaches 0.72)
# size 2: AB = 1 - 0.4*0.4 = 0.84; AC = AD = BC = BD = 0.72; CD = 1 - 0.7*0.7 = 0.51
# size 3: ABC = ABD = 1 - 0.16*0.7 = 0.888; ACD = BCD = 1 - 0.4*0.49 = 0.804
# size 4: ABCD = 0.9216
# At eps = 0.72 (and up to the tolerance) 10 combinations meet it; just above, the
# four 0.72 pairs drop out and 6 remain. One segment: each is one global key.
@pytest.mark.parametrize("edge", EDGES)
def test_reuse_at_the_edge(greedy_loses, edge):
    p, segs, chain, sec = greedy_loses
    level, meets = EDGES[edge]
    eps = level(sec)
    r = reuse(p, segs, chain, eps, 8)
    secs = sorted(round(k.security, 12) for k in r.global_keys)
    high = [0.804, 0.804, 0.84, 0.888, 0.888, 0.9216]
    if meets:
        assert secs == [0.72] * 4 + high
    else:
        assert secs == high
    assert all(k.computational for k in r.global_keys)
    assert r.information_theoretic_bound_bits == 4 * 8


def test_the_hand_values():
    """The decimal arithmetic above, once more in floats."""
    assert math.isclose(PAPER_WEAKEST, 0.752) and math.isclose(PAIR, 0.72)
    assert math.isclose(1 - 0.16 * 0.49, 0.9216) and math.isclose(0.994 * 0.98, 0.97412)
