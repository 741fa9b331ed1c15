"""A node started from a copy of its directory (issue 31's check: docs/deploy.md "Backup and restore", docs/network.md
"Link offsets and crashes"): the generations of a link's key stream, the offsets' store, the copy seen at the start,
the keys voided and the links moved, ``node restore`` / ``net restore``, and ``net init --force``'s rotated audit
files. In-process (NodeService on a deployment ``net init`` wrote) and the CLI; the restored network itself is
served in tests/test_net_ops.py."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

import portblock
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdseg.net.generations import next_generation
from qkdseg.errors import InvalidRequest
from qkdseg.net.keystream import GEN_STRIDE, LinkStream, gap, generation, implausible, position
from qkdseg.net.relaystore import RelayDB
from test_net import _run

LINE = {"directed": False, "graph": {"name": "line3"},
        "nodes": [{"id": i, "trusted": i == 1, "p": 1.0 if i == 1 else 0.8} for i in range(3)],
        "links": [{"source": 0, "target": 1}, {"source": 1, "target": 2}]}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- generations of a link's key stream ------------------------------------------------------------------------------
def test_generation_zero_is_the_stream_as_before_and_each_generation_a_stream_of_its_own():
    seed = bytes(range(32))
    s = LinkStream(seed)
    for d, off in ((0, 0), (1, 64 * 7 + 5), (0, 1 << 37)):  # the nonce it always had: block, then the direction
        block, skip = divmod(off, 64)
        enc = Cipher(algorithms.ChaCha20(seed, block.to_bytes(4, "little") + d.to_bytes(12, "little")), None)
        assert s.read(d, off, 40) == enc.encryptor().update(bytes(skip + 40))[skip:]
    g1, g2 = next_generation(1000, _now_ms()), next_generation(1000, _now_ms() + 5)
    reads = {s.read(0, o, 32) for o in (1000, g1, g2)} | {s.read(1, g1, 32)}
    assert len(reads) == 4  # another generation, or the other direction: other bytes
    assert position(g1) == 1000 and generation(g1) >= _now_ms() - 60_000 and g1 > 1000


def test_a_new_generation_is_above_the_old_and_the_window_counts_its_position():
    now = _now_ms()
    later = (now + 10_000) * GEN_STRIDE + 800  # a generation a clock ahead of this one drew
    assert next_generation(later, now) == later + GEN_STRIDE  # a clock not past it: one past its generation
    new = next_generation(800, now)
    assert new > 800 and position(new) == 800 and generation(new) >= now
    assert gap(800, 864) == 64 and gap(900, new) == 0 and gap(700, new + 100) == 200
    # a generation is 0 or a clock reading up to the receiver's clock and skew: a neighbour's 2^40 is neither
    assert not implausible(new, 0.0) and not implausible(5000, 0.0)
    assert implausible(1 << 40, 60.0) and implausible(new + 3_600_000 * GEN_STRIDE, 60.0)
    with pytest.raises(InvalidRequest, match="set the clock"):
        next_generation(800, 1000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, (1 << 38) - 1)), min_size=1, max_size=12))
def test_the_offsets_store_keeps_the_largest_offset_written(tmp_path_factory, writes):
    """Whatever order offsets of several generations are written in (one transaction each), the store keeps the
    largest, as before generations (the receiver's mark and the sender's counter only grow)."""
    db = RelayDB(tmp_path_factory.mktemp("rdb") / "relay.sqlite3")
    try:
        offs = [(g * 1_000_000_000_000 + 7) * GEN_STRIDE * (g > 0) + p for g, p in writes]
        for o in offs:
            db.write({("[0,1]", 0): o})
        assert db.offsets() == {("[0,1]", 0): max(offs)} == db.durable
    finally:
        db.close()


def test_a_relay_store_from_before_generations_is_read_as_generation_zero(tmp_path):
    path = tmp_path / "relay.sqlite3"
    con = sqlite3.connect(path)
    con.executescript("""
CREATE TABLE offsets (link TEXT NOT NULL, dir INTEGER NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (link, dir));
CREATE TABLE inbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, src TEXT NOT NULL, kind TEXT NOT NULL,
                    status TEXT NOT NULL, t REAL NOT NULL);
CREATE TABLE outbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, dst TEXT NOT NULL, kind TEXT NOT NULL,
                     status TEXT NOT NULL, t REAL NOT NULL);""")  # the relay store as qkdseg wrote it before generations
    con.execute("INSERT INTO offsets VALUES ('[0,1]', 1, 4096)")
    con.commit()
    con.close()
    db = RelayDB(path)
    try:
        assert db.offsets() == {("[0,1]", 1): 4096}
        db.write({("[0,1]", 1): 100})
        assert db.offsets() == {("[0,1]", 1): 4096}
    finally:
        db.close()


# -- a node started from a copy ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linedir(tmp_path_factory):
    from typer.testing import CliRunner

    from qkdseg.cli import app

    base = tmp_path_factory.mktemp("restore")
    (base / "line.json").write_text(json.dumps(LINE))
    d = base / "deploy"
    r = CliRunner().invoke(app, ["net", "init", str(d), "--network", str(base / "line.json"), "--sae", "A=0",
                                 "--sae", "B=2", "--port", str(portblock.port())])
    assert r.exit_code == 0, r.output
    return d


def _records(d: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (d / "audit.jsonl").read_text().splitlines()) if r["event"] == event]


def _serve(d: Path):
    from qkdseg.net.node import NodeService

    return NodeService(d)


def test_a_copy_of_a_node_voids_its_keys_and_sends_on_new_generations(linedir, tmp_path):
    """Node 1 (the middle of the line: a sender on both links) with a key waiting for a slave and a spare key:
    restarted in place it keeps them; started from a copy it voids both (audited) and moves each direction it
    sends on to a new generation, its position kept; the copy's next start is an ordinary one."""
    from qkdseg.server.store import Batch, KeyRow

    d = tmp_path / "1"
    shutil.copytree(linedir / "nodes" / "1", d)  # never started: no relay store yet, no identity recorded
    svc = _serve(d)
    try:
        assert svc.restored is None
        rows = []
        for i, kind in enumerate(("issued", "spare")):
            row = KeyRow(f"00000000-0000-4000-8000-00000000000{i}", kind, "A", "B", 256, 0.9, b"", 1.0, 9e9, "{}")
            svc.store.seal(row, bytes([i]) * 32)
            rows.append(row)
        svc.store.commit(Batch(put_keys=[r.values() for r in rows]))
        ends = {end.name: end for end in svc.links.values()}
        sent = {(name, end.out_dir): 4096 + i for i, (name, end) in enumerate(ends.items())}
        got = {(name, end.in_dir): 777 for name, end in ends.items()}
        svc.relaydb.write({**sent, **got})
    finally:
        svc.close()
    svc = _serve(d)  # restarted in place: as it was
    try:
        assert svc.restored is None and len(svc.keys) + len(svc.held_spares) == 2
        assert {k: svc.offsets[k] for k in sent} == sent
    finally:
        svc.close()

    copy = tmp_path / "1-copy"
    shutil.copytree(d, copy)  # cp -a keeps the bytes; the files are others (another inode or birth time)
    t0 = _now_ms()
    svc = _serve(copy)
    try:
        assert svc.restored and "relay.sqlite3 is not the file" in svc.restored
        assert svc.keys == {} and svc.held_spares == {} and svc.store.load_keys() == []
        for key, old in sent.items():
            new = svc.offsets[key]
            assert new > old and position(new) == old and generation(new) >= t0, (key, new)
        assert {k: svc.offsets[k] for k in got} == got  # what it receives: its senders' business
        assert svc.relaydb.offsets() == svc.offsets
    finally:
        svc.close()
    rec = _records(copy, "restore")
    assert len(rec) == 1 and rec[0]["key_ids"] == [rows[0].key_id] and rec[0]["spare_keys"] == 1
    assert set(rec[0]["links"]) == set(ends)
    svc = _serve(copy)  # its own files now: an ordinary start
    try:
        assert svc.restored is None and len(_records(copy, "restore")) == 1
    finally:
        svc.close()


def test_node_restore_marks_a_directory_and_net_restore_every_node(linedir, tmp_path):
    from qkdseg.net.restore import mark

    d = tmp_path / "net"
    shutil.copytree(linedir, d)
    svc = _serve(d / "nodes" / "0")
    try:
        assert svc.restored is None
        with pytest.raises(Exception, match="already using this directory"):
            mark(d / "nodes" / "0")  # refused while a process holds it
    finally:
        svc.close()
    r = _run("net", "restore", str(d))
    assert r.returncode == 0 and "marked 3 node(s) restored" in r.stdout, r.stdout + r.stderr
    assert all((d / "nodes" / n / "restored").exists() for n in ("0", "1", "2"))
    svc = _serve(d / "nodes" / "0")  # in place, the same files: restored because marked
    try:
        assert svc.restored and "marked restored" in svc.restored
        assert all(generation(svc.offsets[(end.name, end.out_dir)]) > 0 for end in svc.links.values())
    finally:
        svc.close()
    assert not (d / "nodes" / "0" / "restored").exists()
    r = _run("node", "restore", str(d / "nodes"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a node directory" in r.stderr, r.stderr


def test_net_init_force_removes_the_old_rotated_audit_files(linedir, tmp_path):
    """`net init --force` writes a new deployment: no rotated audit file of the old one is left (their chain is
    under the old audit key), and the fresh directory verifies (no record yet)."""
    d = tmp_path / "net"
    shutil.copytree(linedir, d)
    old = [d / "nodes" / "0" / "audit-1.jsonl", d / "nodes" / "2" / "audit-40.jsonl.gz",
           d / "controller" / "audit-9.jsonl", d / "nodes" / "1" / "restored"]
    for p in old:
        p.write_text("{}\n")
    from typer.testing import CliRunner

    from qkdseg.cli import app

    cli = CliRunner()
    r = cli.invoke(app, ["net", "init", str(d), "--network", str(linedir.parent / "line.json"), "--sae", "A=0",
                         "--sae", "B=2", "--port", str(portblock.port()), "--force"])
    assert r.exit_code == 0, r.output
    assert not [p for p in old if p.exists()]
    for sub in ("nodes/0", "controller"):
        v = cli.invoke(app, ["kms", "audit", str(d / sub), "--verify"])
        assert v.exit_code == 0 and "0 records" in v.output, v.output
    v = cli.invoke(app, ["kms", "audit", str(d), "--verify"])  # not a service directory at all: still refused
    assert v.exit_code == 2 and "no audit log here" in v.output, v.output
