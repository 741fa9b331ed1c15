"""MSP's compiled walks give the Python reference's paths, draw for draw."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkdseg
from qkdseg import _kernels
from qkdseg.routing.msp import msp

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="needs numba")

NETS = [qkdseg.waxman(60, trusted=6, p=0.8, seed=s) for s in range(3)] + [qkdseg.example_network()]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(range(len(NETS))),
    st.integers(0, 2**31),
    st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]),
    st.one_of(st.none(), st.integers(1, 4)),
    st.one_of(st.none(), st.integers(1, 30)),
    st.floats(0.0, 0.3),
    st.data(),
)
def test_numba_walks_equal_the_reference(i, seed, beta, max_paths, max_steps, removed_share, data):
    a = NETS[i].arrays
    s, d = data.draw(st.lists(st.integers(0, a.n_nodes - 1), min_size=2, max_size=2, unique=True))
    rl = np.random.default_rng(seed).random(a.n_links) < removed_share
    kw = dict(seed=seed, beta=beta, max_paths=max_paths, max_steps=max_steps, removed_links=rl,
              shared_relays=data.draw(st.booleans()))
    assert msp(a, s, d, kernel="numba", **kw) == msp(a, s, d, kernel="python", **kw)


def test_shared_relays_gives_link_disjoint_paths_that_share_untrusted_relays():
    """With shared_relays only links are removed: over the seeds, paths are link-disjoint, some share an untrusted
    relay, and then the exact security is below the independence claim; without it no untrusted relay is shared."""
    from qkdseg import exact_security, independent_security

    net = NETS[0]
    a = net.arrays
    shared_seen = 0
    for seed in range(30):
        for flag in (False, True):
            _, (paths,) = msp(a, 0, 59, seed=seed, shared_relays=flag)
            links = [a.edge_index(x, y) for p in paths for x, y in zip(p, p[1:])]
            assert len(links) == len(set(links))
            relays = [v for p in paths for v in p[1:-1] if not a.trusted[v]]
            shared = len(relays) != len(set(relays))
            assert flag or not shared
            if shared:
                shared_seen += 1
                p = a.p.copy()
                p[[0, 59]] = 1.0
                assert exact_security(p, [paths]) < independent_security(p, [paths]) - 1e-12
    assert shared_seen >= 5


def test_more_uniforms_are_drawn_when_the_first_block_runs_out():
    """A walk that needs more draws than the first block extends it from the same generator."""
    from qkdseg.routing.msp import _msp_numba
    from qkdseg.routing.smr import request_masks

    a = NETS[0].arrays
    for seed in range(20):
        ref = msp(a, 0, 59, seed=seed, kernel="python")[1][0]
        rn, rl = request_masks(a, 0, 59, None)
        got = _msp_numba(a, 0, 59, rn.copy(), rl.copy(), np.random.default_rng(seed), None, 1.0, None, first_block=1)
        assert got == ref
