"""What a key stock is filled up to: the policies of ``[stock] policy`` (``--stock-policy``; docs/kms.md).

- ``fixed`` (:class:`qkdseg.server.stock.FixedTarget`, the default): the
  watermarks as configured, refilled below LOW up to HIGH.
- ``adaptive`` (:class:`AdaptiveTarget`): the reorder point and the target
  follow the pair's observed demand and measured refill time, so that a
  request finds its keys in stock with probability ``[stock] hit``
  (``--stock-hit``), at the least stocked keys: the sizing rule of
  :mod:`qkdseg.supply`, the one the simulator's ``--supply adaptive`` uses.
  HIGH is the most it sizes a stock to; LOW is not used (the rule gives the
  reorder point).

A policy is ``target(pair, state) -> keys``; it may also give ``low(pair,
state)`` (the reorder point; else the configured LOW) and take the stock's
observations: ``demand(pair, keys, now)`` for every request the stock takes
(hit or miss) and ``refilled(pair, lead_s)`` for every run that added keys.
"""

from __future__ import annotations

from ..supply import DEFAULT_HIT, MIN_BATCH, Meter, Sizing

POLICIES = ("fixed", "adaptive")


class AdaptiveTarget:
    """The target and reorder point of each pair from its own :class:`qkdseg.supply.Meter` (module docstring).

    ``clock`` is the stock's; ``lead_s`` the refill time assumed before one is measured; ``high`` the most keys a
    stock is sized to.
    """

    def __init__(self, clock, *, hit: float = DEFAULT_HIT, high: int = 100_000, lead_s: float = 1.0,
                 min_batch: int = MIN_BATCH) -> None:
        self.clock, self.hit, self.high, self.lead_s = clock, float(hit), int(high), float(lead_s)
        self.min_batch = max(1, min(int(min_batch), self.high))
        self.meters: dict = {}
        self.sizing: dict = {}

    def meter(self, pair) -> Meter:
        m = self.meters.get(pair)
        if m is None:
            m = self.meters[pair] = Meter(self.clock(), lead_s=self.lead_s)
        return m

    def size(self, pair) -> Sizing:
        s = self.meter(pair).size(self.clock(), self.hit, min_batch=self.min_batch, max_keys=self.high)
        self.sizing[pair] = s
        return s

    def target(self, pair, state) -> int:
        return self.size(pair).target

    def low(self, pair, state) -> int:
        s = self.sizing.get(pair) or self.size(pair)
        return s.low

    def demand(self, pair, keys: int, now: float) -> None:
        self.meter(pair).demand(int(keys), now)

    def refilled(self, pair, lead_s: float) -> None:
        self.meter(pair).refilled(lead_s)


def adaptive_for(config, clock) -> AdaptiveTarget | None:
    """The adaptive policy of a checked ``[stock]`` table (:class:`qkdseg.server.stockconfig.StockConfig`), or
    None when its policy is ``fixed``."""
    if config.policy != "adaptive":
        return None
    return AdaptiveTarget(clock, hit=config.hit, high=config.high)
