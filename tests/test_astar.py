"""The compiled round-robin searches with A* lower bounds: the same paths as
the plain-Dijkstra Python reference, on networks whose relays have mixed p
(exact ties, p = 0 relays, free trusted relays) and on a spatially numbered
large network."""

import numpy as np
import pytest

from qkdseg import _kernels
from qkdseg.routing.smr import round_robin_paths, smr
from qkdseg.topology import waxman, waxman_large

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba not installed")


def _mixed(seed):
    rng = np.random.default_rng(seed)
    base = waxman(60, trusted=int(rng.integers(0, 12)), p=0.8, alpha=0.2, seed=seed)
    upd = {v: {"p": float(rng.choice([0.0, 0.5, 0.7, 0.8, 0.8, 0.9, 1.0]))} for v in base.nodes if not base.is_trusted(v)}
    return base.with_nodes(upd)


@pytest.mark.parametrize("seed", range(6))
def test_round_robin_astar_matches_reference(seed):
    """Unlimited round-robins over 1-4 segments, masks random: path for path."""
    a = _mixed(seed).arrays
    rng = np.random.default_rng(500 + seed)
    for _ in range(25):
        nodes = [int(x) for x in rng.choice(a.n_nodes, int(rng.integers(2, 6)), replace=False)]
        rn = rng.random(a.n_nodes) < rng.uniform(0, 0.2)
        rl = rng.random(a.n_links) < rng.uniform(0, 0.2)
        kw = dict(removed_nodes=rn, removed_links=rl)
        assert round_robin_paths(a, nodes, kernel="numba", **kw) == round_robin_paths(a, nodes, kernel="python", **kw)


def test_smr_on_large_spatial_network_matches_reference():
    a = waxman_large(3000, seed=5).arrays
    rng = np.random.default_rng(5)
    for _ in range(6):
        s, t = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
        assert smr(a, s, t, kernel="numba") == smr(a, s, t, kernel="python")
