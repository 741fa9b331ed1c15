"""Relays that fail during a run (``relay_failure``; issue 40, docs/model.md section 9).

With ``relay_failure = P > 0`` every relay of a run (every node of its route
but the two ends: the paths' relays and the segment nodes) fails, on its
own, with probability ``P``. The draws come from the request's recorded seed
(``requests.parquet``'s ``seed``) and its try number:
``numpy.random.default_rng([seed, 4, try]).random(n_nodes) < P``, one draw per
node of the network whether or not the route passes it, so that runs of
different schemes on the same trace see the same failed nodes (common
random numbers: XOR and threshold sharing are paired draw by draw).

A path is lost when one of its relays failed. A global key survives when no
segment node failed and, in each of its parts, at most ``T`` of the part's
paths are lost (``T = 0`` under XOR: every piece is needed; ``T`` under
threshold sharing, where ``k = m - T`` shares rebuild the part). The request
takes the strongest surviving key (its security is the request's). A run in
which no key survives has spent its bits all the same: its links are debited
and its request is blocked with reason ``failed`` **[choice: not retried,
even with a ttl: the run took its key from the pools, and a retry would be a
new run, which a real key service would start as a new request]**.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest


def check_relay_failure(value: object) -> float:
    """``value`` as a probability in ``[0, 1]``, or :class:`InvalidRequest` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= 1.0:
        raise InvalidRequest(f"relay_failure={value!r} must be a probability in [0, 1] (each relay of a run fails "
                             "with it)")
    return float(value)


def failure_plan(segs: list, rec) -> tuple:
    """What decides a run's survival: ``(segment nodes between the ends, each segment's paths' relays, each
    global key's parts as (segment, path indices), each global key's security)``, node indices."""
    chain = np.asarray([seg[0][0] for seg in segs[1:]], dtype=np.int64)
    relays = [[np.asarray(p[1:-1], dtype=np.int64) for p in seg] for seg in segs]
    keys = [tuple((part.segment, part.paths) for part in key.parts) for key in rec.global_keys]
    return chain, relays, keys, [key.security for key in rec.global_keys]


def failed_nodes(seed: int, attempt: int, n_nodes: int, prob: float) -> np.ndarray:
    """The nodes failed during try ``attempt`` of the request with recorded seed ``seed`` (a boolean mask)."""
    return np.random.default_rng([int(seed), 4, int(attempt)]).random(n_nodes) < prob


def surviving_keys(plan: tuple, failed: np.ndarray, tolerate: int) -> list[int]:
    """The indices of the run's global keys that survive the ``failed`` nodes (module docstring).

    >>> import numpy as np
    >>> from types import SimpleNamespace as NS
    >>> rec = NS(global_keys=[NS(parts=[NS(segment=0, paths=(0, 1, 2))], security=0.9)])
    >>> plan = failure_plan([[[0, 1, 4], [0, 2, 4], [0, 3, 4]]], rec)
    >>> failed = np.zeros(5, dtype=bool); failed[2] = True
    >>> surviving_keys(plan, failed, 0), surviving_keys(plan, failed, 1)
    ([], [0])
    """
    chain, relays, keys = plan[:3]
    if chain.size and failed[chain].any():
        return []
    lost = [[bool(failed[r].any()) if r.size else False for r in seg] for seg in relays]
    return [k for k, parts in enumerate(keys) if all(sum(lost[j][i] for i in idx) <= tolerate for j, idx in parts)]
