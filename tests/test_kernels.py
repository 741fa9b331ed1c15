"""The numba kernels return exactly what the pure-Python reference returns.

Seeded loops over random Waxman networks with random node and link masks,
random costs (ties included: many equal p, p = 0 relays, trusted relays of
cost 0) and random requests. Skipped where numba is not installed; then the
suite runs on the reference alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkdseg import _kernels, exact_security
from qkdseg.errors import InvalidRequest
from qkdseg.routing.paths import _exdijkstra_python, exdijkstra_indices
from qkdseg.routing.smr import round_robin_paths, select_segment_nodes, smr
from qkdseg.topology import waxman, waxman_large

needs_numba = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba not installed")


def _networks():
    """Small Waxman networks with assorted trust and p (ties on purpose)."""
    out = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(30, 70))
        net = waxman(n, trusted=int(rng.integers(0, n // 3 + 1)), p=float(rng.choice([0.5, 0.8, 0.9])), seed=seed)
        out.append(net)
    # mixed p, zero-p relays and trusted relays with p < 1
    base = waxman(40, trusted=8, p=0.8, seed=99)
    rng = np.random.default_rng(99)
    upd = {}
    for v in base.nodes:
        if not base.is_trusted(v):
            upd[v] = {"p": float(rng.choice([0.0, 0.5, 0.8, 0.8, 0.95, 1.0]))}
        else:
            upd[v] = {"p": float(rng.choice([1.0, 0.99]))}
    out.append(base.with_nodes(upd))
    return out


NETWORKS = _networks()


@needs_numba
def test_exdijkstra_same_paths_with_random_masks():
    """Single searches: numba == reference, path for path, masks and costs random."""
    checked = 0
    for k, net in enumerate(NETWORKS):
        a = net.arrays
        rng = np.random.default_rng(1000 + k)
        for _ in range(60):
            s, t = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
            rn = rng.random(a.n_nodes) < rng.uniform(0, 0.4)
            rl = rng.random(a.n_links) < rng.uniform(0, 0.4)
            cost = None
            if rng.random() < 0.3:  # integer-valued costs: many exact ties
                cost = rng.integers(0, 3, a.n_nodes).astype(float)
            want = _exdijkstra_python(a, s, t, rn, rl, cost)
            got = exdijkstra_indices(a, s, t, rn, rl, cost, kernel="numba")
            assert got == want
            assert exdijkstra_indices(a, s, t, rn, rl, cost, kernel="python") == want
            checked += want is not None
    assert checked > 300


@needs_numba
def test_round_robin_same_paths():
    """SMR step 2 on random segment chains: same paths, same order."""
    for k, net in enumerate(NETWORKS):
        a = net.arrays
        rng = np.random.default_rng(2000 + k)
        for _ in range(15):
            nodes = [int(x) for x in rng.choice(a.n_nodes, int(rng.integers(2, 5)), replace=False)]
            rn = rng.random(a.n_nodes) < 0.1
            rl = rng.random(a.n_links) < 0.1
            mp = [None, 1, 2, 3][int(rng.integers(0, 4))]
            kw = dict(max_paths=mp, removed_nodes=rn, removed_links=rl)
            rn0, rl0 = rn.copy(), rl.copy()
            want = round_robin_paths(a, nodes, kernel="python", **kw)
            assert round_robin_paths(a, nodes, kernel="numba", **kw) == want
            assert (rn == rn0).all() and (rl == rl0).all()  # the masks given are not modified


@needs_numba
@pytest.mark.parametrize("metric", ["hops", "length"])
def test_smr_same_result(metric):
    """Whole SMR requests: same segment nodes and paths under both kernels."""
    for k, net in enumerate(NETWORKS):
        a = net.arrays
        rng = np.random.default_rng(3000 + k)
        for _ in range(20):
            s, t = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
            rl = rng.random(a.n_links) < 0.05
            want = smr(a, s, t, removed_links=rl, metric=metric, kernel="python")
            assert smr(a, s, t, removed_links=rl, metric=metric, kernel="numba") == want


@needs_numba
def test_select_segment_nodes_falls_back_when_relays_are_shared():
    """Trusted relays with p < 1 can be shared; the compiled step 1 defers to the exact evaluator."""
    net = NETWORKS[-1]
    a = net.arrays
    rng = np.random.default_rng(7)
    for _ in range(40):
        s, t = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
        rn = np.zeros(a.n_nodes, dtype=bool)
        rn[[s, t]] = True
        want = select_segment_nodes(a, s, t, removed_nodes=rn, kernel="python")
        assert select_segment_nodes(a, s, t, removed_nodes=rn, kernel="numba") == want


@needs_numba
def test_large_generator_network_same_paths():
    """The KD-tree generator's networks route identically under both kernels."""
    net = waxman_large(3000, trusted=30, seed=3)
    a = net.arrays
    rng = np.random.default_rng(4)
    for _ in range(3):
        s, t = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
        assert smr(a, s, t, kernel="numba") == smr(a, s, t, kernel="python")


def test_kernel_switch(monkeypatch):
    """QKDSEG_KERNEL=python forces the reference; unknown names are refused."""
    monkeypatch.setenv("QKDSEG_KERNEL", "python")
    assert _kernels.default_kernel() == "python"
    monkeypatch.delenv("QKDSEG_KERNEL")
    assert _kernels.default_kernel() == ("numba" if _kernels.HAVE_NUMBA else "python")
    with pytest.raises(InvalidRequest):
        _kernels.resolve_kernel("cuda")


@pytest.mark.parametrize("kernel", ["python", pytest.param("numba", marks=needs_numba)])
def test_exact_security_methods_agree(monkeypatch, kernel):
    """Path-state and conditioning evaluations agree with a brute force over all compromise sets."""
    monkeypatch.setenv("QKDSEG_KERNEL", kernel)
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = 12
        p = rng.uniform(0.3, 1.0, n)
        p[[0, n - 1]] = 1.0
        segs = [
            [[0, *rng.choice(np.arange(1, n - 1), int(rng.integers(0, 4)), replace=False).tolist(), n - 1]
             for _ in range(int(rng.integers(1, 6)))]
            for _ in range(int(rng.integers(1, 3)))
        ]
        chain = rng.choice(np.arange(1, n - 1), int(rng.integers(0, 2)), replace=False).tolist()
        risky = [v for v in range(n) if p[v] < 1.0]
        brute = 0.0
        for state in range(1 << len(risky)):
            safe = {v for k, v in enumerate(risky) if (state >> k) & 1} | {v for v in range(n) if p[v] == 1.0}
            w = float(np.prod([p[v] if v in safe else 1.0 - p[v] for v in risky]))
            ok = all(c in safe for c in chain) and all(any(set(path[1:-1]) <= safe for path in seg) for seg in segs)
            brute += w if ok else 0.0
        assert exact_security(p, segs, chain) == pytest.approx(brute, abs=1e-12)


# -- the shared helpers: removing a path, and the (masked) breadth-first search -------------------------


def _helper_cases():
    """(network, arrays, rng) on a few seeded Waxman networks, trusted relays included."""
    for seed in range(6):
        net = waxman(int(30 + 5 * seed), trusted=4 + seed, p=0.8, seed=100 + seed)
        yield net, net.arrays, np.random.default_rng(seed)


def test_remove_path_marks_untrusted_relays_and_the_links_of_the_path():
    """Checked against the link list (``edge_u``/``edge_v``), not the CSR search the helper does."""
    for net, a, rng in _helper_cases():
        n, m = a.indptr.size - 1, a.edge_u.size
        link_of = {frozenset((int(u), int(v))): k for k, (u, v) in enumerate(zip(a.edge_u, a.edge_v))}
        for _ in range(10):
            s, d = (int(x) for x in rng.choice(n, 2, replace=False))
            path = exdijkstra_indices(a, s, d, np.zeros(n, dtype=bool), np.zeros(m, dtype=bool))
            if len(path) < 2:
                continue
            rn, rl = np.zeros(n, dtype=bool), np.zeros(m, dtype=bool)
            buf = np.full(len(path) + 3, -7, dtype=np.int64)  # longer than the path: only `length` entries count
            buf[: len(path)] = path
            _kernels.remove_path_nb(a.indptr, a.indices, a.edge_of, a.trusted, rn, rl, buf, len(path))
            assert set(np.flatnonzero(rn)) == {v for v in path[1:-1] if not a.trusted[v]}
            assert set(np.flatnonzero(rl)) == {link_of[frozenset((int(x), int(y)))] for x, y in zip(path, path[1:])}


def test_masked_bfs_equals_networkx_on_the_usable_subgraph():
    import networkx as nx

    for net, a, rng in _helper_cases():
        n, m = a.indptr.size - 1, a.edge_u.size
        for _ in range(5):
            usable = rng.random(n) < 0.7
            rl = rng.random(m) < 0.2
            src = int(rng.integers(n))
            g = nx.Graph()
            g.add_nodes_from(range(n))
            g.add_edges_from((int(u), int(v)) for k, (u, v) in enumerate(zip(a.edge_u, a.edge_v)) if not rl[k])
            # a walk may enter only usable nodes (the source is where it starts)
            keep = [v for v in range(n) if usable[v] or v == src]
            want = nx.single_source_shortest_path_length(g.subgraph(keep), src)
            dist, queue = np.full(n, np.inf), np.empty(n, dtype=np.int64)
            _kernels.bfs_hops_into_nb(a.indptr, a.indices, a.edge_of, usable, rl, True, src, dist, queue)
            assert {v: int(dist[v]) for v in range(n) if np.isfinite(dist[v])} == want
            # unmasked: every node and link, as bfs_hops_nb
            full = nx.single_source_shortest_path_length(nx.Graph(list(zip(a.edge_u.tolist(), a.edge_v.tolist()))), src)
            hops = _kernels.bfs_hops_nb(a.indptr, a.indices, src)
            assert {v: int(hops[v]) for v in range(n) if np.isfinite(hops[v])} == {**full, src: 0}
