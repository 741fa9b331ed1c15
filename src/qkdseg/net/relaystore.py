"""A node's relay store and its link ends.

:class:`RelayDB` is the node's relay state in ``relay.sqlite3`` (SQLite,
WAL): the link offsets, the relay messages it sent (outbox) and received
(inbox). :class:`NetLinkEnd` is this node's end of one link: its outgoing
counter over the link's key stream and the incoming reads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from ..keys.material import KeyMaterial
from .keystream import LinkStream
from .layout import link_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (link TEXT NOT NULL, dir INTEGER NOT NULL, value INTEGER NOT NULL,
                                    PRIMARY KEY (link, dir));
CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, src TEXT NOT NULL,
                                  kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, dst TEXT NOT NULL,
                                   kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
"""


class RelayDB:
    """The node's relay state (SQLite, WAL): link offsets, and the relay messages sent and received.

    Written on the event loop's thread; WAL with ``synchronous=NORMAL`` survives
    a crash of the process (``kill -9``), which is the failure the offsets guard.
    """

    def __init__(self, path: Path) -> None:
        if not Path(path).exists():  # created private: its WAL and shm files take its mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(lk, d): v for lk, d, v in self.db.execute("SELECT link, dir, value FROM offsets")}

    def write(self, offsets: dict, inbox=(), outbox=()) -> list[bool]:
        """One transaction: offsets, then rows; returns, per inbox row, whether it was new."""
        db = self.db
        new = []
        db.execute("BEGIN IMMEDIATE")
        try:
            if offsets:
                db.executemany("INSERT INTO offsets VALUES (?,?,?) ON CONFLICT(link, dir) DO UPDATE SET "
                               "value=max(value, excluded.value)", [(lk, d, v) for (lk, d), v in offsets.items()])
            for row in inbox:
                cur = db.execute("INSERT OR IGNORE INTO inbox VALUES (?,?,?,?,?,?)", row)
                new.append(cur.rowcount == 1)
            if outbox:
                db.executemany("INSERT OR REPLACE INTO outbox VALUES (?,?,?,?,?,?)", outbox)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def statuses(self, table: str, rows: list[tuple[str, str]]) -> None:
        """``(status, message_id)`` rows in one transaction."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(f"UPDATE {table} SET status=? WHERE message_id=?", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

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
        km = KeyMaterial(self.stream.read(self.out_dir, off, nbytes))  # a device-fed link may not hold them: raises
        self.offsets[key] = self.dirty[key] = off + nbytes
        return off, km

    def at(self, offset: int, nbytes: int) -> KeyMaterial:
        return KeyMaterial(self.stream.read(self.in_dir, offset, nbytes))
