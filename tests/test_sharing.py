"""Threshold sharing (issue 40): Shamir k-of-m over GF(2^8) as a Reed-Solomon code, with errors and erasures."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from qkdseg.errors import InvalidRequest
from qkdseg.reconstruction.shamir import SharesDoNotDecode, combine, split


class _Noise:
    """A stand-in for split's ``rng`` that hands out given bytes: exhaustive checks choose the random symbols."""

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data, dtype=np.uint8).ravel()

    def integers(self, low, high, size, dtype):
        assert (low, high, size) == (0, 256, self.data.size)
        return self.data


@pytest.mark.parametrize("m,t", [(2, 1), (3, 1), (4, 1), (4, 2), (5, 2), (6, 3)])
def test_any_k_of_m_shares_give_the_secret(m, t):
    rng = np.random.default_rng(m * 10 + t)
    secret = rng.integers(0, 256, 24, dtype=np.uint8).tobytes()
    shares = split(secret, m, t, rng=rng)
    assert len(shares) == m and all(len(s) == len(secret) for s in shares)
    k = m - t
    for size in range(k, m + 1):
        for held in itertools.combinations(range(m), size):
            got = combine([shares[i] if i in held else None for i in range(m)], t)
            assert got.secret == secret and got.altered == () and got.lost == tuple(i for i in range(m) if i not in held)
    for held in itertools.combinations(range(m), k - 1):
        with pytest.raises(SharesDoNotDecode, match=f"only {k - 1} of {m} shares: {k} are needed"):
            combine([shares[i] if i in held else None for i in range(m)], t)


def test_fewer_than_k_shares_leave_every_secret_equally_likely_one_share():
    """2-of-3 (T = 1): every secret byte and every random symbol, exhaustively: for each secret, each share takes
    every one of the 256 values exactly once, so one share says nothing about the secret."""
    s, r = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    shares = split(s.astype(np.uint8).tobytes(), 3, 1, rng=_Noise(r))
    for share in shares:
        table = np.frombuffer(share, dtype=np.uint8).reshape(256, 256)  # [secret, random symbol]
        assert all(np.array_equal(np.sort(row), np.arange(256)) for row in table)
    assert len({sh[:256] for sh in shares}) == 3  # the three shares differ


@pytest.mark.parametrize("m,t", [(4, 1), (5, 2)])
def test_fewer_than_k_shares_leave_every_secret_equally_likely_two_shares(m, t):
    """k = 3: for several secrets, exhaustively over the 256^2 random symbols, every pair of shares takes every
    one of the 65536 pair values exactly once: the same distribution whatever the secret."""
    secrets_ = [0, 1, 0x5A, 0xFF]
    r1, r2 = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    secret = np.repeat(np.array(secrets_, dtype=np.uint8), 65536)
    noise = np.stack([np.tile(r1.ravel(), len(secrets_)), np.tile(r2.ravel(), len(secrets_))])  # coefficient-major
    shares = split(secret.tobytes(), m, t, rng=_Noise(noise))
    for a, b in itertools.combinations(range(m), 2):
        pair = np.frombuffer(shares[a], np.uint8).astype(np.int64) * 256 + np.frombuffer(shares[b], np.uint8)
        for block in pair.reshape(len(secrets_), 65536):
            assert np.array_equal(np.sort(block), np.arange(65536))


def _alter(share: bytes, rng) -> bytes:
    out = bytearray(share)
    pos = rng.choice(len(out), size=rng.integers(1, len(out) + 1), replace=False)
    for i in pos:
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


@pytest.mark.parametrize("m,t", [(4, 2), (5, 2), (6, 3), (7, 4)])
def test_lost_and_altered_shares_corrected_and_named_when_e_plus_2t_within_T(m, t):
    rng = np.random.default_rng(100 + m * 10 + t)
    secret = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
    shares = split(secret, m, t, rng=rng)
    cases = 0
    for n_bad in range(0, t // 2 + 1):
        for n_lost in range(0, t - 2 * n_bad + 1):
            for bad in itertools.combinations(range(m), n_bad):
                rest = [i for i in range(m) if i not in bad]
                lost = tuple(rng.choice(rest, size=n_lost, replace=False).tolist())
                got_shares = [None if i in lost else _alter(shares[i], rng) if i in bad else shares[i]
                              for i in range(m)]
                got = combine(got_shares, t)
                assert got.secret == secret
                assert got.altered == tuple(sorted(bad)) and got.lost == tuple(sorted(lost))
                cases += 1
    assert cases >= m  # at least every single altered share was tried


def test_tolerate_one_detects_an_altered_share_without_locating_it():
    rng = np.random.default_rng(7)
    secret = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    shares = split(secret, 4, 1, rng=rng)
    for i in range(4):
        bad = list(shares)
        bad[i] = _alter(shares[i], rng)
        with pytest.raises(SharesDoNotDecode, match="altered share detected, not located"):
            combine(bad, 1)


def test_checks():
    with pytest.raises(InvalidRequest, match="3 shares cannot tolerate 3 lost"):
        split(b"x", 3, 3)
    with pytest.raises(InvalidRequest, match="m=256 shares"):
        split(b"x", 256, 1)
    with pytest.raises(InvalidRequest, match="one length"):
        combine([b"ab", b"abc", None], 1)
    assert combine([b"", b"", b""], 1).secret == b""
    assert "masked" in repr(combine(split(b"key", 3, 1), 1)) and "key" not in repr(combine(split(b"key", 3, 1), 1))


def test_interpolation_agrees_with_galois():
    """The decoder's Lagrange interpolation over the tables against galois's own polynomial interpolation."""
    import galois

    from qkdseg.reconstruction.shamir import _combine_rows, _lagrange

    field = galois.GF(2**8, compile="python-calculate")
    rng = np.random.default_rng(11)
    for _ in range(20):
        n = int(rng.integers(1, 7))
        xs = rng.choice(np.arange(1, 256), size=n, replace=False).tolist()
        ys = rng.integers(0, 256, n).tolist()
        at = int(rng.integers(0, 256))
        want = int(galois.lagrange_poly(field(xs), field(ys))(field(at)))
        got = _combine_rows(_lagrange(xs, at), [np.array([y], dtype=np.uint8) for y in ys])
        assert int(got[0]) == want
    # shares are the polynomial's values: galois evaluates the same polynomial at the same points
    shares = split(bytes([0x53]), 5, 2, rng=_Noise(np.array([0xCA, 0x11])))
    poly = galois.Poly([0x11, 0xCA, 0x53], field=field)  # descending degree: 0x11 x^2 + 0xCA x + secret
    assert [s[0] for s in shares] == [int(poly(field(x))) for x in range(1, 6)]


def test_tables_are_galois_field():
    """Every product and inverse of the tables equals galois's GF(2^8) (the tables are built without it)."""
    import galois

    from qkdseg.reconstruction.shamir import _tables

    field = galois.GF(2**8, compile="python-calculate")
    a = field.elements
    mul, inv = _tables()
    assert np.array_equal(mul, np.asarray(a[:, None] * a[None, :], dtype=np.uint8))
    assert np.array_equal(inv[1:], np.asarray(field(a[1:]) ** -1, dtype=np.uint8)) and inv[0] == 0


def test_galois_never_imported_by_sharing():
    code = ("import sys, qkdseg, qkdseg.reconstruction.shamir as s, qkdseg.api; s.combine(s.split(b'k', 3, 1), 1); "
            "print('galois' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
