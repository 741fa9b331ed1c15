"""Incremental evaluation of a placement objective (docs/placement.md).

:class:`Engine` holds the current placement (the network's own trusted
relays plus the nodes added so far, each made trusted with ``p = 1``), the
per-demand values, and per demand three node masks recorded while routing
it (:mod:`qkdseg.placement._kernels`):

- ``rel[i, v]``: making ``v`` trusted may change demand ``i``'s route;
- ``touch[i, v]``: ``v``'s cost enters demand ``i``'s record (``rel`` is a
  subset); adding ``v`` re-records exactly these demands;
- ``relm[i, u]``: making the trusted ``u`` untrusted again may change
  demand ``i``'s route.

So a candidate is evaluated only on the demands it can change (the rest
keep their cached values), and every evaluation runs the compiled SMR of
the core. Demands that meet a shared risky relay (possible only when the
network has trusted relays with ``p < 1``) are evaluated by
:func:`qkdseg.api.route_indices` and treated as changeable by every node.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import _kernels as core_kernels
from ..api import route_indices
from ..errors import InvalidRequest
from ..network import Network
from ..reconstruction.paper import paper_key_counts
from ..routing.smr import STRICT_MARGIN
from . import _kernels as K
from .demands import Demands

#: Objectives (docs/placement.md): ``security`` (weighted mean exact
#: end-to-end security of SMR), ``worst`` (its minimum over the demands),
#: ``keys`` (weighted mean key length at level epsilon, bits, ``paper``).
OBJECTIVES = ("security", "worst", "keys")

#: Largest size of the three per-demand node masks together, bytes.
MAX_RECORD_BYTES = 1_500_000_000


class Engine:
    """The current placement and its cached per-demand evaluation.

    Parameters
    ----------
    network : Network
    demands : Demands
    objective : {"security", "worst", "keys"}
    epsilon : float
        Security level of the ``keys`` objective (probability).
    """

    def __init__(self, network: Network, demands: Demands, objective: str = "security", epsilon: float = 0.9):
        if objective not in OBJECTIVES:
            raise InvalidRequest(f"unknown objective {objective!r} (use {', '.join(OBJECTIVES)})")
        self.network = network
        a = network.arrays
        self.arrays = a
        self.n = a.n_nodes
        self.objective = objective
        self.epsilon = float(epsilon)
        self.demands = demands
        self.src, self.dst = demands.src, demands.dst
        self.weight = demands.weight / demands.weight.sum()
        self.rl0 = a.pool_bits <= 0
        self.cost = a.cost.copy()
        self.p = a.p.copy()
        self.trusted = a.trusted.copy()
        self.candidates = np.flatnonzero(~a.trusted)
        #: Every demand changes with every node: trusted relays with p < 1 (shared risky relays).
        self.dense = bool((a.trusted & (a.p < 1.0)).any())
        #: Unusable relays (p = 0) become usable when trusted: every demand may change.
        self.always = np.flatnonzero(~a.trusted & np.isinf(a.cost))
        self.use_numba = core_kernels.default_kernel() == "numba"
        #: The largest cost a candidate can shed when made trusted (bounds the record's reach).
        finite = a.cost[self.candidates][np.isfinite(a.cost[self.candidates])]
        self.cmax = float(finite.max()) if finite.size else 0.0
        P = len(demands)
        if 3 * P * self.n > MAX_RECORD_BYTES:
            raise InvalidRequest(
                f"{P} demands x {self.n} nodes need {3 * P * self.n / 1e9:.1f} GB of records "
                f"(at most {MAX_RECORD_BYTES / 1e9:.0f} GB); use fewer demands, e.g. sample:N"
            )
        self.sec = np.zeros(P)
        self.vals = np.zeros(P)
        self.ok = np.ones(P, dtype=bool)
        self.rel = np.zeros((P, self.n), dtype=bool)
        self.relm = np.zeros((P, self.n), dtype=bool)
        self.touch = np.zeros((P, self.n), dtype=bool)
        #: Demand routings spent (evaluations and records), a machine-independent cost.
        self.routings = 0
        self._trace(np.arange(P, dtype=np.int64))

    # -- values -----------------------------------------------------------------------
    def score(self, vals: np.ndarray | None = None, sec: np.ndarray | None = None) -> tuple[float, float]:
        """``(objective, tie-break)`` of per-demand values (default: the current ones).

        The tie-break is the weighted mean security for ``worst`` and ``keys``
        **[choice]**, 0 for ``security``.
        """
        vals = self.vals if vals is None else vals
        sec = self.sec if sec is None else sec
        if self.objective == "worst":
            return float(vals.min()), float(np.dot(self.weight, sec))
        if self.objective == "keys":
            return float(np.dot(self.weight, vals)), float(np.dot(self.weight, sec))
        return float(np.dot(self.weight, vals)), 0.0

    @property
    def value(self) -> float:
        return self.score()[0]

    def _arrays_with(self, cost, p, trusted):
        return replace(self.arrays, cost=cost, p=p, trusted=trusted)

    def _python_values(self, rows, cost, p, trusted) -> tuple[np.ndarray, np.ndarray]:
        """Security and objective value of demands ``rows`` by the core API."""
        arr = self._arrays_with(cost, p, trusted)
        sec = np.zeros(len(rows))
        vals = np.zeros(len(rows))
        for t, i in enumerate(rows.tolist()):
            r = route_indices(arr, int(self.src[i]), int(self.dst[i]), "smr")
            sec[t] = r.security
            if self.objective == "keys":
                vals[t] = 0.0 if r.blocked else paper_key_counts(p, r.index_paths, [arr.index[v] for v in r.segment_nodes[1:-1]],
                                                                 (self.epsilon,))[0] * r.block_bits
            else:
                vals[t] = r.security
        return sec, vals

    def _evaluate(self, rows, cost, p, trusted) -> tuple[np.ndarray, np.ndarray]:
        self.routings += len(rows)
        if self.objective == "keys" or not self.use_numba:
            return self._python_values(rows, cost, p, trusted)
        a = self.arrays
        sec, ok = K.eval_pairs_nb(a.indptr, a.indices, a.edge_of, cost, p, trusted, self.rl0, self.src, self.dst, rows, STRICT_MARGIN)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            sec[bad] = self._python_values(rows[bad], cost, p, trusted)[0]
        return sec, sec.copy()

    def _trace(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        a = self.arrays
        self.routings += len(rows)
        K.trace_pairs_nb(a.indptr, a.indices, a.edge_of, self.cost, self.p, self.trusted, self.rl0, self.src, self.dst, rows,
                         STRICT_MARGIN, self.cmax, self.sec, self.ok, self.rel, self.relm, self.touch)
        if self.dense:
            self.rel[rows] = self.relm[rows] = self.touch[rows] = True
        else:
            bad = rows[~self.ok[rows]]
            if bad.size:
                self.rel[bad] = self.relm[bad] = self.touch[bad] = True
                self.sec[bad] = self._python_values(bad, self.cost, self.p, self.trusted)[0]
            if self.always.size:
                self.rel[np.ix_(rows, self.always)] = True
                self.touch[np.ix_(rows, self.always)] = True
        if self.objective == "keys":
            self.vals[rows] = self._python_values(rows, self.cost, self.p, self.trusted)[1]
        else:
            self.vals[rows] = self.sec[rows]

    # -- moves ------------------------------------------------------------------------
    def _with(self, v: int, on: bool):
        cost, p, trusted = self.cost.copy(), self.p.copy(), self.trusted.copy()
        if on:
            cost[v], p[v], trusted[v] = 0.0, 1.0, True
        else:
            cost[v], p[v], trusted[v] = self.arrays.cost[v], self.arrays.p[v], False
        return cost, p, trusted

    def evaluate_add(self, v: int) -> tuple[float, float]:
        """Score of the current placement plus ``v`` (nothing changes).

        Only the demands ``v`` can change are routed again.
        """
        rows = np.flatnonzero(self.rel[:, v])
        if rows.size == 0:
            return self.score()
        cost, p, trusted = self._with(v, True)
        sec, vals = self._evaluate(rows, cost, p, trusted)
        new_sec = self.sec.copy()
        new_vals = self.vals.copy()
        new_sec[rows] = sec
        new_vals[rows] = vals
        return self.score(new_vals, new_sec)

    def add(self, v: int):
        """Make ``v`` trusted (``p = 1``); returns an undo record."""
        if self.trusted[v]:
            raise InvalidRequest(f"node {self.arrays.node_ids[v]!r} is already trusted")
        rows = np.flatnonzero(self.touch[:, v])
        rec = self._save(v, rows)
        self.cost, self.p, self.trusted = self._with(v, True)
        self._trace(rows)
        return rec

    def remove(self, u: int):
        """Make an added node ``u`` untrusted again (its own ``p``); returns an undo record."""
        if self.arrays.trusted[u] or not self.trusted[u]:
            raise InvalidRequest(f"node {self.arrays.node_ids[u]!r} was not added")
        rows = np.flatnonzero(self.relm[:, u])
        rec = self._save(u, rows)
        self.cost, self.p, self.trusted = self._with(u, False)
        self._trace(rows)
        return rec

    def _save(self, v, rows):
        return (v, rows, self.cost, self.p, self.trusted, self.sec[rows].copy(), self.vals[rows].copy(), self.ok[rows].copy(),
                self.rel[rows].copy(), self.relm[rows].copy(), self.touch[rows].copy())

    def undo(self, rec) -> None:
        """Restore the state before the move that returned ``rec``."""
        _v, rows, self.cost, self.p, self.trusted, sec, vals, ok, rel, relm, touch = rec
        self.sec[rows], self.vals[rows], self.ok[rows] = sec, vals, ok
        self.rel[rows], self.relm[rows], self.touch[rows] = rel, relm, touch

    def fresh_score(self) -> tuple[float, float]:
        """Score of the current placement with every demand routed again (for checks)."""
        rows = np.arange(len(self.src), dtype=np.int64)
        sec, vals = self._evaluate(rows, self.cost, self.p, self.trusted)
        return self.score(vals, sec)
