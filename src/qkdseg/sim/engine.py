"""The time-dynamic engine: pools that refill, requests that arrive, blocking over time.

docs/model.md section 9 is the contract; in short:

- Every link's pool holds an integer number of bits, at most its
  ``pool_bits``. Its source delivers ``floor(rate_bps * t)`` bits by time
  ``t`` (seconds from the start); bits that find the pool full are lost.
  Levels are computed analytically at each event (no per-bit process):
  ``level(t) = min(pool, level(t0) + floor(rate * t) - floor(rate * t0))``,
  which gives the same levels however the run is cut into steps.
- A request is routed by the chosen algorithm on the links whose level is at
  least its key size ``B`` (key-aware routing:
  ``route_indices(with_levels(arrays, level), s, d, algorithm, block_bits=B)``),
  reconstructed at its level ``epsilon`` (``B``-bit pieces, the paper's
  scheme by default), and served at once if the reconstruction gives at least
  one ``B``-bit key and every link holds what the route takes from it
  (``B`` per path through it): each such link is debited.
- Otherwise the request waits up to ``ttl`` seconds (0: blocked at once). A
  waiting request is retried, with every other waiting request in arrival
  order, at each instant a link's level reaches the key size of a waiting
  request; it is blocked when its time is up.

The only events are arrivals, retries, expiries and the samples of the time
series. A route is a pure function of the request and the set of usable
links, so routes and reconstructions are cached on ``(source, destination,
B, epsilon, seed, usable links)``: a hit is exactly what a new call would give.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..api import route_indices
from ..errors import InvalidRequest
from ..keys.levels import EMPTY, READY, STATES, LinkLevels, pool_states, with_levels
from ..network import Network
from ..reconstruction import SCHEMES, reconstruct
from ..routing import get_algorithm
from .traffic import Requests

#: Default key rate of a link whose network file gives no ``rate_bps`` (bits/s; the paper's 100 kb/s).
DEFAULT_RATE_BPS = 100_000.0
#: Pool states (QKDNetSim's buffer states, :data:`qkdseg.keys.levels.STATES`) are in that column order.
#: A pool is READY at or above this share of its capacity.
DEFAULT_READY_SHARE = 0.5

#: Outcome codes of :attr:`Simulation.outcome`.
PENDING, WAITING, BLOCKED, SERVED = -2, -1, 0, 1
OUTCOMES = {PENDING: "pending", WAITING: "waiting", BLOCKED: "blocked", SERVED: "served"}
#: Why a request was not served (its last try).
REASONS = ("", "no_route", "epsilon", "short")
NO_ROUTE, EPSILON, SHORT = 1, 2, 3

_CACHE_LIMIT = 200_000


def link_rates(network: Network, default_bps: float = DEFAULT_RATE_BPS) -> np.ndarray:
    """Key rate of every link (bits/s, network link order): its ``rate_bps``, else ``default_bps``."""
    if isinstance(default_bps, bool) or not isinstance(default_bps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(default_bps) or default_bps < 0:
        raise InvalidRequest(f"link rate {default_bps!r} must be a number >= 0 (bits/s)")
    a = network.arrays
    rate = np.full(a.n_links, float(default_bps))
    idx = a.index
    for u, v, data in network.graph.edges(data=True):
        r = data.get("rate_bps")
        if r is not None:
            rate[a.edge_index(idx[u], idx[v])] = float(r)
    return rate


#: Most time-series intervals one run records.
MAX_INTERVALS = 10_000_000


def nice_interval(horizon: float, samples: int = 200) -> float:
    """The smallest of 1, 2, 5 x 10^k seconds giving at most ``samples`` intervals over ``horizon``."""
    if horizon <= 0:
        return 1.0
    target = horizon / samples
    k = math.floor(math.log10(target))
    for base in (1, 2, 5, 10):
        step = base * 10.0**k
        if step >= target * (1 - 1e-12):
            return float(f"{step:.12g}")
    return 10.0 ** (k + 1)  # pragma: no cover


def as_network(network: Any) -> Network:
    """``network`` itself, or a networkx graph as a :class:`Network` (as :func:`qkdseg.route` takes it)."""
    import networkx as nx

    if isinstance(network, Network):
        return network
    if isinstance(network, nx.Graph):
        return Network(network)
    hint = f"; load it first, e.g. qkdseg.load({network!r})" if isinstance(network, str) else ""
    raise InvalidRequest(f"network must be a qkdseg.Network or a networkx graph, got {type(network).__name__}{hint}")


class Simulation:
    """One algorithm on one arrival trace, stepped in simulated time.

    Parameters
    ----------
    network : Network
        Pools are the links' ``pool_bits``; rates their ``rate_bps`` (or
        ``link_rate_bps``). Pools start full.
    requests : Requests
        The arrival trace (:func:`~qkdseg.sim.poisson_requests`, :func:`~qkdseg.sim.read_trace`).
    algorithm : str
        A routing algorithm of ``qkdseg.ALGORITHMS``. A seeded one (``msp``)
        gets each request's own seed.
    ttl : float
        Longest wait of a request that cannot be served at once, seconds (0:
        blocked at once).
    reconstruction : str
        Reconstruction scheme (``paper``, ``optimal``, ``reuse``, ``xor-all``).
    link_rate_bps : float
        Rate of links without ``rate_bps``, bits/s.
    interval : float, optional
        Length of a time-series interval, seconds (default :func:`nice_interval`).
    ready_share : float
        A pool at or above this share of its capacity is READY.
    empty_bits : int, optional
        A pool below this level is EMPTY (default: the largest key size in the trace).
    options : dict, optional
        Algorithm options (``max_paths``...). A seeded algorithm's ``seed`` is
        not an option here: it comes from the trace.
    cache : bool
        Reuse routes on an unchanged set of usable links (results are the same).
    on_sample : callable, optional
        Called with the time of each time-series sample (progress bars).

    Examples
    --------
    >>> import qkdseg
    >>> from qkdseg.sim import Simulation, poisson_requests
    >>> net = qkdseg.example_network()
    >>> req = poisson_requests(net, rate=50.0, duration=60.0, seed=1, key_bits=2000, epsilon=0.5)
    >>> sim = Simulation(net, req, "smr", interval=10.0).run(until=30.0)
    >>> sim.t, int(sim.levels.level.min()) >= 0
    (30.0, True)
    >>> sim.run()
    <Simulation smr t=60 served=... blocked=... waiting=0>
    >>> int(sim.levels.consumed.sum()) == int(sim.consumed[sim.outcome == 1].sum())
    True
    """

    def __init__(
        self,
        network: Network,
        requests: Requests,
        algorithm: str = "smr",
        *,
        ttl: float = 0.0,
        reconstruction: str = "paper",
        link_rate_bps: float = DEFAULT_RATE_BPS,
        interval: float | None = None,
        ready_share: float = DEFAULT_READY_SHARE,
        empty_bits: int | None = None,
        options: dict | None = None,
        reconstruction_options: dict | None = None,
        cache: bool = True,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        network = as_network(network)
        if not isinstance(requests, Requests):
            raise InvalidRequest(f"requests must be a Requests trace (qkdseg.sim.poisson_requests, read_trace), got {type(requests).__name__}")
        algo = get_algorithm(algorithm)
        if reconstruction not in SCHEMES:
            raise InvalidRequest(f"unknown reconstruction {reconstruction!r} (known: {', '.join(SCHEMES)})")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float, np.integer, np.floating)) or not math.isfinite(ttl) \
                or ttl < 0:
            raise InvalidRequest(f"ttl={ttl!r} must be a number of seconds >= 0")
        if not 0.0 < ready_share <= 1.0:
            raise InvalidRequest(f"ready_share={ready_share!r} must lie in (0, 1]")
        opts = dict(options or {})
        self._seeded = "seed" in algo.options
        if self._seeded and "seed" in opts:
            raise InvalidRequest(f"{algorithm}'s seed comes from each request's seed (the run's seed); do not pass one")
        self._leveled = "epsilon" in algo.options  # smr-level: routes to each request's own epsilon
        if self._leveled and "epsilon" in opts:
            raise InvalidRequest(f"{algorithm}'s epsilon comes from each request's epsilon; do not pass one")
        for k in opts:
            if k not in algo.options:
                raise InvalidRequest(f"algorithm {algorithm!r} has no option {k!r} (options: {', '.join(sorted(algo.options)) or 'none'})")
        self.network = network
        self.arrays = network.arrays
        self.requests = requests
        self.algorithm = algorithm
        self.options = opts
        self.reconstruction = reconstruction
        self.reconstruction_options = dict(reconstruction_options or {})
        self.ttl = float(ttl)
        self.rate = link_rates(network, link_rate_bps)
        self.levels = LinkLevels(self.arrays.pool_bits, t=0.0)
        self._floor = np.zeros(self.arrays.n_links)  # floor(rate * t) at levels.t
        self.horizon = float(requests.duration) + self.ttl
        if interval is None:
            interval = nice_interval(self.horizon)
        if isinstance(interval, bool) or not isinstance(interval, (int, float, np.integer, np.floating)) \
                or not math.isfinite(interval) or interval <= 0:
            raise InvalidRequest(f"interval={interval!r} must be a positive number of seconds")
        self.interval = float(interval)
        if self.horizon / self.interval > MAX_INTERVALS:
            raise InvalidRequest(f"interval={interval!r} gives more than {MAX_INTERVALS} time-series intervals over {self.horizon:g} s")
        k = max(1, math.ceil(self.horizon / self.interval - 1e-9))
        self.sample_times = np.minimum(np.arange(1, k + 1) * self.interval, self.horizon)
        cap = self.levels.capacity
        self.ready_bits = np.ceil(cap * float(ready_share)).astype(np.int64)
        kb = requests.key_bits
        self.empty_bits = int(empty_bits if empty_bits is not None else (kb.max() if len(kb) else 1))
        self.state = np.where(cap < self.empty_bits, EMPTY, READY).astype(np.int8)
        self._ready_at_least_empty = bool((self.ready_bits >= self.empty_bits).all())
        self.cache: dict | None = {} if cache else None
        self.on_sample = on_sample
        n = len(requests)
        seeds = requests.seed.tolist() if self._seeded else [None] * n
        # (source, destination, key bits, epsilon, seed) per request as Python scalars: the hot loop reads them
        self._rq = list(zip(requests.src.tolist(), requests.dst.tolist(), requests.key_bits.tolist(),
                            requests.epsilon.tolist(), seeds))
        self._times = requests.t.tolist()
        self.outcome = np.full(n, PENDING, dtype=np.int8)
        self.end_time = np.full(n, np.nan)
        self.security = np.full(n, np.nan)
        self.route_security = np.full(n, np.nan)
        self.consumed = np.zeros(n, dtype=np.int64)
        self.keys = np.zeros(n, dtype=np.int32)
        self.segments = np.zeros(n, dtype=np.int32)
        self.paths = np.zeros(n, dtype=np.int32)
        self.hops = np.zeros(n, dtype=np.int32)
        self.tries = np.zeros(n, dtype=np.int32)
        self.reason = np.zeros(n, dtype=np.int8)
        self.t = 0.0
        self._next = 0  # next arrival
        self._k = 0  # next sample
        self._queue: dict[int, None] = {}  # waiting requests, arrival order
        self._queue_bits: Counter = Counter()
        self._expiry: list[tuple[float, int]] = []
        self._t_retry = math.inf
        self.snap_queued: list[int] = []
        self.snap_level: list[np.ndarray] = []
        self.snap_states: list[np.ndarray] = []
        self.stats = {"routing_seconds": 0.0, "run_seconds": 0.0, "route_calls": 0, "attempts": 0, "retries": 0}

    def __repr__(self) -> str:
        c = Counter(self.outcome.tolist())
        return (f"<Simulation {self.algorithm} t={self.t:g} served={c[SERVED]} blocked={c[BLOCKED]} "
                f"waiting={c[WAITING]}>")

    # -- levels ------------------------------------------------------------------------
    def _refill(self, t: float) -> None:
        if t > self.levels.t:
            f = np.floor(self.rate * t)
            produced = f - self._floor
            self._floor = f
            self.levels.refill(produced, t=t)

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

    # -- one try -------------------------------------------------------------------------
    def _plan(self, s: int, d: int, bits: int, eps: float, seed: int | None, level: np.ndarray) -> tuple:
        t0 = time.perf_counter()
        opts = dict(self.options)
        if seed is not None:
            opts["seed"] = seed
        if self._leveled:
            opts["epsilon"] = eps
        a = self.arrays
        r = route_indices(with_levels(a, level), s, d, self.algorithm, block_bits=bits, **opts)
        self.stats["route_calls"] += 1
        if r.blocked:
            plan: tuple = (NO_ROUTE, None, None, 0, math.nan, math.nan, 0, 0, 0, 0)
        else:
            segs = [[list(p) for p in seg] for seg in r.index_paths]
            chain = [seg[0][0] for seg in r.index_paths[1:]]
            rec = reconstruct(self.reconstruction, a.p, segs, chain, eps, bits, **self.reconstruction_options)
            n_paths = sum(len(seg) for seg in segs)
            if rec.n_keys == 0:
                plan = (EPSILON, None, None, 0, math.nan, r.security, len(segs), n_paths, r.hops, 0)
            else:
                edges = [a.edge_index(x, y) for seg in segs for p in seg for x, y in zip(p, p[1:])]
                links, counts = np.unique(np.array(edges, dtype=np.int64), return_counts=True)
                plan = (0, links, counts.astype(np.int64) * bits, r.hops * bits, rec.global_keys[0].security,
                        r.security, len(segs), n_paths, r.hops, rec.n_keys)
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
         self.hops[j], self.keys[j]) = plan
        self.reason[j] = 0
        self.outcome[j] = SERVED
        self.end_time[j] = t
        return True

    # -- events ----------------------------------------------------------------------------
    def _arrive(self, j: int, t: float) -> None:
        self._refill(t)
        if self._attempt(j, t):
            return
        if self.ttl > 0:
            self.outcome[j] = WAITING
            self._queue[j] = None
            self._queue_bits[self._rq[j][2]] += 1
            heapq.heappush(self._expiry, (self._times[j] + self.ttl, j))
        else:
            self.outcome[j] = BLOCKED
            self.end_time[j] = t

    def _retry(self, t: float) -> None:
        self._refill(t)
        self.stats["retries"] += 1
        for j in list(self._queue):
            if self._attempt(j, t):
                del self._queue[j]
                self._queue_bits[self._rq[j][2]] -= 1

    def _expire(self, t: float) -> None:
        _, j = heapq.heappop(self._expiry)
        if j in self._queue:
            del self._queue[j]
            self._queue_bits[self._rq[j][2]] -= 1
            self.outcome[j] = BLOCKED
            self.end_time[j] = t

    def _sample(self, t: float) -> None:
        self._refill(t)
        self._settle_states()
        self.snap_queued.append(len(self._queue))
        self.snap_level.append(self.levels.level.copy())
        self.snap_states.append(np.bincount(self.state, minlength=len(STATES)))
        self._k += 1
        if self.on_sample is not None:
            self.on_sample(t)

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

    def run(self, until: float | None = None) -> "Simulation":
        """Process every event up to ``until`` seconds (default: the end), then bring the pools to ``until``.

        Events at one instant go: the time-series sample, retries, expiries,
        arrivals. Stepping (``run(until=a)`` then ``run()``) gives exactly the
        results of one ``run()``.
        """
        stop = self.horizon if until is None else float(until)
        if not stop >= self.t:
            raise InvalidRequest(f"until={until!r} is before the simulation's time {self.t:g}")
        wall = time.perf_counter()
        times = self._times
        n = len(times)
        samples = self.sample_times
        n_samples = len(samples)
        inf = math.inf
        while True:
            ta = times[self._next] if self._next < n else inf
            te = self._expiry[0][0] if self._expiry else inf
            tr = self._t_retry
            ts = samples[self._k] if self._k < n_samples else inf
            t = min(ta, te, tr, ts)
            if t > stop or t == inf:
                break
            t = float(t)
            if ts == t:
                self._sample(t)
                continue
            if tr == t:
                self._retry(t)
            elif te == t:
                self._expire(t)
            else:
                self._arrive(self._next, t)
                self._next += 1
            if self._queue or self._t_retry != inf:
                self._t_retry = self._next_retry()
        end = min(stop, self.horizon)
        self._refill(end)
        self.t = max(self.t, end)
        self.stats["run_seconds"] += time.perf_counter() - wall
        return self

    # -- tables ----------------------------------------------------------------------------
    def _node_ids(self, idx: np.ndarray):
        ids = self.arrays.node_ids
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
            return np.asarray(ids, dtype=np.int64)[idx]
        return np.asarray([str(v) for v in ids], dtype=object)[idx]

    def requests_frame(self):
        """One row per request that has arrived (docs/model.md section 9: the columns of ``requests.parquet``)."""
        import pandas as pd

        req = self.requests
        n = self._next
        sl = slice(0, n)
        served = self.outcome[sl] == SERVED
        end = self.end_time[sl]
        return pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * n, dtype=object),
            "request": np.arange(n, dtype=np.int64),
            "arrival": req.t[sl],
            "source": self._node_ids(req.src[sl]),
            "destination": self._node_ids(req.dst[sl]),
            "key_bits": req.key_bits[sl],
            "epsilon": req.epsilon[sl],
            "seed": req.seed[sl],
            "outcome": pd.Series([OUTCOMES[int(o)] for o in self.outcome[sl]], dtype=object),
            "served": served,
            "service_time": np.where(served, end, np.nan),
            "end_time": end,
            "wait": np.where(served, end - req.t[sl], np.nan),
            "security": self.security[sl],
            "route_security": self.route_security[sl],
            "consumed_bits": self.consumed[sl],
            "keys": self.keys[sl],
            "segments": self.segments[sl],
            "paths": self.paths[sl],
            "hops": self.hops[sl],
            "tries": self.tries[sl],
            "reason": pd.Series([REASONS[int(r)] if o != SERVED else "" for r, o in zip(self.reason[sl], self.outcome[sl])],
                                dtype=object),
        })

    def timeseries_frame(self):
        """One row per finished interval (docs/model.md section 9: the columns of ``timeseries.parquet``)."""
        import pandas as pd

        k = self._k
        ends = self.sample_times[:k]
        starts = np.concatenate([[0.0], self.sample_times[: max(k - 1, 0)]])[:k]
        req = self.requests
        n = self._next

        def binned(times, weights=None):
            b = np.searchsorted(self.sample_times, times, side="right")
            b = np.minimum(b, len(self.sample_times) - 1)
            keep = b < k
            return np.bincount(b[keep], weights=None if weights is None else weights[keep], minlength=k)[:k]

        out = self.outcome[:n]
        end = self.end_time[:n]
        served = out == SERVED
        blocked = out == BLOCKED
        levels = np.array(self.snap_level[:k], dtype=np.float64).reshape(k, -1)
        states = np.array(self.snap_states[:k], dtype=np.int64).reshape(k, len(STATES))
        m = max(self.arrays.n_links, 1)
        served_bits = binned(end[served], req.key_bits[:n][served].astype(np.float64)).astype(np.int64)
        df = pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * k, dtype=object),
            "interval": np.arange(k, dtype=np.int64),
            "t_start": starts,
            "t_end": ends,
            "offered": binned(req.t[:n]).astype(np.int64),
            "served": binned(end[served]).astype(np.int64),
            "blocked": binned(end[blocked]).astype(np.int64),
            "queued": np.array(self.snap_queued[:k], dtype=np.int64),
            "served_key_bits": served_bits,
            "served_key_bps": served_bits / np.maximum(ends - starts, 1e-300),
            "mean_level_bits": levels.mean(axis=1) if levels.size else np.zeros(k),
        })
        for i, name in enumerate(STATES):
            df[f"share_{name.lower()}"] = states[:, i] / m
        return df

    def levels_frame(self):
        """Every link's level at every sample (long form: ``algorithm, t, link, level_bits``), for the heat map."""
        import pandas as pd

        k = self._k
        m = self.arrays.n_links
        lv = np.array(self.snap_level[:k], dtype=np.int64).reshape(k, m)
        return pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * (k * m), dtype=object),
            "t": np.repeat(self.sample_times[:k], m),
            "link": np.tile(np.arange(m, dtype=np.int64), k),
            "level_bits": lv.reshape(-1),
        })

    def pools(self):
        """The pools now: ``link, u, v, level_bits, capacity_bits, rate_bps, consumed_bits, state``."""
        import pandas as pd

        self._settle_states()
        a = self.arrays
        return pd.DataFrame({
            "link": np.arange(a.n_links, dtype=np.int64),
            "u": self._node_ids(a.edge_u),
            "v": self._node_ids(a.edge_v),
            "level_bits": self.levels.level.copy(),
            "capacity_bits": self.levels.capacity.copy(),
            "rate_bps": self.rate.copy(),
            "consumed_bits": self.levels.consumed.copy(),
            "state": pd.Series([STATES[s] for s in self.state], dtype=object),
        })


def run_algorithms(
    network: Network,
    requests: Requests,
    algorithms: Sequence[str],
    *,
    progress: Callable[[float], None] | None = None,
    **kwargs: Any,
) -> list[Simulation]:
    """One finished :class:`Simulation` per algorithm on the same trace (common random numbers)."""
    sims = []
    for name in algorithms:
        sim = Simulation(network, requests, name, on_sample=progress, **kwargs)
        sims.append(sim.run())
    return sims
