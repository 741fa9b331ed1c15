"""The pools of a run and one try of a request on them (docs/model.md section 9).

Levels rise analytically with each link's rate (``floor(rate * t)`` bits by
time ``t``, capped at the pool) and fall by what a served request's route
takes. A try routes the request on the links that hold its key size, reconstructs its
global keys at its level, and serves it if every link holds what the route
takes from it. Plans are cached on the request and the set of usable links:
a hit is exactly what a new call would give.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..api import route_indices
from ..errors import InvalidRequest
from ..keys.levels import EMPTY, READY, pool_states, with_levels
from ..reconstruction import reconstruct
from ..reconstruction.xor_all import xor_all
from .failures import failed_nodes, failure_plan, surviving_keys
from .records import BLOCKED, EPSILON, FAILED, FEW_PATHS, NO_ROUTE, SERVED, SHORT

_CACHE_LIMIT = 200_000


def route_links(arrays, segs: list, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The links a relay on the paths of ``segs`` (node indices) takes key from, and the bits it takes from each
    (``bits`` per path through it)."""
    edges = [arrays.edge_index(x, y) for seg in segs for p in seg for x, y in zip(p, p[1:])]
    links, counts = np.unique(np.array(edges, dtype=np.int64), return_counts=True)
    return links, counts.astype(np.int64) * bits


class Serving:
    """Pool levels and states, and serving one request (a mixin of ``Simulation``)."""

    # -- levels ------------------------------------------------------------------------
    def _start_states(self, ready_share: float, empty_bits: int | None) -> None:
        """The READY and EMPTY thresholds of every pool, and the pools' first states (pools start full)."""
        cap = self.levels.capacity
        self.ready_bits = np.ceil(cap * float(ready_share)).astype(np.int64)
        kb = self.requests.key_bits
        self.empty_bits = int(empty_bits if empty_bits is not None else (kb.max() if len(kb) else 1))
        self.state = np.where(cap < self.empty_bits, EMPTY, READY).astype(np.int8)
        self._ready_at_least_empty = bool((self.ready_bits >= self.empty_bits).all())

    def _refill(self, t: float) -> None:
        if t > self.levels.t:
            f = np.floor(self.rate * t)
            produced = f - self._floor
            self._floor = f
            self.levels.refill(produced, t=t)

    def generated_bits(self) -> int:
        """Link bits the run has had so far: the full pools it started with plus every bit the links produced
        since (``floor(rate * t)`` per link), those lost to a full pool included (docs/model.md section 9)."""
        return int(self.levels.capacity.sum() + self._floor.sum())

    def key_utilisation(self) -> float:
        """Link bits consumed by served requests over :meth:`generated_bits` (NaN when nothing was generated)."""
        gen = self.generated_bits()
        return float(self.levels.consumed.sum()) / gen if gen > 0 else float("nan")

    def _settle_states(self, links=None) -> None:
        """Apply what refills did to the pool states (of ``links``, or all): levels only rose since."""
        if links is None:
            self.state = pool_states(self.levels.level, self.ready_bits, self.empty_bits, self.state)
        else:
            self.state[links] = pool_states(self.levels.level[links], self.ready_bits[links], self.empty_bits,
                                            self.state[links])

    def _debit(self, links: np.ndarray, need: np.ndarray) -> None:
        rb = self.ready_bits[links]
        lv = self.levels.level[links] - need
        if self._ready_at_least_empty and (lv >= rb).all():
            self.levels.debit(links, need)
            self.state[links] = READY  # at or above READY after the debit, whatever came before
            return
        self._settle_states(links)
        self.levels.debit(links, need)
        self.state[links] = pool_states(lv, rb, self.empty_bits, self.state[links])

    def _next_retry(self) -> float:
        """The next instant a link's level reaches the key size of a waiting request (inf if none)."""
        if not self._queue:
            return math.inf
        lv, cap, rate = self.levels.level, self.levels.capacity, self.rate
        best = math.inf
        for bits, count in self._queue_bits.items():
            if count <= 0:
                continue
            short = np.flatnonzero((lv < bits) & (cap >= bits) & (rate > 0))
            if not short.size:
                continue
            target = bits - lv[short] + self._floor[short]  # floor(rate * t) must reach this
            r = rate[short]
            tc = target / r
            low = np.floor(r * tc) < target
            while low.any():
                tc[low] = np.nextafter(tc[low], math.inf)
                low = np.floor(r * tc) < target
            best = min(best, float(tc.min()))
        return best

    # -- one try -------------------------------------------------------------------------
    def _route_rec(self, s: int, d: int, bits: int, eps: float, seed: int | None, level: np.ndarray) -> tuple:
        """``(route, segments, reconstruction)`` of one relay from ``s`` to ``d`` on the links holding ``bits``
        (``segments`` and the reconstruction None when there is no route)."""
        opts = dict(self.options)
        if seed is not None:
            opts["seed"] = seed
        if self._leveled:
            opts["epsilon"] = eps
        a = self.arrays
        self.stats["route_calls"] += 1
        try:
            r = route_indices(with_levels(a, level), s, d, self.algorithm, block_bits=bits, tolerate=self.tolerate,
                              **opts)
        except InvalidRequest:  # threshold sharing: a segment of m <= T paths (route() refuses it, naming it)
            if not self.tolerate:
                raise
            return None, None, None
        if r.blocked:
            return r, None, None
        segs = [[list(p) for p in seg] for seg in r.index_paths]
        chain = [seg[0][0] for seg in r.index_paths[1:]]
        if self.tolerate:
            return r, segs, xor_all(a.p, segs, chain, eps, bits, tolerate=self.tolerate)
        return r, segs, reconstruct(self.reconstruction, a.p, segs, chain, eps, bits, **self.reconstruction_options)

    def _plan(self, s: int, d: int, bits: int, eps: float, seed: int | None, level: np.ndarray) -> tuple:
        t0 = time.perf_counter()
        a = self.arrays
        r, segs, rec = self._route_rec(s, d, bits, eps, seed, level)
        if r is None:
            plan: tuple = (FEW_PATHS, None, None, 0, math.nan, math.nan, 0, 0, 0, 0, None)
        elif r.blocked:
            plan = (NO_ROUTE, None, None, 0, math.nan, math.nan, 0, 0, 0, 0, None)
        else:
            n_paths = sum(len(seg) for seg in segs)
            if rec.n_keys == 0:
                plan = (EPSILON, None, None, 0, math.nan, r.security, len(segs), n_paths, r.hops, 0, None)
            else:
                links, need = route_links(a, segs, bits)
                plan = (0, links, need, r.hops * bits, rec.global_keys[0].security,
                        r.security, len(segs), n_paths, r.hops, rec.n_keys,
                        failure_plan(segs, rec) if self.relay_failure > 0 else None)
        self.stats["routing_seconds"] += time.perf_counter() - t0
        return plan

    def _attempt(self, j: int, t: float) -> bool:
        """Try request ``j`` now (levels are at ``t``); serve it and debit, or record why not."""
        s, d, bits, eps, seed = self._rq[j]
        level = self.levels.level
        self.tries[j] += 1
        self.stats["attempts"] += 1
        if self.cache is not None:
            key = (s, d, bits, eps, seed, np.packbits(level >= bits).tobytes())
            plan = self.cache.get(key)
            if plan is None:
                if len(self.cache) >= _CACHE_LIMIT:
                    self.cache.clear()
                plan = self.cache[key] = self._plan(s, d, bits, eps, seed, level)
        else:
            plan = self._plan(s, d, bits, eps, seed, level)
        why, links, need = plan[0], plan[1], plan[2]
        if why == 0 and bool((level[links] < need).any()):
            why = SHORT
        if why:
            self.reason[j] = why
            self.route_security[j] = plan[5]
            return False
        self._debit(links, need)
        (_, _, _, self.consumed[j], self.security[j], self.route_security[j], self.segments[j], self.paths[j],
         self.hops[j], self.keys[j], failing) = plan
        self.end_time[j] = t
        if failing is not None:  # relay failures (sim/failures.py): the bits are spent whatever survives
            alive = surviving_keys(failing, failed_nodes(self._fail_seeds[j], self.tries[j], self.arrays.n_nodes,
                                                         self.relay_failure), self.tolerate)
            self.keys[j] = len(alive)
            if alive:
                self.security[j] = max(failing[3][k] for k in alive)
            else:
                self.security[j] = math.nan
                self.reason[j] = FAILED
                self.outcome[j] = BLOCKED
                return True  # done: a failed run is not retried
        self.reason[j] = 0
        self.outcome[j] = SERVED
        return True
