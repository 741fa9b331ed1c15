"""Quotas of a key service: ``max_key_count``, per SAE pair ``sae_max_waiting``, per SAE ``sae_rate``.

One implementation for both deployments (``kms serve`` and a network node):

- ``max_key_count``: the keys issued to masters and not yet fetched by their
  slaves, counted where they wait (the whole service for ``kms serve``, the
  slave's node in a network). Keys held in a stock (spare keys) are not
  issued and do not count.
- ``sae_max_waiting`` (0: none): the same count for one master-slave pair.
- ``sae_rate`` (0: none): requests per second of one SAE at its KME, a token
  bucket holding at most ``max(1, sae_rate)`` requests.

A request that would pass a limit is refused with 503 before anything is
issued; the message names the limit, the reason code is the limit's name
(counted by ``/metrics``' ``qkdseg_refusals{reason=...}`` from the audited
refusal). A network's master's node asks the slave's node for room first
(:meth:`Quotas.reserve`, docs/model.md); the room it holds counts until the
relay's keys are stored there, or :data:`HOLD_S` seconds at most.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .etsi import KmsError

#: The limits, by reason code (the order in which a refusal's message is matched).
LIMITS = ("sae_max_waiting", "max_key_count", "sae_rate")
#: Seconds room held at a slave's node for a relay that has not stored its keys yet (twice a source's wait).
HOLD_S = 20.0


def settings(cfg) -> tuple[int, int, float]:
    """``(max_key_count, sae_max_waiting, sae_rate)`` of a ``kms.toml`` or a node's ``etsi`` settings (0: none)."""
    return (int(cfg.max_key_count), int(getattr(cfg, "sae_max_waiting", 0) or 0),
            float(getattr(cfg, "sae_rate", 0) or 0))


def refusal(message: str) -> KmsError:
    """The 503 of a limit's ``message`` (as a slave's node gave it), with the limit's reason code."""
    reason = next((name for name in LIMITS if name in message), "unavailable")
    return KmsError(503, message, reason=reason)


class Quotas:
    """The limits of one service; ``clock`` is monotonic (tests give their own)."""

    def __init__(self, cfg, clock=time.monotonic) -> None:
        self.max_count, self.pair_max, self.rate = settings(cfg)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # SAE -> (tokens, time)
        self.held: dict[tuple, list[tuple[float, int]]] = {}  # (master, slave) -> [(until, keys)] room held

    # -- sae_rate ---------------------------------------------------------------------------
    def admit(self, sae: str) -> None:
        """Take one request of ``sae`` from its token bucket (503 ``sae_rate`` when empty)."""
        if self.rate <= 0:
            return
        now = self.clock()
        burst = max(1.0, self.rate)
        tokens, last = self.buckets.get(sae, (burst, now))
        tokens = min(burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[sae] = (tokens, now)
            raise KmsError(503, f"SAE {sae!r} is over its request rate (sae_rate={self.rate:g} requests/s); "
                                "try again later", reason="sae_rate")
        self.buckets[sae] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:  # SAE ids come from certificates the CA signed; bounded anyway
            self.buckets.clear()

    # -- max_key_count, sae_max_waiting -----------------------------------------------------
    def _held(self, pair: tuple | None = None) -> int:
        now = self.clock()
        total = 0
        for p in list(self.held):
            rows = [h for h in self.held[p] if h[0] > now]
            if rows:
                self.held[p] = rows
            else:
                del self.held[p]
            if pair is None or p == pair:
                total += sum(n for _, n in rows)
        return total

    def check(self, waiting: Iterable, pair: tuple, number: int) -> None:
        """Refuse (503) ``number`` more keys for ``pair`` = (master, slave) when ``waiting`` (the rows issued and
        not fetched, where they wait) and the room held would pass ``max_key_count`` or ``sae_max_waiting``."""
        rows = list(waiting) if self.pair_max else waiting
        total = len(rows) + self._held()
        if total + number > self.max_count:
            raise KmsError(503, f"max_key_count={self.max_count} keys are waiting for their slaves ({total} now); "
                                "nothing was issued; try again later", reason="max_key_count")
        if self.pair_max:
            mine = sum(1 for r in rows if (r.master, r.slave) == pair) + self._held(pair)
            if mine + number > self.pair_max:
                raise KmsError(503, f"sae_max_waiting={self.pair_max} keys of {pair[0]} are waiting for {pair[1]} "
                                    f"({mine} now); nothing was issued; try again later", reason="sae_max_waiting")

    def reserve(self, waiting: Iterable, pair: tuple, number: int, hold_s: float = HOLD_S) -> tuple:
        """:meth:`check`, then hold room for ``number`` keys of ``pair``; returns the hold (for :meth:`release`)."""
        self.check(waiting, pair, number)
        hold = (self.clock() + hold_s, int(number))
        self.held.setdefault(pair, []).append(hold)
        return hold

    def release(self, pair: tuple, hold: tuple | None = None, number: int | None = None) -> None:
        """Give back ``hold``, or the oldest hold of ``number`` keys of ``pair`` (a relay's keys stored)."""
        rows = self.held.get(pair)
        if not rows:
            return
        for h in rows:
            if h == hold or (hold is None and h[1] == number):
                rows.remove(h)
                break
        if not rows:
            del self.held[pair]
