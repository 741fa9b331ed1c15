"""Link pool levels as arrays: refilled at each link's rate, capped at its pool, debited by routes.

The bookkeeping of key pools that change over time, shared by the key
service (:mod:`qkdseg.kms`) and time-dynamic studies: one int64 level and one
consumed offset per link (network link order), refilled analytically from
the bits a key source produced (fractions of a bit carried over), so that a
request can refill all links at once and route on the links that hold enough
key. The bytes themselves live in :class:`~qkdseg.keys.pools.KeyStore`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..network import NetworkArrays


#: Pool states (QKDNetSim's key buffer states, :class:`~qkdseg.keys.pools.PoolState`), as array codes.
STATES = ("READY", "WARNING", "CHARGING", "EMPTY")
READY, WARNING, CHARGING, EMPTY = range(4)


def pool_states(level: np.ndarray, ready_bits, empty_bits: int, previous: np.ndarray) -> np.ndarray:
    """Each link's pool state (int8 codes into :data:`STATES`) from its level and its previous state.

    READY at or above ``ready_bits``, EMPTY below ``empty_bits`` (bits); in
    between WARNING, or CHARGING when the previous state was EMPTY or
    CHARGING (refilling). The key buffer's rule
    (:func:`qkdseg.keys.pools._next_state`), on arrays: shared by the
    time-dynamic simulator and the key service's dashboard.

    >>> states = pool_states(np.array([900, 300, 100, 300]), 500, 256, np.array([READY, READY, READY, EMPTY]))
    >>> [STATES[s] for s in states]
    ['READY', 'WARNING', 'EMPTY', 'CHARGING']
    """
    level = np.asarray(level)
    state = np.where(np.isin(previous, (EMPTY, CHARGING)), CHARGING, WARNING).astype(np.int8)
    state[level >= np.asarray(ready_bits)] = READY
    state[level < empty_bits] = EMPTY
    return state


def with_levels(arrays: NetworkArrays, pool_bits: np.ndarray) -> NetworkArrays:
    """``arrays`` with ``pool_bits`` replaced by current levels (bits), for key-aware routing.

    ``qkdseg.api.route_indices(with_levels(arrays, level), s, d, block_bits=B)``
    routes on the links that hold at least ``B`` bits now. The cached
    adjacency matrices, which do not depend on pools, are shared, so the view
    costs no graph rebuild.
    """
    new = dataclasses.replace(arrays, pool_bits=pool_bits)
    new.__dict__["capacity_bits"] = arrays.capacity_bits  # the full pools, for pool-aware routing (least-loaded)
    for name in ("hop_matrix", "length_matrix", "_csr_lists"):
        if name in arrays.__dict__:
            new.__dict__[name] = arrays.__dict__[name]
    return new


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
