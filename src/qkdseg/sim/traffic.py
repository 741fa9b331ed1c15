"""Request arrivals for time-dynamic runs (docs/model.md section 9).

A :class:`Requests` table is the arrival trace every algorithm of a run sees
(common random numbers): arrival times (s, sorted), end nodes (indices), key
size (bits), security level and a per-request seed (for seeded algorithms such
as ``msp``). It comes from

- :func:`poisson_requests`: a Poisson process of rate ``rate`` per second, or
  a Poisson Pareto burst process (``arrivals="ppbp"``), with end nodes drawn
  uniformly (``pairs="uniform"``) or by a gravity model (``pairs="gravity"``);
- :func:`read_trace`: a CSV or Parquet file with columns ``t, src, dst`` and
  optionally ``key_bits, epsilon``.

Random streams. ``numpy.random.default_rng([seed, k])`` with ``k = 0`` for the
inter-arrival times (standard exponentials, divided by the rate), ``k = 1``
for the end nodes, ``k = 2`` for the per-request seeds and ``k = 3`` for the
bursts. The streams do not depend on the rate, so runs at different rates
with one seed share their draws: the n-th request has the same end nodes at
every rate, and its arrival time scales as ``1 / rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest
from ..network import MAX_POOL_BITS, Network

#: Default key size of a request, bits.
DEFAULT_KEY_BITS = 256
#: Default security level of a request.
DEFAULT_EPSILON = 0.9
#: PPBP defaults: mean burst length (s), mean number of bursts at once, Hurst parameter.
PPBP_BURST_SECONDS = 10.0
PPBP_CONCURRENT = 5.0
PPBP_HURST = 0.8


@dataclass(frozen=True, eq=False)
class Requests:
    """An arrival trace, one entry per request, sorted by arrival time.

    Attributes
    ----------
    t : numpy.ndarray of float64
        Arrival times, seconds from the start of the run (non-decreasing).
    src, dst : numpy.ndarray of int64
        End nodes (node indices, distinct per request).
    key_bits : numpy.ndarray of int64
        Key size of each request, bits.
    epsilon : numpy.ndarray of float64
        Security level of each request.
    seed : numpy.ndarray of int64
        A 32-bit seed per request, for seeded routing algorithms (``msp``).
    duration : float
        Length of the arrival window, seconds (arrivals lie in ``[0, duration)``).
    """

    t: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    key_bits: np.ndarray
    epsilon: np.ndarray
    seed: np.ndarray
    duration: float

    def __len__(self) -> int:
        return len(self.t)

    def head(self, n: int) -> "Requests":
        """The first ``n`` requests (same duration)."""
        return Requests(self.t[:n], self.src[:n], self.dst[:n], self.key_bits[:n], self.epsilon[:n], self.seed[:n],
                        self.duration)


def _check_positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) \
            or value <= 0:
        raise InvalidRequest(f"{what}={value!r} must be a positive number")
    return float(value)


def _check_common(key_bits, epsilon) -> tuple[int, float]:
    if isinstance(key_bits, bool) or not isinstance(key_bits, (int, np.integer)) or not 1 <= key_bits <= MAX_POOL_BITS:
        raise InvalidRequest(f"key_bits={key_bits!r} must be a positive integer (bits), at most {MAX_POOL_BITS}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or not 0.0 <= epsilon <= 1.0:
        raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
    return int(key_bits), float(epsilon)


#: Most expected arrivals (rate x duration) one run draws; more is a typo, not a run.
MAX_EXPECTED_ARRIVALS = 10**8


def _arrival_times(rng: np.random.Generator, rate: float, duration: float) -> np.ndarray:
    """Poisson arrivals in ``[0, duration)``: cumulative standard exponentials / rate."""
    if rate * duration > MAX_EXPECTED_ARRIVALS:
        raise InvalidRequest(
            f"rate x duration = {rate * duration:.3g} expected requests; at most {MAX_EXPECTED_ARRIVALS:.0e} per run"
        )
    out: list[np.ndarray] = []
    t0 = 0.0
    block = max(64, int(rate * duration * 1.05) + 64)
    while True:
        t = t0 + np.cumsum(rng.standard_exponential(block)) / rate
        if t[-1] >= duration:
            out.append(t[t < duration])
            break
        out.append(t)
        t0 = float(t[-1])
        block = max(64, block // 4)
    return np.concatenate(out)


def node_weights(network: Network, pairs: str) -> np.ndarray | None:
    """The masses of the gravity model (``None`` for uniform pairs).

    A node's mass is its ``weight`` attribute when every node has one, else
    its degree (docs/model.md section 9 [choice]).
    """
    if pairs == "uniform":
        return None
    if pairs != "gravity":
        raise InvalidRequest(f"pairs={pairs!r}: use uniform or gravity")
    a = network.arrays
    g = network.graph
    ws = [g.nodes[v].get("weight") for v in a.node_ids]
    if all(w is not None for w in ws):
        w = np.array(ws, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or np.count_nonzero(w) < 2:
            raise InvalidRequest("gravity pairs: node 'weight' must be finite, >= 0, and positive on at least 2 nodes")
        return w
    return np.diff(a.indptr).astype(np.float64)


def draw_pairs(rng: np.random.Generator, n_nodes: int, count: int, weights: np.ndarray | None = None):
    """``count`` (source, destination) index pairs, distinct ends.

    Uniform: every ordered pair of distinct nodes equally likely. Gravity:
    ``P(s, d)`` proportional to ``w[s] * w[d]`` for ``s != d``: the source
    by its marginal ``w[s] * (W - w[s])``, then the destination by weight
    among the other nodes. Pair ``i`` uses the uniforms ``2i`` and ``2i + 1``
    of the stream, whatever ``count``: the n-th pair is the same in every
    run of one seed.
    """
    if n_nodes < 2:
        raise InvalidRequest("a network needs at least 2 nodes for requests")
    u = rng.random((count, 2))
    if weights is None:
        s = np.minimum((u[:, 0] * n_nodes).astype(np.int64), n_nodes - 1)
        d = np.minimum((u[:, 1] * (n_nodes - 1)).astype(np.int64), n_nodes - 2)
        return s, d + (d >= s)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    marginal = np.cumsum(w * (total - w))
    s = np.minimum(np.searchsorted(marginal, u[:, 0] * marginal[-1], side="right"), n_nodes - 1)
    cum = np.cumsum(w)
    before = cum[s] - w[s]
    x = u[:, 1] * (total - w[s])
    x = np.where(x >= before, x + w[s], x)
    d = np.minimum(np.searchsorted(cum, x, side="right"), n_nodes - 1)
    # rounding at a boundary can only land on s itself or a zero-weight node: step to the nearest allowed one
    bad = np.flatnonzero((d == s) | (w[d] <= 0))
    for i in bad:
        allowed = np.flatnonzero((w > 0) & (np.arange(n_nodes) != s[i]))
        d[i] = allowed[np.argmin(np.abs(allowed - d[i]))]
    return s.astype(np.int64), d.astype(np.int64)


def _ppbp(rng: np.random.Generator, rate: float, duration: float, burst_seconds: float, concurrent: float,
          hurst: float) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times and burst numbers of a Poisson Pareto burst process.

    Bursts start as a Poisson process of rate ``concurrent / burst_seconds``;
    each lasts a Pareto time of mean ``burst_seconds`` and shape
    ``alpha = 3 - 2 * hurst``, and emits requests as a Poisson process of rate
    ``rate / concurrent`` while it lasts (cut at ``duration``). The mean
    request rate is ``rate``.
    """
    if not 0.5 < hurst < 1.0:
        raise InvalidRequest(f"hurst={hurst!r} must lie in (0.5, 1)")
    if rate * duration > MAX_EXPECTED_ARRIVALS:
        raise InvalidRequest(
            f"rate x duration = {rate * duration:.3g} expected requests; at most {MAX_EXPECTED_ARRIVALS:.0e} per run"
        )
    alpha = 3.0 - 2.0 * hurst
    starts = _arrival_times(rng, concurrent / burst_seconds, duration)
    xm = burst_seconds * (alpha - 1.0) / alpha
    lengths = xm / (1.0 - rng.random(starts.size)) ** (1.0 / alpha)
    ends = np.minimum(starts + lengths, duration)
    counts = rng.poisson(rate / concurrent * (ends - starts))
    burst = np.repeat(np.arange(starts.size), counts)
    t = starts[burst] + rng.random(burst.size) * (ends - starts)[burst]
    order = np.lexsort((burst, t))
    return t[order], burst[order]


def poisson_requests(
    network: Network,
    rate: float,
    duration: float,
    *,
    seed: int = 0,
    key_bits: int = DEFAULT_KEY_BITS,
    epsilon: float = DEFAULT_EPSILON,
    pairs: str = "uniform",
    arrivals: str = "poisson",
    burst_seconds: float = PPBP_BURST_SECONDS,
    concurrent: float = PPBP_CONCURRENT,
    hurst: float = PPBP_HURST,
) -> Requests:
    """Seeded request arrivals over ``[0, duration)`` seconds.

    Parameters
    ----------
    network : Network
    rate : float
        Mean arrival rate, requests per second.
    duration : float
        Arrival window, seconds.
    seed : int
        Master seed of the trace (module docstring: the streams).
    key_bits : int
        Key size of every request, bits.
    epsilon : float
        Security level of every request.
    pairs : {"uniform", "gravity"}
        End nodes: uniform over ordered pairs of distinct nodes, or a gravity
        model (:func:`draw_pairs`, masses by :func:`node_weights`).
    arrivals : {"poisson", "ppbp"}
        A Poisson process, or a Poisson Pareto burst process (:func:`_ppbp`);
        in a PPBP every request of a burst has the burst's end nodes.
    burst_seconds, concurrent, hurst : float
        PPBP only: mean burst length (s), mean number of bursts at once, and
        the Hurst parameter of the aggregate (``0.5 < hurst < 1``).

    Examples
    --------
    >>> import qkdseg
    >>> from qkdseg.sim import poisson_requests
    >>> req = poisson_requests(qkdseg.example_network(), rate=5.0, duration=10.0, seed=1)
    >>> len(req), bool((req.src != req.dst).all()), int(req.key_bits[0]), float(req.epsilon[0])
    (39, True, 256, 0.9)
    """
    rate = _check_positive(rate, "rate")
    duration = _check_positive(duration, "duration")
    key_bits, epsilon = _check_common(key_bits, epsilon)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidRequest(f"seed={seed!r} must be a non-negative integer")
    n = network.arrays.n_nodes
    weights = node_weights(network, pairs)
    if arrivals == "poisson":
        t = _arrival_times(np.random.default_rng([seed, 0]), rate, duration)
        src, dst = draw_pairs(np.random.default_rng([seed, 1]), n, t.size, weights)
    elif arrivals == "ppbp":
        t, burst = _ppbp(np.random.default_rng([seed, 3]), rate, duration, _check_positive(burst_seconds, "burst_seconds"),
                         _check_positive(concurrent, "concurrent"), float(hurst))
        n_bursts = int(burst.max()) + 1 if burst.size else 0
        bs, bd = draw_pairs(np.random.default_rng([seed, 1]), n, n_bursts, weights)
        src, dst = bs[burst], bd[burst]
    else:
        raise InvalidRequest(f"arrivals={arrivals!r}: use poisson or ppbp")
    seeds = np.random.default_rng([seed, 2]).integers(0, 2**32, t.size, dtype=np.int64)
    m = t.size
    return Requests(t, src, dst, np.full(m, key_bits, dtype=np.int64), np.full(m, epsilon), seeds, duration)


def read_trace(
    path: str | Path,
    network: Network,
    *,
    key_bits: int = DEFAULT_KEY_BITS,
    epsilon: float = DEFAULT_EPSILON,
    seed: int = 0,
    duration: float | None = None,
) -> Requests:
    """Requests from a trace file (CSV, or Parquet by suffix).

    Columns ``t`` (seconds, >= 0), ``src``, ``dst`` (node ids, matched as on
    the command line: ``"5"`` matches node ``5``), and optionally ``key_bits``
    and ``epsilon`` (else ``key_bits`` and ``epsilon`` here). Rows are sorted
    by ``t`` (stably). Per-request seeds come from ``seed`` as in
    :func:`poisson_requests`. ``duration`` defaults to the last arrival time
    (or 0 for an empty file) and must not be before it.
    """
    import pandas as pd

    p = Path(path)
    key_bits, epsilon = _check_common(key_bits, epsilon)
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
    except FileNotFoundError:
        raise InvalidRequest(f"{p}: no such trace file") from None
    except Exception as err:  # pandas/pyarrow raise many kinds on a bad file
        raise InvalidRequest(f"{p}: cannot read the trace: {str(err).strip()}") from None
    missing = [c for c in ("t", "src", "dst") if c not in df.columns]
    if missing:
        raise InvalidRequest(f"{p}: trace has no column {', '.join(missing)} (needs t, src, dst; optional key_bits, epsilon)")
    try:
        t = pd.to_numeric(df["t"]).to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InvalidRequest(f"{p}: column t must hold numbers (seconds): {err}") from None
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise InvalidRequest(f"{p}: row {int(bad[0]) + 2}: t={df['t'].iloc[bad[0]]} must be a time >= 0 (seconds)")
    lookup: dict[str, list[int]] = {}
    for i, v in enumerate(network.arrays.node_ids):
        lookup.setdefault(str(v), []).append(i)

    def resolve(col: str) -> np.ndarray:
        out = np.empty(len(df), dtype=np.int64)
        for row, v in enumerate(df[col].astype(str).tolist()):
            hit = lookup.get(v)
            if not hit or len(hit) > 1:
                what = "is not in" if not hit else "is ambiguous in"
                raise InvalidRequest(f"{p}: row {row + 2}: {col}={v!r} {what} network {network.name!r}")
            out[row] = hit[0]
        return out

    src, dst = resolve("src"), resolve("dst")
    same = np.flatnonzero(src == dst)
    if same.size:
        raise InvalidRequest(f"{p}: row {int(same[0]) + 2}: src and dst are the same node {df['src'].iloc[same[0]]!r}")
    kb = np.full(len(df), key_bits, dtype=np.int64)
    if "key_bits" in df.columns:
        col = pd.to_numeric(df["key_bits"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(col) | (col < 1) | (col != np.round(col)))
        if bad.size:
            raise InvalidRequest(f"{p}: row {int(bad[0]) + 2}: key_bits={df['key_bits'].iloc[bad[0]]} must be a positive integer")
        kb = col.astype(np.int64)
    eps = np.full(len(df), epsilon)
    if "epsilon" in df.columns:
        col = pd.to_numeric(df["epsilon"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~(col >= 0) | ~(col <= 1))
        if bad.size:
            raise InvalidRequest(f"{p}: row {int(bad[0]) + 2}: epsilon={df['epsilon'].iloc[bad[0]]} must be a probability in [0, 1]")
        eps = col
    order = np.argsort(t, kind="stable")
    last = float(t.max()) if t.size else 0.0
    if duration is None:
        duration = math.nextafter(last, math.inf) if t.size else 0.0
    elif duration <= last:
        raise InvalidRequest(f"{p}: duration {duration} ends before the trace's last arrival t={last}")
    seeds = np.random.default_rng([seed, 2]).integers(0, 2**32, t.size, dtype=np.int64)
    return Requests(t[order], src[order], dst[order], kb[order], eps[order], seeds, float(duration))
