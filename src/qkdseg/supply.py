"""How big a key stock should be: the sizing rule of the adaptive supply policy (docs/model.md, "Key supply").

One implementation, below both users: the key service's stocks
(:mod:`qkdseg.server.stockpolicy`, ``--stock-policy adaptive``) and the
time-dynamic simulator's supply policies (:mod:`qkdseg.sim.supply`,
``qkdseg simulate --supply adaptive``). Pure: numbers in, numbers out, the
time always passed in.

The rule (:func:`size`). A stock is refilled once it holds ``s`` keys or
fewer (fewer than its LOW, ``s + 1``), up to ``target = s + batch``; a refill takes
the **lead time** ``R`` (measured: from the run's first try to the keys in
stock). While it runs, requests keep taking keys; those that find the stock
short are relayed on demand (misses). With ``lam`` keys per second asked of
the pair and ``I`` the index of dispersion of the keys asked in a window
(variance over mean: 1 for Poisson requests of one key, the keys per request
for Poisson requests of several, more for bursts), the keys asked during
``R`` are modelled as ``D = I * Poisson(lam * R / I)`` (mean ``lam * R``,
variance ``I * lam * R``; exact for Poisson requests of ``I`` keys each).
``s`` is the least whole number with

    E[(D - s)^+] <= (1 - hit) * batch

(the keys expected short in one refill cycle are at most the share
``1 - hit`` of the keys one cycle serves: a request finds its keys in stock
with probability ``hit``, the fill rate of inventory theory), and ``batch =
max(min_batch, ceil(lam * R))`` (one run at a time keeps up with the mean
demand). The stocked keys then average about ``s - lam * R + batch / 2``:
the least for that ``hit``, and it shrinks with the demand (no demand over
the window: LOW and the target 0, nothing is refilled; what is left expires;
a new stock, before its first request, holds one batch).

:class:`Meter` gives ``lam``, ``I`` and ``R`` from what a stock sees: the keys
of each request it takes (hits and misses), counted in bins of ``bin_s``
seconds over the last ``window_s`` seconds (the rate: the larger of the
window's mean and the last ``fast_s`` seconds' mean, so that it rises at
once with a step in demand and falls over the window after it); and each
refill's lead time (the largest of the last :data:`LEADS` kept).

QuIKS (Chen, Xia, Li, Xue et al., arXiv 2604.09144, 2026) sizes each pair's
buffer with an analytical model and controls relay requests and buffer size
in two phases; its code is not public, and this is not its model. Ours is the
classic (s, S) inventory rule with a fill-rate target, fed by measured
demand and lead time (docs/model.md says where it differs).

>>> s = size(rate=20.0, dispersion=1.0, lead_s=0.05, hit=0.99)
>>> (s.low, s.target, s.batch)
(4, 7, 4)
>>> size(rate=0.0, dispersion=1.0, lead_s=0.05).target
0
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .errors import InvalidRequest

#: The share of requests that should find their keys in stock, by default.
DEFAULT_HIT = 0.99
#: The share of each link's pool a refill leaves for the requests relayed on demand (docs/model.md).
DEFAULT_RESERVE = 0.25
#: The fewest keys a refill run asks for (batching: a run's messages are spent on a block of keys).
MIN_BATCH = 4
#: The meter's bin (s), window (s) and fast window (s).
BIN_S, WINDOW_S, FAST_S = 1.0, 60.0, 5.0
#: Refill lead times a meter keeps (the largest is the one used).
LEADS = 16
#: The most keys a stock is sized to.
MAX_KEYS = 100_000


@dataclass(frozen=True)
class Sizing:
    """What :func:`size` gives: the reorder point, the target (both keys), the batch, and the stocked keys
    expected on average (``mean_keys``) with the keys expected short per cycle (``short``)."""

    low: int
    target: int
    batch: int
    mean_keys: float
    short: float


def check_hit(hit, what: str = "hit") -> float:
    """``hit`` as a float in (0, 1) (:class:`InvalidRequest` naming ``what`` otherwise)."""
    if isinstance(hit, bool) or not isinstance(hit, (int, float)) or not 0.0 < float(hit) < 1.0:
        raise InvalidRequest(f"{what} {hit!r} must be a probability in (0, 1), e.g. 0.99")
    return float(hit)


class _Lead:
    """``D = I * Poisson(mean / I)``: the keys asked during a lead time, with its Poisson tails computed once."""

    def __init__(self, mean: float, dispersion: float = 1.0) -> None:
        self.disp = max(float(dispersion), 1e-9)
        self.mu = max(0.0, float(mean)) / self.disp
        mu = self.mu
        self.last = int(mu + 12.0 * math.sqrt(mu) + 30) if mu > 0 else 0
        pmf = [math.exp(n * math.log(mu) - mu - math.lgamma(n + 1)) for n in range(self.last + 1)] if mu > 0 \
            else [1.0]
        tail = [0.0] * (self.last + 2)  # tail[k] = P(N >= k), summed from the top (no cancellation)
        for n in range(self.last, -1, -1):
            tail[n] = tail[n + 1] + pmf[n]
        self.tail = tail

    def shortage(self, low: float) -> float:
        """``E[(D - low)^+]``: ``I * (mu * P(N >= k - 1) - c * P(N >= k))`` with ``c = low / I``, ``k`` the
        least whole number above ``c``."""
        if low < 0:
            return self.disp * self.mu - low
        c = low / self.disp
        k = math.floor(c) + 1
        if k - 1 > self.last:
            return 0.0
        return max(0.0, self.disp * (self.mu * self.tail[k - 1] - c * self.tail[min(k, self.last + 1)]))


def shortage(low: float, mean: float, dispersion: float = 1.0) -> float:
    """``E[(D - low)^+]`` for ``D = I * Poisson(mean / I)``, ``I = dispersion`` (>= 1 is sensible).

    >>> round(shortage(0, 2.0), 6), round(shortage(1, 1.0), 6)
    (2.0, 0.367879)
    """
    return _Lead(mean, dispersion).shortage(low)


def size(rate: float, dispersion: float, lead_s: float, hit: float = DEFAULT_HIT, *, min_batch: int = MIN_BATCH,
         max_keys: int = MAX_KEYS) -> Sizing:
    """The reorder point and target of a stock asked ``rate`` keys/s with index of dispersion ``dispersion``,
    refilled in ``lead_s`` seconds, for a fill rate ``hit`` (module docstring). ``low`` is in the stock's own terms:
    it is refilled once it holds fewer than ``low`` keys (``s + 1``, ``s`` the rule's reorder level); no demand
    gives ``low = target = 0``."""
    hit = check_hit(hit)
    rate, lead = max(0.0, float(rate)), max(0.0, float(lead_s))
    disp = max(1.0, float(dispersion))
    if rate <= 0:
        return Sizing(0, 0, 0, 0.0, 0.0)
    mean = rate * lead
    batch = max(int(min_batch), math.ceil(mean - 1e-9), 1)
    allowed = (1.0 - hit) * batch
    d = _Lead(mean, disp)
    lo, hi = 0, max(1, math.ceil(disp * (d.last + 1)))
    if d.shortage(lo) > allowed:
        while lo + 1 < hi:  # shortage(lo) > allowed >= shortage(hi): shortage falls as the level grows
            mid = (lo + hi) // 2
            if d.shortage(mid) > allowed:
                lo = mid
            else:
                hi = mid
        level = hi
    else:
        level = 0
    level = min(level, max(0, max_keys - batch))
    target = min(max_keys, level + batch)
    return Sizing(min(level + 1, target), target, batch, max(0.0, level - mean) + batch / 2.0, d.shortage(level))


class Meter:
    """What one stock has seen: the keys its requests asked for (binned) and its refills' lead times.

    ``now`` is always given (simulated or monotonic seconds). ``lead_s`` is the lead time assumed before
    any refill has been measured.
    """

    def __init__(self, now: float, *, lead_s: float = 1.0, bin_s: float = BIN_S, window_s: float = WINDOW_S,
                 fast_s: float = FAST_S) -> None:
        if not (bin_s > 0 and window_s >= bin_s and fast_s >= bin_s):
            raise InvalidRequest(f"meter bins {bin_s}, window {window_s}, fast {fast_s}: need 0 < bin <= windows")
        self.bin_s, self.window_s, self.fast_s = float(bin_s), float(window_s), float(fast_s)
        self.nbins = max(1, round(window_s / bin_s))
        self.nfast = max(1, round(fast_s / bin_s))
        self.start = float(now)
        self.bins: deque[list] = deque()  # [bin index, keys], oldest first, only bins with keys
        self.requests = 0
        self.keys = 0
        self.prior = float(lead_s)
        self.leads: deque[float] = deque(maxlen=LEADS)

    # -- observations ------------------------------------------------------------------------
    def demand(self, keys: int, now: float) -> None:
        """A request of ``keys`` keys (served from stock or not)."""
        b = math.floor(now / self.bin_s)
        if self.bins and self.bins[-1][0] == b:
            self.bins[-1][1] += keys
        else:
            self.bins.append([b, keys])
        self.requests += 1
        self.keys += keys
        self._trim(b)

    def refilled(self, lead_s: float) -> None:
        """A refill run landed ``lead_s`` seconds after its first try."""
        if lead_s >= 0 and math.isfinite(lead_s):
            self.leads.append(float(lead_s))

    def _trim(self, b: int) -> None:
        while self.bins and self.bins[0][0] <= b - self.nbins:
            self.bins.popleft()

    # -- estimates -----------------------------------------------------------------------------
    def lead(self) -> float:
        """The lead time used: the largest of the last :data:`LEADS` measured (the prior before any)."""
        return max(self.leads) if self.leads else self.prior

    def counts(self, now: float) -> list[int]:
        """Keys asked per bin over the window (oldest first; bins before the meter started left out; the bin
        of ``now`` is the last)."""
        b = math.floor(now / self.bin_s)
        self._trim(b)
        first = max(b - self.nbins + 1, math.floor(self.start / self.bin_s))
        out = [0] * (b - first + 1)
        for i, k in self.bins:
            if i >= first:
                out[i - first] += k
        return out

    def rate(self, now: float) -> float:
        """Keys per second: the larger of the window's mean and the last ``fast_s`` seconds' mean (each over the
        time the meter has been running, at least one bin)."""
        c = self.counts(now)
        elapsed = max(self.bin_s, now - self.start)
        slow = sum(c) / min(self.window_s, elapsed)
        fast = sum(c[-self.nfast:]) / min(self.fast_s, elapsed)
        return max(slow, fast)

    def dispersion(self, now: float, lead_s: float | None = None) -> float:
        """Variance over mean of the keys asked per window of ``max(bin_s, lead_s)`` seconds (bins merged), over
        the meter's window; at least the mean keys per request (Poisson requests of that many keys)."""
        per_request = self.keys / self.requests if self.requests else 1.0
        c = self.counts(now)[:-1]  # whole bins only
        k = max(1, math.ceil((lead_s or 0.0) / self.bin_s - 1e-9))
        groups = [sum(c[i:i + k]) for i in range(len(c) % k, len(c), k)]
        if len(groups) < 2:
            return max(1.0, per_request)
        mean = sum(groups) / len(groups)
        if mean <= 0:
            return max(1.0, per_request)
        var = sum((g - mean) ** 2 for g in groups) / (len(groups) - 1)
        return max(1.0, per_request, var / mean)

    def size(self, now: float, hit: float = DEFAULT_HIT, *, min_batch: int = MIN_BATCH,
             max_keys: int = MAX_KEYS) -> Sizing:
        """:func:`size` on this meter's estimates at ``now``; a stock that has seen no request yet, in its first
        window, starts with one batch (refilled once empty): demand that never came is not demand that fell."""
        if not self.requests and now - self.start < self.window_s:
            batch = max(1, min(int(min_batch), max_keys))
            return Sizing(1, batch, batch, batch / 2.0, 0.0)
        lead = self.lead()
        return size(self.rate(now), self.dispersion(now, lead), lead, hit, min_batch=min_batch, max_keys=max_keys)
