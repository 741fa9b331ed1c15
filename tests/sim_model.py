"""An independent SimPy model of the time-dynamic dynamics (docs/model.md section 9).

Written from the model's text, not from :mod:`qkdseg.sim.engine`: plain Python
integers per link, SimPy processes for arrivals, expiries and retries, no
array bookkeeping, no :class:`~qkdseg.keys.levels.LinkLevels`, no route cache.
It shares only the static algorithms under test elsewhere (``route_indices``
and ``reconstruct``). ``tests/test_sim.py`` checks that the engine agrees with
it request by request.

The model:

- link ``k`` holds ``level_k(t) = min(pool_k, level_k(t0) + floor(rate_k t) - floor(rate_k t0))``
  bits between changes; pools start full;
- a request (``B`` bits, level ``eps``) is routed on the links holding at
  least ``B`` bits, reconstructed at ``eps`` with ``B``-bit pieces; served if
  there is a route with at least one key and each link holds ``B`` per path
  through it, which is then debited;
- otherwise, with ``ttl > 0``, it waits: every waiting request is retried in
  arrival order at each instant some link's level reaches the key size of a
  waiting request, and a request still waiting ``ttl`` seconds after its
  arrival is blocked (at one instant: retries before expiries before arrivals).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import simpy

from qkdseg.api import route_indices
from qkdseg.reconstruction import reconstruct
from qkdseg.routing import get_algorithm


class SimpyModel:
    def __init__(self, network, trace, algorithm, *, ttl=0.0, rate_bps=100_000.0, scheme="paper"):
        self.arrays = network.arrays
        a = self.arrays
        self.trace = trace  # list of (t, src, dst, key_bits, epsilon, seed)
        self.algorithm = algorithm
        self.seeded = "seed" in get_algorithm(algorithm).options
        self.ttl = float(ttl)
        self.scheme = scheme
        self.cap = [int(x) for x in a.pool_bits]
        self.rate = [float(rate_bps)] * len(self.cap)
        idx = a.index
        for u, v, data in network.graph.edges(data=True):
            if data.get("rate_bps") is not None:
                self.rate[self._link(idx[u], idx[v])] = float(data["rate_bps"])
        self.level = list(self.cap)  # at self.anchor
        self.anchor = 0.0
        self.debited = 0
        self.waiting: list[int] = []
        self.result: dict[int, dict] = {}
        self.env = simpy.Environment()
        self.changed = self.env.event()

    def _link(self, u, v):
        a = self.arrays
        for k in range(len(a.edge_u)):
            if {int(a.edge_u[k]), int(a.edge_v[k])} == {u, v}:
                return k
        raise KeyError((u, v))

    # -- pools ---------------------------------------------------------------------
    def advance(self, t):
        if t <= self.anchor:
            return
        for k in range(len(self.level)):
            got = math.floor(self.rate[k] * t) - math.floor(self.rate[k] * self.anchor)
            self.level[k] = min(self.cap[k], self.level[k] + int(got))
        self.anchor = t

    def next_crossing(self):
        best = math.inf
        for bits in {self.trace[j][3] for j in self.waiting}:
            for k in range(len(self.level)):
                if self.level[k] >= bits or self.cap[k] < bits or self.rate[k] <= 0:
                    continue
                target = bits - self.level[k] + math.floor(self.rate[k] * self.anchor)
                t = target / self.rate[k]
                while math.floor(self.rate[k] * t) < target:
                    t = math.nextafter(t, math.inf)
                best = min(best, t)
        return best

    # -- one try -------------------------------------------------------------------
    def attempt(self, j, t):
        _, s, d, bits, eps, seed = self.trace[j]
        a = self.arrays
        view = dataclasses.replace(a, pool_bits=np.array(self.level, dtype=np.int64))
        view.__dict__["capacity_bits"] = a.pool_bits  # the full pools: a pool-aware router reads the share left
        opts = {"seed": int(seed)} if self.seeded else {}
        r = route_indices(view, s, d, self.algorithm, block_bits=bits, **opts)
        if r.blocked:
            return False
        segs = [[list(p) for p in seg] for seg in r.index_paths]
        chain = [seg[0][0] for seg in segs[1:]]
        rec = reconstruct(self.scheme, a.p, segs, chain, eps, bits)
        if rec.n_keys == 0:
            return False
        need: dict[int, int] = {}
        for seg in segs:
            for p in seg:
                for x, y in zip(p, p[1:]):
                    k = self._link(x, y)
                    need[k] = need.get(k, 0) + bits
        if any(self.level[k] < b for k, b in need.items()):
            return False
        for k, b in need.items():
            self.level[k] -= b
            self.debited += b
        self.result[j] = {"outcome": "served", "end_time": t, "consumed_bits": sum(need.values()),
                          "security": rec.global_keys[0].security, "hops": r.hops}
        return True

    def notify(self):
        old, self.changed = self.changed, self.env.event()
        old.succeed()

    # -- processes -----------------------------------------------------------------
    def arrivals(self):
        for j, (t, *_rest) in enumerate(self.trace):
            yield self.env.timeout(t - self.env.now)
            # arrivals after retries and expiries of the same instant
            yield self.env.timeout(0)
            self.advance(t)
            if self.attempt(j, t):
                self.notify()
                continue
            if self.ttl > 0:
                self.waiting.append(j)
                self.env.process(self.expiry(j, t + self.ttl))
                self.notify()
            else:
                self.result[j] = {"outcome": "blocked", "end_time": t}

    def expiry(self, j, t_end):
        yield self.env.timeout(t_end - self.env.now)
        if j in self.waiting:
            self.waiting.remove(j)
            self.result[j] = {"outcome": "blocked", "end_time": t_end}
            self.notify()

    def retrier(self):
        while True:
            t_next = self.next_crossing()
            wake = self.env.timeout(t_next - self.env.now, value="crossing") if t_next < math.inf else None
            events = [self.changed] + ([wake] if wake is not None else [])
            fired = yield self.env.any_of(events)
            if wake is not None and wake in fired and self.changed not in fired:
                self.advance(t_next)
                for j in list(self.waiting):
                    if self.attempt(j, t_next):
                        self.waiting.remove(j)

    def run(self):
        self.env.process(self.arrivals())
        self.env.process(self.retrier())
        horizon = (self.trace[-1][0] if self.trace else 0.0) + self.ttl + 1.0
        self.env.run(until=horizon)
        return self.result
