"""The small test topology of issue 40's network tests: two segments (0 -> 5 -> 10, node 5 trusted), each of four
node-disjoint one-relay paths (relays 1-4 and 6-9, p = 0.7). Used by tests/test_threshold_steps.py,
tests/test_net_threshold.py and benchmarks/threshold_net.py."""

FOUR = {"directed": False, "graph": {"name": "four4"},
        "nodes": [{"id": i, "trusted": i in (0, 5, 10), "p": 1.0 if i in (0, 5, 10) else 0.7} for i in range(11)],
        "links": [{"source": u, "target": v, "pool_bits": 4_000_000}
                  for r in (1, 2, 3, 4) for u, v in ((0, r), (r, 5))]
                 + [{"source": u, "target": v, "pool_bits": 4_000_000}
                    for r in (6, 7, 8, 9) for u, v in ((5, r), (r, 10))]}
