"""Key supply policies in the time-dynamic simulator: on demand, fixed watermarks, adaptive (docs/model.md
section 9, "Key supply").

A :class:`SupplyRun` plays one arrival trace under one supply policy on the
pools of a :class:`~qkdseg.sim.Simulation` (same links, rates, routing and
reconstruction). Every request asks one key of its ``key_bits`` at its
``epsilon`` for its pair of end nodes; a pair's **stock** (one per unordered
pair, both directions, as in ``kms serve``) holds keys made ahead by
**refill runs**:

Every pair of the trace keeps a stock from the start, filled at once (an
adaptive one with one batch until it has seen demand).

- ``on-demand``: no stock; every request is relayed when it arrives (a relay
  on the pools as in the plain simulator) and waits the relay time; blocked
  when its route's links do not hold its key.
- ``fixed:LOW:HIGH``: a stock below LOW is refilled up to HIGH (the key
  service's ``--stock-keys LOW:HIGH``).
- ``adaptive``: LOW and the target follow the pair's demand and measured
  refill time (:mod:`qkdseg.supply`, the rule ``kms serve`` and the nodes run).

A request the stock holds a key for (security at least its ``epsilon``) takes
it at once (wait 0, a hit); otherwise it is relayed on demand (a miss). The
scheduler is the key service's (:class:`qkdseg.server.stock.Stock`): a pair
below its reorder point starts **filling**, one run at a time, each asking
``min(target - keys, block)`` keys, until the stock reaches its target; a run
that finds no route or no key above the links' reserve fails, and the pair
waits (doubling from 0.5 s to 8 s). A run relays its keys at once on the
pair's route at the stock's level: ``ceil(n / k)`` relays of ``k`` keys
each, as many as every link of the route can pay above its ``reserve``
share, debited when the run starts; its keys land one **relay time** later:
``hop_latency`` per hop along the route's segments in turn, each segment's
longest path (**[choice]**, docs/model.md). Stocked keys expire
``key_ttl`` seconds after they land, unused.

Per run: wait p50/p99 of served requests, hit rate (hits over served
requests: a request no route can serve is no policy's), served, blocked, mean
and peak stocked bits, keys expired unused, link bits consumed per served
key bit, and the bits' ledger (``refill_bits = served_from_stock_bits +
expired_bits + held_bits``: the test of conservation).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from ..supply import DEFAULT_HIT, DEFAULT_RESERVE, MIN_BATCH, Meter, check_hit
from .engine import DEFAULT_RATE_BPS, Simulation
from .records import BLOCKED, SERVED
from .serving import route_links
from .traffic import Requests

#: Milliseconds a relay takes per hop ([choice], docs/model.md section 9: the on-demand network's p50 over the
#: quick-start network's routes, about 5 hops, was 25.2 ms in issue 34's benchmark).
DEFAULT_HOP_LATENCY_MS = 5.0
#: Seconds a stocked key lives unused (kms.toml's key_ttl_s default).
DEFAULT_KEY_TTL_S = 3600.0
#: The most keys one refill run asks for (kms.toml's max_key_per_request default).
REFILL_BLOCK = 128
#: The wait after a failed run: doubling from the first to the second (seconds; the key service's).
BACKOFF_S = (0.5, 8.0)
#: The refill time an adaptive stock assumes before it has measured one (seconds; the key service's).
LEAD_PRIOR_S = 1.0

_LAND, _EXPIRE, _RETRY = 0, 1, 2


@dataclass(frozen=True)
class Supply:
    """A supply policy: ``kind`` ``on-demand``, ``fixed`` (watermarks ``low``, ``high``) or ``adaptive``."""

    kind: str
    low: int = 0
    high: int = 0

    @property
    def name(self) -> str:
        return f"fixed:{self.low}:{self.high}" if self.kind == "fixed" else self.kind


def parse_supply(text: str) -> Supply:
    """``on-demand``, ``fixed:LOW:HIGH`` or ``adaptive`` (:class:`InvalidRequest`, one line, otherwise)."""
    t = str(text).strip()
    if t in ("on-demand", "adaptive"):
        return Supply(t)
    parts = t.split(":")
    if parts[0] == "fixed":
        try:
            low, high = (int(x) for x in parts[1:])
        except ValueError:
            raise InvalidRequest(f"--supply {t!r}: fixed needs LOW:HIGH, whole numbers of keys (fixed:16:64)") from None
        if not 0 <= low <= high or high < 1 or high > 100_000:
            raise InvalidRequest(f"--supply {t!r}: needs 0 <= LOW <= HIGH, 1 <= HIGH <= 100000")
        return Supply("fixed", low, high)
    raise InvalidRequest(f"--supply {t!r}: use on-demand, fixed:LOW:HIGH or adaptive")


def parse_supplies(text: str) -> tuple[Supply, ...]:
    """A comma-separated list of policies (distinct)."""
    items = [x for x in str(text).split(",")]
    if any(not x.strip() for x in items):
        raise InvalidRequest(f"--supply {text!r}: an empty item (policies separated by commas)")
    out = tuple(parse_supply(x) for x in items)
    names = [s.name for s in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidRequest(f"--supply {text}: {', '.join(twice)} given more than once")
    return out


def restrict_pairs(requests: Requests, n_nodes: int, k: int, seed: int) -> Requests:
    """The trace with its end nodes mapped onto ``k`` unordered pairs of distinct nodes drawn by ``seed`` (stream
    ``[seed, 5]``): each of the trace's ordered pairs is mapped, at its first request, to one of them (stream
    ``[seed, 6]``), so a PPBP burst keeps one pair. The stocked study's SAE pairs."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_nodes * (n_nodes - 1) // 2:
        raise InvalidRequest(f"--supply-pairs {k!r}: must be 1..{n_nodes * (n_nodes - 1) // 2} on {n_nodes} nodes")
    rng = np.random.default_rng([seed, 5])
    chosen: list[tuple[int, int]] = []
    seen = set()
    while len(chosen) < k:
        a, b = (int(x) for x in rng.choice(n_nodes, 2, replace=False))
        if (min(a, b), max(a, b)) not in seen:
            seen.add((min(a, b), max(a, b)))
            chosen.append((a, b))
    pick = np.random.default_rng([seed, 6])
    where: dict = {}
    src, dst = requests.src.copy(), requests.dst.copy()
    for i, pair in enumerate(zip(requests.src.tolist(), requests.dst.tolist())):
        if pair not in where:
            where[pair] = chosen[int(pick.integers(k))]
        src[i], dst[i] = where[pair]
    return Requests(requests.t, src, dst, requests.key_bits, requests.epsilon, requests.seed, requests.duration)


class _Stock:
    """One pair's stock: its keys ``[expires, security]`` (oldest first) and its scheduler's state."""

    def __init__(self, meter: Meter | None) -> None:
        self.keys: deque = deque()
        self.meter = meter
        self.filling = self.refilling = False
        self.wait_s = self.next_try = 0.0
        self.first_try: float | None = None
        self.low = self.target = 0
        self.history: list = []  # (time, target) at each change of the target


class SupplyRun:
    """One supply policy on one trace (module docstring). ``run()``, then :meth:`summary`."""

    def __init__(self, network, requests: Requests, supply: Supply, algorithm: str = "smr", *,
                 hop_latency_ms: float = DEFAULT_HOP_LATENCY_MS, hit: float = DEFAULT_HIT,
                 key_ttl: float = DEFAULT_KEY_TTL_S, reserve: float = DEFAULT_RESERVE, block: int = REFILL_BLOCK,
                 link_rate_bps: float = DEFAULT_RATE_BPS, reconstruction: str = "paper",
                 options: dict | None = None) -> None:
        if not (isinstance(hop_latency_ms, (int, float)) and math.isfinite(hop_latency_ms) and hop_latency_ms >= 0):
            raise InvalidRequest(f"--hop-latency {hop_latency_ms!r} must be a number of milliseconds >= 0")
        if not (isinstance(key_ttl, (int, float)) and key_ttl > 0):
            raise InvalidRequest(f"--key-ttl {key_ttl!r} must be a positive number of seconds")
        self.sim = Simulation(network, requests, algorithm, ttl=0.0, reconstruction=reconstruction,
                              link_rate_bps=link_rate_bps, interval=max(float(requests.duration), 1e-6),
                              options=options)
        self.supply, self.hit = supply, check_hit(hit, "--stock-hit")
        self.hop_s, self.key_ttl, self.reserve, self.block = hop_latency_ms / 1000.0, float(key_ttl), reserve, block
        self.level = float(requests.epsilon.max()) if len(requests) else 0.0  # every request's keys in one stock
        self.keep = np.ceil(self.sim.levels.capacity * reserve).astype(np.int64)
        self.stocks: dict = {}
        self.plans: dict = {}
        self.events: list = []
        self.seq = 0
        self.t = 0.0
        n = len(requests)
        self.wait = np.full(n, np.nan)
        self.hits = np.zeros(n, dtype=bool)
        self.c = dict(refill_runs=0, refill_failures=0, refill_keys=0, refill_bits=0, refill_link_bits=0,
                      demand_link_bits=0, served_stock_bits=0, served_demand_bits=0, expired_keys=0,
                      expired_bits=0, stock_area=0.0, peak_bits=0, held_keys=0, in_flight_keys=0)
        self.lowest_security = math.inf  # of every key put in a stock
        self._bits = int(requests.key_bits.max()) if n else 1  # the stocked keys' size
        self._seed = 0 if self.sim._seeded else None  # a seeded algorithm's refill routes: seed 0

    # -- plans ---------------------------------------------------------------------------------
    def _plan(self, s: int, d: int, bits: int, eps: float):
        """One relay from ``s`` to ``d`` on the links holding ``bits`` now: ``(links, need, securities,
        relay_s)``, or None (no route, no key at ``eps``); cached on the usable links."""
        level = self.sim.levels.level
        key = (s, d, bits, eps, np.packbits(level >= bits).tobytes())
        if key in self.plans:
            return self.plans[key]
        if len(self.plans) > 100_000:
            self.plans.clear()
        _, segs, rec = self.sim._route_rec(s, d, bits, eps, self._seed, level)
        plan = None
        secs = [] if segs is None else sorted((float(g.security) for g in rec.global_keys if g.security >= eps),
                                              reverse=True)
        if secs:  # the keys at eps or above, strongest first (an on-demand request takes the first)
            links, need = route_links(self.sim.arrays, segs, bits)
            hops = sum(max(len(p) - 1 for p in seg) for seg in segs)
            plan = (links, need, secs, hops * self.hop_s)
        self.plans[key] = plan
        return plan

    # -- time ----------------------------------------------------------------------------------
    def _advance(self, t: float) -> None:
        if t > self.t:
            self.c["stock_area"] += self.c["held_keys"] * self._bits * (t - self.t)
            self.t = t
        self.sim._refill(t)

    def _push(self, t: float, kind: int, data) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, data))

    def _hold(self, delta: int) -> None:
        self.c["held_keys"] += delta
        self.c["peak_bits"] = max(self.c["peak_bits"], self.c["held_keys"] * self._bits)

    # -- the stock -----------------------------------------------------------------------------
    def _sizing(self, st: _Stock, t: float) -> None:
        if self.supply.kind == "fixed":
            st.low, st.target = self.supply.low, self.supply.high
        else:
            sz = st.meter.size(t, self.hit, min_batch=MIN_BATCH)
            st.low, st.target = sz.low, sz.target
        if not st.history or st.history[-1][1] != st.target:
            st.history.append((t, st.target))

    def _stock(self, pair: tuple, t: float) -> _Stock:
        st = self.stocks.get(pair)
        if st is None:
            st = self.stocks[pair] = _Stock(Meter(t, lead_s=LEAD_PRIOR_S) if self.supply.kind == "adaptive" else None)
        return st

    def _schedule(self, pair: tuple, st: _Stock, t: float) -> None:
        """The stock's scheduler at ``t`` (:class:`qkdseg.server.stock.Stock`'s ``due``): start a run if due."""
        if st.refilling or t < st.next_try:
            return
        self._sizing(st, t)
        have = len(st.keys)
        if have < st.low:
            st.filling = True
        if have >= st.target:
            st.filling = False
        if not st.filling:
            return
        n = min(st.target - have, self.block)
        if st.first_try is None:
            st.first_try = t
        plan = self._plan(pair[0], pair[1], self._bits, self.level)
        runs = 0
        if plan is not None:
            links, need, secs, relay_s = plan
            room = (self.sim.levels.level[links] - self.keep[links]) // need
            runs = int(min(math.ceil(n / len(secs)), max(0, int(room.min()))))
        if runs <= 0:
            self.c["refill_failures"] += 1
            st.wait_s = BACKOFF_S[0] if st.wait_s <= 0 else min(BACKOFF_S[1], 2 * st.wait_s)
            st.next_try = t + st.wait_s
            self._push(st.next_try, _RETRY, pair)
            return
        self.sim._debit(links, need * runs)
        self.c["refill_link_bits"] += int(need.sum()) * runs
        st.refilling = True
        keys = secs * runs
        self.c["in_flight_keys"] += len(keys)
        self._push(t + relay_s, _LAND, (pair, keys))

    def _land(self, t: float, pair: tuple, keys: list) -> None:
        st = self.stocks[pair]
        st.refilling = False
        st.wait_s = st.next_try = 0.0
        if st.meter is not None and st.first_try is not None:
            st.meter.refilled(t - st.first_try)
        st.first_try = None
        for sec in keys:
            st.keys.append([t + self.key_ttl, sec])
            self.lowest_security = min(self.lowest_security, sec)
        self.c["in_flight_keys"] -= len(keys)
        self.c["refill_runs"] += 1
        self.c["refill_keys"] += len(keys)
        self.c["refill_bits"] += len(keys) * self._bits
        self._hold(len(keys))
        self._push(t + self.key_ttl, _EXPIRE, pair)
        self._schedule(pair, st, t)

    def _expire(self, t: float, pair: tuple) -> None:
        st = self.stocks[pair]
        gone = 0
        while st.keys and st.keys[0][0] <= t:
            st.keys.popleft()
            gone += 1
        if gone:
            self.c["expired_keys"] += gone
            self.c["expired_bits"] += gone * self._bits
            self._hold(-gone)
            self._schedule(pair, st, t)

    def _arrive(self, j: int, t: float) -> None:
        sim = self.sim
        s, d, bits, eps, _ = sim._rq[j]
        if self.supply.kind != "on-demand":
            pair = (min(s, d), max(s, d))
            st = self._stock(pair, t)
            if st.meter is not None:
                st.meter.demand(1, t)
            take = next((k for k in st.keys if k[1] >= eps and bits == self._bits), None)
            if take is not None:
                st.keys.remove(take)
                self._hold(-1)
                self.c["served_stock_bits"] += bits
                self.hits[j] = True
                self._served(j, t, 0.0, take[1])
                self._schedule(pair, st, t)
                return
            self._schedule(pair, st, t)
        plan = self._plan(s, d, bits, eps)
        if plan is None or bool((sim.levels.level[plan[0]] < plan[1]).any()):
            sim.outcome[j] = BLOCKED
            sim.end_time[j] = t
            return
        sim._debit(plan[0], plan[1])
        sim.consumed[j] = int(plan[1].sum())
        self.c["demand_link_bits"] += int(plan[1].sum())
        self.c["served_demand_bits"] += bits
        self._served(j, t, plan[3], plan[2][0])

    def _served(self, j: int, t: float, wait: float, security: float) -> None:
        self.sim.outcome[j] = SERVED
        self.sim.end_time[j] = t + wait
        self.sim.security[j] = security
        self.wait[j] = wait

    def run(self) -> "SupplyRun":
        """Every arrival, landing, expiry and retry up to the end of the arrival window."""
        sim = self.sim
        times = sim._times
        end = float(sim.requests.duration)
        j = 0
        if self.supply.kind != "on-demand":  # the trace's pairs keep stocks from the start (fixed: filled at once)
            for s, d in sorted({(min(a, b), max(a, b)) for a, b in zip(sim.requests.src.tolist(),
                                                                       sim.requests.dst.tolist())}):
                self._stock((s, d), 0.0)
                self._schedule((s, d), self.stocks[(s, d)], 0.0)
        while True:
            ta = times[j] if j < len(times) else math.inf
            te = self.events[0][0] if self.events else math.inf
            t = min(ta, te)
            if t > end or t == math.inf:
                break
            self._advance(t)
            if te <= ta:
                _, kind, _, data = heapq.heappop(self.events)
                if kind == _LAND:
                    self._land(t, *data)
                elif kind == _EXPIRE:
                    self._expire(t, data)
                elif data in self.stocks:
                    self._schedule(data, self.stocks[data], t)
            else:
                sim._next = j + 1
                self._arrive(j, t)
                j += 1
        self._advance(end)
        sim._next = j
        sim.t = end
        return self

    # -- what it gives -----------------------------------------------------------------------------
    def summary(self) -> dict:
        """The run's measures (module docstring) and its ledger."""
        sim, c = self.sim, self.c
        n = sim._next
        out = sim.outcome[:n]
        served = int((out == SERVED).sum())
        waits = self.wait[:n][out == SERVED] * 1000.0
        served_bits = c["served_stock_bits"] + c["served_demand_bits"]
        link_bits = c["refill_link_bits"] + c["demand_link_bits"]
        dur = max(self.t, 1e-12)
        return {
            "supply": self.supply.name, "algorithm": sim.algorithm, "requests": n, "served": served,
            "blocked": int((out == BLOCKED).sum()), "hits": int(self.hits[:n].sum()),
            "hit_rate": float(self.hits[:n].sum() / served) if served else math.nan,
            "wait_p50_ms": float(np.percentile(waits, 50)) if served else math.nan,
            "wait_p99_ms": float(np.percentile(waits, 99)) if served else math.nan,
            "mean_stocked_bits": c["stock_area"] / dur, "peak_stocked_bits": c["peak_bits"],
            "expired_keys": c["expired_keys"], "refill_runs": c["refill_runs"], "refill_failures": c["refill_failures"],
            "refill_bits": c["refill_bits"], "served_from_stock_bits": c["served_stock_bits"],
            "expired_bits": c["expired_bits"], "held_bits": c["held_keys"] * self._bits,
            "in_flight_keys": c["in_flight_keys"], "stocks": len(self.stocks),
            "link_bits_per_served_bit": link_bits / served_bits if served_bits else math.nan,
            "lowest_stocked_security": self.lowest_security if math.isfinite(self.lowest_security) else math.nan,
            "stock_level": self.level,
        }
