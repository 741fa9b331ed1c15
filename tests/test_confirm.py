"""The end-to-end confirmation (issue 38, item 3): a one-time polynomial MAC over GF(2^128) (qkdseg.keys.confirm)
whose tag reveals nothing about the keys; before, the tag was HMAC-SHA256(delivered key, ...), a key-check value."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings, strategies as st

from qkdseg.keys.confirm import (MAC_BITS, _mul, _table, forgery_bound, gf_mul, mac_keys, message, pad_for,
                                 refill_keys, tag)


def _keys(n: int, size_bytes: int = 32) -> list:
    return [((0, 0, i), os.urandom(size_bytes)) for i in range(n)]


def test_a_wrong_key_gets_the_real_tag_under_its_own_one_time_key_and_another_tag_under_any_other():
    """What the tag reveals about the keys: nothing. For a wrong guess of the keys there is a one-time MAC key (the
    same ``h``, its own pad) under which the guess's tag equals the real tag, so the tag cannot tell the guess from
    the keys; under any other one-time key the guess's tag differs. The same MAC key with other keys: another tag
    (the confirmation)."""
    keys = _keys(3)
    wrong = [keys[0], ((0, 0, 1), bytes(a ^ 1 for a in keys[1][1])), keys[2]]  # one bit of one key
    mac = os.urandom(MAC_BITS // 8)
    seen = tag(mac, message("r1", keys))
    assert tag(mac, message("r1", keys)) == seen and len(seen) == 16
    assert tag(mac, message("r1", wrong)) != seen  # it still confirms: the same MAC key, other keys, other tag
    assert tag(mac, message("r2", keys)) != seen  # ... and another request id
    fits = pad_for(mac, message("r1", wrong), seen)  # the one-time key the guess needs to give the tag seen
    assert fits[:16] == mac[:16] and fits != mac and tag(fits, message("r1", wrong)) == seen
    assert pad_for(mac, message("r1", keys), seen) == mac  # the real keys' one: the MAC key itself
    other = fits[:16] + bytes(a ^ b for a, b in zip(fits[16:32], os.urandom(16)))  # a different one-time key
    assert tag(other, message("r1", wrong)) != seen
    assert tag(os.urandom(MAC_BITS // 8), message("r1", keys)) != seen


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16), st.integers(0, 1 << 16))
def test_the_tag_is_a_one_time_pad_of_the_hash(key, h, guess_seed):
    """For every value of the keys the map pad -> tag is a bijection of 16 bytes: every tag is equally likely
    whatever the keys are (exactly, not statistically), so seeing it tells nothing about them."""
    rng = random.Random(guess_seed)
    guess = bytes(rng.getrandbits(8) for _ in range(32))
    for k in (key, guess):
        msg = message("r", [((0, 0, 0), k)])
        pads = [bytes([b]) + bytes(15) for b in range(256)]  # 256 pads, 256 different tags
        tags = {tag(h + s, msg) for s in pads}
        assert len(tags) == 256
        t = tag(h + pads[0], msg)  # and each tag is reached by exactly one pad, for the keys and for any guess
        assert pad_for(h + pads[0], msg, t) == h + pads[0]


def test_the_field_multiplication_by_table_is_the_reference():
    rng = random.Random(38)
    one = 1
    for _ in range(300):
        a, b, c = (rng.getrandbits(128) for _ in range(3))
        assert _mul(a, _table(b)) == gf_mul(a, b) == gf_mul(b, a)
        assert gf_mul(gf_mul(a, b), c) == gf_mul(a, gf_mul(b, c))  # a field: associative, 1 the unit
        assert gf_mul(a, one) == a and gf_mul(a, b ^ c) == gf_mul(a, b) ^ gf_mul(a, c)


def test_a_relay_that_xors_differences_is_caught():
    """Key pieces changed by a known XOR (what a relay can do): the destination's keys, its ``h``, its pad or all
    of them differ by that XOR; its tag is never the source's in these trials (the bound: 2^-124 each)."""
    rng = random.Random(7)
    for trial in range(200):
        keys, mac = _keys(2), os.urandom(32)
        dk = [bytes(rng.getrandbits(8) if trial % 4 in (0, 3) else 0 for _ in range(32)) for _ in keys]
        dmac = bytes(rng.getrandbits(8) if trial % 4 in (1, 3) else 0 for _ in range(16)) + bytes(
            rng.getrandbits(8) if trial % 4 in (2, 3) else 0 for _ in range(16))
        if not any(dmac) and not any(any(d) for d in dk):
            continue
        theirs = [(kid, bytes(a ^ b for a, b in zip(k, d))) for (kid, k), d in zip(keys, dk)]
        their_mac = bytes(a ^ b for a, b in zip(mac, dmac))
        assert tag(their_mac, message("r", theirs)) != tag(mac, message("r", keys))


def test_the_mac_key_costs_256_bits_a_run_and_a_refill_keeps_at_most_what_it_asked():
    assert [mac_keys(n) for n in (64, 128, 256, 4096)] == [4, 2, 1, 1]
    # a stock asked for 32 keys; two keys a relay (the example network at level 0.5): 17 relays make 34 keys,
    # 32 kept, 2 are MAC key material (one needed); 31 asked: 16 relays, 31 kept, the slack is the MAC key
    assert refill_keys(32, 34, 256) == 32 and refill_keys(31, 32, 256) == 31
    assert refill_keys(32, 16, 256) == 15  # the links' reserve held the run back: fewer, never the MAC key
    assert refill_keys(1, 1, 256) == 0 and refill_keys(8, 4, 64) == 0  # no room for a key and its MAC key
    assert forgery_bound(128, 256) < 2.0 ** -124 and forgery_bound(69664, 4096) < 2.0 ** -115
