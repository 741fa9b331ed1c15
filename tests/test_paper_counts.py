"""paper_key_counts (the sweeps' one-pass form of the paper scheme) against an
independent count written from docs/reconstruction.md
(tests/reconstruction_checker.py: paper_key_count), and against paper()."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconstruction_checker import Net, paper_key_count
from qkdseg.reconstruction import paper, paper_key_counts

#: Few values, so that equal securities (ties in the queues) are frequent.
Q = st.sampled_from([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0])


@st.composite
def private_routes(draw):
    """Segments whose pieces each cross private relays (0 to 2 of them), and
    segment nodes with p = 1 or a relaxed 0.95 (the chain)."""
    n_seg = draw(st.integers(1, 3))
    p = [draw(st.sampled_from([1.0, 1.0, 0.95])) for _ in range(n_seg + 1)]
    p[0] = p[-1] = 1.0
    segs = []
    for j in range(n_seg):
        seg = []
        for _ in range(draw(st.integers(1, 6))):
            relays = []
            for q in draw(st.lists(Q, max_size=2)):
                p.append(q)
                relays.append(len(p) - 1)
            seg.append([j, *relays, j + 1])
        segs.append(seg)
    return np.array(p), segs, list(range(1, n_seg))


def as_net(p):
    return Net({i: {"p": float(x), "trusted": False} for i, x in enumerate(p)}, set())


@given(private_routes(), st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_counts_equal_the_independent_count(route, epsilons):
    p, segs, chain = route
    expected = [paper_key_count(as_net(p), segs, chain, e) for e in epsilons]
    assert paper_key_counts(p, segs, chain, epsilons) == expected
    assert [paper(p, segs, chain, e, 8).n_keys for e in epsilons] == expected


def test_independent_count_on_the_worked_example():
    """docs/reconstruction.md's worked example: weakest 0.45 at c = 3, 0.752
    at c = 2, 0.97412 at c = 1."""
    qs = [[0.9, 0.8, 0.5, 0.4], [0.9, 0.6, 0.5]]
    p = [1.0, 1.0, 1.0] + [q for seg in qs for q in seg]
    segs = [[[0, 3 + i, 1] for i in range(4)], [[1, 7 + i, 2] for i in range(3)]]
    p = np.array(p)
    levels = [0.4, 0.45, 0.46, 0.752, 0.76, 0.97412, 0.98]
    expected = [3, 3, 2, 2, 1, 1, 0]
    assert [paper_key_count(as_net(p), segs, [1], e) for e in levels] == expected
    assert paper_key_counts(p, segs, [1], levels) == expected


@st.composite
def shared_routes(draw):
    """Relays drawn from a small pool, so they are shared within and across segments."""
    n = draw(st.integers(4, 14))
    p = np.array(draw(st.lists(st.sampled_from([0.3, 0.5, 0.7, 0.8, 0.9, 1.0]), min_size=n, max_size=n)))
    segs = []
    for _ in range(draw(st.integers(1, 3))):
        seg = [[-1, *draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=3, unique=True)), -2]
               for _ in range(draw(st.integers(1, 5)))]
        segs.append(seg)
    chain = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
    return p, segs, chain


@given(shared_routes(), st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_counts_equal_paper_with_shared_relays(route, epsilons):
    """With shared relays (no independent count there): one pass gives paper()'s count."""
    p, segs, chain = route
    assert paper_key_counts(p, segs, chain, epsilons) == [paper(p, segs, chain, e, 8).n_keys for e in epsilons]


def test_the_independent_count_refuses_shared_relays():
    p = np.array([1.0, 0.5, 1.0])
    with pytest.raises(AssertionError, match="shared"):
        paper_key_count(as_net(p), [[[0, 1, 2], [0, 1, 2]]], [], 0.5)
