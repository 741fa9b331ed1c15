"""Durable state of a key service directory: SQLite (WAL) plus a hash-chained audit file.

Every change is one transaction (a :class:`Batch`), committed before the
server answers (:mod:`.groupcommit` merges concurrent requests' batches).
The tables are :mod:`.schema`'s; key rows are sealed whole (:mod:`.sealing`). The audit file: one JSON object a line, keyed-chained (HMAC-SHA256,
:mod:`.audit`), rotated by size (:mod:`.auditseries`); the database's head detects a cut tail.

What every process that writes a service directory shares (``kms serve``,
``kms rotate-storage-key``, the network's ``node serve``), all in
:class:`Store`: the directory's exclusive lock (:mod:`.lock`), the storage
key's check value (a wrong or missing key refuses to start,
:mod:`.storagekey`), the audit chain's check at start (a broken chain refuses
to start unless accepted), and one-line errors for a directory that cannot
be written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidRequest
from .auditseries import first_seq, live_start, rename_rotated
from .audit import (ACCEPT_EVENT, AUDIT_NAME, GENESIS, AuditReport, chain_line, check_head, check_lines, cut_torn_tail,
                    last_seq, read_lines)
from .lock import DirLock, lock_directory
from .sealing import COLUMNS, KeyRow, check_rows, legacy_aad, migrate, open_row, reseal, seal
from .schema import DB_NAME, SCHEMA, SCHEMA_VERSION, missing_tables, sqlite_error
from .sqlitefile import connect_wal
from .storagekey import load_storage_key, storage_key_id
from .storehealth import CommitFailed, StoreHealth

logger = logging.getLogger("qkdseg.kms")


@dataclass
class Batch:
    """The changes of one request (or of several merged), written in one transaction."""

    put_keys: list[tuple] = field(default_factory=list)  # KeyRow.values() at the time of the request
    issue_keys: list[tuple] = field(default_factory=list)  # spare -> issued: id, master, slave, expiry, re-sealed blob
    delete_keys: list[str] = field(default_factory=list)
    links: dict[int, tuple[str, str, int, int, float]] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)
    device_put: list[tuple] = field(default_factory=list)  # device_keys rows (k, seq, key_id, nbytes, used, state, blob, t)
    device_used: dict[tuple[int, int], int] = field(default_factory=dict)  # (k, seq) -> bytes used (all: 'used', erased)
    device_prune: float = 0.0  # delete used-up device_keys rows fetched before this time (0: none)

    def merge(self, other: "Batch") -> None:
        self.device_put += other.device_put
        self.device_used.update(other.device_used)
        self.device_prune = max(self.device_prune, other.device_prune)
        self.put_keys += other.put_keys
        self.issue_keys += other.issue_keys
        self.delete_keys += other.delete_keys
        self.links.update(other.links)
        self.audit += other.audit


class Store:
    """The service's SQLite database and audit file in ``directory``.

    Opening it takes the directory's lock (``lock=True``), checks the storage
    key against the check value in the database, repairs a torn last audit
    line and appends committed records missing from the file, then checks
    the audit chain (refusing a broken one unless ``accept_broken_audit``,
    which appends an ``audit_broken_accepted`` record). Every refusal is an
    :class:`InvalidRequest` with one line.

    Not thread-safe by itself: :class:`GroupCommit` calls :meth:`commit`
    from one writer thread, and reads happen only at start-up.
    """

    def __init__(self, directory: Path, storage_key: bytes, audit_key: bytes, *, durability: str = "full",
                 accept_broken_audit: bool = False, lock: bool = True, clock=time.time,
                 audit_max_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.audit_max_bytes = audit_max_bytes  # audit.jsonl rotated past it (.auditseries); None: never
        self.aead = AESGCM(storage_key)
        self.storage_key_id = storage_key_id(storage_key)
        self.audit_key = audit_key
        self.db_path = self.directory / DB_NAME
        self.audit_path = self.directory / AUDIT_NAME
        self.durability = durability
        self.health = StoreHealth()  # which write steps fail now (.storehealth)
        self._audit_behind = False  # committed records not yet in the file (a write of it failed)
        self._lock: DirLock | None = lock_directory(self.directory) if lock else None
        self.db: sqlite3.Connection | None = None
        try:
            self._open(accept_broken_audit, clock)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
        if self._lock is not None:
            self._lock.release()

    def _open(self, accept_broken_audit: bool, clock) -> None:
        try:
            self.db = connect_wal(self.db_path, synchronous="FULL" if self.durability == "full" else "NORMAL")
            self.db.execute("PRAGMA secure_delete=ON")
            missing_tables(self.db_path, self.db, ("meta", "keys", "links", "audit"))
            self.db.executescript(SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(version) != SCHEMA_VERSION:
                raise InvalidRequest(f"{self.db_path}: schema version {version}, this qkdseg reads {SCHEMA_VERSION} "
                                     "(a directory made by another qkdseg: serve it with that one, or make a new one "
                                     "with 'qkdseg kms init')")
            self._check_storage_key()
            migrate(self.db, self.aead, self._meta("row_binding"))  # rows sealed whole (.sealing; old: re-sealed)
            self.rejected = set(check_rows(self.db, self.aead))  # rows whose fields were rewritten: never served
            head = self._meta("audit_head")
            self.audit_seq, self.audit_hash = (0, GENESIS) if head is None else (int(head.split(":")[0]),
                                                                                 head.split(":")[1])
            self._synced_seq, self._synced_at = 0, 0.0
            self._resume_rotation()
            cut_torn_tail(self.audit_path)
            self._append_pending_audit()
        except sqlite3.Error as err:
            raise sqlite_error(self.db_path, err) from None
        except OSError as err:
            raise InvalidRequest(f"{self.directory}: {err.strerror}: {err.filename or ''} (is the directory "
                                 "writable?)") from None
        report = self.check_audit()
        self.audit_at_start = report  # for /readyz: the chain was checked at start
        if report.problems:
            if not accept_broken_audit:
                raise InvalidRequest(f"{self.audit_path}: the audit chain is broken ({len(report.problems)} problem(s); "
                                     f"first: {report.problems[0]}); check it with 'qkdseg kms audit', or start with "
                                     "--accept-broken-audit to accept it (audited)")
            logger.warning("starting on a broken audit chain (--accept-broken-audit): %d problem(s)",
                           len(report.problems))
            self.commit(Batch(audit=[{"time": round(clock(), 6), "event": ACCEPT_EVENT,
                                      "problems": [p[:200] for p in report.problems[:20]],
                                      "problem_count": len(report.problems),
                                      "outcome": "started with --accept-broken-audit"}]))
        if self.rejected:
            logger.error("%d stored key row(s) do not open with their fields (rewritten in the database?): not "
                         "served", len(self.rejected))
            self.commit(Batch(audit=[{"time": round(clock(), 6), "event": "rows rejected",
                                      "key_ids": sorted(self.rejected)[:100], "count": len(self.rejected),
                                      "outcome": "sealed key rows that do not open with their fields: not served"}]))

    # -- start-up reads --------------------------------------------------------------
    def _meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, name: str, value: str) -> None:
        """Set one ``meta`` value in its own transaction (start-up only)."""
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                        (name, value))

    def meta(self, name: str) -> str | None:
        return self._meta(name)

    def _check_storage_key(self) -> None:
        stored = self._meta("storage_key_id")
        if stored is not None:
            if stored != self.storage_key_id:
                hint = ""
                new = self.directory / "storage.key.new"
                if new.exists():
                    with contextlib.suppress(InvalidRequest, OSError, ValueError):
                        if storage_key_id(load_storage_key(new)) == stored:
                            hint = " (a rotation was cut short: storage.key.new is the right key; move it to storage.key)"
                raise InvalidRequest(f"{self.db_path}: the storage key does not match the one its keys are sealed "
                                     f"with{hint or ' (restore the right storage.key from the backup)'}")
            return
        row = self.db.execute(f"SELECT {COLUMNS} FROM keys LIMIT 1").fetchone()
        if row is not None:  # a database without a check value: the key must open a sealed row (either binding)
            try:
                open_row(self.aead, KeyRow(*row), legacy_aad if self._meta("row_binding") is None else KeyRow.aad)
            except Exception:  # noqa: BLE001 -- InvalidTag: sealed under another key
                raise InvalidRequest(f"{self.db_path}: the storage key does not match the one its keys are sealed "
                                     "with (restore the right storage.key from the backup)") from None
        self.set_meta("storage_key_id", self.storage_key_id)

    def load_keys(self) -> list[KeyRow]:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM keys ORDER BY rowid").fetchall()
        return [KeyRow(*r) for r in rows if r[0] not in self.rejected]

    def load_links(self) -> dict[int, tuple[str, str, int, int, float]]:
        """``{k: (u, v, consumed, level, t)}`` of every link a request has used."""
        return {k: (u, v, c, lv, t) for k, u, v, c, lv, t in self.db.execute("SELECT k, u, v, consumed, level, t FROM links")}

    def load_device_keys(self) -> list[tuple]:
        """``(k, seq, key_id, nbytes, used, blob)`` of every held device key, in fetch order per link."""
        return self.db.execute("SELECT k, seq, key_id, nbytes, used, blob FROM device_keys WHERE state='held' "
                               "ORDER BY k, seq").fetchall()

    def device_seq(self) -> dict[int, int]:
        """The last ``seq`` of each link's device keys (a new key gets the next)."""
        return dict(self.db.execute("SELECT k, MAX(seq) FROM device_keys GROUP BY k").fetchall())

    def seal_device(self, k: int, seq: int, key_id: str, material: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, material, f"device|{k}|{seq}|{key_id}".encode())

    def open_device(self, k: int, seq: int, key_id: str, blob: bytes) -> bytes:
        return self.aead.decrypt(blob[:12], blob[12:], f"device|{k}|{seq}|{key_id}".encode())

    def renumber_links(self, rows: dict[int, tuple[str, str, int, int, float]]) -> None:
        """Replace the ``links`` table by ``rows`` in one transaction (links matched by their ends at start)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM links")
            db.executemany("INSERT INTO links VALUES (?,?,?,?,?,?)",
                           [(k, u, v, c, lv, t) for k, (u, v, c, lv, t) in rows.items()])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- key material at rest --------------------------------------------------------------
    def seal(self, row: KeyRow, material: bytes) -> None:
        seal(self.aead, row, material)

    def open(self, row: KeyRow) -> bytes:
        return open_row(self.aead, row)

    def reseal(self, row: KeyRow, **fields) -> bytes:
        """A change of ``row``'s state: ``fields`` set, sealed again with them (:mod:`.sealing`); the key bytes."""
        return reseal(self.aead, row, **fields)

    def reseal_all(self, new_key: bytes) -> int:
        """Re-seal every stored key under ``new_key`` and store its check value, in one transaction; returns the rows."""
        new = AESGCM(new_key)
        rows = self.load_keys()  # the rejected rows (.sealing) stay as they are: they open under no key
        out = []
        for row in rows:
            material = self.open(row)
            nonce = os.urandom(12)
            out.append((nonce + new.encrypt(nonce, material, row.aad()), row.key_id))
        dev = []
        for k, seq, key_id, _n, _used, blob in self.load_device_keys():
            aad = f"device|{k}|{seq}|{key_id}".encode()
            nonce = os.urandom(12)
            dev.append((nonce + new.encrypt(nonce, self.open_device(k, seq, key_id, blob), aad), k, seq))
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("UPDATE keys SET blob=? WHERE key_id=?", out)
            db.executemany("UPDATE device_keys SET blob=? WHERE k=? AND seq=?", dev)
            db.execute("UPDATE meta SET value=? WHERE name='storage_key_id'", (storage_key_id(new_key),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.aead, self.storage_key_id = new, storage_key_id(new_key)
        return len(rows) + len(dev)

    # -- the audit chain -----------------------------------------------------------------
    def chain(self, records: Iterable[dict]) -> list[tuple[int, str]]:
        """Give each record its ``seq``, ``prev`` and ``mac``; returns ``(seq, line)`` and advances the head."""
        out = []
        for rec in records:
            self.audit_seq += 1
            line, self.audit_hash = chain_line(self.audit_key, rec, self.audit_seq, self.audit_hash)
            out.append((self.audit_seq, line))
        return out

    def check_audit(self) -> AuditReport:
        """Check the audit file's chain (MACs, links) and its end against the database's head."""
        rep = check_lines(self.audit_key, read_lines(self.audit_path), start=live_start(self._meta("audit_live_start")))
        head = self._meta("audit_head")
        check_head(rep, None if head is None else (int(head.split(":")[0]), head.split(":")[1]))
        return rep

    def _append_pending_audit(self) -> None:
        """Append committed audit records that are not in the file yet (after a crash), then forget them."""
        if self.db.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is None:
            return
        self._synced_at = 0.0  # sync now
        self._catch_up_audit()
        self.db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))

    def _catch_up_audit(self) -> None:
        """Cut a torn last line, then append the committed records (the ``audit`` table) the file lacks."""
        cut_torn_tail(self.audit_path)
        last = last_seq(self.audit_path) or live_start(self._meta("audit_live_start"))[0]
        rows = self.db.execute("SELECT seq, line FROM audit WHERE seq > ? ORDER BY seq", (last,)).fetchall()
        self._append_audit([line for _, line in rows])

    def _write_audit(self, lines: list[str]) -> None:
        """Append ``lines`` (their records are committed in the ``audit`` table already); never raises.

        The file is written at once (a crash of the process loses nothing)
        but synced at most once a second; the table keeps every record not
        yet synced, and a start appends those missing from the file, so a
        power loss loses no committed record either. A write that fails (a
        full disk, a read-only file) leaves the records in the table: the
        next call appends every record the file lacks, from the table
        (``audit_file`` fails in :attr:`health` meanwhile).
        """
        try:
            if self._audit_behind:
                self._catch_up_audit()
            else:
                self._append_audit(lines)
        except (OSError, sqlite3.Error) as err:
            self._audit_behind = True
            self.health.failed("audit_file", err)
            return
        if self._audit_behind:
            self._audit_behind = False
            self.health.worked("audit_file")

    def _append_audit(self, lines: list[str]) -> None:
        if lines:
            fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
                size = fh.tell()
            if self.audit_max_bytes and size > self.audit_max_bytes:
                self._rotate()
        now = time.monotonic()
        if self.audit_seq > self._synced_seq and (now - self._synced_at >= 1.0 or self.durability != "full"):
            if self.durability == "full":
                fd = os.open(self.audit_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._synced_seq, self._synced_at = self.audit_seq, now

    def _rotate(self) -> None:
        """``audit.jsonl`` synced and renamed ``audit-<first seq>.jsonl`` (:mod:`.auditseries`); where the next
        file starts is in ``meta.audit_live_start`` first. A rotation that fails is logged, tried again later."""
        try:
            if last_seq(self.audit_path) != self.audit_seq:  # the file lags behind: caught up first
                return
            fd = os.open(self.audit_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            old = self._meta("audit_live_start")
            self.set_meta("audit_live_start", f"{self.audit_seq}:{self.audit_hash}")
            try:
                rename_rotated(self.audit_path, first_seq(self.audit_path))
            except OSError:
                if old is None:
                    self.db.execute("DELETE FROM meta WHERE name='audit_live_start'")
                else:
                    self.set_meta("audit_live_start", old)
                raise
            self._synced_seq, self._synced_at = self.audit_seq, time.monotonic()
        except (OSError, sqlite3.Error) as err:
            logger.warning("%s: not rotated (%s); tried again after the next write", self.audit_path, err)

    def _resume_rotation(self) -> None:
        """A rotation a crash cut between its two steps (the live file holds records rotated): renamed now."""
        start = live_start(self._meta("audit_live_start"))[0]
        first = first_seq(self.audit_path)
        if start and first and first <= start:
            rename_rotated(self.audit_path, first)

    # -- the one write path --------------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction, then append its audit lines to the file.

        A transaction that fails (a full disk, any SQLite error) is rolled
        back: nothing of the batch is in the database, the chain's head in
        memory is put back, and :class:`.storehealth.CommitFailed` is raised
        (the caller restores what it changed in memory). Once the transaction
        has committed, nothing is raised: a failed copy to the audit file is
        caught up later (:meth:`_write_audit`).
        """
        seq0, hash0 = self.audit_seq, self.audit_hash
        chained = self.chain(batch.audit)
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))  # in the file, and synced
            if batch.put_keys:
                db.executemany("INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,?)", batch.put_keys)
            if batch.issue_keys:
                db.executemany(
                    "UPDATE keys SET kind='issued', master=?, slave=?, expires_at=?, blob=? WHERE key_id=?",
                    [(m, s, exp, blob, key_id) for (key_id, m, s, exp, blob) in batch.issue_keys],
                )
            if batch.delete_keys:
                db.executemany("DELETE FROM keys WHERE key_id = ?", [(k,) for k in batch.delete_keys])
            if batch.device_put:
                # OR IGNORE: a device that repeats an old key id must not fail the service's store (the repeat
                # is then held in memory only, and gone at the next start)
                db.executemany("INSERT OR IGNORE INTO device_keys VALUES (?,?,?,?,?,?,?,?)", batch.device_put)
            if batch.device_used:
                db.executemany(
                    "UPDATE device_keys SET used=?1, state=CASE WHEN ?1 >= nbytes THEN 'used' ELSE state END, "
                    "blob=CASE WHEN ?1 >= nbytes THEN X'' ELSE blob END WHERE k=?2 AND seq=?3",
                    [(used, k, seq) for (k, seq), used in batch.device_used.items()])
            if batch.device_prune:  # at most 20,000 a pass; each link's newest row stays (its seq goes on from it)
                db.execute("DELETE FROM device_keys WHERE rowid IN (SELECT rowid FROM device_keys AS a WHERE state != "
                           "'held' AND fetched_at < ? AND seq < (SELECT MAX(seq) FROM device_keys AS b WHERE b.k = a.k)"
                           " LIMIT 20000)", (batch.device_prune,))
            if batch.links:
                db.executemany(
                    "INSERT INTO links VALUES (?,?,?,?,?,?) ON CONFLICT(k) DO UPDATE SET "
                    "consumed=excluded.consumed, level=excluded.level, t=excluded.t",
                    [(k, u, v, c, lv, t) for k, (u, v, c, lv, t) in batch.links.items()],
                )
            if chained:
                db.executemany("INSERT INTO audit VALUES (?, ?)", chained)
                db.execute(
                    "INSERT INTO meta VALUES ('audit_head', ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (f"{self.audit_seq}:{self.audit_hash}",),
                )
            db.execute("COMMIT")
        except BaseException as err:
            self.audit_seq, self.audit_hash = seq0, hash0
            if db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL): no second error
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(err, (sqlite3.Error, OSError)):
                raise CommitFailed("transaction", err) from err
            raise
        self._write_audit([line for _, line in chained])

    def probe(self) -> None:
        """A write that changes nothing a request reads (``meta.probe``) in its own transaction, then the audit
        file's catch-up: :class:`.storehealth.CommitFailed` while the store cannot write."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO meta VALUES ('probe', ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                       (repr(time.time()),))
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise CommitFailed("transaction", err) from err
        self._write_audit([])

    def close(self) -> None:
        """Sync the audit file, checkpoint the WAL, close, release the lock; a failing step is logged, not raised."""
        if self.db is None:
            return
        try:
            self._synced_at = 0.0
            self._write_audit([])
            self.db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError) as err:
            logger.warning("closing the key store: %s (committed records stay in the database)", err)
        finally:
            self._abandon()


def open_store(cfg, *, accept_broken_audit: bool = False) -> Store:
    """The store of ``cfg``'s directory: its lock taken, its storage key and audit chain checked (:class:`Store`)."""
    from .audit import load_audit_key

    from .audit import audit_max_bytes

    return Store(cfg._dir, load_storage_key(cfg.path(cfg.storage_key)), load_audit_key(cfg.path(cfg.audit_key)),
                 durability=cfg.durability, accept_broken_audit=accept_broken_audit,
                 audit_max_bytes=audit_max_bytes(cfg.audit_max_mb))
