"""Key stocks: keys relayed ahead of demand for chosen SAE pairs, refilled in the background (docs/kms.md).

A stocked key is a spare key made on purpose: a **refill run** relays a
block of keys for a pair with no SAE waiting, and keeps every key it makes
as a spare key of the pair (at both ends in the network of nodes). An
``enc_keys`` that the stock can cover whole (the stock's key size, a level
at most the stock's) is then served from those spare keys at once, the way
spare keys are served anyway; nothing is planned, no link key is spent.

:class:`Stock` is the same in both deployments. It keeps, per pair, the
counters (:class:`PairState`: keys in stock, target, hits, misses, refill
runs, failures, keys refilled, keys expired unused) and runs the **refill
scheduler** (:meth:`Stock.run`): once a pair's stock falls below its LOW
watermark, it asks the deployment's refill callback for runs of up to
``target - keys`` keys (at most ``block`` a run) until the stock reaches its
target; one run per pair at a time; after a failed run (or one that added nothing) the pair waits, the
wait doubling from ``backoff[0]`` up to ``backoff[1]`` seconds, and a run
that works ends the wait. The deployment gives two callables:

- ``count(pair)``: how many keys its stock holds now (its spare keys of the
  stock's size and level, not expired);
- ``refill(pair, n)``: relay up to ``n`` keys for the pair and keep them
  all as its spare keys; returns how many (``kms serve``: in its own
  process; a network node: a plan from the controller and the relay).

The target is set by a **policy** (:class:`Policy`: ``target(pair, state)
-> keys``); the default, :class:`FixedTarget`, is the HIGH watermark;
``[stock] policy = "adaptive"`` sizes each stock by its demand
(:class:`qkdseg.server.stockpolicy.AdaptiveTarget`: a reorder point
``low(pair, state)`` beside the target, fed with every request's keys and
every run's lead time, from its first try to its keys in stock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

from .stockconfig import StockConfig
from .stockpolicy import adaptive_for

logger = logging.getLogger("qkdseg.stock")

Pair = tuple[str, str]
#: Seconds between two looks at the stocks when nothing wakes the scheduler (a served request or an expiry does).
PERIOD_S = 1.0
#: The wait after a failed refill run: doubling from the first to the second (seconds).
BACKOFF_S = (0.5, 8.0)


@dataclass
class PairState:
    """One pair's stock as counted (``keys``, ``target``) and what happened to it since the start."""

    keys: int = 0  # keys in the stock when last counted
    target: int = 0  # what a refill fills it up to (the policy's)
    hits: int = 0  # requests served from the stock whole
    misses: int = 0  # requests the stock could serve (its size, a level at most its) that it could not cover whole
    keys_served: int = 0
    refill_runs: int = 0  # runs that added keys
    refill_failures: int = 0  # runs that failed or added none
    keys_asked: int = 0  # keys the refill runs asked for (a run may make fewer: the links' reserve)
    keys_refilled: int = 0
    expired_unused: int = 0  # stocked keys deleted after key_ttl_s, never issued
    dropped_one_end: int = 0  # spare keys of the pair dropped because the other end does not hold them (a crash)
    filling: bool = False  # it fell below LOW and has not reached its target since: runs go on
    refilling: bool = False  # a run is under way
    wait_s: float = 0.0  # the backoff now (0: none)
    next_try: float = 0.0  # (monotonic) no run starts before this
    last_error: str | None = None


class Policy(Protocol):
    """What a stock is filled up to: ``target(pair, state) -> keys`` (at least the LOW watermark is sensible)."""

    def target(self, pair: Pair, state: PairState) -> int: ...


class FixedTarget:
    """The default policy: every stock is filled up to the HIGH watermark."""

    def __init__(self, high: int) -> None:
        self.high = high

    def target(self, pair: Pair, state: PairState) -> int:
        return self.high


def usable(rows: Iterable, size: int, level: float, now: float) -> list:
    """The rows (spare keys) a stock of ``size`` bits at ``level`` counts: that size, at least that security,
    not expired at ``now``."""
    return [row for row in rows if row.size == size and row.security >= level and row.expires_at > now]


class Stock:
    """The stocks of one service (see the module docstring).

    Parameters
    ----------
    config : StockConfig
    count : callable
        ``count(pair) -> int``: keys in the pair's stock now.
    refill : async callable, optional
        ``refill(pair, n) -> int``: keys added by one run (raises when it fails). None: this service never
        refills (a network node that holds only the slave's copies).
    refills : iterable of pairs, optional
        The pairs this service refills (default: every pair of ``config`` when ``refill`` is given).
    policy : Policy, optional
        Default :class:`FixedTarget` at ``config.high``.
    block : int
        The most keys one run asks for.
    canon : callable
        The stock a request's ``(master, slave)`` belongs to (``kms serve``: one stock serves both directions).
    runs : int, optional
        The most runs under way at once, the emptiest stocks first (None: one per pair). A network node caps them:
        each run's relay takes its event loop for a few milliseconds at its start and its end, and stocks drained
        together would otherwise start all their runs at once, holding up the requests it serves meanwhile.
    """

    def __init__(self, config: StockConfig, count: Callable[[Pair], int],
                 refill: Callable[[Pair, int], Awaitable[int]] | None = None, *, refills: Iterable[Pair] | None = None,
                 policy: Policy | None = None, block: int = 128, canon: Callable[[Pair], Pair] = tuple,
                 period: float = PERIOD_S, backoff: tuple[float, float] = BACKOFF_S, clock=time.monotonic,
                 runs: int | None = None) -> None:
        self.runs = runs
        self.config = config
        self.canon = canon
        self.count_now = count
        self.refill = refill
        self.policy = policy or adaptive_for(config, clock) or FixedTarget(config.high)
        self._first_try: dict[Pair, float] = {}  # (adaptive) when the pair's pending refill was first tried
        self._low: dict[Pair, int] = {}  # (adaptive) the reorder point the policy gave last: shown as "low"
        self.block = max(1, int(block))
        self.period, self.backoff, self.clock = period, backoff, clock
        self.states: dict[Pair, PairState] = {}
        self.names: dict[Pair, str] = {}  # the stock's name: the pair as configured, MASTER:SLAVE
        for pair in config.pairs:
            key = canon(pair)
            if key not in self.states:
                self.states[key] = PairState(target=self.policy.target(key, PairState()))
                self.names[key] = f"{pair[0]}:{pair[1]}"
        wanted = config.pairs if refills is None else refills
        self.refilled = set() if refill is None else {canon(p) for p in wanted if canon(p) in self.states}
        self._wake: asyncio.Event | None = None
        self._runs: dict[Pair, asyncio.Task] = {}

    # -- what the services call ------------------------------------------------------
    def state(self, pair: Pair) -> PairState | None:
        """The pair's stock (None: not stocked)."""
        return self.states.get(self.canon(pair))

    def takes(self, pair: Pair, size: int, level: float) -> bool:
        """Whether a request of ``pair`` for keys of ``size`` bits at ``level`` is one the stock serves."""
        return self.canon(pair) in self.states and size == self.config.size and level <= self.config.level

    def served(self, pair: Pair, keys: int) -> None:
        """A request served from the stock whole (a hit)."""
        st = self.state(pair)
        if st is not None:
            st.hits += 1
            st.keys_served += keys
            self._saw(pair, keys)
            self.poke()

    def missed(self, pair: Pair, keys: int = 1) -> None:
        """A request (of ``keys`` keys) the stock serves (:meth:`takes`) that it could not cover whole: relayed on
        demand."""
        st = self.state(pair)
        if st is not None:
            st.misses += 1
            self._saw(pair, keys)
            self.poke()

    def _saw(self, pair: Pair, keys: int) -> None:
        """A request of the pair's stock, hit or miss: the policy's demand (an adaptive policy's meter)."""
        demand = getattr(self.policy, "demand", None)
        if demand is not None:
            demand(self.canon(pair), keys, self.clock())

    def expired(self, pair: Pair, keys: int) -> None:
        """``keys`` stocked keys of ``pair`` deleted after key_ttl_s, never issued."""
        st = self.state(pair)
        if st is not None and keys:
            st.expired_unused += keys
            self.poke()

    def expired_rows(self, pair: Pair, rows: Iterable) -> None:
        """Spare keys of ``pair`` deleted after key_ttl_s: those of the stock's size and level were stocked keys."""
        c = self.config
        self.expired(pair, sum(1 for row in rows if row.size == c.size and row.security >= c.level))

    def dropped(self, pair: Pair, keys: int) -> None:
        """``keys`` spare keys of ``pair`` deleted because the other end of the pair does not hold them."""
        st = self.state(pair)
        if st is not None and keys:
            st.dropped_one_end += keys
            self.poke()

    def count(self, pair: Pair) -> int:
        """The keys in the pair's stock now (counted again, remembered in its state)."""
        key = self.canon(pair)
        st = self.states[key]
        st.keys = int(self.count_now(key))
        return st.keys

    def view(self, pair: Pair) -> dict | None:
        """What ``status`` says of the pair's stock (None: not stocked): its keys (counted now), target,
        watermarks, level and key size."""
        key = self.canon(pair)
        if key not in self.states:
            return None
        c = self.config
        return {"keys": self.count(key), "target": self.states[key].target, "low": self._low.get(key, c.low),
                "high": c.high, "level": c.level, "size": c.size}

    def poke(self) -> None:
        """Look at the stocks now (a request took keys, keys expired)."""
        if self._wake is not None:
            self._wake.set()

    def snapshot(self) -> dict:
        """Every stock, by name (``MASTER:SLAVE``): its configuration and its :class:`PairState`, counted now."""
        c = self.config
        out = {}
        for key, st in self.states.items():
            self.count(key)
            out[self.names[key]] = {**asdict(st), "low": self._low.get(key, c.low), "high": c.high, "level": c.level,
                                    "size": c.size, "refilled_here": key in self.refilled}
            del out[self.names[key]]["next_try"]
        return out

    # -- the scheduler ---------------------------------------------------------------------
    def due(self) -> list[tuple[Pair, int]]:
        """The runs to start now: ``(pair, keys to ask for)`` of every refilled pair that is filling (it fell below
        LOW and has not reached its target since), with no run under way and no backoff pending (at most ``runs``
        under way in all, the emptiest first); each is marked refilling."""
        now = self.clock()
        wanted = []
        for key in self.refilled:
            st = self.states[key]
            if st.refilling or now < st.next_try:
                continue
            have = self.count(key)
            st.target = max(0, int(self.policy.target(key, st)))
            low = self.config.low
            if hasattr(self.policy, "low"):
                low = self._low[key] = self.policy.low(key, st)
            if have < low:
                st.filling = True
            if have >= st.target:
                st.filling = False
            if st.filling:
                wanted.append((have / max(1, st.target), key, have))
        room = len(wanted) if self.runs is None else max(0, self.runs - sum(
            1 for s in self.states.values() if s.refilling))
        out = []
        for _, key, have in sorted(wanted)[:room]:
            st = self.states[key]
            st.refilling = True
            n = min(st.target - have, self.block)
            st.keys_asked += n
            self._first_try.setdefault(key, now)
            out.append((key, n))
        return out

    def finished(self, pair: Pair, added: int | None, error: BaseException | None = None) -> None:
        """A run of ``pair`` ended: ``added`` keys, or failed with ``error`` (a run that added none failed too)."""
        st = self.states[self.canon(pair)]
        st.refilling = False
        if error is None and added:
            first = self._first_try.pop(self.canon(pair), None)
            if first is not None and hasattr(self.policy, "refilled"):
                self.policy.refilled(self.canon(pair), self.clock() - first)
            st.refill_runs += 1
            st.keys_refilled += added
            st.wait_s, st.next_try, st.last_error = 0.0, 0.0, None
            return
        st.refill_failures += 1
        st.last_error = "no key added" if error is None else (getattr(error, "message", None) or type(error).__name__)
        st.wait_s = self.backoff[0] if st.wait_s <= 0 else min(self.backoff[1], 2 * st.wait_s)
        st.next_try = self.clock() + st.wait_s

    async def _one(self, pair: Pair, n: int) -> None:
        try:
            added = await self.refill(pair, n)
        except asyncio.CancelledError:
            self.states[pair].refilling = False
            raise
        except Exception as err:  # noqa: BLE001 -- a failed run: backoff, tried again later
            logger.info("stock %s: refill of %d keys failed: %s", self.names[pair], n,
                        getattr(err, "message", None) or type(err).__name__)
            self.finished(pair, None, err)
        else:
            self.finished(pair, added)
        finally:
            self._runs.pop(pair, None)
            self.poke()

    async def run(self) -> None:
        """Refill the stocks until cancelled (then the runs under way are cancelled too: each voids its own)."""
        if not self.refilled:
            return
        wake = self._wake = asyncio.Event()  # this scheduler's (a stopped one's cleanup leaves a newer one's alone)
        loop = asyncio.get_running_loop()
        try:
            while True:
                wake.clear()
                try:
                    for pair, n in self.due():
                        self._runs[pair] = loop.create_task(self._one(pair, n))
                except Exception:  # noqa: BLE001 -- a count that failed: logged, looked at again later
                    logger.exception("stock scheduler pass failed")
                waits = [st.next_try for st in self.states.values() if st.next_try > self.clock()]
                timeout = min([self.period] + [w - self.clock() for w in waits])
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.01, timeout))
        finally:
            runs = list(self._runs.values())
            for task in runs:
                task.cancel()
            for task in runs:
                with contextlib.suppress(BaseException):
                    await task
            if self._wake is wake:
                self._wake = None
