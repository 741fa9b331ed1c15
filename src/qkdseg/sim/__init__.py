"""Time-dynamic runs: key pools that refill, requests that arrive, blocking over time.

docs/model.md section 9 defines the model. :func:`simulate` runs algorithms on one
seeded arrival trace and returns the tables as DataFrames; :class:`Simulation`
steps one algorithm in simulated time (``run(until=t)``), so that the pools
can be inspected mid-run.

>>> import qkdseg
>>> res = qkdseg.simulate(qkdseg.example_network(), rate=20.0, duration=30.0, algorithms=("smr", "single"),
...                       key_bits=5000, epsilon=0.5, seed=3)
>>> sorted(res.requests["algorithm"].unique()), len(res.requests) == 2 * res.info["requests"]
(['single', 'smr'], True)
>>> bool((res.requests.groupby("algorithm")["served"].mean() > 0).all())
True
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import InvalidRequest
from ..network import Network
from .engine import DEFAULT_RATE_BPS, STATES, Simulation, as_network, link_rates, nice_interval, run_algorithms
from .traffic import DEFAULT_EPSILON, DEFAULT_KEY_BITS, Requests, poisson_requests, read_trace

#: The algorithms a run compares by default (the paper's four).
DEFAULT_ALGORITHMS = ("smr", "msp", "disjoint", "single")


def algorithm_names(algorithms: Any) -> tuple[str, ...]:
    """A tuple of distinct algorithm names from one name (``"smr"``) or a sequence of them."""
    if isinstance(algorithms, str):
        algorithms = (algorithms,)
    try:
        names = tuple(algorithms)
    except TypeError:
        raise InvalidRequest(f"algorithms must be a name or a sequence of names, got {type(algorithms).__name__}") from None
    if not names:
        raise InvalidRequest("no algorithm to simulate")
    for name in names:
        if not isinstance(name, str):
            raise InvalidRequest(f"algorithms: {name!r} is not an algorithm name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidRequest(f"algorithms: {', '.join(twice)} given more than once")
    return names


class SimulationResult(NamedTuple):
    """The tables of a run (pandas DataFrames) and what produced them.

    Attributes
    ----------
    requests : DataFrame
        One row per request and algorithm (``requests.parquet``).
    timeseries : DataFrame
        One row per interval and algorithm (``timeseries.parquet``).
    levels : DataFrame
        Every link's level at every sample, per algorithm (``levels.parquet``).
    info : dict
        The parameters, counts and timings of the run.
    """

    requests: Any
    timeseries: Any
    levels: Any
    info: dict

    def __repr__(self) -> str:
        """A summary (the DataFrames are the attributes): per algorithm, requests served and blocking."""
        req = self.requests
        parts = []
        for alg in self.info.get("algorithms", []):
            d = req[req["algorithm"] == alg]
            served = int(d["served"].sum()) if len(d) else 0
            parts.append(f"{alg}: {served}/{len(d)} served")
        return (f"<SimulationResult {self.info.get('network')!s}, {self.info.get('requests')} requests over "
                f"{self.info.get('duration', 0):g} s; {'; '.join(parts)}>")


def simulate(
    network: Network,
    *,
    rate: float | None = None,
    duration: float = 3600.0,
    requests: Requests | None = None,
    algorithms=DEFAULT_ALGORITHMS,
    key_bits: int = DEFAULT_KEY_BITS,
    epsilon: float = DEFAULT_EPSILON,
    ttl: float = 0.0,
    seed: int = 0,
    pairs: str = "uniform",
    arrivals: str = "poisson",
    link_rate_bps: float = DEFAULT_RATE_BPS,
    reconstruction: str | None = None,
    interval: float | None = None,
    options: dict | None = None,
    progress: Any = None,
    sharing: str = "xor",
    tolerate: int = 0,
    relay_failure: float = 0.0,
) -> SimulationResult:
    """Run every algorithm on the same seeded arrival trace (docs/model.md section 9).

    Parameters
    ----------
    network : Network
        Link pools (``pool_bits``, default 100 kb) start full and refill at
        ``rate_bps`` (default ``link_rate_bps``).
    rate : float
        Requests per second (a Poisson process, or PPBP with ``arrivals="ppbp"``).
        Not with ``requests``.
    duration : float
        Arrival window, seconds.
    requests : Requests, optional
        A trace instead (:func:`read_trace`, :func:`poisson_requests`).
    algorithms : sequence of str
    key_bits, epsilon : int, float
        Key size (bits) and security level of every generated request.
    ttl : float
        Longest wait of a request, seconds (0: blocked at once).
    seed : int
        Seed of the trace and of every seeded algorithm's per-request seeds.
    pairs : {"uniform", "gravity"}
    arrivals : {"poisson", "ppbp"}
    link_rate_bps : float
        Rate of links without ``rate_bps``, bits/s.
    reconstruction : str, optional
        Default ``paper`` (``xor-all`` with threshold sharing).
    sharing, tolerate : str, int
        ``xor`` or ``threshold`` with ``tolerate = T >= 1`` (docs/model.md section 4a).
    relay_failure : float
        Each relay of a run fails with this probability (:mod:`qkdseg.sim.failures`).
    interval : float, optional
        Time-series interval, seconds (default: 1, 2 or 5 x 10^k giving at most 200 rows).
    options : dict, optional
        ``algorithm -> options`` (e.g. ``{"smr": {"max_paths": 4}}``).
    progress : callable or True, optional
        ``True``: a tqdm bar over simulated time with an ETA; a callable gets
        each sample time.

    Returns
    -------
    SimulationResult
        ``requests``, ``timeseries``, ``levels`` DataFrames and ``info``.
    """
    import pandas as pd

    network = as_network(network)
    if requests is None:
        if rate is None:
            raise InvalidRequest("simulate needs a rate (requests per second) or a requests trace")
        requests = poisson_requests(network, rate, duration, seed=seed, key_bits=key_bits, epsilon=epsilon,
                                    pairs=pairs, arrivals=arrivals)
    elif rate is not None:
        raise InvalidRequest("give a rate or a requests trace, not both")
    algorithms = algorithm_names(algorithms)
    options = options or {}
    # every simulation is built (and so every option checked) before the first one runs or a bar is drawn
    built = [Simulation(network, requests, name, ttl=ttl, reconstruction=reconstruction, link_rate_bps=link_rate_bps,
                        interval=interval, options=options.get(name), sharing=sharing, tolerate=tolerate,
                        relay_failure=relay_failure) for name in algorithms]
    bar = None
    callback = progress if callable(progress) else None
    sims = []
    try:
        if progress is True:
            from tqdm.auto import tqdm

            horizon = built[0].horizon
            total = horizon * len(algorithms)
            bar = tqdm(total=total, desc="simulate", unit="s", dynamic_ncols=True, smoothing=0.1,
                       bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} simulated s [{elapsed}<{remaining}]")
            done = [0.0, 0.0]  # finished algorithms' seconds, this algorithm's last sample

            def callback(t: float) -> None:
                step = min(t - done[1], total - bar.n)
                done[1] = t
                if step > 0:
                    bar.update(step)

        for name, sim in zip(algorithms, built):
            if progress is True:
                done[1] = 0.0
                bar.set_postfix_str(name)
            sim.on_sample = callback
            sims.append(sim.run())
    finally:
        if bar is not None:
            bar.close()
    req = pd.concat([s.requests_frame() for s in sims], ignore_index=True)
    ts = pd.concat([s.timeseries_frame() for s in sims], ignore_index=True)
    lv = pd.concat([s.levels_frame() for s in sims], ignore_index=True)
    info = {
        "network": network.name,
        "nodes": network.arrays.n_nodes,
        "links": network.arrays.n_links,
        "requests": len(requests),
        "duration": float(requests.duration),
        "rate": rate,
        "algorithms": list(algorithms),
        "key_bits": key_bits,
        "epsilon": epsilon,
        "ttl": float(ttl),
        "seed": seed,
        "pairs": pairs,
        "arrivals": arrivals,
        "link_rate_bps": link_rate_bps,
        "reconstruction": sims[0].reconstruction,
        **({"sharing": sims[0].sharing, "tolerate": sims[0].tolerate} if sims[0].tolerate else {}),
        **({"relay_failure": sims[0].relay_failure} if sims[0].relay_failure else {}),
        "interval": sims[0].interval,
        # what left the pools, per algorithm (LinkLevels' consumed offsets): equals the consumed bits of the served
        "debited_bits": {s.algorithm: int(s.levels.consumed.sum()) for s in sims},
        # the full pools at the start plus what the links produced (overflow included): key utilisation's denominator
        "generated_bits": {s.algorithm: s.generated_bits() for s in sims},
        "stats": {s.algorithm: dict(s.stats) for s in sims},
    }
    return SimulationResult(req, ts, lv, info)


__all__ = [
    "DEFAULT_ALGORITHMS",
    "STATES",
    "Requests",
    "Simulation",
    "SimulationResult",
    "link_rates",
    "nice_interval",
    "poisson_requests",
    "read_trace",
    "run_algorithms",
    "simulate",
]
