"""Where link key comes from: the key source interface and the link pool levels.

A QKD link produces key at its rate until its pool is full. The service
keeps, per link, the pool's *level* (bits available) and its *consumed
offset* (bits ever taken; it only grows, so no pad bit is used twice, across
restarts too). Levels live in numpy arrays so that every request can refill
all links at once and route on the links that hold enough key.

The bytes themselves come from a :class:`KeySource`. :class:`EmulatedKeySource`
emulates a QKD link: it produces ``rate_bps`` bits per second per link and
draws fresh bytes from :func:`secrets.token_bytes`, the same at both ends. A
real QKD device feed implements the same two methods (docs/kms.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable
from typing import Protocol

import numpy as np

from ..network import Network

Link = tuple[Hashable, Hashable]


class KeySource(Protocol):
    """What the key service needs from the QKD links."""

    def produced(self, seconds: float) -> np.ndarray:
        """Bits produced on each link (network link order) over ``seconds``, float64."""

    def read(self, link: Link, nbytes: int) -> bytes:
        """The link's next ``nbytes`` of key, as both ends hold them."""


class EmulatedKeySource:
    """Emulated QKD links: ``rate_bps`` bits per second each, fresh random bytes.

    Parameters
    ----------
    network : Network
        A link's ``rate_bps`` (bits/s) comes from the network file.
    default_rate_bps : float
        The rate of links whose file gives none (bits/s).
    """

    def __init__(self, network: Network, default_rate_bps: float = 100_000) -> None:
        rates = [data.get("rate_bps") for _, _, data in network.graph.edges(data=True)]
        self.rate_bps = np.array([default_rate_bps if r is None else r for r in rates], dtype=np.float64)

    def produced(self, seconds: float) -> np.ndarray:
        return self.rate_bps * max(0.0, seconds)

    def read(self, link: Link, nbytes: int) -> bytes:
        return secrets.token_bytes(nbytes)


class LinkLevels:
    """Every link's pool level and consumed offset, refilled by a key source.

    Parameters
    ----------
    capacity : numpy.ndarray of int64
        Pool capacity of each link, bits (the network's ``pool_bits``).
    level, consumed : numpy.ndarray of int64, optional
        Levels and consumed offsets, bits; default: full pools, nothing consumed.
    t : float
        The time of those levels (Unix seconds).

    Examples
    --------
    >>> lv = LinkLevels(np.array([800, 800]), t=0.0)
    >>> lv.debit(np.array([0]), 512)
    >>> lv.level.tolist(), lv.consumed.tolist()
    ([288, 800], [512, 0])
    >>> lv.refill(np.array([100.0, 100.0]), t=1.0)
    >>> lv.level.tolist()
    [388, 800]
    """

    def __init__(self, capacity, level=None, consumed=None, *, t: float) -> None:
        self.capacity = np.asarray(capacity, dtype=np.int64).copy()
        self.level = self.capacity.copy() if level is None else np.asarray(level, dtype=np.int64).copy()
        self.consumed = np.zeros_like(self.capacity) if consumed is None else np.asarray(consumed, dtype=np.int64).copy()
        self._frac = np.zeros(self.capacity.shape, dtype=np.float64)
        self.t = float(t)

    def refill(self, produced: np.ndarray, *, t: float) -> None:
        """Add ``produced`` bits per link (fractions carried over), capped at capacity; the levels are now at ``t``."""
        total = self._frac + produced
        whole = np.floor(total)
        self._frac = total - whole
        np.minimum(self.capacity, self.level + whole.astype(np.int64), out=self.level)
        self._frac[self.level >= self.capacity] = 0.0
        self.t = max(self.t, float(t))

    def debit(self, links: np.ndarray, bits) -> None:
        """Take ``bits`` (a number, or one per link) from each of ``links`` (distinct indices; the caller checked the levels)."""
        self.level[links] -= bits
        self.consumed[links] += bits
