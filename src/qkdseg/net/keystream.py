"""The emulated QKD link: a seekable ChaCha20 keystream per direction, from a seed only its two ends hold.

Both ends of a link hold the same 32-byte seed (sealed at rest under each
node's storage key). Direction ``u -> v`` (``u`` the link's first end in the
network's orientation) reads the stream with nonce 0, ``v -> u`` with nonce 1,
so the two directions never share a bit; each is read at a byte offset
(ChaCha20's block counter, 64 bytes a block), so a node that restarts reads
on from its offset.

An offset is ``generation * GEN_STRIDE + position``: the generation (0 until a
node is restored from a backup, then the sender's clock in milliseconds when it
drew a new one, :mod:`.restore`) goes into the rest of ChaCha20's nonce, so each
generation is a stream of its own, and a later generation's offsets are larger
than every offset of an earlier one: "never below the mark" still means "never a
pad bit twice" (docs/network.md, "Link offsets and crashes"). Generation 0 is
the stream as it always was.

>>> s = LinkStream(bytes(32))
>>> s.read(0, 0, 100)[64:80] == s.read(0, 64, 16), s.read(0, 0, 8) != s.read(1, 0, 8)
(True, True)
>>> s.read(0, 5 * GEN_STRIDE, 8) != s.read(0, 0, 8), generation(5 * GEN_STRIDE + 3), position(5 * GEN_STRIDE + 3)
(True, 5, 3)
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

#: Offsets of one generation (2^39: a direction's 2^38 bytes fit, with room above for a refused read).
GEN_STRIDE = 1 << 39
#: The first generation a restore may draw (2020-01-01 in milliseconds): one below is not a clock reading.
GEN_FLOOR = 1_577_836_800_000


def generation(offset: int) -> int:
    return offset // GEN_STRIDE


def position(offset: int) -> int:
    """Where ``offset`` is in its generation's stream (the bytes used of it: a link's consumed bits)."""
    return offset % GEN_STRIDE


def gap(mark: int, offset: int) -> int:
    """Bytes of a stream that ``offset`` (at or above ``mark``) passes over: within one generation the difference;
    into a later one, how far its position is beyond the mark's (a restored sender goes on from its position)."""
    if generation(offset) == generation(mark):
        return offset - mark
    return max(0, position(offset) - position(mark))


def implausible(offset: int, skew_s: float) -> bool:
    """Whether ``offset``'s generation cannot be one a node drew: not 0 and not a clock reading in milliseconds
    from :data:`GEN_FLOOR` to this node's clock plus ``skew_s``."""
    gen = generation(offset)
    return gen != 0 and not GEN_FLOOR <= gen <= time.time_ns() // 1_000_000 + int(skew_s * 1000)


class LinkStream:
    """The two keystreams of one link (``direction`` 0: first end -> second end, 1: back)."""

    __slots__ = ("_seed",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("a link seed is 32 bytes")
        self._seed = bytes(seed)

    def read(self, direction: int, offset: int, nbytes: int) -> bytes:
        """``nbytes`` of the keystream of ``direction`` from ``offset`` (its generation's stream, at its position)."""
        if offset < 0 or nbytes < 0:
            raise ValueError("offset and length must be non-negative")
        gen, pos = divmod(offset, GEN_STRIDE)
        block, skip = divmod(pos, 64)
        if block >= 1 << 32 or gen >= 1 << 63:
            raise ValueError("the link's keystream is exhausted (2^38 bytes per direction and generation)")
        # generation 0: the nonce as it always was (the direction in 12 bytes)
        nonce = block.to_bytes(4, "little") + direction.to_bytes(4, "little") + gen.to_bytes(8, "little")
        enc = Cipher(algorithms.ChaCha20(self._seed, nonce), mode=None).encryptor()
        return enc.update(bytes(skip + nbytes))[skip:]

    def __repr__(self) -> str:
        return "LinkStream(<seed masked>)"
