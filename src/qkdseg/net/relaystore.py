"""A node's relay store and its link ends.

:class:`RelayDB` is the node's relay state in ``relay.sqlite3`` (SQLite,
WAL): the link offsets, the relay messages it sent (outbox) and received
(inbox), each row kept for the idempotency window (:mod:`.retention` prunes them). :class:`NetLinkEnd` is this node's end of one link: its outgoing
counter over the link's key stream and the incoming reads.

A write that fails (a full disk, any SQLite error) is rolled back and raises
:class:`qkdseg.server.storehealth.CommitFailed` (``relay_db`` fails in the
node's store health until a write works again). Memory never runs ahead of
the file with offsets a message used: a node writes the offsets its
messages take before it sends them, and when that write fails it sends
nothing and puts its counters back to the offsets committed
(:meth:`RelayDB.durable`), so no pad bit leaves the node without being on
disk, and none is used twice.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

from ..keys.material import KeyMaterial
from ..server.etsi import KmsError
from ..server.schema import missing_tables, sqlite_error
from ..server.sqlitefile import connect_wal, incremental_vacuum
from ..server.storehealth import CommitFailed, StoreHealth
from .generations import OFFSETS_UPSERT, add_generation_column, offset_rows, read_offsets
from .keystream import LinkStream, position
from .layout import link_name

#: Bytes of one direction of a link's key stream (ChaCha20's 32-bit block counter, 64-byte blocks).
STREAM_BYTES = 64 << 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (link TEXT NOT NULL, dir INTEGER NOT NULL, value INTEGER NOT NULL,
                                    PRIMARY KEY (link, dir));
CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, src TEXT NOT NULL,
                                  kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, dst TEXT NOT NULL,
                                   kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_t ON inbox (t);
CREATE INDEX IF NOT EXISTS outbox_t ON outbox (t);
"""
logger = logging.getLogger("qkdseg.net")


class RelayDB:
    """The node's relay state (SQLite, WAL): link offsets, and the relay messages sent and received.

    Written on the event loop's thread; WAL with ``synchronous=NORMAL`` survives
    a crash of the process (``kill -9``), which is the failure the offsets guard.
    ``auto_vacuum = INCREMENTAL`` and a capped WAL (:mod:`qkdseg.server.sqlitefile`):
    :meth:`compact` after each prune gives the freed pages back, so the file
    stays the size of the rows of one window.
    """

    def __init__(self, path: Path, health: StoreHealth | None = None) -> None:
        try:
            self.db = connect_wal(path, incremental=True)  # 0600, WAL, synchronous=NORMAL, free pages given back
            missing_tables(Path(path), self.db, ("offsets", "inbox", "outbox"))
            self.db.executescript(_SCHEMA)
            add_generation_column(self.db)  # each offset's generation (.generations: a restored node's new streams)
            self.durable = self.offsets()  # the offsets as committed
        except sqlite3.Error as err:
            raise sqlite_error(Path(path), err) from None
        self.health = health or StoreHealth()

    def offsets(self) -> dict[tuple[str, int], int]:
        return read_offsets(self.db)

    def transaction(self, body) -> None:
        """``body(db)`` in one transaction; rolled back and :class:`CommitFailed` (``relay_db``) when it fails."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            body(db)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self.health.failed("relay_db", err)
            raise CommitFailed("relay_db", err) from err
        self.health.worked("relay_db")

    def write(self, offsets: dict, inbox=(), outbox=()) -> list[bool]:
        """One transaction: offsets, then rows; returns, per inbox row, whether it was new."""
        new: list[bool] = []

        def body(db):
            new.clear()
            if offsets:
                db.executemany(OFFSETS_UPSERT, offset_rows(offsets))  # the larger offset kept (.generations)
            for row in inbox:
                cur = db.execute("INSERT OR IGNORE INTO inbox VALUES (?,?,?,?,?,?)", row)
                new.append(cur.rowcount == 1)
            if outbox:
                db.executemany("INSERT OR REPLACE INTO outbox VALUES (?,?,?,?,?,?)", outbox)

        self.transaction(body)
        for key, v in offsets.items():
            self.durable[key] = max(self.durable.get(key, 0), v)
        return new

    def sent_to(self, dst: str, ids: list[str]) -> set[str]:
        """The ids among ``ids`` of messages this node sent to node ``dst`` (its outbox)."""
        out: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out.update(r[0] for r in self.db.execute(
                f"SELECT message_id FROM outbox WHERE dst=? AND message_id IN ({','.join('?' * len(chunk))})",
                (dst, *chunk)))
        return out

    def statuses(self, table: str, rows: list[tuple[str, str]]) -> bool:
        """``(status, message_id)`` rows in one transaction; False (logged, never raised) when it fails: a
        message's 020 status is a record, no key and no offset depends on it."""
        try:
            self.transaction(lambda db: db.executemany(f"UPDATE {table} SET status=? WHERE message_id=?", rows))
        except CommitFailed:
            return False
        return True

    def compact(self) -> bool:
        """The free pages the pruned rows left given back to the file system (the file follows the rows it
        holds, not the most it ever held); False (logged, never raised) when it cannot write: the pages stay free
        and SQLite reuses them."""
        try:
            incremental_vacuum(self.db)
        except sqlite3.Error as err:
            logger.warning("relay store: the free pages were not given back (%s); they are reused", err)
            return False
        return True

    def probe(self) -> None:
        """A write that changes nothing a request reads: :class:`CommitFailed` while the file cannot be written."""
        self.transaction(lambda db: db.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),)))

    def close(self) -> None:
        """Checkpoint the WAL into the database (no ``-wal`` file is left: a copy of the file alone is whole), close."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:  # what was committed stays in the WAL, and is read at the next start
            logging.getLogger("qkdseg.node").warning("closing the relay store: %s", err)
        finally:
            self.db.close()


class NetLinkEnd:
    """This node's end of one link: its own outgoing counter, the incoming high-water mark (bytes)."""

    def __init__(self, node, link: tuple, stream: LinkStream, offsets: dict, dirty: dict) -> None:
        self.name = link_name(*link)
        self.out_dir = 0 if node == link[0] else 1
        self.in_dir = 1 - self.out_dir
        self.stream, self.offsets, self.dirty = stream, offsets, dirty

    def take(self, nbytes: int) -> tuple[int, KeyMaterial]:
        key = (self.name, self.out_dir)
        off = self.offsets.get(key, 0)
        if position(off) + nbytes > STREAM_BYTES:  # a clean refusal (the request fails with 503), never a timeout
            raise KmsError(503, f"link {self.name}'s key stream is used up in this direction ({position(off):,d} of "
                                f"{STREAM_BYTES:,d} bytes); no key was issued", reason="no_key_material")
        km = KeyMaterial(self.stream.read(self.out_dir, off, nbytes))  # a device-fed link may not hold them: raises
        self.offsets[key] = self.dirty[key] = off + nbytes
        return off, km

    def at(self, offset: int, nbytes: int) -> KeyMaterial:
        if position(offset) + nbytes > STREAM_BYTES:
            raise KmsError(503, f"link {self.name}: offset {offset:,d} is past the key stream's end")
        return KeyMaterial(self.stream.read(self.in_dir, offset, nbytes))
