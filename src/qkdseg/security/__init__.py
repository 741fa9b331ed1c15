"""Security of a set of segment paths (docs/model.md sections 2 and 5).

A route is described by its segments, each a list of paths (node-index lists,
ends included), and by its *chain*: the interior segment nodes
``t1..t(k-1)`` that relay the global key. The global key stays secret iff

    every chain node is uncompromised, and
    in every segment, at least one path has all its relays uncompromised.

Relays are the interior nodes of a path. Every node ``v`` is compromised
independently with probability ``1 - p[v]``; nodes with ``p = 1`` never are.

Three evaluators, all pure functions:

- :func:`exact_security`: exact for any paths, shared relays included. It
  conditions on the relays that occur in more than one path (``2^s`` states,
  enumerated as arrays); given those, every path is independent.
- :func:`independent_security`: the textbook product formula, which assumes
  no relay is shared. When paths of one segment share a relay it
  over-estimates security (Harris-FKG); a relay shared *between* segments
  (ANDed events) can make it under-estimate instead.
- :func:`montecarlo_security`: samples compromise states, vectorised and
  seeded, and reports a 95% Wilson confidence interval.

The modules: ``clauses`` (a route as clauses of risky relays, the argument
checks, the product formula), ``exact`` (the exact and independent
evaluators, :func:`route_security`), ``components`` (the exact security of
clauses linked by shared relays: conditioning or path states) and
``montecarlo`` (the sampled estimate) and ``threshold`` (the exact security
when each segment key is shared k-of-m, ``sharing = "threshold"``).
"""

from __future__ import annotations

from .clauses import Path, Segments
from .components import MAX_PATH_STATES
from .exact import MAX_SHARED_RELAYS, exact_security, independent_security, route_security
from .montecarlo import SecurityEstimate, montecarlo_security, wilson_interval
from .threshold import threshold_security

#: Name -> evaluator returning a float probability.
EVALUATORS = {
    "exact": exact_security,
    "independent": independent_security,
    "montecarlo": lambda p, segments, chain=(), **kw: montecarlo_security(p, segments, chain, **kw).value,
}

__all__ = [
    "EVALUATORS",
    "MAX_PATH_STATES",
    "MAX_SHARED_RELAYS",
    "Path",
    "SecurityEstimate",
    "Segments",
    "exact_security",
    "independent_security",
    "montecarlo_security",
    "route_security",
    "threshold_security",
    "wilson_interval",
]
