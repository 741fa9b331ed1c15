"""The result of a reconstruction: key parts, global keys, and the level test.

Shared by every scheme: :class:`KeyPart`, :class:`GlobalKey`,
:class:`Reconstruction`, :func:`meets` (the ``security >= epsilon`` test with
:data:`TOLERANCE`), and the argument checks every scheme runs first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidRequest

#: Absolute slack in "security >= epsilon" (floating-point rounding only).
TOLERANCE = 1e-12


# -- results -----------------------------------------------------------------
@dataclass(frozen=True)
class KeyPart:
    """One part of a global key: a group of one segment's pieces.

    Attributes
    ----------
    segment : int
        Index of the segment.
    paths : tuple of int
        Indices into that segment's paths (sorted).
    """

    segment: int
    paths: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"segment": self.segment, "paths": list(self.paths)}


@dataclass(frozen=True)
class GlobalKey:
    """One end-to-end key.

    Attributes
    ----------
    security : float
        Exact probability that every part (and every chain node) stays secret.
    bits : int
        Length, bits (the block size ``B``).
    computational : bool
        ``True`` for ``reuse`` keys (hash-derived, computational secrecy only).
    parts : tuple of KeyPart
        Exactly one per segment, in segment order.
    """

    security: float
    bits: int
    computational: bool
    parts: tuple[KeyPart, ...]

    def to_dict(self) -> dict:
        return {
            "security": self.security,
            "bits": self.bits,
            "computational": self.computational,
            "parts": [p.to_dict() for p in self.parts],
        }


@dataclass(frozen=True)
class Reconstruction:
    """The result of a reconstruction scheme.

    Attributes
    ----------
    scheme : str
    epsilon : float
        The requested security level.
    block_bits : int
        ``B``, the size of every piece and every global key, bits.
    global_keys : tuple of GlobalKey
        Every one meets ``epsilon``; strongest first.
    optimal : bool or None
        ``optimal`` only: ``True`` when the integer program was solved to
        proven optimality, ``False`` when a cap was hit (``status`` says which).
    status : str
        One line on how the result was reached.
    information_theoretic_bound_bits : int or None
        ``reuse`` only: ``min_j n_j * B``, the most secret entropy the route
        can carry end to end whatever the hashing (``n_j`` pieces in segment j).
    """

    scheme: str
    epsilon: float
    block_bits: int
    global_keys: tuple[GlobalKey, ...]
    optimal: bool | None = None
    status: str = "ok"
    information_theoretic_bound_bits: int | None = None
    details: dict = field(default_factory=dict, compare=False)

    @property
    def n_keys(self) -> int:
        return len(self.global_keys)

    @property
    def key_bits(self) -> int:
        """Key length at level ``epsilon``: total bits of the global keys."""
        return sum(k.bits for k in self.global_keys)

    def to_dict(self) -> dict:
        out = {
            "scheme": self.scheme,
            "epsilon": self.epsilon,
            "key_bits": self.key_bits,
            "block_bits": self.block_bits,
            "global_keys": [k.to_dict() for k in self.global_keys],
            "status": self.status,
        }
        if self.optimal is not None:
            out["optimal"] = self.optimal
        if self.information_theoretic_bound_bits is not None:
            out["information_theoretic_bound_bits"] = self.information_theoretic_bound_bits
        return out


# -- security of groups ------------------------------------------------------
def meets(security: float, epsilon: float) -> bool:
    """``security >= epsilon`` up to :data:`TOLERANCE`."""
    return security >= epsilon - TOLERANCE



def _validate(segments, epsilon: float, block_bits: int) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
    if isinstance(block_bits, bool) or not isinstance(block_bits, (int, np.integer)) or block_bits < 0:
        raise InvalidRequest(f"block_bits={block_bits!r} must be a non-negative integer")


def _empty(segments) -> bool:
    return not segments or any(len(seg) == 0 for seg in segments)


def _sorted_keys(keys: list[GlobalKey]) -> tuple[GlobalKey, ...]:
    return tuple(sorted(keys, key=lambda k: (-k.security, [p.paths for p in k.parts])))

