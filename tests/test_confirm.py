"""The end-to-end confirmation (issue 38, item 3): a one-time polynomial MAC (qkdseg.keys.confirm) whose tag reveals
nothing about the keys; before, the tag was HMAC-SHA256(delivered key, ...), a key-check value."""

from __future__ import annotations

import os

from qkdseg.keys.confirm import MAC_BITS, P, mac_keys, message, pad_for, tag


def test_the_tag_does_not_depend_on_the_key_only_the_one_time_mac_key_binds_them():
    keys = [((0, 0, i), os.urandom(32)) for i in range(3)]
    wrong = [keys[0], ((0, 0, 1), bytes(a ^ 1 for a in keys[1][1])), keys[2]]  # one bit of one key
    mac = os.urandom(MAC_BITS // 8)
    seen = tag(mac, message("r1", keys))
    assert tag(mac, message("r1", keys)) == seen and len(seen) == 16
    assert tag(mac, message("r1", wrong)) != seen  # it still confirms: the same MAC key, other keys, other tag
    assert tag(mac, message("r2", keys)) != seen
    # what the tag reveals: for the wrong keys there is a one-time MAC key (the same h) giving exactly the tag seen,
    # so a guess of the keys cannot be tested against it (each guess fits one pad, all pads equally likely)
    other = pad_for(mac, message("r1", wrong), seen)
    assert other[:16] == mac[:16] and tag(other, message("r1", wrong)) == seen
    assert tag(os.urandom(MAC_BITS // 8), message("r1", keys)) != seen  # a different one-time key: another tag
    # the tag is uniform: the pad is added mod P, so over the one-time keys every tag value is as likely
    tags = {tag(mac[:16] + s.to_bytes(16, "big"), message("r1", keys)) for s in range(64)}
    assert len(tags) == 64 and all(int.from_bytes(t, "big") < P for t in tags)


def test_the_mac_key_costs_256_bits_a_request():
    assert [mac_keys(n) for n in (64, 128, 256, 4096)] == [4, 2, 1, 1]
