"""What the commands do to a service directory while no server holds it: check its audit file against the
database's chain head (read-only), and re-seal its keys under a new storage key."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidRequest
from .audit import AuditReport, check_head
from .auditseries import check_series, series
from .files import fsync_dir
from .pki import write_secret
from .storagekey import load_storage_key
from .schema import DB_NAME, sqlite_error
from .store import Batch, Store


def _open_readonly(db_path: Path) -> sqlite3.Connection:
    """The database, read-only; on a read-only copy (no ``-shm`` can be made) opened as immutable."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM meta LIMIT 1").fetchone()
        return db
    except sqlite3.OperationalError:
        with contextlib.suppress(Exception):
            db.close()
        return sqlite3.connect(f"file:{db_path}?mode=ro&immutable=1", uri=True)


def check_audit_dir(directory: Path, audit_key: bytes | None, archive: Path | None = None) -> AuditReport:
    """Check ``DIR``'s audit log (MACs when ``audit_key`` is given) against the database's chain head, read-only:
    the whole rotated series (:mod:`.auditseries`: ``audit-<seq>.jsonl[.gz]`` in ``DIR`` and in ``archive``, then
    ``audit.jsonl``); each problem names its file and line."""
    directory = Path(directory)
    rep = check_series(audit_key, series(directory, archive))
    db_path = directory / DB_NAME
    if db_path.exists():
        try:
            db = _open_readonly(db_path)
            try:
                row = db.execute("SELECT value FROM meta WHERE name='audit_head'").fetchone()
                pending = db.execute("SELECT MIN(seq), MAX(seq) FROM audit").fetchone()
            finally:
                db.close()
        except sqlite3.Error as err:
            raise sqlite_error(db_path, err) from None
        head = None if row is None else (int(row[0].split(":")[0]), row[0].split(":")[1])
        check_head(rep, head, None if pending[0] is None else (pending[0], pending[1]))
    return rep


def verify_audit(directory: Path, audit_key: bytes | None = None) -> tuple[int, list[str]]:
    """Check ``DIR/audit.jsonl``'s keyed chain against itself and the database's head.

    Returns ``(records, problems)``: the number of records read and one
    line per open problem (an empty list when the chain is intact; problems
    accepted by an ``audit_broken_accepted`` record are not listed). The
    audit key is read from ``DIR`` (``kms.toml``'s ``audit_key``) unless given.
    """
    directory = Path(directory)
    if audit_key is None:
        audit_key = directory_audit_key(directory)
    rep = check_audit_dir(directory, audit_key)
    return rep.records, rep.problems


def directory_audit_key(directory: Path, optional: bool = False) -> bytes | None:
    """The audit key of a service directory (the path from its ``kms.toml``, else ``DIR/audit.key``). ``optional``:
    ``None`` when the key cannot be read (missing, no permission), but still an error when it is damaged."""
    from .audit import load_audit_key
    from .config import load_config

    try:
        cfg = load_config(directory)
        path = cfg.path(cfg.audit_key)
    except InvalidRequest:
        path = Path(directory) / "audit.key"
    if optional and not (path.exists() and os.access(path, os.R_OK)):
        return None
    return load_audit_key(path)


def rotate_storage_key(cfg) -> tuple[int, Path]:
    """Re-seal every row of ``cfg``'s store under a new storage key in one transaction; returns (rows, key path).

    Crash-safe order: the new key is written to ``storage.key.new`` (synced),
    the rows and the check value are committed, then the new key replaces
    the old one. A crash in between leaves either the old key valid, or the
    database sealed under ``storage.key.new``, which the start's refusal
    names. The rotation is audited.
    """
    from .audit import load_audit_key

    path = cfg.path(cfg.storage_key)
    store = Store(cfg._dir, load_storage_key(path), load_audit_key(cfg.path(cfg.audit_key)), durability=cfg.durability)
    try:
        new_path = path.with_name(path.name + ".new")
        new_key = AESGCM.generate_key(bit_length=256)
        write_secret(new_path, new_key)
        fd = os.open(new_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        old_id = store.storage_key_id
        n = store.reseal_all(new_key)
        os.replace(new_path, path)
        fsync_dir(path.parent)
        store.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "rotate_storage_key", "rows": n,
                                   "old_key_id": old_id, "new_key_id": store.storage_key_id, "outcome": "ok"}]))
    finally:
        store.close()
    return n, path
