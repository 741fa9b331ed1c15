"""Where link key comes from: the key source interface (and :class:`LinkLevels`, re-exported).

A QKD link produces key at its rate until its pool is full. The service
keeps, per link, the pool's *level* (bits available) and its *consumed
offset* (bits ever taken; it only grows, so no pad bit is used twice, across
restarts too), in :class:`qkdseg.keys.levels.LinkLevels`: numpy arrays, so
that every request can refill all links at once and route on the links that
hold enough key.

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

from ..keys.levels import LinkLevels
from ..network import Network

Link = tuple[Hashable, Hashable]


class KeySource(Protocol):
    """What the key service needs from the QKD links."""

    def produced(self, seconds) -> np.ndarray:
        """Bits produced on each link (network link order) over ``seconds`` (a number, or one per link), float64."""

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

    def produced(self, seconds) -> np.ndarray:
        return self.rate_bps * np.maximum(0.0, seconds)

    def read(self, link: Link, nbytes: int) -> bytes:
        return secrets.token_bytes(nbytes)


__all__ = ["EmulatedKeySource", "KeySource", "LinkLevels"]
