"""The end-to-end key confirmation: a one-time polynomial MAC (Wegman-Carter) that reveals nothing about the keys.

The two ends of a relay each hold the request's global keys and, relayed with them the same way, **fresh MAC key
material**: :data:`MAC_BITS` bits of the request's last global keys, never delivered nor kept, used once. The
destination sends ``tag = poly_h(keys) + s mod p`` (``p = 2^127 - 1``; ``h``, ``s`` the two halves of the MAC key,
:func:`tag`); the source computes its own and compares.

What the tag reveals: nothing about the keys. ``s`` is uniform and used once, so the tag is uniform and independent
of the keys (a one-time pad over the field): for every guess of the keys there is exactly one ``s`` that gives the
tag seen, so a guess cannot be tested (the HMAC under the delivered key it replaces was a key-check value).
What it confirms: two different key sets give the same tag with probability at most ``L / p`` over ``h`` (``L``
blocks of 15 bytes), so a relay that changes keys, MAC key or both is caught except with probability about
``2^-117`` for a request of 128 keys of 4,096 bits.
"""

from __future__ import annotations

import json

#: The field's prime, 2^127 - 1 (a Mersenne prime: one multiplication and one reduction per block).
P = (1 << 127) - 1
#: MAC key bits a request uses once: 128 for ``h``, 128 for ``s``.
MAC_BITS = 256
_BLOCK = 15  # bytes per block: every block (with its 1 marker byte) is below P


def mac_keys(size_bits: int) -> int:
    """How many of a request's global keys of ``size_bits`` make its MAC key (at least :data:`MAC_BITS` bits)."""
    return -(-MAC_BITS // int(size_bits))


def _field(b: bytes) -> int:
    return int.from_bytes(b, "big") & P


def message(request_id: str, keys: list[tuple]) -> bytes:
    """What the tag covers: the request id, then each global key's id and bytes, in the order given."""
    out = [f"qkdseg-confirm|{request_id}|".encode()]
    for kid, key in keys:
        ident = json.dumps(list(kid)).encode()
        out += [len(ident).to_bytes(4, "big"), ident, len(key).to_bytes(4, "big"), bytes(key)]
    return b"".join(out)


def tag(mac_key: bytes, msg: bytes) -> bytes:
    """``poly_h(msg) + s mod P`` as 16 bytes; ``mac_key``: at least 32 bytes of one-time key (``h``, ``s``)."""
    if len(mac_key) < MAC_BITS // 8:
        raise ValueError(f"a confirmation MAC key is {MAC_BITS // 8} bytes, got {len(mac_key)}")
    h, s = _field(mac_key[:16]), _field(mac_key[16:32])
    y = 0
    for i in range(0, len(msg), _BLOCK):  # Horner: each block with a leading 1 byte (no two lengths collide)
        y = ((y + int.from_bytes(b"\x01" + msg[i:i + _BLOCK], "big")) * h) % P
    y = ((y + len(msg)) * h) % P
    return ((y + s) % P).to_bytes(16, "big")


def pad_for(mac_key: bytes, msg: bytes, seen: bytes) -> bytes:
    """The MAC key (same ``h``) under which ``msg`` gives the tag ``seen``: there is one for every ``msg``, which is
    why a tag tells nothing about the keys (tests, docs/network.md)."""
    h_part = mac_key[:16]
    y = (int.from_bytes(tag(h_part + bytes(16), msg), "big"))  # poly_h(msg) with s = 0
    s = (int.from_bytes(seen, "big") - y) % P
    return h_part + s.to_bytes(16, "big")
