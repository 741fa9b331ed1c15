"""The demonstration job of ``make reproduce`` (until the evaluation lands):
every registered algorithm on the built-in example and on seeded 100-node
Waxman networks, as a table."""

from __future__ import annotations

import numpy as np

from .api import route
from .routing import ALGORITHMS

#: The algorithms that route without a requested level (smr-level needs one; the demo asks none).
FULL_ROUTE = tuple(name for name, a in ALGORITHMS.items() if "epsilon" not in a.options)
from .topology import example_network, waxman


def demo_rows(requests: int = 200, seed: int = 7, nodes: int = 100, trusted: int = 10, p: float = 0.8) -> list[dict]:
    """Mean metrics per algorithm: the example's 0 -> 7 request, then
    ``requests`` random pairs on one seeded Waxman network.

    Returns one dict per (network, algorithm) with mean security, exact and
    independent, paths, hops, consumed bits, key consumption rate and the
    blocked count. The Waxman network is ``waxman(nodes, trusted=trusted,
    p=p, seed=seed)``; the pairs come from ``default_rng(seed)``.
    """
    rows = []
    ex = example_network()
    for name in FULL_ROUTE:
        r = route(ex, 0, 7, algorithm=name)
        rows.append(
            {
                "network": "example",
                "algorithm": name,
                "requests": 1,
                "security": r.security,
                "security_independent": r.security_independent,
                "segments": len(r.segments),
                "paths": len(r.paths),
                "hops": r.hops,
                "consumed_bits": r.consumed_bits,
                "key_consumption_rate": r.key_consumption_rate,
                "blocked": int(r.blocked),
            }
        )
    net = waxman(nodes, trusted=trusted, p=p, seed=seed)
    rng = np.random.default_rng(seed)
    pairs = [tuple(rng.choice(nodes, size=2, replace=False).tolist()) for _ in range(requests)]
    for name in FULL_ROUTE:
        routes = [route(net, s, d, algorithm=name) for s, d in pairs]
        rows.append(
            {
                "network": f"waxman-{nodes}",
                "algorithm": name,
                "requests": len(routes),
                "security": float(np.mean([r.security for r in routes])),
                "security_independent": float(np.mean([r.security_independent for r in routes])),
                "segments": float(np.mean([len(r.segments) for r in routes])),
                "paths": float(np.mean([len(r.paths) for r in routes])),
                "hops": float(np.mean([r.hops for r in routes])),
                "consumed_bits": float(np.mean([r.consumed_bits for r in routes])),
                "key_consumption_rate": float(np.mean([r.key_consumption_rate for r in routes])),
                "blocked": sum(r.blocked for r in routes),
            }
        )
    return rows
