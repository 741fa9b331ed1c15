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
A pool-aware algorithm (``least-loaded``) routes on the levels themselves, so
its routes are never cached.

This module holds :class:`Simulation`'s arguments, its events and the run
loop; the pools and one try of a request are in :mod:`qkdseg.sim.serving`,
what a run records and its tables in :mod:`qkdseg.sim.records`.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..api.checks import _check_sharing
from ..errors import InvalidRequest
from ..keys.levels import STATES, LinkLevels
from ..network import Network
from ..reconstruction import SCHEMES
from ..routing import get_algorithm
from .failures import check_relay_failure
from .records import BLOCKED, SERVED, WAITING, Records
from .serving import Serving
from .traffic import Requests

#: Default key rate of a link whose network file gives no ``rate_bps`` (bits/s; the paper's 100 kb/s).
DEFAULT_RATE_BPS = 100_000.0
#: Pool states (QKDNetSim's buffer states, :data:`qkdseg.keys.levels.STATES`) are in that column order.
#: A pool is READY at or above this share of its capacity.
DEFAULT_READY_SHARE = 0.5


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


def _checked_options(algorithm: str, known: dict, options: dict | None, reconstruction: str, ttl: float,
                     ready_share: float) -> dict:
    """The checks of a :class:`Simulation`'s arguments that do not need its network; returns the algorithm's
    options (a seeded algorithm's seed and ``smr-level``'s epsilon come from each request, not from here)."""
    if reconstruction not in SCHEMES:
        raise InvalidRequest(f"unknown reconstruction {reconstruction!r} (known: {', '.join(SCHEMES)})")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float, np.integer, np.floating)) or not math.isfinite(ttl) \
            or ttl < 0:
        raise InvalidRequest(f"ttl={ttl!r} must be a number of seconds >= 0")
    if not 0.0 < ready_share <= 1.0:
        raise InvalidRequest(f"ready_share={ready_share!r} must lie in (0, 1]")
    opts = dict(options or {})
    if "seed" in known and "seed" in opts:
        raise InvalidRequest(f"{algorithm}'s seed comes from each request's seed (the run's seed); do not pass one")
    if "epsilon" in known and "epsilon" in opts:
        raise InvalidRequest(f"{algorithm}'s epsilon comes from each request's epsilon; do not pass one")
    for k in opts:
        if k not in known:
            raise InvalidRequest(f"algorithm {algorithm!r} has no option {k!r} (options: {', '.join(sorted(known)) or 'none'})")
    return opts


def sim_sharing(sharing: str, tolerate: int, reconstruction: str | None) -> tuple[str, int, str]:
    """``(sharing, tolerate, reconstruction)`` of a run after the checks of :func:`qkdseg.route`: the
    reconstruction defaults to ``paper`` under XOR and is ``xor-all`` (the only one) under threshold sharing."""
    sharing, tolerate, reconstruction = _check_sharing(sharing, tolerate, 0.0, reconstruction)
    return sharing, tolerate, reconstruction or "paper"


def _sample_times(horizon: float, interval: float | None) -> tuple[float, np.ndarray]:
    """The time-series interval (checked; default :func:`nice_interval`) and the sample times over ``horizon``."""
    if interval is None:
        interval = nice_interval(horizon)
    if isinstance(interval, bool) or not isinstance(interval, (int, float, np.integer, np.floating)) \
            or not math.isfinite(interval) or interval <= 0:
        raise InvalidRequest(f"interval={interval!r} must be a positive number of seconds")
    step = float(interval)
    if horizon / step > MAX_INTERVALS:
        raise InvalidRequest(f"interval={interval!r} gives more than {MAX_INTERVALS} time-series intervals over {horizon:g} s")
    k = max(1, math.ceil(horizon / step - 1e-9))
    return step, np.minimum(np.arange(1, k + 1) * step, horizon)


class Simulation(Serving, Records):
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
    reconstruction : str, optional
        Reconstruction scheme (``paper``, ``optimal``, ``reuse``, ``xor-all``);
        default ``paper``, and ``xor-all`` (the only one) with threshold sharing.
    sharing, tolerate : str, int
        ``xor`` (default) or ``threshold`` with ``tolerate = T >= 1``: routes,
        securities and keys as :func:`qkdseg.route` gives them (docs/model.md
        section 4a); a route with a segment of ``m <= T`` paths is not served
        (reason ``few_paths``).
    relay_failure : float
        Each relay of a run fails with this probability, drawn from the
        request's recorded seed (:mod:`qkdseg.sim.failures`); a run that keeps
        no key is blocked (reason ``failed``) with its bits spent.
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
        Reuse routes on an unchanged set of usable links (results are the same);
        never for a pool-aware algorithm, whose routes follow the levels.
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
        reconstruction: str | None = None,
        link_rate_bps: float = DEFAULT_RATE_BPS,
        interval: float | None = None,
        ready_share: float = DEFAULT_READY_SHARE,
        sharing: str = "xor",
        tolerate: int = 0,
        relay_failure: float = 0.0,
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
        sharing, tolerate, reconstruction = sim_sharing(sharing, tolerate, reconstruction)
        self.relay_failure = check_relay_failure(relay_failure)
        opts = _checked_options(algorithm, algo.options, options, reconstruction, ttl, ready_share)
        self._seeded = "seed" in algo.options
        self._leveled = "epsilon" in algo.options  # smr-level: routes to each request's own epsilon
        self.network = network
        self.arrays = network.arrays
        self.requests = requests
        self.algorithm = algorithm
        self.options = opts
        self.reconstruction = reconstruction
        self.reconstruction_options = dict(reconstruction_options or {})
        if tolerate and self.reconstruction_options:
            raise InvalidRequest("reconstruction xor-all (threshold sharing) has no options")
        self.sharing, self.tolerate = sharing, tolerate
        self.ttl = float(ttl)
        self.rate = link_rates(network, link_rate_bps)
        self.levels = LinkLevels(self.arrays.pool_bits, t=0.0)
        self._floor = np.zeros(self.arrays.n_links)  # floor(rate * t) at levels.t
        self.horizon = float(requests.duration) + self.ttl
        self.interval, self.sample_times = _sample_times(self.horizon, interval)
        self._start_states(ready_share, empty_bits)
        # a pool-aware algorithm (least-loaded) routes on the levels themselves, not only on which links can pay
        self.cache: dict | None = {} if cache and not algo.pool_aware else None
        self.on_sample = on_sample
        n = len(requests)
        seeds = requests.seed.tolist() if self._seeded else [None] * n
        # (source, destination, key bits, epsilon, seed) per request as Python scalars: the hot loop reads them
        self._rq = list(zip(requests.src.tolist(), requests.dst.tolist(), requests.key_bits.tolist(),
                            requests.epsilon.tolist(), seeds))
        self._times = requests.t.tolist()
        self._fail_seeds = requests.seed.tolist()
        self._start_records(n)
        self.t = 0.0
        self._next = 0  # next arrival
        self._k = 0  # next sample
        self._queue: dict[int, None] = {}  # waiting requests, arrival order
        self._queue_bits: Counter = Counter()
        self._expiry: list[tuple[float, int]] = []
        self._t_retry = math.inf
        self.stats = {"routing_seconds": 0.0, "run_seconds": 0.0, "route_calls": 0, "attempts": 0, "retries": 0}

    def __repr__(self) -> str:
        c = Counter(self.outcome.tolist())
        return (f"<Simulation {self.algorithm} t={self.t:g} served={c[SERVED]} blocked={c[BLOCKED]} "
                f"waiting={c[WAITING]}>")

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
