"""paper_key_counts (the sweeps' one-pass form) equals the paper scheme."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qkdseg.reconstruction import paper, paper_key_counts


@st.composite
def routes(draw):
    n = draw(st.integers(4, 14))
    p = np.array(draw(st.lists(st.sampled_from([0.3, 0.5, 0.7, 0.8, 0.9, 1.0]), min_size=n, max_size=n)))
    segs = []
    for _ in range(draw(st.integers(1, 3))):
        seg = [[-1, *draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=3, unique=True)), -2]
               for _ in range(draw(st.integers(1, 5)))]
        segs.append(seg)
    chain = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
    return p, segs, chain


@given(routes(), st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_counts_equal_paper(route, epsilons):
    """One pass over the rounds gives paper()'s key count at every level."""
    p, segs, chain = route
    assert paper_key_counts(p, segs, chain, epsilons) == [paper(p, segs, chain, e, 8).n_keys for e in epsilons]
