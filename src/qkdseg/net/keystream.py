"""The emulated QKD link: a seekable ChaCha20 keystream per direction, from a seed only its two ends hold.

Both ends of a link hold the same 32-byte seed (sealed at rest under each
node's storage key). Direction ``u -> v`` (``u`` the link's first end in the
network's orientation) reads the stream with nonce 0, ``v -> u`` with nonce 1,
so the two directions never share a bit; each is read at a byte offset
(ChaCha20's block counter, 64 bytes a block), so a node that restarts reads
on from its offset.

>>> s = LinkStream(bytes(32))
>>> s.read(0, 0, 100)[64:80] == s.read(0, 64, 16), s.read(0, 0, 8) != s.read(1, 0, 8)
(True, True)
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class LinkStream:
    """The two keystreams of one link (``direction`` 0: first end -> second end, 1: back)."""

    __slots__ = ("_seed",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("a link seed is 32 bytes")
        self._seed = bytes(seed)

    def read(self, direction: int, offset: int, nbytes: int) -> bytes:
        """``nbytes`` of the keystream of ``direction`` from byte ``offset``."""
        if offset < 0 or nbytes < 0:
            raise ValueError("offset and length must be non-negative")
        block, skip = divmod(offset, 64)
        if block >= 1 << 32:
            raise ValueError("the link's keystream is exhausted (2^38 bytes per direction)")
        nonce = block.to_bytes(4, "little") + direction.to_bytes(12, "little")
        enc = Cipher(algorithms.ChaCha20(self._seed, nonce), mode=None).encryptor()
        return enc.update(bytes(skip + nbytes))[skip:]

    def __repr__(self) -> str:
        return "LinkStream(<seed masked>)"
