"""Combining key pieces into a segment key: XOR, or HKDF for ``reuse``.

The same functions are used by the relay engine (at both ends of a segment)
and by the attacker (on the pieces it recorded): the combining rule is
public (Kerckhoffs).
"""

from __future__ import annotations

from collections.abc import Sequence

from .material import KeyMaterial, xor_all


def combine(pieces: Sequence[KeyMaterial], computational: bool) -> KeyMaterial:
    """One segment key from a part's pieces, in path-index order.

    ``computational=False``: the XOR of the pieces (information-theoretic).
    ``computational=True``: HKDF-SHA256 over the pieces
    (:func:`qkdseg.reconstruction.derive_key`), the ``reuse`` scheme, as long
    as one piece.

    >>> a, b = KeyMaterial(bytes([1, 2])), KeyMaterial(bytes([3, 3]))
    >>> combine([a, b], False).reveal()
    b'\\x02\\x01'
    >>> combine([a, b], True) == combine([a, b], True), combine([a, b], True) == combine([b, a], True)
    (True, False)
    """
    if not pieces:
        raise ValueError("a segment key needs at least one piece")
    if not computational:
        return xor_all(pieces)
    from ..reconstruction import derive_key

    bits = pieces[0].bits
    return KeyMaterial(derive_key([k.reveal() for k in pieces], bits))
