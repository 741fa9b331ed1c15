"""Link key pools holding real bytes, and the key store of a network.

A QKD link leaves its two ends with identical secret bits. A
:class:`LinkKeyPool` emulates that: it holds one byte buffer per end, filled
from :func:`secrets.token_bytes` with the same bytes at both ends, and a
*level* in bits. Its vocabulary is QKDNetSim's key buffer
(``src/qkd/model/qkd-buffer``):

``Mmax``
    The capacity (default: the link's ``pool_bits``; a new pool is full).
``Mthr``
    The threshold below which the pool warns (default ``Mmax // 10``).
``Mmin``
    The level at or below which the pool counts as empty (default 0).

and its state, a function of the level and of the previous state:

=========  ================================================================
READY      ``level >= Mthr``
WARNING    ``Mmin < level < Mthr``, drained from READY (or still WARNING)
CHARGING   ``Mmin < level < Mthr``, refilled from EMPTY (or still CHARGING)
EMPTY      ``level <= Mmin``
=========  ================================================================

**[choice]** ``Mmin`` only names a state: a reservation may use the pool
down to level 0.

Every change of a pool (level, bytes, state) goes through one method,
:meth:`LinkKeyPool._transition`, which logs it on the logger ``qkdseg.keys``
at DEBUG as ``link (u, v): level old -> new, STATE -> STATE (reason)``. Key
bytes are never logged.

A :class:`KeyStore` holds one pool per link of a :class:`~qkdseg.Network`.
:meth:`KeyStore.reserve` takes a whole request, ``{link: bits}``, and is
atomic: it checks every link first and debits only if all can pay; otherwise
it raises :class:`KeyMaterialShort` naming each short link and its shortfall,
and no pool changes.

Pools are created when first touched and draw their bytes when first
debited, so a store over a large network costs nothing for links a request
does not use.

>>> from qkdseg import example_network
>>> store = KeyStore(example_network())
>>> pads = store.reserve({(0, 1): 256, (1, 3): 256})
>>> pads[(0, 1)].end(0) == pads[(0, 1)].end(1), pads[(0, 1)].end(0)
(True, KeyMaterial(<256 bits, masked>))
>>> store.level((0, 1)), store.state((0, 1)).name, store.debited_bits
(99744, 'READY', 512)
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass

from ..errors import InvalidRequest, KeyMaterialShort
from ..network import Network
from .material import KeyMaterial, is_int

logger = logging.getLogger("qkdseg.keys")

Link = tuple[Hashable, Hashable]


class PoolState(enum.Enum):
    """QKDNetSim's key buffer states."""

    READY = "READY"
    WARNING = "WARNING"
    CHARGING = "CHARGING"
    EMPTY = "EMPTY"


def _next_state(level: int, mmin: int, mthr: int, previous: PoolState | None) -> PoolState:
    if level <= mmin:
        return PoolState.EMPTY
    if level >= mthr:
        return PoolState.READY
    if previous in (PoolState.EMPTY, PoolState.CHARGING):
        return PoolState.CHARGING
    return PoolState.WARNING


@dataclass(frozen=True)
class LinkPads:
    """The key material one reservation took from a link: one copy per end.

    The two copies come from the two ends' buffers; they are equal when the
    link works, and nothing in the engine assumes it.
    """

    link: Link
    copies: tuple[KeyMaterial, KeyMaterial]

    def end(self, node: Hashable) -> KeyMaterial:
        """The copy held by ``node`` (one of the link's ends)."""
        if node == self.link[0]:
            return self.copies[0]
        if node == self.link[1]:
            return self.copies[1]
        raise InvalidRequest(f"node {node!r} is not an end of link {self.link!r}")

    def __repr__(self) -> str:
        return f"LinkPads(link={self.link!r}, bits={self.copies[0].bits})"


class LinkKeyPool:
    """The key pool of one QKD link, with both ends' bytes.

    Parameters
    ----------
    link : (u, v)
        The link's ends (node ids).
    mmax : int
        Capacity, bits (>= 0). A new pool is full unless ``level`` is given.
    mthr, mmin : int, optional
        Thresholds, bits; default ``mmax // 10`` and 0. Need
        ``0 <= mmin <= mthr <= mmax``.
    level : int, optional
        Initial level, bits, in ``[0, mmax]``.

    Raises
    ------
    InvalidRequest
        Naming the link, when the thresholds or the level are out of order.

    Examples
    --------
    >>> pool = LinkKeyPool(("a", "b"), 800, mthr=400)
    >>> pool.level, pool.state.name
    (800, 'READY')
    >>> copies = pool._debit(51)
    >>> pool.level, pool.state.name, copies[0] == copies[1]
    (392, 'WARNING', True)
    >>> pool
    LinkKeyPool(link=('a', 'b'), level=392, Mmin=0, Mthr=400, Mmax=800, state=WARNING)
    """

    __slots__ = ("link", "mmin", "mthr", "mmax", "_level", "_state", "_ends", "_pending", "_source")

    def __init__(
        self,
        link: Link,
        mmax: int,
        *,
        mthr: int | None = None,
        mmin: int = 0,
        level: int | None = None,
        source: Callable[[Link, int], bytes] | None = None,
    ):
        u, v = link
        self.link: Link = (u, v)
        where = f"link ({u!r}, {v!r})"
        mthr = mmax // 10 if mthr is None else mthr
        level = mmax if level is None else level
        for name, val in (("Mmax", mmax), ("Mthr", mthr), ("Mmin", mmin), ("level", level)):
            if not is_int(val) or val < 0:
                raise InvalidRequest(f"{where}: key pool {name}={val!r} must be a non-negative integer (bits)")
        if not mmin <= mthr <= mmax:
            raise InvalidRequest(f"{where}: key pool needs Mmin <= Mthr <= Mmax, got {mmin}, {mthr}, {mmax}")
        if level > mmax:
            raise InvalidRequest(f"{where}: key pool level={level} exceeds Mmax={mmax}")
        self.mmax, self.mthr, self.mmin = int(mmax), int(mthr), int(mmin)
        self._level = int(level)
        self._state = _next_state(self._level, self.mmin, self.mthr, None)
        # Bytes are drawn when first read: ``_pending`` bytes are not drawn yet.
        self._ends: tuple[bytearray, bytearray] = (bytearray(), bytearray())
        self._pending = (self._level + 7) // 8
        self._source = source

    # -- read-only views ------------------------------------------------------
    @property
    def level(self) -> int:
        """Key material available, bits."""
        return self._level

    @property
    def state(self) -> PoolState:
        return self._state

    def __repr__(self) -> str:
        return (
            f"LinkKeyPool(link={self.link!r}, level={self._level}, Mmin={self.mmin}, "
            f"Mthr={self.mthr}, Mmax={self.mmax}, state={self._state.name})"
        )

    def ends_identical(self) -> bool:
        """Whether both ends hold the same bytes (they should, always)."""
        self._draw()
        return KeyMaterial(self._ends[0]) == KeyMaterial(self._ends[1])

    # -- changes --------------------------------------------------------------
    def _draw(self, nbytes: int | None = None) -> None:
        """Draw ``nbytes`` (default: all) of the pending bytes, the same at both ends.

        Drawing is not a change of the pool: the bits were already counted in
        its level; they are materialised when first read, which has the same
        distribution as drawing them all at once and costs nothing for the
        bytes never used.
        """
        n = self._pending if nbytes is None else min(self._pending, max(0, nbytes - len(self._ends[0])))
        if n:
            fresh = secrets.token_bytes(n) if self._source is None else self._source(self.link, n)
            self._ends[0].extend(fresh)
            self._ends[1].extend(fresh)
            self._pending -= n

    def _transition(self, *, take_bytes: int = 0, add_bits: int = 0, reason: str) -> tuple[bytes, bytes]:
        """THE method through which every change of the pool passes.

        Takes ``take_bytes`` bytes from the front of both ends' buffers, or
        adds ``add_bits`` fresh bits (capped at ``Mmax``), updates the level
        and the state, and logs ``old -> new`` (never the bytes). Returns the
        bytes taken, one copy per end.
        """
        old_level, old_state = self._level, self._state
        taken: tuple[bytes, bytes] = (b"", b"")
        if take_bytes:
            if 8 * take_bytes > self._level:  # callers check first; this is the last line of defence
                raise KeyMaterialShort(
                    f"link {self.link!r}: needs {8 * take_bytes} bits, holds {self._level}",
                    {self.link: (8 * take_bytes, self._level)},
                )
            self._draw(take_bytes)
            taken = (bytes(self._ends[0][:take_bytes]), bytes(self._ends[1][:take_bytes]))
            del self._ends[0][:take_bytes]
            del self._ends[1][:take_bytes]
            self._level -= 8 * take_bytes
        if add_bits:
            new_level = min(self.mmax, self._level + add_bits)
            held = len(self._ends[0]) + self._pending
            self._pending += max(0, (new_level + 7) // 8 - held)
            self._level = new_level
        self._state = _next_state(self._level, self.mmin, self.mthr, old_state)
        if logger.isEnabledFor(logging.DEBUG):
            u, v = self.link
            logger.debug(
                "link (%r, %r): level %d -> %d, %s -> %s (%s)",
                u, v, old_level, self._level, old_state.name, self._state.name, reason,
            )
        return taken

    def _debit(self, nbytes: int, reason: str = "debit") -> tuple[KeyMaterial, KeyMaterial]:
        a, b = self._transition(take_bytes=nbytes, reason=reason)
        return KeyMaterial(a), KeyMaterial(b)

    def charge(self, bits: int) -> None:
        """Add ``bits`` freshly generated key bits (QKD output), up to ``Mmax``."""
        if not is_int(bits) or bits < 0:
            raise InvalidRequest(f"link {self.link!r}: charge bits={bits!r} must be a non-negative integer")
        self._transition(add_bits=int(bits), reason="charge")


class KeyStore:
    """One :class:`LinkKeyPool` per link of a network, all full at the start.

    Parameters
    ----------
    network : Network
        Link capacities are the links' ``pool_bits``.
    mthr_fraction : float
        ``Mthr`` of every pool as a fraction of its ``Mmax`` (default 0.1).
    source : callable, optional
        ``source(link, nbytes)``, the key bytes of every pool (see
        :class:`LinkKeyPool`); default: emulated (``secrets.token_bytes``).

    Links are named ``(u, v)`` with either orientation; the store reports them
    in the network's orientation (:meth:`canonical`).
    """

    def __init__(
        self, network: Network, *, mthr_fraction: float = 0.1, source: Callable[[Link, int], bytes] | None = None
    ) -> None:
        if not 0.0 <= mthr_fraction <= 1.0:
            raise InvalidRequest(f"mthr_fraction={mthr_fraction!r} must be in [0, 1]")
        self.network = network
        self.mthr_fraction = mthr_fraction
        self.source = source
        self._pools: dict[int, LinkKeyPool] = {}
        self.debited_bits = 0

    # -- links ----------------------------------------------------------------
    def _edge(self, link: Link) -> int:
        try:
            u, v = link
        except (TypeError, ValueError):
            raise InvalidRequest(f"link {link!r} must be a pair of node ids") from None
        arrays = self.network.arrays
        iu, iv = arrays.index.get(u), arrays.index.get(v)
        k = arrays.edge_index(iu, iv) if iu is not None and iv is not None else -1
        if k < 0:
            raise InvalidRequest(f"link ({u!r}, {v!r}) is not in network {self.network.name!r}")
        return k

    def canonical(self, link: Link) -> Link:
        """``link`` in the network's orientation."""
        return self._link_of(self._edge(link))

    def _link_of(self, k: int) -> Link:
        a = self.network.arrays
        return a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]

    def _pool(self, k: int) -> LinkKeyPool:
        pool = self._pools.get(k)
        if pool is None:
            cap = int(self.network.arrays.pool_bits[k])
            pool = LinkKeyPool(self._link_of(k), cap, mthr=int(cap * self.mthr_fraction), source=self.source)
            self._pools[k] = pool
        return pool

    def pool(self, link: Link) -> LinkKeyPool:
        """The pool of ``link`` (either orientation)."""
        return self._pool(self._edge(link))

    def pools(self) -> Iterator[LinkKeyPool]:
        """Every link's pool, in the network's link order."""
        for k in range(self.network.arrays.n_links):
            yield self._pool(k)

    def level(self, link: Link) -> int:
        """Key material on ``link``, bits."""
        return self.pool(link).level

    def state(self, link: Link) -> PoolState:
        return self.pool(link).state

    def levels(self) -> dict[Link, int]:
        """``{link: level}`` for every link."""
        return {p.link: p.level for p in self.pools()}

    # -- the one debit ----------------------------------------------------------
    def reserve(self, request: Mapping[Link, int]) -> dict[Link, LinkPads]:
        """Debit a whole request, ``{link: bits}``, atomically.

        Every link is checked first (known link, bits a non-negative multiple
        of 8, enough key material); only then is every pool debited. The same
        link named twice (in either orientation) counts once with the sum.

        Returns
        -------
        dict
            ``{link: LinkPads}`` in the network's orientation: the bytes taken,
            one copy per end.

        Raises
        ------
        KeyMaterialShort
            Naming every short link with its need, level and shortfall; no
            pool has changed.
        InvalidRequest
            For an unknown link or a bad number of bits; no pool has changed.
        """
        need: dict[int, int] = {}
        for link, bits in request.items():
            k = self._edge(link)
            if not is_int(bits) or bits < 0 or bits % 8:
                u, v = self._link_of(k)
                raise InvalidRequest(f"link ({u!r}, {v!r}): requested bits={bits!r} must be a non-negative multiple of 8")
            need[k] = need.get(k, 0) + int(bits)
        pools = {k: self._pool(k) for k in need}
        short = {pools[k].link: (bits, pools[k].level) for k, bits in need.items() if bits > pools[k].level}
        if short:
            parts = [f"link ({u!r}, {v!r}) needs {n} bits, holds {lv} (short by {n - lv})" for (u, v), (n, lv) in short.items()]
            more = f" and {len(parts) - 3} more short links" if len(parts) > 3 else ""
            raise KeyMaterialShort(
                "not enough key material: " + "; ".join(parts[:3]) + more + "; no pool was debited", short
            )
        out: dict[Link, LinkPads] = {}
        for k, bits in need.items():
            if not bits:
                continue
            pool = pools[k]
            out[pool.link] = LinkPads(pool.link, pool._debit(bits // 8, reason="reserve"))
            self.debited_bits += bits
        return out
