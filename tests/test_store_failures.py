"""A failed write (issue 31): what the caller is told matches what was committed, and a failing server gets out of
the way.

Unit level (in-process, most of the coverage): a write is made to fail at each site -- the SQLite transaction
(SQLITE_FULL at COMMIT, or at the first statement, as a full disk does), the copy to ``audit.jsonl`` after the
commit (the file is ``/dev/full``: every write gets ENOSPC), a node's relay store -- and the test checks that the
answer, the state in memory and the database agree; Hypothesis runs random sequences of requests with random
failures. Real processes (bounded): ``kms serve`` and a network's node and controller whose directories are on a
small tmpfs the test fills (skipped where it cannot mount one): every key a master got is fetched by its slave once
space is freed and the server restarted, the audit never says delivered for a key that was not, the server exits
with status 1 within ``--exit-after-unready``, and meanwhile the controller plans around the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import portblock
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from kms_helpers import Server, kms_init
from test_kms_service import _service, _small_pools
from test_net import _free_port, _run

from qkdseg.server.audit import read_lines
from qkdseg.server.directory import verify_audit
from qkdseg.server.etsi import Caller, KmsError
from qkdseg.server.store import Batch, KeyRow
from qkdseg.server.storehealth import UNAVAILABLE, CommitFailed

DEV_FULL = Path("/dev/full")


class Faults:
    """Make the writes of one store (its SQLite connection and its audit file) fail on demand.

    ``transaction``: COMMIT raises SQLITE_FULL (the statements before it ran: a rollback is needed);
    ``statement``: the first statement after BEGIN raises it (SQLite may have rolled back already);
    ``audit``: the audit file is ``/dev/full`` (its transaction commits, the copy to the file gets ENOSPC).
    """

    def __init__(self, store=None, relaydb=None):
        self.store, self.relaydb = store, relaydb
        self.mode = None
        if store is not None:
            self.audit_path = store.audit_path
            store.db = _Conn(store.db, self)
        if relaydb is not None:
            relaydb.db = _Conn(relaydb.db, self)

    def arm(self, mode):
        self.mode = mode
        if self.store is not None:
            self.store.audit_path = DEV_FULL if mode == "audit" else self.audit_path

    def disarm(self):
        self.arm(None)


class _Conn:
    def __init__(self, db, faults):
        self._db, self._faults, self._begun = db, faults, False

    def _check(self, sql: str):
        mode, word = self._faults.mode, sql.strip().split()[0].upper()
        if word == "BEGIN":
            self._begun = True
            return
        if mode == "transaction" and word == "COMMIT" or mode == "statement" and self._begun and word != "ROLLBACK":
            self._begun = False
            raise sqlite3.OperationalError("database or disk is full")
        if word in ("COMMIT", "ROLLBACK"):
            self._begun = False

    def execute(self, sql, *args):
        self._check(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self._db.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def _db_keys(store) -> dict[str, tuple]:
    return {k: (kind, m, s) for k, kind, m, s in store.db.execute("SELECT key_id, kind, master, slave FROM keys")}


def _records(directory: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, read_lines(directory / "audit.jsonl")) if r.get("event") == event]


# -- the store itself ---------------------------------------------------------------------------------------------
def test_a_failed_transaction_stores_nothing_and_a_failed_audit_copy_catches_up(tmp_path):
    svc = _service(tmp_path / "svc", "example")
    store, d = svc.store, tmp_path / "svc"
    f = Faults(store)
    row = KeyRow("00000000-0000-4000-8000-00000000000a", "issued", "A", "B", 256, 0.9, b"", 1.0, 9e9, "{}")
    store.seal(row, b"\x01" * 32)
    try:
        for mode in ("transaction", "statement"):
            f.arm(mode)
            head = (store.audit_seq, store.audit_hash)
            with pytest.raises(CommitFailed) as err:
                store.commit(Batch(put_keys=[row.values()], audit=[{"event": "issue", "key_ids": [row.key_id]}]))
            assert err.value.status == 503 and err.value.message == UNAVAILABLE
            assert _db_keys(store) == {} and (store.audit_seq, store.audit_hash) == head
            assert not store.db.in_transaction
        f.arm("audit")  # committed, then the file cannot be written: no error, the records wait in the database
        store.commit(Batch(put_keys=[row.values()], audit=[{"event": "issue", "key_ids": [row.key_id]}]))
        store.commit(Batch(audit=[{"event": "deny"}]))
        assert set(_db_keys(store)) == {row.key_id}
        assert "audit_file" in store.health.errors and store.health.failures["audit_file"] == 2
        pending = store.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        assert pending == 2 and len(read_lines(d / "audit.jsonl")) == 0
        f.disarm()
        with open(d / "audit.jsonl", "a") as fh:  # and a torn line, as a write cut by the full disk leaves
            fh.write('{"event":"iss')
        store.probe()
        assert store.health.ok
        assert [r["event"] for r in map(json.loads, read_lines(d / "audit.jsonl"))] == ["issue", "deny"]
    finally:
        svc.close()
    assert verify_audit(d) == (2, [])


# -- kms serve's key service: Hypothesis over sequences of requests with failed writes --------------------------------
def _agree(svc) -> None:
    """The service's memory and its database hold the same keys, spare keys and consumed offsets."""
    db = _db_keys(svc.store)
    assert {k for k, v in db.items() if v[0] == "issued"} == set(svc.keys)
    spares = {row.key_id: (row.master, row.slave) for q in svc.spares.values() for row in q}
    assert {k: (m, s) for k, (kind, m, s) in db.items() if kind == "spare"} == spares
    rows = dict(svc.store.db.execute("SELECT k, consumed FROM links").fetchall())
    mem = svc.levels.consumed
    assert all(int(mem[k]) == rows.get(k, 0) for k in range(len(mem))), (rows, mem.tolist())


ops_st = st.lists(st.tuples(st.sampled_from(["enc", "enc", "dec", "dec", "expire", "recover"]),
                            st.sampled_from([None, None, "transaction", "statement", "audit"]),
                            st.integers(1, 3), st.sampled_from(["A", "B", "C"]), st.sampled_from(["A", "B", "C"])),
                  min_size=1, max_size=18)


@settings(max_examples=12, deadline=None)
@given(ops_st)
def test_any_sequence_with_failed_writes_delivers_each_key_once_or_keeps_it(tmp_path_factory, ops):
    """Every answer matches the store: a key a master got is delivered exactly once with an audit 'deliver', or is
    still fetchable (or expired, audited); a 503 store_failed changed nothing in memory or in the database."""
    tmp = tmp_path_factory.mktemp("svc")
    t = [1_000_000.0]
    svc = _service(tmp / "svc", _small_pools(tmp, 8192), clock=lambda: t[0])
    f = Faults(svc.store)
    given_keys: dict[str, tuple] = {}
    fetched: Counter = Counter()
    ttl = svc.cfg.key_ttl_s

    async def go():
        for op, fault, n, a, b in ops:
            f.arm(fault)
            try:
                if op == "enc" and a != b:
                    before = set(svc.keys)
                    try:
                        out = await svc.enc_keys(Caller(a, "m"), b, svc.parse_key_request(n, 256, None, None, None))
                    except KmsError as err:
                        assert err.status in (400, 503), err.message
                        assert set(svc.keys) == before
                        if err.reason == "store_failed":
                            assert err.message == UNAVAILABLE
                    else:
                        assert fault in (None, "audit")  # a transaction that failed never gives keys
                        for k in out["keys"]:
                            given_keys[k["key_ID"]] = (a, b, k["key"], t[0])
                elif op == "dec":
                    waiting = [(k, v) for k, v in given_keys.items() if k not in fetched and k in svc.keys]
                    if not waiting:
                        continue
                    m, s = waiting[0][1][:2]
                    ids = [k for k, v in waiting if v[:2] == (m, s)][:n]
                    try:
                        back = await svc.dec_keys(Caller(s, "s"), m, ids)
                    except KmsError as err:
                        assert err.reason == "store_failed" and fault in ("transaction", "statement") or (
                            not svc.store.health.writes_ok), err.message
                        assert all(k in svc.keys for k in ids)  # still fetchable
                    else:
                        assert fault in (None, "audit")
                        for k in back["keys"]:
                            fetched[k["key_ID"]] += 1
                            assert k["key"] == given_keys[k["key_ID"]][2]
                elif op == "expire":
                    t[0] += 0.6 * ttl
                    try:
                        await svc.expire()
                    except CommitFailed:
                        assert fault in ("transaction", "statement")
                elif op == "recover":
                    f.disarm()
                    assert await svc.committer.probe() and svc.store.health.ok
            finally:
                f.disarm()
            _agree(svc)

        assert await svc.committer.probe() and svc.store.health.ok
        for kid, (m, s, key, t_issued) in given_keys.items():
            if kid in fetched or t[0] >= t_issued + ttl:  # expired: deleted, or by the next expiry pass
                continue
            back = await svc.dec_keys(Caller(s, "s"), m, [kid])  # never lost: fetchable now
            assert back["keys"][0]["key"] == key
            fetched[kid] += 1

    try:
        asyncio.run(go())
    finally:
        svc.close()
    assert all(c == 1 for c in fetched.values())
    delivered = [k for r in _records(tmp / "svc", "deliver") for k in r["key_ids"]]
    assert sorted(delivered) == sorted(fetched)  # the audit says delivered exactly for the keys a slave got
    issued = {k for r in _records(tmp / "svc", "issue") for k in r["key_ids"]}
    assert issued == set(given_keys)
    assert verify_audit(tmp / "svc")[1] == []


def test_readyz_and_metrics_show_a_failed_write_and_the_recovery(tmp_path):
    from qkdseg.server.health import kms_ready, service_metrics

    svc = _service(tmp_path / "svc", "example")
    m = service_metrics(svc)
    f = Faults(svc.store)

    async def go():
        out = await svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(2, 256, None, None, None))
        ids = [k["key_ID"] for k in out["keys"]]
        f.arm("statement")
        with pytest.raises(KmsError) as err:
            await svc.dec_keys(Caller("B", "b"), "A", ids)
        assert err.value.status == 503 and err.value.body() == {"message": UNAVAILABLE}
        f.disarm()
        ready = kms_ready(svc)
        text = m.exposition().decode()
        with pytest.raises(KmsError) as again:  # refused at once while failing (nothing tried)
            await svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(1, 256, None, None, None))
        assert again.value.message == UNAVAILABLE
        assert await svc.committer.probe()
        return ids, ready, text, kms_ready(svc), m.exposition().decode()

    try:
        ids, ready, text, ready2, text2 = asyncio.run(go())
        assert not ready["ready"] and not ready["checks"]["store"]["ok"]
        assert "transaction failing" in ready["checks"]["store"]["detail"]
        assert 'qkdseg_store_write_failures_total{step="transaction"} 1.0' in text
        assert "qkdseg_store_ok 0.0" in text
        assert ready2["checks"]["store"]["ok"] and "qkdseg_store_ok 1.0" in text2
        assert set(ids) <= set(svc.keys)
    finally:
        svc.close()


def test_the_watchdog_probes_and_gives_up_after_exit_after(monkeypatch):
    from qkdseg.server.storehealth import StoreHealth
    from qkdseg.server.watchdog import Watchdog

    health = StoreHealth()
    health.failed("transaction", OSError(28, "No space left on device"))
    tries, stopped = [], []

    def probe():
        tries.append(1)
        if len(tries) == 2:  # space freed: the probe works, the store recovers by itself
            health.worked("transaction")

    w = Watchdog(health, 0.4, probes=[probe])
    w.stoppers.append(lambda: stopped.append(1))

    async def go(timeout):
        await asyncio.wait_for(w.run(), timeout)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(go(1.0))
    assert len(tries) == 2 and health.ok and w.exit_status == 0 and not stopped
    health.failed("relay_db", OSError(28, "No space left on device"))
    asyncio.run(go(5.0))  # never recovers: gives up
    try:
        assert w.exit_status == 1 and stopped == [1] and health.unready_s() >= 0.4
    finally:
        w.timer.cancel()


# -- the planner's excluded nodes ---------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.sets(st.sampled_from([str(v) for v in range(10)]), max_size=4), st.integers(0, 9), st.integers(0, 9))
def test_no_plan_goes_through_an_excluded_node(tmp_path_factory, excluded, s, d):
    svc = _planning_service(tmp_path_factory)
    p = svc.planner
    p.excluded.clear()
    for node in excluded:
        p.exclude(node, "unready")
    req = svc.parse_key_request(1, 256, None, None, None)
    if s == d:
        return
    try:
        r, _rec, _relays, _bits = p.plan_relays(s, d, req, 1)
    except KmsError as err:
        assert err.status == 503
        if str(s) in excluded or str(d) in excluded:
            assert err.reason == "node_excluded"
        return
    used = {v for seg in r.index_paths for path in seg for v in path}
    assert not used & {int(x) for x in excluded}
    assert p.excluded_view() == {x: "unready" for x in sorted(excluded)}


_PLANNING: dict = {}


def _planning_service(tmp_path_factory):
    if "svc" not in _PLANNING:
        _PLANNING["svc"] = _service(tmp_path_factory.mktemp("plan") / "svc", "example")
    return _PLANNING["svc"]


@pytest.fixture(scope="module", autouse=True)
def _close_planning():
    yield
    if "svc" in _PLANNING:
        _PLANNING.pop("svc").close()


# -- the network: a node's and the controller's write sites, in-process -------------------------------------------------
@pytest.fixture(scope="module")
def netdir(tmp_path_factory):
    from typer.testing import CliRunner

    from qkdseg.cli import app

    d = tmp_path_factory.mktemp("net") / "deploy"
    r = CliRunner().invoke(app, ["net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                                 "--sae", "C=4", "--sae", "D=7", "--security-level", "0.5",
                                 "--port", str(portblock.port())])
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture
def node7(netdir, tmp_path):
    from qkdseg.net.node import NodeService

    shutil.copytree(netdir / "nodes" / "7", tmp_path / "7")
    svc = NodeService(tmp_path / "7")
    svc.faults = Faults(svc.store, svc.relaydb)
    try:
        yield svc
    finally:
        svc.close()


def test_a_node_keeps_memory_and_store_together_on_every_failed_write(node7):
    svc, f = node7, node7.faults
    d = svc.dir

    async def go():
        req = svc.parse_key_request(2, 256, None, None, None)
        f.arm("transaction")  # issue (both SAEs at this node)
        with pytest.raises(KmsError) as err:
            await svc.enc_keys(Caller("B", "b"), "D", req)
        assert err.value.reason == "store_failed" and svc.keys == {} and _db_keys(svc.store) == {}
        f.disarm()
        with pytest.raises(KmsError):  # refused at once until a write works again
            await svc.enc_keys(Caller("B", "b"), "D", req)
        await svc.committer.probe()
        out = await svc.enc_keys(Caller("B", "b"), "D", req)
        ids = [k["key_ID"] for k in out["keys"]]
        assert set(svc.keys) == set(ids) == set(_db_keys(svc.store))

        f.arm("statement")  # deliver: rolled back, the keys fetchable again
        with pytest.raises(KmsError):
            await svc.dec_keys(Caller("D", "d"), "B", ids)
        assert set(svc.keys) == set(ids) == set(_db_keys(svc.store))
        f.disarm()
        await svc.committer.probe()
        f.arm("audit")  # committed, the audit file behind: the slave gets the keys
        back = await svc.dec_keys(Caller("D", "d"), "B", ids)
        assert [k["key"] for k in back["keys"]] == [k["key"] for k in out["keys"]]
        assert svc.keys == {} and _db_keys(svc.store) == {} and "audit_file" in svc.store.health.errors
        assert svc.link_report()["qkdseg_ready"] is False
        f.disarm()
        await svc.committer.probe()
        assert svc.store.health.ok and svc.link_report()["qkdseg_ready"] is True
        assert [r["key_ids"] for r in _records(d, "deliver")] == [ids]

        # spare keys held here for the pair (A at node 0, B here), and a relay's keys stored here
        rows = []
        for i in range(3):
            row = KeyRow(f"00000000-0000-4000-8000-00000000010{i}", "spare" if i < 2 else "issued", "A", "B", 256, 0.9,
                         b"", 1.0, 9e9, "{}")
            svc.store.seal(row, bytes([i]) * 32)
            rows.append(row)
        await svc.committer.commit(Batch(put_keys=[r.values() for r in rows]))
        svc.held_spares.update((r.key_id, r) for r in rows[:2])
        svc.keys[rows[2].key_id] = rows[2]
        svc.request_keys["rq"], svc.request_keys_source["rq"] = [rows[2].key_id], "0"
        f.arm("transaction")
        with pytest.raises(CommitFailed):  # the source's issue of spare keys: nothing changes here
            await svc.issue_spares({"key_ids": [rows[0].key_id], "src": "0", "master": "A", "slave": "B",
                                    "request_id": "r1"})
        assert set(svc.held_spares) == {rows[0].key_id, rows[1].key_id} and set(svc.keys) == {rows[2].key_id}
        with pytest.raises(CommitFailed):  # a void: the keys back as stored
            await svc.void_keys("rq")
        assert set(svc.keys) == {rows[2].key_id} and svc.request_keys["rq"] == [rows[2].key_id]
        f.disarm()
        await svc.committer.probe()
        await svc.issue_spares({"key_ids": [rows[0].key_id], "src": "0", "master": "A", "slave": "B",
                                "request_id": "r1"})
        await svc.void_keys("rq")
        assert set(svc.keys) == {rows[0].key_id} and set(svc.held_spares) == {rows[1].key_id}
        assert _db_keys(svc.store) == {rows[0].key_id: ("issued", "A", "B"), rows[1].key_id: ("spare", "A", "B")}

        # expiry: a pass whose commit fails keeps them (memory as the store), the next pass deletes them
        for r in (svc.keys[rows[0].key_id], svc.held_spares[rows[1].key_id]):
            r.expires_at = 0.0
        svc.cfg.key_ttl_s = 0.2
        f.arm("transaction")
        task = asyncio.get_running_loop().create_task(svc.expiry_loop())
        await asyncio.sleep(0.2)

        def kept() -> bool:  # between a pass's deletion and its failed commit the rows are briefly out of memory
            return set(svc.keys) == {rows[0].key_id} and set(svc.held_spares) == {rows[1].key_id}

        deadline = time.monotonic() + 2.0  # a pass every 0.05 s: kept again as soon as its commit has failed
        while not kept() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert kept(), (set(svc.keys), set(svc.held_spares))
        assert len(_db_keys(svc.store)) == 2
        f.disarm()
        await svc.committer.probe()
        await asyncio.sleep(0.2)
        task.cancel()
        assert svc.keys == {} and svc.held_spares == {} and _db_keys(svc.store) == {}

    asyncio.run(go())
    assert verify_audit(d, (d / "audit.key").read_bytes())[1] == []


def test_a_failed_relay_store_write_sends_nothing_and_puts_the_counters_back(node7):
    svc, f = node7, node7.faults
    nb = sorted(svc.links, key=str)[0]
    end = svc.links[nb]
    key = (end.name, end.out_dir)

    async def go():
        off0, km = end.take(32)
        f.arm("transaction")
        with pytest.raises(CommitFailed):
            svc.send([{"kind": "pieces", "dst": nb, "blocks": [((0,), off0, km)]}], "r1")
        assert svc.offsets.get(key, 0) == svc.relaydb.durable.get(key, 0) == off0 and not svc._dirty
        assert svc.queues == {} and "relay_db" in svc.store.health.errors
        assert svc.link_report()["qkdseg_ready"] is False
        # spare keys of a pair whose issue message cannot be stored: back in their pool, as stored
        row = KeyRow("00000000-0000-4000-8000-000000000200", "spare", "B", "A", 256, 0.9, b"", 1.0, 9e9, "{}")
        svc.spares[("B", "A")].append(row)
        with pytest.raises(CommitFailed):
            await svc._use_spares("B", "A", svc.parse_key_request(1, 256, None, None, None), 2.0)
        assert list(svc.spares[("B", "A")]) == [row]
        f.disarm()
        svc.relaydb.probe()
        assert svc.store.health.ok
        off1, _ = end.take(32)  # the pad bits never left the node: the next message may use them
        assert off1 == off0

    asyncio.run(go())


def test_a_device_key_chunk_is_held_only_once_stored(tmp_path):
    """Device-fed links (net init --link-source device): a chunk whose write fails is not held (nothing of it in the
    relay store or in memory), so the sender, which gets no 202, skips its keys too: used by neither end."""
    from typer.testing import CliRunner

    from qkdseg.cli import app
    from qkdseg.net.node import NodeService

    d = tmp_path / "dev"
    r = CliRunner().invoke(app, ["net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                                 "--port", str(portblock.port()), "--link-source", "device"])
    assert r.exit_code == 0, r.output
    svc = NodeService(d / "nodes" / "7")
    f = Faults(relaydb=svc.relaydb)
    try:
        end = next(iter(svc.device.ends.values()))
        chunks = "SELECT COUNT(*) FROM device_chunks"
        f.arm("transaction")
        with pytest.raises(CommitFailed):
            svc.device._write(end, end.in_dir, 0, b"\x07" * 64, ["k1", "k2"])
        assert end.stream.ends[end.in_dir] == 0 and end.stream.held(end.in_dir, 0) == 0
        assert svc.relaydb.db.execute(chunks).fetchone()[0] == 0 and "relay_db" in svc.store.health.errors
        f.disarm()
        svc.device._write(end, end.in_dir, 0, b"\x07" * 64, ["k1", "k2"])
        assert end.stream.ends[end.in_dir] == 64 and svc.relaydb.db.execute(chunks).fetchone()[0] == 1
        assert svc.store.health.ok
    finally:
        svc.close()


def test_exit_after_unready_takes_seconds_from_0(tmp_path):
    from typer.testing import CliRunner

    from qkdseg.cli import app

    for cmd in (["kms", "serve"], ["node", "serve"], ["controller", "serve"]):
        r = CliRunner().invoke(app, [*cmd, str(tmp_path), "--exit-after-unready", "-1"])
        assert r.exit_code == 2 and "--exit-after-unready -1.0: seconds between 0 (never exit) and 86400" in (
            r.stderr if r.stderr_bytes is not None else r.output), (cmd, r.output)


@pytest.fixture
def controller(netdir, tmp_path):
    from qkdseg.net.controller import Controller

    shutil.copytree(netdir / "controller", tmp_path / "controller")
    ctl = Controller(tmp_path / "controller")
    ctl.faults = Faults(ctl.svc.store)
    try:
        yield ctl
    finally:
        ctl.svc.close()


def test_the_controllers_reservations_and_reports_are_stored_or_undone(controller):
    from qkdseg.net.wire import Problem

    ctl, f = controller, controller.faults
    svc = ctl.svc
    plan = {"master": "A", "slave": "B", "number": 2, "size": 256, "level": 0.5, "level_source": "default",
            "mandatory": False}

    def db_links():
        return {k: (c, lv) for k, c, lv in svc.store.db.execute("SELECT k, consumed, level FROM links")}

    async def go():
        level0, consumed0 = svc.levels.level.copy(), svc.levels.consumed.copy()
        f.arm("statement")
        with pytest.raises(Problem) as err:
            await ctl.plan("0", plan)
        assert err.value.status == 503 and err.value.ext["reason"] == "store_failed"
        assert np.array_equal(svc.levels.consumed, consumed0) and np.all(svc.levels.level >= level0)
        assert db_links() == {}
        f.disarm()
        with pytest.raises(Problem) as err:  # refused at once while its store fails
            await ctl.plan("0", plan)
        assert err.value.ext["reason"] == "store_failed"
        await svc.committer.probe()
        with pytest.raises(Problem) as err:  # reserved and stored; the nodes do not run here
            await ctl.plan("0", plan)
        assert err.value.ext["reason"] == "node_unavailable"
        rows = db_links()
        assert rows and all(int(svc.levels.consumed[k]) == c for k, (c, _) in rows.items())

        # a report of more bits used than the model: lowered only once stored
        k = min(rows)
        u, v = (str(x) for x in (svc.arrays.node_ids[svc.arrays.edge_u[k]], svc.arrays.node_ids[svc.arrays.edge_v[k]]))
        body = {"qkd_node": {"qkdn_id": u, "qkd_links": {"qkd_link": [{
            "link_id": json.dumps([int(u), int(v)], separators=(",", ":")), "link_status": "ACTIVE", "qkdl_local": {"qkdn_id": u},
            "qkdl_remote": {"qkdn_id": v}, "qkdseg_consumed_bits": int(svc.levels.consumed[k]) + 4096,
            "qkdseg_level_bits": None}]}}, "qkdseg_ready": False}
        before = (svc.levels.level.copy(), svc.levels.consumed.copy())
        f.arm("transaction")
        with pytest.raises(Problem) as err:
            await ctl.report(u, body)
        assert err.value.ext["reason"] == "store_failed"
        assert np.array_equal(svc.levels.consumed, before[1])  # (the levels refill meanwhile: real time)
        assert db_links() == rows
        assert ctl.svc.planner.excluded_view() == {u: "unready"}  # what it said of itself holds meanwhile
        f.disarm()
        await svc.committer.probe()
        body["qkdseg_ready"] = True
        await ctl.report(u, body)
        assert db_links()[k][0] == int(svc.levels.consumed[k]) == before[1][k] + 4096
        assert ctl.svc.planner.excluded_view() == {}
        if ctl.client is not None:
            await ctl.client.aclose()

    asyncio.run(go())


# -- real processes on a disk that fills ------------------------------------------------------------------------------
EXIT_AFTER = 2  # --exit-after-unready of the servers below, seconds
#: What a measured run printed last (tests/test_store_failures.py -s shows it; the report quotes it).
MEASURED: dict = {}


@pytest.fixture(scope="module")
def tmpfs_mounts(tmp_path_factory):
    """``mount(name, size)``: a tmpfs of ``size`` at a path unique to this run (unmounted at the end); skipped where
    this process cannot mount one (it needs root)."""
    base = tmp_path_factory.mktemp("fs")
    made: list[Path] = []

    def mount(name: str, size: str) -> Path:
        mnt = base / f"{name}-{uuid.uuid4().hex[:8]}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True, check=False)
        if os.geteuid() != 0 or r.returncode != 0:
            pytest.skip(f"needs to mount a tmpfs (root): {r.stderr.strip() or 'not root'}")
        made.append(mnt)
        return mnt

    yield mount
    for mnt in made:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(mnt: Path) -> None:
    """Fill the file system at ``mnt`` to the last page (``mnt/filler``)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


def _sae(pki: Path, sae: str) -> requests.Session:
    s = requests.Session()
    s.cert = (str(pki / f"{sae}.crt"), str(pki / f"{sae}.key"))
    s.verify = str(pki / "ca.crt")
    return s


def _post(s: requests.Session, url: str, body: dict) -> requests.Response:
    return s.post(url, json=body, timeout=30, verify=s.verify)


def _check_answer(r: requests.Response, got: dict, peer_key: str | None = None) -> bool:
    """A 200 with keys (recorded), or a JSON 503 that says nothing was stored (or a relay/plan refusal)."""
    if r.status_code == 200:
        for k in r.json()["keys"]:
            got[k["key_ID"]] = k["key"]
        return True
    assert r.status_code == 503 and isinstance(r.json().get("message"), str), (r.status_code, r.text[:300])
    return False


def test_kms_serve_on_a_full_disk_answers_what_it_committed_then_exits_and_loses_no_key(tmpfs_mounts):
    mnt = tmpfs_mounts("kms", "3m")
    d = kms_init(mnt / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    mport = _free_port()
    args = ("--exit-after-unready", str(EXIT_AFTER), "--metrics-port", str(mport))
    server = Server(d, args).start()
    issued, fetched = {}, {}
    try:
        a, b = server.client("A"), server.client("B")
        for _ in range(4):
            r = a.post("B/enc_keys", {"number": 5})
            assert r.status_code == 200, r.text
            issued.update((k["key_ID"], k["key"]) for k in r.json()["keys"])
        ids = list(issued)
        r = b.post("A/dec_keys", {"key_IDs": [{"key_ID": k} for k in ids[:5]]})
        fetched.update((k["key_ID"], k["key"]) for k in r.json()["keys"])
        _fill(mnt)
        t_full = time.monotonic()
        refused = 0
        for i in range(5, len(ids), 5):  # each answer: the keys (committed) or a JSON 503 (nothing changed)
            r = b.post("A/dec_keys", {"key_IDs": [{"key_ID": k} for k in ids[i:i + 5]]})
            refused += not _check_answer(r, fetched)
            if r.status_code == 503:
                assert r.json()["message"] == UNAVAILABLE
        refused += not _check_answer(a.post("B/enc_keys", {"number": 2}), issued)
        assert refused, "the disk was full but every write worked"
        ready = requests.get(f"http://127.0.0.1:{mport}/readyz", timeout=10)
        metrics = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=10).text
        assert ready.status_code == 503 and not ready.json()["checks"]["store"]["ok"], ready.text
        assert "qkdseg_store_ok 0.0" in metrics
        rc = server.proc.wait(timeout=EXIT_AFTER + 30)
        t_exit = time.monotonic() - t_full
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert rc == 1 and "exiting with status 1 (--exit-after-unready 2)" in log, log[-2000:]
    (mnt / "filler").unlink()
    server = Server(d, args).start()
    try:
        b = server.client("B")
        owed = [k for k in issued if k not in fetched]
        r = b.post("A/dec_keys", {"key_IDs": [{"key_ID": k} for k in owed]})
        assert r.status_code == 200, r.text
        fetched.update((k["key_ID"], k["key"]) for k in r.json()["keys"])
    finally:
        server.stop()
    assert fetched == issued  # every key the master got, fetched once by its slave, the same bytes
    delivered = [k for rec in _records(d, "deliver") for k in rec["key_ids"]]
    assert sorted(delivered) == sorted(fetched)
    assert verify_audit(d)[1] == []
    MEASURED["kms"] = {"issued": len(issued), "fetched_after_restart": len(owed), "lost": 0,
                       "refused_while_full": refused, "exit_after_full_s": round(t_exit, 2)}
    print("kms serve, full disk:", MEASURED["kms"])


class _Deployment:
    """``net init`` + ``net up`` with node 7's and the controller's directories each on its own small tmpfs."""

    SAES = ("A=0", "B=7", "C=4", "D=9")  # B at the failing node 7; C->D and A->D route through 7 when they can

    def __init__(self, tmp: Path, mount) -> None:
        self.dir = tmp / "deploy"
        port = _free_port()
        r = _run("net", "init", str(self.dir), "--network", "example", *[x for s in self.SAES for x in ("--sae", s)],
                 "--security-level", "0.5", "--port", str(port))
        assert r.returncode == 0, r.stderr
        self.mounts = {}
        for name, sub in (("node7", Path("nodes") / "7"), ("controller", Path("controller"))):
            mnt = mount(name, "4m")
            shutil.move(str(self.dir / sub), str(mnt / sub.name))
            (self.dir / sub).symlink_to(mnt / sub.name)
            self.mounts[name] = mnt
        self.env = {**os.environ, "QKDSEG_EXIT_AFTER_UNREADY_S": str(EXIT_AFTER), "QKDSEG_RELAY_TIMEOUT_S": "4"}
        self.net = json.loads((self.dir / "controller" / "net.json").read_text())
        self.addr = {str(n["id"]): n["address"] for n in self.net["nodes"]}
        self.pki = self.dir / "pki"
        self.own: dict[str, subprocess.Popen] = {}

    def up(self) -> None:
        r = _run("net", "up", str(self.dir), "--detach", env=self.env, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr

    def proc(self, name: str) -> dict:
        from qkdseg.net.procs import processes

        return next(p for p in processes(self.dir) if p["name"] == name)

    def start(self, name: str) -> subprocess.Popen:
        """Start ``name`` as this test's child (its exit status can be read), recorded for ``net down``."""
        from qkdseg.net.procs import health, start_one

        p = self.proc(name)
        old = self.own.get(name)
        if old is not None and old.poll() is None:  # an earlier child of the same name: never left running
            old.kill()
            old.wait()
        proc = self.own[name] = start_one(self.dir, p, env=self.env)
        pids = json.loads((self.dir / "run" / "pids.json").read_text())
        pids[name] = proc.pid
        (self.dir / "run" / "pids.json").write_text(json.dumps(pids))
        deadline = time.monotonic() + 60
        while not health(self.dir, [p], timeout=1.0)[name]:
            assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)
        return proc

    def adopt(self, name: str) -> subprocess.Popen:
        """Stop the ``net up`` process ``name`` and start it again as this test's child."""
        pid = json.loads((self.dir / "run" / "pids.json").read_text())[name]
        os.kill(pid, signal.SIGKILL)
        while os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid):
            time.sleep(0.05)
        return self.start(name)

    def controller_health(self) -> dict:
        from qkdseg.net.wire import client_context

        c = self.dir / "controller"
        ctx = client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
        import httpx

        with httpx.Client(verify=ctx, timeout=5.0) as cl:
            return cl.get(f"https://{self.net['address']}/health").json()

    def wait_excluded(self, want: dict, timeout: float = 20.0) -> float:
        t0 = time.monotonic()
        while True:
            from qkdseg.net.procs import status

            rows = status(self.dir)
            got = next(r for r in rows if r["role"] == "controller").get("excluded")
            if got == want:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < timeout, f"net status excluded: {got}, want {want}"
            time.sleep(0.2)

    def enc(self, master: str, slave: str, number: int = 1) -> requests.Response:
        """One key: with the run's MAC key (issue 38) whole relays on these routes (one or two keys a relay), so no
        spare key is left to serve a later request without a plan (two keys would leave one on a two-key route)."""
        node = dict(s.split("=") for s in self.SAES)[master]
        return _post(_sae(self.pki, master), f"https://{self.addr[node]}/api/v1/keys/{slave}/enc_keys",
                     {"number": number})

    def dec(self, slave: str, master: str, ids: list[str]) -> requests.Response:
        node = dict(s.split("=") for s in self.SAES)[slave]
        return _post(_sae(self.pki, slave), f"https://{self.addr[node]}/api/v1/keys/{master}/dec_keys",
                     {"key_IDs": [{"key_ID": k} for k in ids]})

    def down(self) -> None:
        _run("net", "down", str(self.dir), timeout=120)
        for proc in self.own.values():  # this test's children: none outlives the module (they would hold ports)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tmpfs_mounts):
    dep = _Deployment(tmp_path_factory.mktemp("disknet"), tmpfs_mounts)
    try:
        dep.up()
        yield dep
    finally:
        dep.down()


PAIRS = (("A", "B"), ("C", "B"), ("C", "D"), ("A", "D"))  # two with their slave at node 7, two routed through it


def test_a_full_disk_at_the_slaves_node_loses_no_key_and_the_controller_plans_around_it(deployment):
    dep = deployment
    node7 = dep.adopt("node-7")
    issued: dict[tuple, dict] = {pair: {} for pair in PAIRS}  # (master, slave) -> key id -> key, as the master got it
    fetched: dict[tuple, dict] = {pair: {} for pair in PAIRS}
    for _ in range(2):
        for pair in PAIRS:
            r = dep.enc(*pair)
            assert r.status_code == 200, r.text
            issued[pair].update((k["key_ID"], k["key"]) for k in r.json()["keys"])
    for pair in PAIRS:  # the first of each pair's keys fetched now, the others owed
        first = next(iter(issued[pair]))
        r = dep.dec(pair[1], pair[0], [first])
        assert r.status_code == 200, r.text
        fetched[pair][first] = r.json()["keys"][0]["key"]

    _fill(dep.mounts["node7"])
    t_full = time.monotonic()
    at7 = [p for p in PAIRS if p[1] == "B"]
    answers: Counter = Counter()
    t_excluded = None
    while t_excluded is None:  # traffic on the four pairs until the controller plans around node 7
        for pair in PAIRS:  # each answer: the keys (committed) or a JSON 503 (nothing issued, a key kept)
            ok = _check_answer(dep.enc(*pair), issued[pair])
            answers["enc " + ("200" if ok else "503")] += 1
            if pair in at7 and (owed := [k for k in issued[pair] if k not in fetched[pair]]):
                ok = _check_answer(dep.dec(pair[1], pair[0], owed[:1]), fetched[pair])
                answers["dec at node 7 " + ("200" if ok else "503")] += 1
        if dep.controller_health()["excluded"] == {"7": "unready"}:
            t_excluded = time.monotonic() - t_full
        assert time.monotonic() - t_full < 20, "node 7 was never excluded"
    assert dep.wait_excluded({"7": "unready"}, timeout=1) >= 0  # net status --format json shows it
    around = 0
    for pair in PAIRS:  # planned around node 7 meanwhile: its own SAE's pairs refused at once, the others served
        r = dep.enc(*pair)
        if pair[1] == "B":
            assert r.status_code == 503 and "excluded" in r.json()["message"], r.text
        else:
            assert r.status_code == 200, r.text
            issued[pair].update((k["key_ID"], k["key"]) for k in r.json()["keys"])
            around += 1
    rc = node7.wait(timeout=EXIT_AFTER + 30)
    t_exit = time.monotonic() - t_full
    log = (dep.dir / "logs" / "node-7.log").read_text()
    assert rc == 1 and "exiting with status 1" in log, log[-2000:]
    for pair in (("C", "D"), ("A", "D")):  # and while it is down
        r = dep.enc(*pair)
        assert r.status_code == 200, r.text
        issued[pair].update((k["key_ID"], k["key"]) for k in r.json()["keys"])
        around += 1
    assert dep.wait_excluded({"7": "unready"}, timeout=1) >= 0

    (dep.mounts["node7"] / "filler").unlink()
    dep.start("node-7")
    t_back = dep.wait_excluded({})
    after = 0
    for pair in PAIRS:
        owed = [k for k in issued[pair] if k not in fetched[pair]]
        if owed:
            r = dep.dec(pair[1], pair[0], owed)
            assert r.status_code == 200, r.text
            fetched[pair].update((k["key_ID"], k["key"]) for k in r.json()["keys"])
            after += len(owed) if pair in at7 else 0
        assert fetched[pair] == issued[pair], pair  # no key lost: every key a master got, fetched by its slave
    n7 = dep.dir / "nodes" / "7"
    delivered = [k for rec in _records(n7, "deliver") for k in rec["key_ids"]]
    assert sorted(delivered) == sorted(k for p in at7 for k in fetched[p])  # delivered: exactly those
    assert verify_audit(n7, (n7 / "audit.key").read_bytes())[1] == []
    r = dep.enc("A", "B")  # planned through node 7 again
    assert r.status_code == 200, r.text
    MEASURED["node"] = {"keys_issued_with_slave_at_node7": sum(len(issued[p]) for p in at7),
                        "fetched_after_restart": after, "lost": 0, "answers_while_full": dict(answers),
                        "served_around_node7": around, "excluded_after_full_s": round(t_excluded, 2),
                        "exit_after_full_s": round(t_exit, 2), "readmitted_after_restart_s": round(t_back, 2)}
    print("node 7, full disk:", MEASURED["node"])


def test_a_full_disk_at_the_controller_refuses_plans_cleanly_then_exits_and_recovers(deployment):
    dep = deployment
    ctl = dep.adopt("controller")
    c = dep.dir / "controller"
    r = dep.enc("C", "D")
    assert r.status_code == 200, r.text
    plans = len(_records(c, "plan"))
    _fill(dep.mounts["controller"])
    t_full = time.monotonic()
    refused = []
    for pair in (("C", "D"), ("A", "D"), ("A", "B")):  # a plan not stored is not sent: 503, nothing reserved
        r = dep.enc(*pair)
        assert r.status_code == 503 and r.json()["message"] == UNAVAILABLE, r.text
        refused.append(r.status_code)
    rc = ctl.wait(timeout=EXIT_AFTER + 30)
    t_exit = time.monotonic() - t_full
    assert rc == 1 and "exiting with status 1" in (dep.dir / "logs" / "controller.log").read_text()
    (dep.mounts["controller"] / "filler").unlink()
    dep.start("controller")
    r = dep.enc("C", "D")
    assert r.status_code == 200, r.text
    back = dep.dec("D", "C", [k["key_ID"] for k in r.json()["keys"]])
    assert back.status_code == 200 and back.json()["keys"] == [{k: x[k] for k in ("key_ID", "key")} | {
        "key_extension": x["key_extension"]} for x in r.json()["keys"]]
    assert len(_records(c, "plan")) == plans + 1  # the refused plans left no reservation
    assert verify_audit(c)[1] == []
    MEASURED["controller"] = {"plans_refused_while_full": len(refused), "exit_after_full_s": round(t_exit, 2)}
    print("controller, full disk:", MEASURED["controller"])
