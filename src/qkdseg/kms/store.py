"""Durable state of the key service: SQLite (WAL) plus a hash-chained audit file.

One module owns the schema (STYLE.md, "SQLite done well"). Every change is
one transaction, committed before the server answers; :class:`GroupCommit`
batches the changes of concurrent requests into one transaction (group
commit), so one ``fsync`` serves many requests.

What is stored (docs/kms.md, "What is stored"):

``keys``
    Keys issued to a master and not yet fetched by their slave, and spare
    keys (relayed, not yet issued), each encrypted with AES-256-GCM under
    the key file ``storage.key`` (mode 0600), with the key id and the
    size as associated data. A delivered key's row is deleted
    (``secure_delete`` is on, so SQLite overwrites the freed page).
``links``
    Per link: ``consumed`` (the pool's consumed offset, bits; it only
    grows), ``level`` (bits now in the pool) and ``t`` (the time of the
    level, Unix seconds).
``audit``
    Audit records not yet synced to ``audit.jsonl`` (the file is written
    after the commit and synced at most once a second; a record committed
    but missing from the file is appended at the next start).
``meta``
    The schema version and the audit chain's head (sequence and hash).

The audit file has one JSON object per line. Each carries ``seq`` and
``prev``, the SHA-256 of the previous line (64 zeros for the first), so a
reader detects an edited, removed or reordered line; the head kept in the
database detects a truncated tail (:func:`verify_audit`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidRequest
from .pki import write_secret

SCHEMA_VERSION = 1
GENESIS = "0" * 64
DB_NAME = "kms.sqlite3"
AUDIT_NAME = "audit.jsonl"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('issued', 'spare')),
    master TEXT NOT NULL,
    slave TEXT NOT NULL,
    size INTEGER NOT NULL,
    security REAL NOT NULL,
    blob BLOB NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    route TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    k INTEGER PRIMARY KEY,
    u TEXT NOT NULL,
    v TEXT NOT NULL,
    consumed INTEGER NOT NULL,
    level INTEGER NOT NULL,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, line TEXT NOT NULL);
"""


def load_or_make_storage_key(path: Path) -> bytes:
    """The 32-byte AES-256-GCM key in ``path``, made (mode 0600) if absent."""
    if not path.exists():
        write_secret(path, AESGCM.generate_key(bit_length=256))
    data = path.read_bytes()
    if len(data) != 32:
        raise InvalidRequest(f"{path}: a storage key must be 32 bytes, found {len(data)}")
    if path.stat().st_mode & 0o077:
        raise InvalidRequest(f"{path}: storage key is readable by group or others (chmod 600 it)")
    return data


@dataclass
class KeyRow:
    """One stored key; ``blob`` is nonce || AES-GCM ciphertext of the key bytes."""

    key_id: str
    kind: str
    master: str
    slave: str
    size: int
    security: float
    blob: bytes
    issued_at: float
    expires_at: float
    route: str

    def values(self) -> tuple:
        """The row as the ``keys`` table stores it (column order)."""
        return (self.key_id, self.kind, self.master, self.slave, self.size, self.security, self.blob,
                self.issued_at, self.expires_at, self.route)

    def aad(self) -> bytes:
        return f"{self.key_id}|{self.size}".encode()


@dataclass
class Batch:
    """The changes of one request (or of several merged), written in one transaction."""

    put_keys: list[tuple] = field(default_factory=list)  # KeyRow.values() at the time of the request
    issue_keys: list[tuple[str, str, str, float]] = field(default_factory=list)  # spare -> issued: id, master, slave, expiry
    delete_keys: list[str] = field(default_factory=list)
    links: dict[int, tuple[str, str, int, int, float]] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)

    def merge(self, other: "Batch") -> None:
        self.put_keys += other.put_keys
        self.issue_keys += other.issue_keys
        self.delete_keys += other.delete_keys
        self.links.update(other.links)
        self.audit += other.audit


class Store:
    """The service's SQLite database and audit file in ``directory``.

    Not thread-safe by itself: :class:`GroupCommit` calls :meth:`commit`
    from one writer thread, and reads happen only at start-up.
    """

    def __init__(self, directory: Path, storage_key: bytes, *, durability: str = "full") -> None:
        self.directory = Path(directory)
        self.aead = AESGCM(storage_key)
        self.db_path = self.directory / DB_NAME
        self.audit_path = self.directory / AUDIT_NAME
        self.db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA secure_delete=ON")
        self.db.executescript(_SCHEMA)
        version = self._meta("schema_version")
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(version) != SCHEMA_VERSION:
            raise InvalidRequest(f"{self.db_path}: schema version {version}, this qkdseg reads {SCHEMA_VERSION}")
        self.durability = durability
        head = self._meta("audit_head")
        self.audit_seq, self.audit_hash = (0, GENESIS) if head is None else (int(head.split(":")[0]), head.split(":")[1])
        self._synced_seq, self._synced_at = 0, 0.0
        self._append_pending_audit()

    # -- start-up reads --------------------------------------------------------------
    def _meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def load_keys(self) -> list[KeyRow]:
        rows = self.db.execute(
            "SELECT key_id, kind, master, slave, size, security, blob, issued_at, expires_at, route FROM keys ORDER BY rowid"
        ).fetchall()
        return [KeyRow(*r) for r in rows]

    def load_links(self) -> dict[int, tuple[str, str, int, int, float]]:
        """``{k: (u, v, consumed, level, t)}`` of every link a request has used."""
        return {k: (u, v, c, lv, t) for k, u, v, c, lv, t in self.db.execute("SELECT k, u, v, consumed, level, t FROM links")}

    # -- key material at rest --------------------------------------------------------------
    def seal(self, row: KeyRow, material: bytes) -> None:
        nonce = os.urandom(12)
        row.blob = nonce + self.aead.encrypt(nonce, material, row.aad())

    def open(self, row: KeyRow) -> bytes:
        return self.aead.decrypt(row.blob[:12], row.blob[12:], row.aad())

    # -- the audit chain -----------------------------------------------------------------
    def chain(self, records: Iterable[dict]) -> list[tuple[int, str]]:
        """Give each record its ``seq`` and ``prev``; returns ``(seq, line)`` and advances the head."""
        out = []
        for rec in records:
            self.audit_seq += 1
            line = json.dumps({"seq": self.audit_seq, **rec, "prev": self.audit_hash}, sort_keys=True, separators=(",", ":"))
            self.audit_hash = hashlib.sha256(line.encode()).hexdigest()
            out.append((self.audit_seq, line))
        return out

    def _append_pending_audit(self) -> None:
        """Append committed audit records that are not in the file yet (after a crash), then forget them."""
        rows = self.db.execute("SELECT seq, line FROM audit ORDER BY seq").fetchall()
        if not rows:
            return
        last = _last_seq(self.audit_path)
        todo = [line for seq, line in rows if seq > last]
        self._synced_at = 0.0  # sync now
        self._write_audit(todo)
        self.db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))

    def _write_audit(self, lines: list[str]) -> None:
        """Append ``lines`` (their records are committed in the ``audit`` table already).

        The file is written at once (a crash of the process loses nothing)
        but synced at most once a second; the table keeps every record not
        yet synced, and a start appends those missing from the file, so a
        power loss loses no committed record either.
        """
        if lines:
            with open(self.audit_path, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
        now = time.monotonic()
        if self.audit_seq > self._synced_seq and (now - self._synced_at >= 1.0 or self.durability != "full"):
            if self.durability == "full":
                fd = os.open(self.audit_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._synced_seq, self._synced_at = self.audit_seq, now

    # -- the one write path --------------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction, then append its audit lines to the file."""
        chained = self.chain(batch.audit)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))  # in the file, and synced
            if batch.put_keys:
                db.executemany("INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,?)", batch.put_keys)
            if batch.issue_keys:
                db.executemany(
                    "UPDATE keys SET kind='issued', master=?, slave=?, expires_at=? WHERE key_id=?",
                    [(m, s, exp, key_id) for (key_id, m, s, exp) in batch.issue_keys],
                )
            if batch.delete_keys:
                db.executemany("DELETE FROM keys WHERE key_id = ?", [(k,) for k in batch.delete_keys])
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
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._write_audit([line for _, line in chained])

    def close(self) -> None:
        try:
            self._synced_at = 0.0
            self._write_audit([])
            self.db.execute("DELETE FROM audit WHERE seq <= ?", (self._synced_seq,))
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.close()


def _last_seq(path: Path) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read().splitlines()
    for line in reversed(tail):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class GroupCommit:
    """Commit the batches of concurrent requests together, in their order, from one writer thread.

    ``await commit(batch)`` returns once ``batch`` is durable. While one
    transaction is being written, the batches that arrive are merged into
    the next one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Batch, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qkdseg-kms-writer")
        self.transactions = 0
        self.failed: BaseException | None = None

    async def commit(self, batch: Batch) -> None:
        if self.failed is not None:
            raise self.failed
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((batch, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            work, self._pending = self._pending, []
            merged = Batch()
            for b, _ in work:
                merged.merge(b)
            try:
                await loop.run_in_executor(self._executor, self.store.commit, merged)
                self.transactions += 1
            except BaseException as err:  # the store is no longer in step with memory: refuse from now on
                self.failed = err
                for _, fut in work:
                    if not fut.done():
                        fut.set_exception(err)
                for _, fut in self._pending:
                    if not fut.done():
                        fut.set_exception(err)
                self._pending = []
                return
            for _, fut in work:
                if not fut.done():
                    fut.set_result(None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()


def verify_audit(directory: Path) -> tuple[int, list[str]]:
    """Check ``DIR/audit.jsonl``'s hash chain against itself and the database's head.

    Returns ``(records, problems)``: the number of records read and one
    line per problem found (an empty list when the chain is intact).
    """
    directory = Path(directory)
    path = directory / AUDIT_NAME
    problems: list[str] = []
    prev, n, seq = GENESIS, 0, 0
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\n")
                try:
                    rec = json.loads(line)
                except ValueError:
                    problems.append(f"line {lineno}: not JSON")
                    prev = hashlib.sha256(line.encode()).hexdigest()
                    continue
                n += 1
                if rec.get("prev") != prev:
                    problems.append(f"line {lineno} (seq {rec.get('seq')}): 'prev' does not match the previous line's hash "
                                    "(a line was edited, removed or reordered)")
                if rec.get("seq") != seq + 1:
                    problems.append(f"line {lineno}: seq {rec.get('seq')} follows seq {seq}")
                seq = rec.get("seq") if isinstance(rec.get("seq"), int) else seq + 1
                prev = hashlib.sha256(line.encode()).hexdigest()
    db_path = directory / DB_NAME
    if db_path.exists():
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE name='audit_head'").fetchone()
            pending = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        finally:
            db.close()
        if row is not None:
            head_seq, head_hash = row[0].split(":")
            if int(head_seq) != seq and not pending:
                problems.append(f"the database's chain head is seq {head_seq}, the file ends at seq {seq} "
                                "(lines were removed from the end, or added)")
            elif int(head_seq) == seq and head_hash != prev:
                problems.append(f"the last line (seq {seq}) does not hash to the database's chain head")
    return n, problems
