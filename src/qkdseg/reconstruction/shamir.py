"""Threshold sharing of a part's secret: Shamir k-of-m over GF(2^8), with lost and altered shares (issue 40).

A secret of ``L`` bytes is shared byte by byte. For each byte the dealer
draws a polynomial ``f`` of degree below ``k = m - T`` over GF(2^8) with
``f(0)`` the secret byte and the other ``k - 1`` coefficients uniformly
random; share ``i`` is ``f(x_i)`` at ``x_i = i + 1``. The shares with the
secret are a codeword of a Reed-Solomon code of length ``m + 1`` and
dimension ``k`` (minimum distance ``T + 2``), so

- any ``k`` shares fix ``f``, so the secret (Lagrange interpolation at 0);
- any ``k - 1`` shares together with the secret fix ``f`` too, so for every
  value of the secret exactly one choice of the random coefficients gives
  those shares: fewer than ``k`` shares leave every secret equally likely
  (perfect secrecy, checked exhaustively in tests/test_sharing.py).

Decoding works share by share (a share is altered when any of its bytes
is): with ``e`` lost shares, the decoder looks for the smallest set ``S`` of
at most ``t_max = (T - e) // 2`` present shares such that all the others lie
on one polynomial of degree below ``k`` (interpolated from ``k`` of them,
checked on the rest). When ``t <= t_max`` shares are altered, that set is
exactly the altered ones: two polynomials that agree on
``m - e - 2 t_max >= k`` points are equal. So the secret is recovered when
``e + 2t <= T`` and the altered shares are named; with no consistent set
(for ``T = 1`` and nothing lost: any altered share) the alteration is
detected, not located, and nothing is returned. More lost or altered shares
than that may decode to a wrong secret, as for any code; the end-to-end
confirmation catches that.

The field is ``galois``'s GF(2^8) (the Conway polynomial ``x^8 + x^4 + x^3
+ x^2 + 1``): its multiplication and inverse tables, built once on first use
from the powers of 2 (tests/test_sharing.py checks every product and
inverse against ``galois``), drive numpy gathers over all the bytes at once.
**[choice: not ``galois``'s own Reed-Solomon decoder: measured here at about
0.1-0.2 s per codeword (one per byte; 4096 codewords took 555 s on the
loaded 2-core machine), where these gathers take milliseconds for a 100 kb
piece; tests/test_sharing.py checks the interpolation against
``galois.lagrange_poly``.]** **[choice: the two tables are computed here,
not taken from ``galois`` at run time: importing ``galois`` (with numba)
took 10 s on the loaded machine, which blocked a network node's first
threshold run past the relay timeout, and a node never loads numba;
``galois`` stays the oracle of the tests.]**
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest, QkdsegError

#: Most shares of one secret: the nonzero elements of GF(2^8) (0 is the secret's point).
MAX_SHARES = 255


class SharesDoNotDecode(QkdsegError):
    """The shares of a secret are too few, or too many are altered, to recover it (nothing is returned)."""


@dataclass(frozen=True)
class Recovered:
    """A secret rebuilt from its shares.

    Attributes
    ----------
    secret : bytes
    altered : tuple of int
        Indices of the shares found altered (left out of the decoding), sorted.
    lost : tuple of int
        Indices of the shares that were missing (``None``), sorted.
    """

    secret: bytes
    altered: tuple[int, ...]
    lost: tuple[int, ...]
    good: tuple[int, ...] = ()  # the shares the secret was interpolated from and checked against (sorted)

    def __repr__(self) -> str:  # the secret is key material: never printed
        return f"Recovered(<{len(self.secret)} bytes, masked>, altered={self.altered}, lost={self.lost})"


def check_sharing(m: object, tolerate: object) -> int:
    """``k = m - tolerate`` after checking both (``1 <= k``, ``m <= MAX_SHARES``), or :class:`InvalidRequest`."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= MAX_SHARES:
        raise InvalidRequest(f"m={m!r} shares: must be a whole number from 1 to {MAX_SHARES}")
    if isinstance(tolerate, bool) or not isinstance(tolerate, (int, np.integer)) or tolerate < 0:
        raise InvalidRequest(f"tolerate={tolerate!r} must be a non-negative whole number")
    if m <= tolerate:
        raise InvalidRequest(f"{m} shares cannot tolerate {tolerate} lost: k = m - tolerate must be at least 1")
    return int(m - tolerate)


#: GF(2^8)'s modulus, the Conway polynomial x^8 + x^4 + x^3 + x^2 + 1 (galois's ``GF(2**8)``); 2 generates the field.
POLY = 0x11D


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """GF(2^8)'s multiplication table ``MUL[a, b]`` and inverses ``INV[a]`` (``INV[0] = 0``), from the powers of 2.

    The same field as ``galois.GF(2**8)`` (tests/test_sharing.py checks every product and inverse against it)."""
    exp = np.zeros(510, dtype=np.int64)
    x = 1
    for i in range(255):
        exp[i] = exp[i + 255] = x
        x <<= 1
        if x & 0x100:
            x ^= POLY
    log = np.zeros(256, dtype=np.int64)
    log[exp[:255]] = np.arange(255)
    a = np.arange(1, 256)
    mul = np.zeros((256, 256), dtype=np.uint8)
    mul[1:, 1:] = exp[log[a][:, None] + log[a][None, :]]
    inv = np.zeros(256, dtype=np.uint8)
    inv[1:] = exp[(255 - log[a]) % 255]
    return mul, inv


def _lagrange(points: Sequence[int], at: int) -> list[int]:
    """The coefficients ``l_i`` with ``f(at) = sum_i l_i f(points[i])`` for ``deg f < len(points)``."""
    mul, inv = _tables()
    out = []
    for i, xi in enumerate(points):
        c = 1
        for j, xj in enumerate(points):
            if j != i:
                c = int(mul[c, mul[at ^ xj, inv[xi ^ xj]]])  # (at - x_j) / (x_i - x_j); minus is XOR
        out.append(c)
    return out


def _combine_rows(coefs: Sequence[int], rows: Sequence[np.ndarray]) -> np.ndarray:
    """``sum_i coefs[i] * rows[i]`` over GF(2^8), byte by byte."""
    mul, _ = _tables()
    out = np.zeros(rows[0].shape, dtype=np.uint8)
    for c, row in zip(coefs, rows):
        if c:
            out ^= mul[c, row]
    return out


def split(secret: bytes, m: int, tolerate: int, *, rng: np.random.Generator | None = None) -> list[bytes]:
    """Share ``secret`` among ``m`` holders so that any ``k = m - tolerate`` of them rebuild it.

    Each share has the secret's length. The random coefficients come from
    the operating system's CSPRNG (:func:`secrets.token_bytes`) unless
    ``rng`` is given (tests only: a seeded generator is not key material).

    >>> shares = split(b"key!", 4, 1)
    >>> len(shares), {len(s) for s in shares}
    (4, {4})
    >>> combine([shares[0], None, shares[2], shares[3]], 1).secret
    b'key!'
    """
    k = check_sharing(m, tolerate)
    data = np.frombuffer(bytes(secret), dtype=np.uint8)
    n_bytes = data.size
    raw = rng.integers(0, 256, n_bytes * (k - 1), dtype=np.uint8).tobytes() if rng is not None \
        else secrets.token_bytes(n_bytes * (k - 1))
    coefs = [data, *np.frombuffer(raw, dtype=np.uint8).reshape(k - 1, n_bytes)] if k > 1 else [data]
    mul, _ = _tables()
    shares = []
    for i in range(m):
        x, power, powers = i + 1, 1, []
        for _ in range(k):
            powers.append(power)
            power = int(mul[power, x])
        shares.append(_combine_rows(powers, coefs).tobytes())
    return shares


def combine(shares: Sequence[bytes | None], tolerate: int) -> Recovered:
    """Rebuild the secret from ``m = len(shares)`` shares, ``None`` for a lost one.

    Recovers it when ``e + 2t <= tolerate`` (``e`` lost, ``t`` altered), and
    names the altered shares. Raises :class:`SharesDoNotDecode` when fewer
    than ``k`` shares are present or the shares are inconsistent beyond
    what the code corrects (an alteration detected, not located).

    >>> shares = split(b"secret", 5, 2)
    >>> bad = bytearray(shares[3]); bad[0] ^= 1
    >>> r = combine([shares[0], shares[1], shares[2], bytes(bad), shares[4]], 2)
    >>> r.secret, r.altered
    (b'secret', (3,))
    """
    m = len(shares)
    k = check_sharing(m, tolerate)
    present = [i for i, s in enumerate(shares) if s is not None]
    lost = tuple(i for i in range(m) if shares[i] is None)
    if len(present) < k:
        raise SharesDoNotDecode(f"only {len(present)} of {m} shares: {k} are needed (tolerate {tolerate})")
    lengths = {len(shares[i]) for i in present}
    if len(lengths) != 1:
        raise InvalidRequest(f"shares of one secret must have one length, got lengths {sorted(lengths)}")
    rows = {i: np.frombuffer(bytes(shares[i]), dtype=np.uint8) for i in present}
    for t in range((tolerate - len(lost)) // 2 + 1):
        for bad in itertools.combinations(present, t):
            good = [i for i in present if i not in bad]
            basis = good[:k]
            points = [i + 1 for i in basis]
            if all(np.array_equal(_combine_rows(_lagrange(points, j + 1), [rows[i] for i in basis]), rows[j])
                   for j in good[k:]):
                secret = _combine_rows(_lagrange(points, 0), [rows[i] for i in basis])
                return Recovered(secret.tobytes(), bad, lost, tuple(good))
    raise SharesDoNotDecode(
        f"the {len(present)} shares present of {m} do not decode: an altered share detected, not located "
        f"(lost e={len(lost)}, tolerate T={tolerate}: e + 2t <= T corrects t altered shares)"
    )


def _agreeing(shares: Sequence[bytes | None], k: int, need: int) -> Recovered | None:
    """The secret of the first polynomial of degree below ``k`` that at least ``need`` present shares lie on
    (fewest left out first), the others present named altered; ``None`` when none does."""
    present = [i for i, s in enumerate(shares) if s is not None]
    lost = tuple(i for i, s in enumerate(shares) if s is None)
    rows = {i: np.frombuffer(bytes(shares[i]), dtype=np.uint8) for i in present}
    for t in range(len(present) - need + 1):
        for bad in itertools.combinations(present, t):
            good = [i for i in present if i not in bad]
            points = [i + 1 for i in good[:k]]
            basis = [rows[i] for i in good[:k]]
            if all(np.array_equal(_combine_rows(_lagrange(points, j + 1), basis), rows[j]) for j in good[k:]):
                return Recovered(_combine_rows(_lagrange(points, 0), basis).tobytes(), bad, lost, tuple(good))
    return None


def decode_early(shares: Sequence[bytes | None], tolerate: int) -> Recovered | None:
    """The secret as soon as the shares present prove it, else ``None`` (wait for more shares).

    A segment end that gets the shares one by one decodes once at least
    ``q = k + tolerate // 2`` of them lie on one polynomial of degree below
    ``k``: with at most ``tolerate // 2`` altered shares (what ``e + 2t <=
    T`` allows), ``q`` agreeing shares hold ``k`` genuine ones, so that
    polynomial is the dealer's, and a share present off it is altered (named).
    With ``T = 1`` that is ``k`` shares (no check: an altered one is detected
    by a later share, :func:`check_late`, or the end-to-end confirmation).

    >>> shares = split(b"ab", 4, 2)
    >>> decode_early([shares[0], None, None, shares[3]], 2) is None  # 2 of 4: q = 3
    True
    >>> decode_early([shares[0], None, shares[2], shares[3]], 2).secret
    b'ab'
    """
    m = len(shares)
    k = check_sharing(m, tolerate)
    need = k + int(tolerate) // 2
    if sum(s is not None for s in shares) < need:
        return None
    return _agreeing(shares, k, need)


def check_late(shares: Sequence[bytes | None], used: Recovered, index: int) -> bool:
    """Whether share ``index``, arrived after the secret was decoded from ``used.good``, lies on its polynomial.

    >>> shares = split(b"ab", 3, 1)
    >>> r = decode_early([shares[0], shares[1], None], 1)
    >>> check_late(shares, r, 2)
    True
    """
    points = [i + 1 for i in used.good]  # they lie on one polynomial of degree below k: through all of them
    value = _combine_rows(_lagrange(points, index + 1), [np.frombuffer(bytes(shares[i]), dtype=np.uint8)
                                                          for i in used.good])
    return bool(np.array_equal(value, np.frombuffer(bytes(shares[index]), dtype=np.uint8)))
