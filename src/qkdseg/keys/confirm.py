"""The end-to-end key confirmation: a one-time polynomial MAC (Wegman-Carter) that reveals nothing about the keys.

The two ends of a relay each hold the run's global keys and, relayed with them the same way, **fresh MAC key
material**: the run's last global keys (:func:`mac_keys` of them; the first :data:`MAC_BITS` bits are used), never
delivered nor kept, used once. The destination sends ``tag = poly_h(message) xor s`` (:func:`tag`), a polynomial
in ``h`` over GF(2^128) whose coefficients are the message's 16-byte blocks (as GHASH), ``h`` and ``s`` the MAC
key's two 128-bit halves; the source computes its own and compares in constant time.

**What the tag reveals: nothing about the keys.** ``s`` is uniform on 128 bits and used once, so for every value of
``poly_h(message)`` the tag is uniform: it is independent of the keys (a one-time pad), and for every guess of the
keys exactly one ``s`` gives the tag seen (:func:`pad_for`), so a guess cannot be tested (the HMAC under the
delivered key it replaces was a key-check value). This holds for anyone who does not hold the MAC key.

**What it confirms** (:func:`forgery_bound`; ``d`` = the message's blocks + 1, the polynomial's degree):

- another message under the same MAC key is accepted with probability at most ``d / 2^128`` over ``h``;
- a relay that XORs known differences into the pieces (all it can do to key bits it does not know: the keys are
  XORs of pieces) changes the destination's keys by ``Dm``, its ``h`` by ``Dh``, its ``s`` by ``Ds``. With
  ``Dh = 0`` the tags differ by ``poly_h(Dm) xor Ds``, a polynomial in ``h`` alone (GF(2^128)'s addition is XOR),
  nonzero unless nothing changed: accepted with probability at most ``d / 2^128`` whatever the keys. With
  ``Dh != 0``, each key starts on a block of its own, so a block ``w`` of key bytes enters the difference as
  ``w * ((h + Dh)^e + h^e)``, whose constant term ``Dh^e`` is not 0: accepted with probability at most
  ``(d + 1) / 2^128 + 2^-min(128, size)`` over ``h`` and the key.

Both bounds hold against an adversary that does not hold the MAC key (its exact security, like the keys'). About
``2^-115`` for 128 keys of 4,096 bits, ``2^-119`` for 128 keys of 256 bits, ``2^-124`` for one key of 256 bits.

Cost: the relay moves whole keys of one size, so the MAC key is ``ceil(256 / size)`` keys of the run (one key from
256 bits up), planned and debited like the keys, **per relay run** (not per key): a run whose last relay makes more
keys than asked gives it a slot that would have been a spare key; a stocked refill run of many keys pays it once
(:func:`refill_keys`).
"""

from __future__ import annotations

import json
import math

#: MAC key bits a run uses once: 128 for ``h``, 128 for the pad ``s``.
MAC_BITS = 256
_F = (1 << 128) | 0x87  # GF(2^128) = GF(2)[x] / (x^128 + x^7 + x^2 + x + 1); bit i of an int: the coefficient of x^i
_MASK = (1 << 128) - 1


def _clmul(a: int, b: int) -> int:
    """The carry-less product of ``a`` and ``b`` (polynomials over GF(2)), unreduced."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a, b = a << 1, b >> 1
    return r


def _reduce(a: int) -> int:
    """``a`` (a polynomial of degree below 255) modulo the field's polynomial."""
    for i in range(a.bit_length() - 1, 127, -1):
        if a >> i & 1:
            a ^= _F << (i - 128)
    return a


def gf_mul(a: int, b: int) -> int:
    """The product in GF(2^128), bit by bit (the reference :func:`tag`'s table method is checked against)."""
    return _reduce(_clmul(a, b))


_R = [_clmul(t, 0x87) for t in range(256)]  # t * x^128 mod the field's polynomial, t below 2^8


def _table(h: int) -> list[int]:
    """``b * h`` in the field for every byte ``b`` (b as the polynomial of its bits)."""
    t = [0] * 256
    t[1] = h
    for b in range(2, 256):
        if b & 1:
            t[b] = t[b - 1] ^ h
        else:
            x = t[b >> 1] << 1
            t[b] = x ^ _F if x >> 128 else x
    return t


def _mul(a: int, t: list[int]) -> int:
    """``a * h`` with ``t = _table(h)``: a byte of ``a`` at a time from the top (Horner in x^8)."""
    z = 0
    for shift in range(120, -8, -8):
        z = ((z << 8) & _MASK) ^ _R[z >> 120] ^ t[(a >> shift) & 0xFF]
    return z


def mac_keys(size_bits: int) -> int:
    """How many of a run's global keys of ``size_bits`` make its MAC key (at least :data:`MAC_BITS` bits)."""
    return -(-MAC_BITS // int(size_bits))


def refill_keys(asked: int, made: int, size_bits: int) -> int:
    """The keys a stock's refill run keeps of the ``made`` keys its relays made, when its stock asked for ``asked``:
    at most ``asked`` (a stock never holds more than it asked for), and never one of the :func:`mac_keys` MAC keys;
    0 when the run cannot carry one key and its MAC key. Every other key of the run is MAC key material, not kept
    (its last relay's slack: fewer than one relay's keys)."""
    return max(0, min(int(asked), int(made) - mac_keys(size_bits)))


def _pad16(b: bytes) -> bytes:
    return b + bytes(-len(b) % 16)


def message(request_id: str, keys: list[tuple]) -> bytes:
    """What the tag covers: the request id, then each global key's id and bytes, in the order given. Every part is
    length-prefixed and zero-padded to 16 bytes (two different lists never give the same bytes; each key starts on
    a block of its own, which the bound on relays that change ``h`` uses)."""
    head = f"qkdseg-confirm|{request_id}|".encode()
    out = [_pad16(len(head).to_bytes(4, "big") + head)]
    for kid, key in keys:
        ident = json.dumps(list(kid)).encode()
        out += [_pad16(len(ident).to_bytes(4, "big") + ident + len(key).to_bytes(4, "big")), _pad16(bytes(key))]
    return b"".join(out)


def _poly(h: int, msg: bytes) -> int:
    """``poly_h(msg)``: Horner over the 16-byte blocks (the last zero-padded), then the length; no constant term."""
    t = _table(h)
    y = 0
    for i in range(0, len(msg), 16):
        y = _mul(y ^ int.from_bytes(msg[i:i + 16].ljust(16, b"\0"), "big"), t)
    return _mul(y ^ len(msg), t)


def _split(mac_key: bytes) -> tuple[int, int]:
    if len(mac_key) < MAC_BITS // 8:
        raise ValueError(f"a confirmation MAC key is {MAC_BITS // 8} bytes, got {len(mac_key)}")
    return int.from_bytes(mac_key[:16], "big"), int.from_bytes(mac_key[16:32], "big")


def tag(mac_key: bytes, msg: bytes) -> bytes:
    """``poly_h(msg) xor s`` as 16 bytes; ``mac_key``: at least 32 bytes of one-time key (``h``, ``s``; the bytes
    beyond are not used)."""
    h, s = _split(mac_key)
    return (_poly(h, msg) ^ s).to_bytes(16, "big")


def pad_for(mac_key: bytes, msg: bytes, seen: bytes) -> bytes:
    """The one MAC key with the same ``h`` under which ``msg`` gives the tag ``seen``: there is exactly one for every
    ``msg``, which is why a tag tells nothing about the keys (tests, docs/network.md)."""
    h, _ = _split(mac_key)
    return mac_key[:16] + (int.from_bytes(seen, "big") ^ _poly(h, msg)).to_bytes(16, "big")


def forgery_bound(msg_len: int, size_bits: int | None = None) -> float:
    """The most probability that a message of at most ``msg_len`` bytes other than the one tagged is accepted:
    ``d / 2^128`` (``d`` the polynomial's degree, the blocks + 1: a nonzero polynomial has at most ``d`` roots); with
    ``size_bits`` (keys of that size, a relay that may also change ``h``): ``(d + 1) / 2^128 + 2^-min(128, size)``
    (see the module docstring)."""
    d = math.ceil(int(msg_len) / 16) + 1
    if size_bits is None:
        return d / 2.0 ** 128
    return (d + 1) / 2.0 ** 128 + 2.0 ** -min(128, int(size_bits))
