"""What the key service checks before it serves (issue 20): one process per directory, the storage key,
the audit chain, the network, read-only and full disks, and the operator commands (init, sae, rotate).

Each test makes its own directory; servers are real ``qkdseg kms serve`` processes (kms_helpers.Server).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess

import pytest

from kms_helpers import QKDSEG, Server, kms_init
from qkdseg.errors import InvalidRequest
from qkdseg.kms.audit import load_audit_key
from qkdseg.kms.store import AUDIT_NAME, Batch, KeyRow, Store, load_storage_key, make_storage_key, verify_audit


def run(*args, timeout=120):
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr, r.stdout)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error:"), r.stderr
    return lines[0]


def _store(d, key=None, **kw) -> Store:
    return Store(d, key if key is not None else load_storage_key(d / "storage.key"), load_audit_key(d / "audit.key"),
                 **kw)


def _with_sealed_row(d) -> None:
    store = _store(d)
    try:
        row = KeyRow("00000000-0000-4000-8000-000000000001", "issued", "A", "B", 256, 0.9, b"", 1.0, 9e9, "{}")
        store.seal(row, b"\x01" * 32)
        store.commit(Batch(put_keys=[row.values()], audit=[{"event": "issue", "key_ids": [row.key_id]}]))
    finally:
        store.close()


# -- 1. one server per directory ------------------------------------------------------------------
def test_a_second_server_on_one_directory_exits_2_naming_the_pid(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    server = Server(d).start()
    try:
        r = run("kms", "serve", str(d), "--port", "0")
        line = one_line_error(r)
        assert f"pid {server.proc.pid}" in line, line
        server.kill9()  # the lock dies with the process: no stale lock
        server.start()
    finally:
        server.stop()
    with pytest.raises(InvalidRequest, match="pid"):
        a = _store(d)
        try:
            _store(d)
        finally:
            a.close()


# -- 2. the storage key -------------------------------------------------------------------------------
def test_a_missing_storage_key_refuses_to_start_and_is_not_replaced(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    (d / "storage.key").unlink()
    line = one_line_error(run("kms", "serve", str(d), "--port", "0"))
    assert "storage.key" in line and "kms init" in line, line
    assert not (d / "storage.key").exists()


def test_a_wrong_storage_key_refuses_to_start(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    (d / "storage.key").unlink()
    make_storage_key(d / "storage.key")
    line = one_line_error(run("kms", "serve", str(d), "--port", "0"))
    assert "does not match" in line, line
    with pytest.raises(InvalidRequest, match="does not match"):
        _store(d)


def test_only_init_makes_a_storage_key(tmp_path):
    make_storage_key(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    with pytest.raises(InvalidRequest, match="exists"):
        make_storage_key(tmp_path / "k")
    with pytest.raises(InvalidRequest, match="no such file"):
        load_storage_key(tmp_path / "nope")


def test_rotate_storage_key_reseals_every_row_and_keeps_the_audit_chain(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    old = (d / "storage.key").read_bytes()
    r = run("kms", "rotate-storage-key", str(d))
    assert r.returncode == 0, r.stderr
    new = (d / "storage.key").read_bytes()
    assert new != old and len(new) == 32 and stat.S_IMODE((d / "storage.key").stat().st_mode) == 0o600
    store = _store(d)
    try:
        (row,) = store.load_keys()
        assert store.open(row) == b"\x01" * 32
    finally:
        store.close()
    with pytest.raises(InvalidRequest, match="does not match"):
        _store(d, old)
    n, problems = verify_audit(d)
    assert problems == [] and n >= 2  # the rotation is audited


# -- 10. the audit chain ----------------------------------------------------------------------------
def _records(d, n):
    store = _store(d)
    try:
        for i in range(n):
            store.commit(Batch(audit=[{"event": "issue", "i": i}]))
    finally:
        store.close()


def _rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_an_edit_on_line_1_is_reported_as_line_1(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 4)
    path = d / AUDIT_NAME
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["i"] = 42
    _rewrite(path, [json.dumps(rec, sort_keys=True, separators=(",", ":"))] + lines[1:])
    problems = verify_audit(d)[1]
    assert problems and problems[0].startswith("line 1"), problems


def test_the_chain_is_keyed_a_recomputed_sha256_chain_is_a_forgery(tmp_path):
    """The attack of issue 20: rewrite a line, recompute every later hash and the database's head."""
    import hashlib

    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 4)
    path = d / AUDIT_NAME
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["i"] = 99
    prev, out = recs[0]["prev"], []
    for i, rec in enumerate(recs):
        if i:
            rec["prev"] = prev
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(line.encode()).hexdigest()
        out.append(line)
    _rewrite(path, out)
    db = sqlite3.connect(d / "kms.sqlite3")
    db.execute("UPDATE meta SET value=? WHERE name='audit_head'", (f"{recs[-1]['seq']}:{prev}",))
    db.commit()
    db.close()
    problems = verify_audit(d)[1]
    assert any(p.startswith("line 2") for p in problems), problems
    r = run("kms", "audit", str(d), "--verify")
    assert r.returncode == 1 and "BROKEN" in r.stdout


def test_a_broken_chain_refuses_to_start_unless_accepted_which_is_audited(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    _records(d, 3)
    path = d / AUDIT_NAME
    lines = path.read_text().splitlines()
    _rewrite(path, lines[:1] + lines[2:])  # a removed line
    line = one_line_error(run("kms", "serve", str(d), "--port", "0"))
    assert "audit" in line and "--accept-broken-audit" in line, line
    server = Server(d, ("--accept-broken-audit",)).start()
    try:
        assert server.client("A").post("B/enc_keys", {}).status_code == 200
    finally:
        assert server.stop() == 0
    events = [json.loads(x)["event"] for x in path.read_text().splitlines()]
    assert "audit_broken_accepted" in events
    # accepted: the next start needs no flag, and audit --verify reports the accepted problem
    server = Server(d).start()
    server.stop()
    r = run("kms", "audit", str(d), "--verify")
    assert r.returncode == 0 and "accepted" in r.stdout, r.stdout


def test_a_torn_last_line_is_repaired_from_the_store(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 3)
    store = _store(d)
    store._synced_at = float("inf")  # nothing synced: the records stay in the table too
    store.commit(Batch(audit=[{"event": "deliver", "note": "x" * 50}]))
    store.db.close()  # a crash: no close()
    store._lock.release()  # (the crash would have released it)
    path = d / AUDIT_NAME
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last write was cut
    _store(d).close()
    n, problems = verify_audit(d)
    assert n == 4 and problems == [], problems


def test_audit_key_is_private_and_separate(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    for name in ("audit.key", "storage.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert (d / "audit.key").read_bytes() != (d / "storage.key").read_bytes()
    _records(d, 2)
    for name in (AUDIT_NAME, "kms.sqlite3"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
