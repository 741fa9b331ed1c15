"""The ``[stock]`` table of ``kms.toml`` (and of a node's ``node.json``): which SAE pairs keep a key stock.

``kms init`` and ``net init`` take ``--stock MASTER:SLAVE`` (repeat),
``--stock-keys LOW:HIGH``, ``--stock-level L`` and ``--stock-size BITS``;
:func:`stock_table` turns the flags into the table, :func:`parse_stock`
checks a table (naming the flag, or the file and field, at fault) and gives
the :class:`StockConfig` the services run on (:mod:`.stock`). docs/kms.md,
"Key stocks".

>>> t = stock_table(["A:B"], "8:32", None, None, security_level=0.9, key_size=256)
>>> t
{'pairs': ['A:B'], 'low': 8, 'high': 32, 'level': 0.9, 'size': 256, 'reserve': 0.25}
>>> parse_stock(t, saes={"A": "0", "B": "7"}, min_size=64, max_size=4096).pairs
(('A', 'B'),)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import InvalidRequest
from ..supply import DEFAULT_HIT, DEFAULT_RESERVE

#: The default watermarks (keys) of a stock: refilled when below LOW, up to HIGH.
DEFAULT_LOW, DEFAULT_HIGH = 16, 64
#: The most keys one stock may hold.
MAX_STOCK_KEYS = 100_000
#: The flag of each field (``kms init``, ``net init``).
FLAGS = {"pairs": "--stock", "low": "--stock-keys", "high": "--stock-keys", "level": "--stock-level",
         "size": "--stock-size", "reserve": "[stock] reserve", "policy": "--stock-policy", "hit": "--stock-hit"}
#: The stock policies (qkdseg.server.stockpolicy): the watermarks as configured, or sized by demand.
POLICIES = ("fixed", "adaptive")


@dataclass(frozen=True)
class StockConfig:
    """The checked ``[stock]`` table.

    Attributes
    ----------
    pairs : tuple
        ``(master, slave)`` SAE pairs, in ETSI 014's direction, that keep a stock.
    low, high : int
        The watermarks, in keys: a stock below ``low`` is refilled up to its target (``high`` by default).
    level : float
        The security level of the stocked keys: a request at a level at most this one, with key size ``size``,
        is served from the stock.
    size : int
        The stocked keys' size, bits.
    reserve : float
        The share of each link's pool a refill leaves for requests relayed on demand.
    policy : str
        ``fixed`` (the watermarks) or ``adaptive`` (sized by demand, :mod:`qkdseg.supply`; HIGH its cap).
    hit : float
        ``adaptive``: the share of requests that should find their keys in stock.
    """

    pairs: tuple[tuple[str, str], ...]
    low: int = DEFAULT_LOW
    high: int = DEFAULT_HIGH
    level: float = 0.9
    size: int = 256
    reserve: float = DEFAULT_RESERVE
    policy: str = "fixed"
    hit: float = DEFAULT_HIT

    def table(self) -> dict:
        """The ``[stock]`` table (as written to ``kms.toml`` and ``node.json``; the policy only when not fixed)."""
        out = {"pairs": [f"{m}:{s}" for m, s in self.pairs], "low": self.low, "high": self.high,
               "level": self.level, "size": self.size, "reserve": self.reserve}
        if self.policy != "fixed" or self.hit != DEFAULT_HIT:
            out.update(policy=self.policy, hit=self.hit)
        return out

    def only(self, saes) -> "StockConfig":
        """The same stock with only the pairs whose master or slave is one of ``saes`` (a node's own)."""
        mine = set(saes)
        return replace(self, pairs=tuple(p for p in self.pairs if p[0] in mine or p[1] in mine))


def _pair(text: str) -> tuple[str, str] | None:
    master, sep, slave = str(text).partition(":")
    return (master, slave) if sep and master and slave else None


def stock_table(pairs: list[str], keys: str | None, level: float | None, size: int | None, *,
                security_level: float, key_size: int, policy: str | None = None, hit: float | None = None) -> dict:
    """The ``[stock]`` table of the ``--stock*`` flags (``{}`` without ``--stock``); :class:`InvalidRequest`
    (one line naming the flag) for a value that cannot be read. The values themselves: :func:`parse_stock`.
    ``policy`` and ``hit`` are written only when given."""
    if not pairs:
        given = [flag for flag, val in (("--stock-keys", keys), ("--stock-level", level), ("--stock-size", size),
                                        ("--stock-policy", policy), ("--stock-hit", hit)) if val is not None]
        if given:
            raise InvalidRequest(f"{given[0]} needs at least one --stock MASTER:SLAVE")
        return {}
    low, high = DEFAULT_LOW, DEFAULT_HIGH
    if keys is not None:
        a, sep, b = keys.partition(":")
        try:
            if not sep:
                raise ValueError
            low, high = int(a), int(b)
        except ValueError:
            raise InvalidRequest(f"--stock-keys {keys!r} must be LOW:HIGH, two whole numbers of keys (e.g. 16:64)"
                                 ) from None
    out = {"pairs": list(pairs), "low": low, "high": high,
           "level": security_level if level is None else level, "size": key_size if size is None else size,
           "reserve": DEFAULT_RESERVE}
    if policy is not None or hit is not None:
        out.update(policy="fixed" if policy is None else policy, hit=DEFAULT_HIT if hit is None else hit)
    return out


def parse_stock(table, *, saes: dict, min_size: int, max_size: int, where: str = "kms.toml",
                flags: bool = False) -> StockConfig:
    """Check ``table`` against the SAE registry ``saes`` (SAE id -> node) and the accepted key sizes.

    :class:`InvalidRequest`, one line: naming the flag (``flags``: the values
    came from ``kms init``/``net init``), else ``where`` and the field. A pair
    whose two SAEs sit at one node is refused (their keys are made there, at
    once: nothing to stock); so is a pair given twice.
    """
    def bad(name: str, value, why: str) -> InvalidRequest:
        if flags:
            return InvalidRequest(f"{FLAGS[name]} {value} {why}")
        return InvalidRequest(f"{where}: [stock] {name}={value!r} {why}")

    if not isinstance(table, dict):
        raise InvalidRequest(f"{where}: [stock] must be a table (pairs, low, high, level, size, reserve)")
    unknown = sorted(set(table) - set(FLAGS))
    if unknown:
        raise InvalidRequest(f"{where}: [stock]: unknown field(s) {', '.join(unknown)} (known: {', '.join(FLAGS)})")
    raw = table.get("pairs")
    if not isinstance(raw, list) or not raw:
        raise bad("pairs", raw, "must list at least one MASTER:SLAVE pair of SAE ids")
    pairs = []
    for item in raw:
        pair = _pair(item) if isinstance(item, str) else None
        if pair is None:
            raise bad("pairs", repr(item) if flags else item, "must be MASTER:SLAVE (two SAE ids)")
        for sae in pair:
            if sae not in saes:
                raise bad("pairs", item, f"names SAE {sae!r}, which is not registered (--sae)")
        if pair[0] == pair[1]:
            raise bad("pairs", item, "names one SAE twice")
        if str(saes[pair[0]]) == str(saes[pair[1]]):
            raise bad("pairs", item, f"names two SAEs at one node ({saes[pair[0]]}): their keys are made there at "
                                     "once, nothing to stock")
        if pair in pairs:
            raise bad("pairs", item, "is given twice")
        pairs.append(pair)
    low, high = table.get("low", DEFAULT_LOW), table.get("high", DEFAULT_HIGH)
    for name, val in (("low", low), ("high", high)):
        if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= MAX_STOCK_KEYS:
            raise bad(name, f"{low}:{high}" if flags else val, f"must be whole numbers of keys in 0..{MAX_STOCK_KEYS}")
    if high < 1:
        raise bad("high", f"{low}:{high}" if flags else high, "must have 0 <= LOW <= HIGH and HIGH >= 1")
    if low > high:  # the low watermark above the high one: LOW is the value at fault
        raise bad("low", f"{low}:{high}" if flags else low, f"must have 0 <= LOW <= HIGH (low {low} is above high "
                                                           f"{high})")
    level = table.get("level")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or math.isnan(level) or not 0 < level <= 1:
        raise bad("level", level, "must be a security level in (0, 1]")
    size = table.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size % 8 or not min_size <= size <= max_size:
        raise bad("size", size, f"must be a multiple of 8 bits in [{min_size}, {max_size}] (the key sizes the "
                                "service accepts)")
    reserve = table.get("reserve", DEFAULT_RESERVE)
    if isinstance(reserve, bool) or not isinstance(reserve, (int, float)) or math.isnan(reserve) \
            or not 0 <= reserve < 1:
        raise bad("reserve", reserve, "must be a share of each link's pool in [0, 1)")
    policy = table.get("policy", "fixed")
    if policy not in POLICIES:
        raise bad("policy", policy, f"must be one of {', '.join(POLICIES)}")
    hit = table.get("hit", DEFAULT_HIT)
    if isinstance(hit, bool) or not isinstance(hit, (int, float)) or math.isnan(hit) or not 0 < hit < 1:
        raise bad("hit", hit, "must be a probability in (0, 1), e.g. 0.99")
    return StockConfig(tuple(pairs), low, high, float(level), size, float(reserve), policy, float(hit))
