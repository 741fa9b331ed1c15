"""``smr-level`` returns exactly the routes it returned before its speed-up (issue 39).

``tests/smr_level_routes.json`` holds the output ``(segment nodes, paths, info)`` of
``smr-level`` on the seeded requests of :func:`cases`, written by this module's ``__main__`` on
commit 3058faf (before the wide search was made faster): several networks (the benchmark's
100-node Waxman network, one with risky trusted relays, sparse ones where the wide search finds
cheaper routes, a 1,000-node one), levels, options (``candidates``, ``exhaustive``, ``k``,
``max_paths``, ``search``, both kernels) and removed links. Every output must be the same, floats
included, on a cold start and again with the rows and candidates kept per network warm (the
requests of the first network are routed a second time in reverse order).

Regenerate only for an intended change of the routes: ``PYTHONPATH=src python tests/test_smr_level_saved.py``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np

from qkdseg import waxman
from qkdseg.routing import get_algorithm
from qkdseg.topology import waxman_large

SAVED = Path(__file__).with_name("smr_level_routes.json")
LEVELS = [0.0, 0.5, 0.8, 0.9, 0.9, 0.95, 0.99]
OPTIONS = [{}, {}, {"candidates": 3}, {"candidates": None}, {"max_paths": 2}, {"k": 1}, {"k": 2},
           {"candidates": 6, "exhaustive": 100}, {"search": "successive"}, {"k": 8}]
#: (name, generator arguments, requests, options drawn from OPTIONS?, python kernel every n-th request or 0)
NETWORKS = [
    ("bench", ("waxman", 100, dict(trusted=10, p=0.8, seed=1)), 240, True, 0),
    ("risky", ("waxman", 100, dict(trusted=10, p=0.8, trusted_p=0.9, seed=5)), 80, True, 0),
    ("sparse102", ("waxman", 30, dict(trusted=4, p=0.8, alpha=0.28, seed=102)), 60, True, 0),
    ("sparse104", ("waxman", 30, dict(trusted=4, p=0.8, alpha=0.28, seed=104)), 60, True, 0),
    ("rich", ("waxman", 80, dict(trusted=20, p=0.8, seed=9)), 60, True, 0),
    ("python", ("waxman", 60, dict(trusted=8, p=0.8, seed=3)), 24, True, 2),
    ("large", ("waxman_large", 1000, dict(trusted=100, p=0.8, seed=1)), 40, False, 0),
]


@functools.lru_cache(maxsize=None)
def network(name: str):
    kind, n, kw = next(spec for nm, spec, *_ in NETWORKS if nm == name)
    return (waxman if kind == "waxman" else waxman_large)(n, **kw).arrays


def cases() -> list[tuple]:
    """``(network, source, target, epsilon, options, remove links?)``, seeded."""
    out = []
    for j, (name, _, count, vary, python_every) in enumerate(NETWORKS):
        a = network(name)
        rng = np.random.default_rng(1000 + j)
        for i in range(count):
            s, d = (int(x) for x in rng.choice(a.n_nodes, size=2, replace=False))
            eps = LEVELS[i % len(LEVELS)] if vary else 0.9
            opts = dict(OPTIONS[(i // len(LEVELS) + i) % len(OPTIONS)]) if vary else {}
            if python_every and i % python_every == 0:
                opts["kernel"] = "python"
            out.append((name, s, d, eps, opts, vary and i % 3 == 0))
    return out


def removed_links(name: str) -> np.ndarray:
    a = network(name)
    rng = np.random.default_rng(7)
    removed = np.zeros(a.n_links, dtype=bool)
    removed[rng.choice(a.n_links, size=a.n_links // 10, replace=False)] = True
    return removed


def run(case: tuple) -> list:
    name, s, d, eps, opts, remove = case
    f = get_algorithm("smr-level").func
    nodes, paths, info = f(network(name), s, d, removed_links=removed_links(name) if remove else None,
                           epsilon=eps, **opts)
    return [[int(v) for v in nodes], [[[int(v) for v in q] for q in seg] for seg in paths],
            {"full_hops": int(info["full_hops"]), "full_security": float(info["full_security"]),
             "met": bool(info["met"])}]


def test_same_routes_as_before_the_speed_up():
    saved = json.loads(SAVED.read_text(encoding="utf-8"))
    todo = cases()
    assert len(saved) == len(todo) == sum(c for _, _, c, _, _ in NETWORKS)
    met = changed = 0
    for i, case in enumerate(todo):
        got = run(case)
        changed += got != saved[i]
        assert got == saved[i], (i, case)
        met += got[2]["met"]
    again = [i for i, case in enumerate(todo) if case[0] == "bench"]
    for i in reversed(again):  # the same requests with the kept rows and candidates warm
        assert run(todo[i]) == saved[i], (i, todo[i])
    assert changed == 0 and 0 < met < len(todo)  # met and unmet requests both occur


def test_same_routes_with_rows_per_request(monkeypatch):
    """Networks of more than ``MATRIX_NODES`` nodes give the compiled searches the rows of each
    request's ends instead of the network's matrices: the same routes (three networks' requests)."""
    from qkdseg.routing import level_paths

    monkeypatch.setattr(level_paths, "MATRIX_NODES", 0)
    monkeypatch.setattr(level_paths, "_ROWS", {})
    saved = json.loads(SAVED.read_text(encoding="utf-8"))
    checked = 0
    for i, case in enumerate(cases()):
        if case[0] in ("risky", "sparse104", "rich"):
            assert run(case) == saved[i], (i, case)
            checked += 1
    assert checked == 200 and not any(r.matrix for r in level_paths._ROWS.values())


def test_compiled_searches_equal_the_python_ones():
    """The compiled successive and wide searches (qkdseg._kernels.level_successive_nb and
    level_wide_nb) return what the Python searches return (routing/level_successive.py's evaluator,
    routing/level_wide.py's wide_search) on seeded requests: several networks, levels, ``k``,
    candidate caps and removed links, the kept candidates cold and then warm."""
    from qkdseg.routing.level_paths import network_rows
    from qkdseg.routing.level_successive import search_in_python, successive
    from qkdseg.routing.level_wide import wide_search, wide_search_compiled
    from qkdseg.routing.smr import request_masks

    found = compared = 0
    for name in ("sparse102", "risky", "rich", "bench"):
        a = network(name)
        rng = np.random.default_rng(99)
        for i in range(50):
            s, t = (int(x) for x in rng.choice(a.n_nodes, size=2, replace=False))
            eps, k, cap = LEVELS[i % len(LEVELS)], [3, 3, 2, 1, 8][i % 5], [4, 4, 3, None, 2][i % 5]
            rn, rl = request_masks(a, s, t, removed_links(name) if i % 3 == 0 else None)
            rows = network_rows(a, "numba")
            fast = successive(a, s, t, rn, rl, rows, cap, 16, None, eps, "numba")
            slow = search_in_python(a, s, t, rn, rl, rows, cap, 16, None, eps, "numba")
            assert fast[:4] == slow[:4], (name, i)
            cands, ends = fast[0], fast[6]
            chain, paths, plan = slow[1:4]
            below = np.inf if plan is None else plan[0]
            nodes = [s, *chain, t]
            extra = {(x, y): seg for x, y, seg in zip(nodes, nodes[1:], paths)}
            route = tuple(np.asarray(x, dtype=np.int64) for x in (
                chain, [v for seg in paths for q in seg for v in q], np.cumsum([0] + [len(q) for seg in paths for q in seg]),
                [j for j, seg in enumerate(paths) for _ in seg]))
            for _ in range(2):  # cold, then with the segments' candidates kept
                got = wide_search_compiled(rows, s, t, rn, rl, eps, cands, k, below, ends, route)
                assert got == wide_search(rows, s, t, rn, rl, eps, cands, k, below, extra), (name, i)
            found += got is not None
            compared += 1
    assert compared == 200 and found >= 10  # the wide search finds cheaper routes on some


if __name__ == "__main__":
    routes = [run(case) for case in cases()]
    SAVED.write_text(json.dumps(routes, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(routes)} routes to {SAVED}", file=sys.stderr)
