"""``smr-level``'s wide search (issue 39), against brute force over its documented space.

- ``segment_checker.brute_force_wide`` enumerates the space of docs/algorithms.md: every
  ordered chain of the candidate relays; per segment the ``k`` least paths by hops and by cost
  (every simple path listed and sorted), plus the full route's on the successive search's
  chain; every subset, its security by inclusion-exclusion; the product rule. The route
  returned has the least hops of that space or the successive search's, whichever is fewer:
  on small random graphs (Hypothesis) and on seeded sparse Waxman networks, where the wide
  search must also find cheaper routes and serve refused requests (so the check can fail);
- the k least paths (both kernels) equal the enumeration; the subset fronts (both kernels)
  are the same and exact; the candidates kept per network equal those computed under a
  request's masks.
"""

from __future__ import annotations

import math

import checkers
import networkx as nx
import numpy as np
import pytest
import segment_checker as chk
from hypothesis import given, settings
from hypothesis import strategies as st
from test_smr_level import small_graphs

from qkdseg import Network, route, waxman
from qkdseg.routing.level_paths import (least_paths, links_key, network_rows, pair_candidates, segment_candidates,
                                         subset_front)
from qkdseg.routing.smr import request_masks, round_robin_paths

TOL = 1e-12
LEVELS = [0.0, 0.5, 0.6, 0.8, 0.9, 0.95, 0.99]


def _check_request(net: Network, g: nx.Graph, s, d, eps: float, opts: dict, full0_of) -> tuple[int, int]:
    """One request against the brute force; returns (cheaper than successive, newly served)."""
    old = route(net, s, d, "smr-level", epsilon=eps, search="successive", **opts)
    r = route(net, s, d, "smr-level", epsilon=eps, **opts)
    idx = net.arrays.index
    si, di = idx[s], idx[d]
    relays = chk.detour_order(g, si, di)[:opts.get("candidates", 4)]
    chain0 = tuple(idx[v] for v in old.segment_nodes[1:-1])
    best = chk.brute_force_wide(g, si, di, eps, relays, opts.get("k", 3), chain0, full0_of(si, di, chain0))
    was = old.hops if not old.blocked and old.level["met"] else None
    if best is None and was is None:
        assert r.blocked or not r.level["met"]
        assert r.reconstruction.n_keys == 0
        return 0, 0
    assert r.level["met"] and r.reconstruction.n_keys >= 1
    checkers.check_paths(nx.relabel_nodes(g, dict(enumerate(net.arrays.node_ids))), r.to_dict())
    least = min(h for h in (was, None if best is None else best[0]) if h is not None)
    assert r.hops == least and (was is None or r.hops <= was)
    segs = [[[idx[v] for v in p] for p in seg.paths] for seg in r.segments]
    chain = [idx[v] for v in r.segment_nodes[1:-1]]
    assert len(set(chain)) == len(chain) and (set(chain) <= set(relays) or tuple(chain) == chain0)
    if max(len(seg) for seg in segs) <= 8:
        assert chk.exact_security(g, segs, chain) == pytest.approx(r.security, abs=1e-9)
    assert r.security >= eps - TOL
    if was is None or best[0] < was:  # the wide search's route: the most secure by the product rule at its hops
        product = math.prod(g.nodes[v]["p"] for v in chain) * math.prod(chk.union_security(g, seg) for seg in segs)
        assert product == pytest.approx(best[1], abs=1e-9) and product >= eps - TOL
    assert r.level["saved_bits"] == r.level["full_consumed_bits"] - r.consumed_bits
    return int(was is not None and r.hops < was), int(was is None)


@settings(max_examples=60, deadline=None)
@given(small_graphs(trusted_p=(1.0, 1.0, 0.9), max_nodes=10), st.sampled_from(LEVELS),
       st.sampled_from([None, 2]), st.sampled_from([1, 2, 3]), st.sampled_from([None, None, 1, 2]))
def test_wide_equals_brute_force(case, eps, max_paths, k, candidates):
    """Small graphs: the least hops of the space (or the successive search's), met, never worse."""
    g, s, d = case
    opts = {"candidates": candidates, "k": k} | ({} if max_paths is None else {"max_paths": max_paths})
    _check_request(Network(g), g, s, d, eps, opts,
                   lambda si, di, chain0: chk.round_robin(g, (si, di), [si, *chain0, di], max_paths))


def test_wide_equals_brute_force_on_sparse_waxman():
    """Seeded sparse 30-node Waxman networks (no other test uses them), 3 levels: the brute force's
    minimum on every request; the full route's paths from qkdseg's step 2 (checked against the
    brute-force step 2 in tests/test_smr_oracle.py). Cheaper routes and newly served requests occur."""
    cheaper = served = 0
    for seed in (102, 104):
        net = waxman(30, trusted=4, p=0.8, alpha=0.28, seed=seed)
        g = nx.convert_node_labels_to_integers(net.graph, ordering="default")
        a = net.arrays

        def full0_of(si, di, chain0, a=a):
            rn, rl = request_masks(a, si, di, None)
            return round_robin_paths(a, [si, *chain0, di], removed_nodes=rn, removed_links=rl)

        rng = np.random.default_rng(10_000 + seed)
        for _ in range(12):
            s, d = (a.node_ids[int(x)] for x in rng.choice(30, 2, replace=False))
            for eps in (0.5, 0.7, 0.9):
                c, n = _check_request(net, g, s, d, eps, {}, full0_of)
                cheaper, served = cheaper + c, served + n
    assert cheaper >= 3 and served >= 1


@pytest.mark.parametrize("kernel", ["python", "numba"])
def test_least_paths_are_the_enumerations(kernel):
    """Yen's k least paths by (hops, cost, reversed nodes) and by (cost, hops, reversed nodes):
    those of the enumeration of every simple path, ties included (p from a small set)."""
    rng = np.random.default_rng(5)
    checked = 0
    for trial in range(30):
        n = int(rng.integers(5, 11))
        g = nx.gnm_random_graph(n, int(rng.integers(n, 2 * n + 1)), seed=trial)
        for v in g.nodes:
            g.nodes[v]["trusted"] = bool(rng.random() < 0.2)
            g.nodes[v]["p"] = 1.0 if g.nodes[v]["trusted"] else float(rng.choice([0.5, 0.8, 0.8, 0.9, 1.0, 0.0]))
        if not nx.is_connected(g):
            continue
        rows = network_rows(Network(g).arrays, kernel)
        s, d = (int(x) for x in rng.choice(n, 2, replace=False))
        rn, rl = request_masks(rows.arrays, s, d, None)
        for u, v in [(s, d), (d, s)] + [(s, int(x)) for x in rng.choice(n, 2)]:
            if u == v:
                continue
            for k in (1, 3, 5):
                for by_hops in (True, False):
                    assert least_paths(rows, rn, rl, u, v, k, by_hops) == chk.least_paths(g, s, d, u, v, k, by_hops)
                    checked += 1
    assert checked > 300


def test_subset_fronts_are_exact_and_the_kernels_agree():
    """Fronts of overlapping paths: numba's and numpy's identical; every entry the most secure
    subset at its hops (inclusion-exclusion over the paths), securities strictly increasing."""
    rng = np.random.default_rng(7)
    for trial in range(25):
        n = int(rng.integers(6, 12))
        g = nx.gnm_random_graph(n, 2 * n, seed=100 + trial)
        for v in g.nodes:
            g.nodes[v]["trusted"] = False
            g.nodes[v]["p"] = float(rng.choice([0.5, 0.7, 0.9, 0.99, 1.0]))
        if not nx.is_connected(g):
            continue
        a = Network(g).arrays
        paths = [list(q) for q in nx.shortest_simple_paths(g, 0, n - 1)][:int(rng.integers(1, 8))]
        front = subset_front(a.p, paths, "numba")
        assert front == subset_front(a.p, paths, "python")
        best: dict[int, float] = {}
        for r in range(1, len(paths) + 1):
            for sub in __import__("itertools").combinations(range(len(paths)), r):
                h = sum(len(paths[i]) - 1 for i in sub)
                best[h] = max(best.get(h, -1.0), chk.union_security(g, [paths[i] for i in sub]))
        want, last = [], -1.0
        for h in sorted(best):
            if best[h] > last + 1e-12:
                want.append((h, best[h]))
                last = best[h]
        assert [(h, pytest.approx(sec, abs=1e-12)) for h, sec, _ in front] == want
        for h, sec, mask in front:
            sub = [paths[i] for i in range(len(paths)) if mask >> i & 1]
            assert sum(len(q) - 1 for q in sub) == h and chk.union_security(g, sub) == pytest.approx(sec, abs=1e-12)


def test_kept_candidates_are_those_under_the_masks():
    """A segment's candidates kept per network (per set of removed links) are used only when the
    request may use them all: they equal the candidates computed under its masks."""
    a = waxman(60, trusted=8, p=0.8, seed=23).arrays
    rows = network_rows(a, "numba")
    rng = np.random.default_rng(23)
    trusted = [int(v) for v in np.flatnonzero(a.trusted)]
    differ = 0
    removed = [rng.random(a.n_links) < 0.1 for _ in range(3)] + [np.zeros(a.n_links, dtype=bool)]
    for i in range(60):
        s, d = (int(x) for x in rng.choice(a.n_nodes, 2, replace=False))
        rl = removed[i % 4].copy()
        rn, rl = request_masks(a, s, d, rl)
        for u, v in [(s, d), (s, trusted[i % 8]), (trusted[(i + 1) % 8], d), (trusted[i % 8], trusted[(i + 3) % 8])]:
            if u == v:
                continue
            want = segment_candidates(rows, rn, rl, u, v, 3)
            assert pair_candidates(rows, s, d, rn, rl, links_key(rl), u, v, 3).paths == want
            differ += want != segment_candidates(rows, np.zeros_like(rn), np.zeros_like(rl), u, v, 3)
    assert differ > 5
