"""Key material: bytes that must never be printed or logged.

:class:`KeyMaterial` wraps the bytes of one key (a key piece, a one-time pad,
a segment key or a global key). Like Starlette's ``Secret`` its ``repr`` and
``str`` are masked, so a key that ends up in a log line, an exception message
or a test failure shows only its length. The bytes are read with
:meth:`KeyMaterial.reveal`, explicitly. Equality is constant-time
(:func:`hmac.compare_digest`), and ``len`` is the length in *bits*.

Fresh key material comes from :func:`secrets.token_bytes` (the operating
system's CSPRNG), which emulates the output of a QKD link.

>>> k = KeyMaterial.random(256)
>>> k
KeyMaterial(<256 bits, masked>)
>>> f"{k}", len(k), k == KeyMaterial(k.reveal()), (k ^ k).reveal() == bytes(32)
('KeyMaterial(<256 bits, masked>)', 256, True, True)
"""

from __future__ import annotations

import hmac
import numbers
import secrets

from ..errors import InvalidRequest


def is_int(x: object) -> bool:
    """An integer, ``bool`` excluded (fast for plain ``int``)."""
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def check_block_bits(bits: object, what: str = "block_bits") -> int:
    """Return ``bits`` if it is a positive multiple of 8, else raise naming it.

    The key engine works in whole bytes.

    >>> check_block_bits(256)
    256
    >>> check_block_bits(100)
    Traceback (most recent call last):
    ...
    qkdseg.errors.InvalidRequest: block_bits=100 must be a positive multiple of 8 (the key engine works in bytes)
    """
    if is_int(bits) and bits > 0 and bits % 8 == 0:
        return int(bits)
    raise InvalidRequest(f"{what}={bits!r} must be a positive multiple of 8 (the key engine works in bytes)")


class KeyMaterial:
    """Immutable key bytes with a masked ``repr``; ``len()`` is in bits.

    Parameters
    ----------
    data : bytes-like
        The key bytes (copied).
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)

    @classmethod
    def random(cls, bits: int) -> "KeyMaterial":
        """``bits`` (a multiple of 8) fresh random bits from :func:`secrets.token_bytes`."""
        return cls(secrets.token_bytes(check_block_bits(bits, "bits") // 8))

    def reveal(self) -> bytes:
        """The key bytes. Never log or print them."""
        return self._data

    @property
    def bits(self) -> int:
        """Length in bits."""
        return 8 * len(self._data)

    def __len__(self) -> int:
        return 8 * len(self._data)

    def __xor__(self, other: "KeyMaterial") -> "KeyMaterial":
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        n = len(self._data)
        if len(other._data) != n:
            raise ValueError(f"cannot XOR keys of {self.bits} and {other.bits} bits")
        x = int.from_bytes(self._data, "big") ^ int.from_bytes(other._data, "big")
        return KeyMaterial(x.to_bytes(n, "big"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        return hmac.compare_digest(self._data, other._data)

    __hash__ = None  # type: ignore[assignment]  # hashing would leak through timing and dict keys

    def __repr__(self) -> str:
        return f"KeyMaterial(<{self.bits} bits, masked>)"

    __str__ = __repr__

    def __reduce__(self):  # pragma: no cover - pickling is refused on purpose
        raise TypeError("KeyMaterial cannot be pickled")


def xor_all(keys) -> KeyMaterial:
    """XOR of one or more keys of equal length."""
    it = iter(keys)
    try:
        out = next(it)
    except StopIteration:
        raise ValueError("xor_all needs at least one key") from None
    for k in it:
        out = out ^ k
    return out
