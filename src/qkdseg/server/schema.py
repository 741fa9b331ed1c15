"""The key store's schema: one module owns it (STYLE.md, "SQLite done well").

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
``device_keys``
    Only with ``link_source = "device"``: every key fetched from a link's
    QKD devices (ETSI 014 ``enc_keys`` at one end, ``dec_keys`` at the
    other), in fetch order per link (``seq``): its device key id (unique: a
    device key is taken once), its size, how many of its bytes the relays
    have used, its state (``held``, ``used``, or ``skipped`` when the two
    ends did not get the same bytes) and its bytes, sealed like ``keys``
    (associated data: link, seq, key id); a used key's bytes are erased.
``audit``
    Audit records not yet synced to ``audit.jsonl`` (the file is written
    after the commit and synced at most once a second; a record committed
    but missing from the file is appended at the next start).
``meta``
    The schema version and the audit chain's head (sequence and hash).

The audit file has one JSON object per line, chained and keyed with
HMAC-SHA256 under the audit key (:mod:`.audit`); the head kept in the
database detects a truncated tail (:func:`verify_audit`).

What every process that writes a service directory shares (``kms serve``,
``kms rotate-storage-key``, the network's ``node serve``), all in
:class:`Store`: the directory's exclusive lock (:mod:`.lock`), the storage
key's check value (a wrong or missing key refuses to start), the audit
chain's check at start (a broken chain refuses to start unless accepted),
and one-line errors for a directory that cannot be written.
"""

import sqlite3
from pathlib import Path

from ..errors import InvalidRequest

SCHEMA_VERSION = 2  # 2: keyed audit chain (HMAC), storage key check value
DB_NAME = "kms.sqlite3"

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS device_keys (
    k INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key_id TEXT NOT NULL UNIQUE,
    nbytes INTEGER NOT NULL,
    used INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'used', 'skipped')),
    blob BLOB NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (k, seq)
);
"""


def sqlite_error(path: Path, err: BaseException) -> InvalidRequest:
    """The one line of a database that cannot be opened: damaged (not a database, malformed), or not writable."""
    if type(err) is sqlite3.DatabaseError:  # 'file is not a database', 'database disk image is malformed'
        return InvalidRequest(f"{path}: the database is damaged ({err}); restore the directory from a backup")
    return InvalidRequest(f"{path}: {err} (is the directory writable, and the disk not full?)")


def missing_tables(path: Path, db: sqlite3.Connection, tables: tuple[str, ...]) -> None:
    """Refuse a database that holds some of ``tables`` but not all (a damaged one: never made whole again empty,
    which would forget the consumed offsets); a new, empty one is made by the caller's schema."""
    have = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    gone = [t for t in tables if t not in have]
    if have & set(tables) and gone:
        raise InvalidRequest(f"{path}: the database is damaged (no table {', '.join(gone)}); restore the directory "
                             "from a backup")
