"""Bounded growth (issue 31, deliverable 3): relay rows pruned after the window, old messages refused, audit logs
rotated by size and verified as one chain (docs/deploy.md, "Retention and audit rotation").

One network of real processes (the example network) with ``--retention 4 --clock-skew 1 --audit-max-mb 0.01``:
after a few hundred requests and a wait, every node's inbox and outbox hold only recent rows; a message older
than the window, or from the future, is refused with 409 and audited; a message id that was accepted, then
pruned, replayed with its own ``sent_at``, is refused. The audit logs of the nodes and the controller rotated
several times; ``kms audit`` verifies each whole, with files gzipped in place or moved to ``--archive``, and names
the file and line of a changed line.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from test_net import SAES, _free_port, _run, net_up
from timing import scaled

RETENTION, SKEW = 4.0, 1.0
TIMEOUT = 4.0  # QKDSEG_RELAY_TIMEOUT_S: a request's rows are kept while it is in flight, at most this long
PAIRS = [("A", "0", "B", "7"), ("C", "4", "A", "0"), ("B", "7", "C", "4"), ("D", "7", "A", "0")]


@pytest.fixture(scope="module")
def rnet(tmp_path_factory):
    base = tmp_path_factory.mktemp("retention")
    d = base / "deploy"
    r = _run("net", "init", str(d), "--network", "example", *[a for s in SAES for a in ("--sae", s)],
             "--security-level", "0.5", "--port", str(_free_port()), "--retention", str(RETENTION),
             "--clock-skew", str(SKEW), "--audit-max-mb", "0.01")
    assert r.returncode == 0, r.stderr
    with net_up(d, base, {**os.environ, "QKDSEG_ACK_S": "0.2", "QKDSEG_RELAY_TIMEOUT_S": str(TIMEOUT)}) as n:
        yield n


def _rows(net, node: str) -> dict[str, list[float]]:
    db = sqlite3.connect(f"file:{net.dir / 'nodes' / net.names[node] / 'relay.sqlite3'}?mode=ro", uri=True)
    try:
        return {t: [r[0] for r in db.execute(f"SELECT t FROM {t}")] for t in ("inbox", "outbox")}
    finally:
        db.close()


def _post(net, src: str, dst: str, body: dict):
    import httpx

    from qkdseg.net.wire import client_context

    nd = net.dir / "nodes" / net.names[src]
    ctx = client_context(nd / "node.crt", nd / "node.key", nd / "ca.crt")
    return httpx.post(f"https://{net.addr[dst]}/relay/v1/messages", json=body, verify=ctx, timeout=10)


def _audit_text(d: Path) -> str:
    from qkdseg.server.auditseries import open_lines, series

    return "\n".join(line for p in series(d) for line in open_lines(p))


def test_init_writes_the_window_and_refuses_one_that_accepts_nothing(rnet, tmp_path):
    conf = json.loads((rnet.dir / "nodes" / rnet.names["0"] / "node.json").read_text())
    assert (conf["retention_s"], conf["clock_skew_s"], conf["audit_max_mb"]) == (RETENTION, SKEW, 0.01)
    assert "audit_max_mb = 0.01" in (rnet.dir / "controller" / "kms.toml").read_text()
    r = _run("net", "init", str(tmp_path / "x"), "--network", "example", "--sae", "A=0", "--sae", "B=7",
             "--retention", "30", "--clock-skew", "60")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--retention 30" in r.stderr, r.stderr


def test_relay_rows_are_pruned_after_the_window(rnet):
    n = 150
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        done = [f.result() for f in [ex.submit(rnet.deliver, *PAIRS[i % len(PAIRS)]) for i in range(n)]]
    assert len(done) == n
    seen = sum(len(v) for node in rnet.names for v in _rows(rnet, node).values())
    time.sleep(max(RETENTION, TIMEOUT) + 3)  # the window, and the expiry loop's period (retention / 20) many times
    now = time.time()
    left = 0
    for node in rnet.names:
        rows = _rows(rnet, node)
        for table, ts in rows.items():
            old = [now - t for t in ts if now - t > max(RETENTION, TIMEOUT) + 2]
            assert not old, f"node {node} {table}: {len(old)} rows older than the window (oldest {max(old):.1f} s)"
            left += len(ts)
    assert seen > n and left < seen / 4, (seen, left)


def test_a_message_older_than_the_window_or_from_the_future_is_refused_and_audited(rnet):
    for label, sent in (("old", time.time() - RETENTION), ("future", time.time() + 3 * SKEW)):
        mid = f"stale-{label}-{uuid.uuid4()}"
        body = {"message_id": mid, "request_id": str(uuid.uuid4()), "kind": "pieces", "src": 0, "dst": 1,
                "blocks": [], "sent_at": sent}
        r = _post(rnet, "0", "1", body)
        assert r.status_code == 409, r.text
        assert "window" in r.json()["detail"] or "ahead" in r.json()["detail"]
        deadline = time.monotonic() + scaled(10)
        while mid not in _audit_text(rnet.dir / "nodes" / rnet.names["1"]):
            assert time.monotonic() < deadline, f"the refusal of {mid} was not audited"
            time.sleep(0.2)


def test_a_pruned_message_id_replayed_is_refused(rnet):
    body = {"message_id": f"replay-{uuid.uuid4()}", "request_id": str(uuid.uuid4()), "kind": "pieces", "src": 0,
            "dst": 1, "blocks": [], "sent_at": time.time()}
    r = _post(rnet, "0", "1", body)
    assert r.status_code == 202, r.text
    assert _post(rnet, "0", "1", body).status_code == 202  # a retry within the window: the same answer
    db_path = rnet.dir / "nodes" / rnet.names["1"] / "relay.sqlite3"

    def stored() -> bool:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return db.execute("SELECT 1 FROM inbox WHERE message_id=?", (body["message_id"],)).fetchone() is not None
        finally:
            db.close()

    assert stored()
    deadline = time.monotonic() + RETENTION + 10
    while stored():
        assert time.monotonic() < deadline, "the inbox row was never pruned"
        time.sleep(0.3)
    r = _post(rnet, "0", "1", body)
    assert r.status_code == 409 and "window" in r.json()["detail"], r.text


def test_rotated_audit_logs_verify_whole_gzipped_archived_and_name_a_changed_line(rnet, tmp_path):
    from qkdseg.server.auditseries import series

    _run("net", "down", str(rnet.dir), timeout=120)  # the offline check reads still files (net_up's down is a no-op)
    ctrl = rnet.dir / "controller"
    for d in [ctrl] + [rnet.dir / "nodes" / rnet.names[v] for v in ("0", "4", "7")]:  # the SAEs' nodes audit most
        r = _run("kms", "audit", str(d), "--verify")
        assert r.returncode == 0 and "intact" in r.stdout, (d, r.stdout + r.stderr)
        live = d / "audit.jsonl"
        assert not live.exists() or live.stat().st_size <= 0.01 * (1 << 20) + 4096, d
    node = max((rnet.dir / "nodes" / name for name in rnet.names.values()), key=lambda d: len(series(d)))
    files = series(node)
    assert len(files) >= 4, files  # rotated several times
    assert len(series(ctrl)) >= 3
    # one rotated file gzipped in place, one moved to an archive
    gz = files[0]
    with open(gz, "rb") as src, gzip.open(gz.with_name(gz.name + ".gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    gz.unlink()
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.move(str(files[1]), archive / files[1].name)
    r = _run("kms", "audit", str(node), "--verify")
    assert r.returncode == 1 and "a rotated file is missing" in r.stdout, r.stdout
    r = _run("kms", "audit", str(node), "--verify", "--archive", str(archive))
    assert r.returncode == 0 and "intact" in r.stdout, r.stdout + r.stderr
    # a changed line in a rotated file: its file and line
    bad = files[2]
    lines = bad.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["time"] = rec.get("time", 0) + 1
    lines[4] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    bad.write_text("\n".join(lines) + "\n")
    r = _run("kms", "audit", str(node), "--verify", "--archive", str(archive))
    assert r.returncode == 1 and f"{bad}: line 5 " in r.stdout and "BROKEN" in r.stdout, r.stdout


def test_a_rotation_cut_by_a_crash_is_completed_at_the_start(tmp_path):
    """The database says the live file was rotated (its first step), the rename did not happen: the next start
    renames it, and the chain is whole."""
    from qkdseg.server.directory import check_audit_dir
    from qkdseg.server.store import Batch, Store

    key, skey = bytes(range(32)), os.urandom(32)
    st = Store(tmp_path, skey, key, audit_max_bytes=2000)
    for i in range(40):
        st.commit(Batch(audit=[{"event": "x", "i": i, "pad": "p" * 40}]))
    if not (tmp_path / "audit.jsonl").exists():  # just rotated: a live file to rotate
        st.commit(Batch(audit=[{"event": "x"}]))
    assert (tmp_path / "audit.jsonl").exists()
    st.set_meta("audit_live_start", f"{st.audit_seq}:{st.audit_hash}")  # step 1 of a rotation, then the crash
    st.close()
    st = Store(tmp_path, skey, key, audit_max_bytes=2000)
    assert not (tmp_path / "audit.jsonl").exists()  # renamed at the start
    st.commit(Batch(audit=[{"event": "after"}]))
    seq = st.audit_seq
    st.close()
    rep = check_audit_dir(tmp_path, key)
    assert rep.problems == [] and rep.records == seq
    assert len(list(tmp_path.glob("audit-*.jsonl"))) >= 3


# -- the files stop growing (issue 31: the soak's db_bytes) ----------------------------------------------------
def _relay_rows(n: int, t: float) -> tuple[list, list]:
    rid = str(uuid.uuid4())
    return ([(str(uuid.uuid4()), rid, "3", "pieces", "accepted", t) for _ in range(n)],
            [(str(uuid.uuid4()), rid, "4", "pieces", "sent", t) for _ in range(n)])


def test_a_relay_store_file_follows_its_rows_after_a_burst_is_pruned(tmp_path):
    """Steady traffic, one burst of 20 times as many rows, steady again: once the burst's rows are pruned, the
    file (pages, and bytes on disk after the close's checkpoint) is back near the steady size, not the burst's."""
    import asyncio
    from types import SimpleNamespace

    from qkdseg.net.relaystore import RelayDB
    from qkdseg.net.retention import prune_relay

    db = RelayDB(tmp_path / "relay.sqlite3")
    svc = SimpleNamespace(window=(10.0, 1.0), requests={}, relaydb=db)
    pages = lambda: db.db.execute("PRAGMA page_count").fetchone()[0]  # noqa: E731

    def run(seconds: int, per_s: int, t0: float) -> float:
        for i in range(seconds):  # one fake second: its rows, then a prune pass
            inbox, outbox = _relay_rows(per_s, t0 + i)
            db.write({("0-1", 0): int(t0 + i)}, inbox=inbox, outbox=outbox)
            asyncio.run(prune_relay(svc, t0 + i, 0.0))
        return t0 + seconds

    t = run(25, 40, 1000.0)
    steady = pages()
    inbox, outbox = _relay_rows(4000, t)
    db.write({}, inbox=inbox, outbox=outbox)
    burst = pages()
    assert burst > 5 * steady, (steady, burst)
    run(25, 40, t + 1)  # the burst is older than the window after 10 s
    after = pages()
    assert db.db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] <= 11 * 40
    assert after <= 1.5 * steady, f"{after} pages after the burst was pruned ({steady} steady, {burst} at the burst)"
    assert db.offsets() == {("0-1", 0): int(t + 25)}  # the offsets are never pruned
    db.close()
    assert (tmp_path / "relay.sqlite3").stat().st_size <= 1.5 * steady * 4096
    assert not (tmp_path / "relay.sqlite3-wal").exists()


def test_a_wal_grown_behind_a_reader_is_cut_back_after_the_checkpoint(tmp_path):
    """A reader holds its snapshot while the key store and a relay store write past the automatic checkpoint: the
    write-ahead logs grow; once the reader is gone the first commits after the checkpoint cut them back to
    ``WAL_KEEP_BYTES`` (without the cap SQLite keeps a log at its largest size for good)."""
    from qkdseg.net.relaystore import RelayDB
    from qkdseg.server.sqlitefile import WAL_KEEP_BYTES
    from qkdseg.server.store import Batch, Store

    relay = RelayDB(tmp_path / "relay.sqlite3")
    (tmp_path / "kms").mkdir()
    store = Store(tmp_path / "kms", os.urandom(32), os.urandom(32), durability="normal")
    writes = {
        "relay.sqlite3": lambda i: relay.write({("0-1", 0): i}, *_relay_rows(40, float(i))),
        "kms/kms.sqlite3": lambda i: store.commit(Batch(audit=[{"event": "x", "i": i, "pad": "p" * 3000}] * 2)),
    }
    stayed = {}  # name: (the log's size behind the reader, its size after)
    for name, write in writes.items():
        wal = tmp_path / f"{name}-wal"
        reader = sqlite3.connect(f"file:{tmp_path / name}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # its snapshot holds the checkpoint back
        i = 0
        while wal.stat().st_size < 2 * WAL_KEEP_BYTES:
            write(i)
            i += 1
        grown = wal.stat().st_size
        reader.execute("COMMIT")
        reader.close()
        for _ in range(200):  # a checkpoint (each commit past 1,000 pages tries one), then the log's restart
            write(i)
            i += 1
            if wal.stat().st_size <= WAL_KEEP_BYTES:
                break
        stayed[name] = (grown, wal.stat().st_size)
    relay.close()
    store.close()
    assert all(grown > 2 * WAL_KEEP_BYTES >= 2 * now for grown, now in stayed.values()), stayed


def test_a_relay_store_made_before_incremental_vacuum_is_converted_keeping_every_row(tmp_path):
    from qkdseg.net.relaystore import _SCHEMA, RelayDB

    path = tmp_path / "relay.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(_SCHEMA)
    old.execute("INSERT INTO offsets VALUES ('0-1', 0, 123456)")
    with old:
        old.execute("BEGIN")
        old.executemany("INSERT INTO inbox VALUES (?,?,?,?,?,?)", _relay_rows(300, 5.0)[0])
    old.close()
    db = RelayDB(path)
    assert db.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert db.offsets() == {("0-1", 0): 123456} and db.durable == {("0-1", 0): 123456}
    assert db.db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 300
    db.close()
