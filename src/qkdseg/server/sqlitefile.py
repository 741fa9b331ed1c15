"""How the servers open their SQLite files (the key store's ``kms.sqlite3``, a node's ``relay.sqlite3``).

:func:`connect_wal` creates the file private (0600; its ``-wal`` and ``-shm``
take its mode), opens it in WAL mode with the ``synchronous`` level asked,
and caps the write-ahead log left between checkpoints
(``journal_size_limit`` = :data:`WAL_KEEP_BYTES`). SQLite reuses its WAL
file rather than truncating it after a checkpoint, so without the cap the
file keeps the largest size it ever reached: a checkpoint held back by a
reader (a backup, a monitor's read) or one large transaction grows it, and
a service that runs for months ratchets it up (issue 31). With the cap the
first commit after each checkpoint cuts it back to :data:`WAL_KEEP_BYTES`
(:data:`WAL_KEEP_BYTES` is the log one automatic checkpoint interval
writes, 1,000 pages of 4 KiB, so a steady service's log is not cut and
grown again at every checkpoint).

:func:`incremental_vacuum` gives a file's free pages back to the file
system (``auto_vacuum = INCREMENTAL``, which :func:`connect_wal` sets with
``incremental=True``): a store whose rows are pruned (a node's relay store)
then follows the rows it holds rather than the most it ever held.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

#: Bytes of write-ahead log kept after a checkpoint (``PRAGMA journal_size_limit``).
WAL_KEEP_BYTES = 4 << 20

_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
logger = logging.getLogger("qkdseg.kms")


def connect_wal(path: Path, *, synchronous: str = "NORMAL", incremental: bool = False) -> sqlite3.Connection:
    """``path`` opened (created 0600 when missing) in WAL mode, autocommit, usable from any thread.

    ``incremental``: the file is set to ``auto_vacuum = INCREMENTAL`` (a new
    file before its first table; a file made without it is rebuilt once
    with ``VACUUM``, which keeps every row; a rebuild that fails, a full
    disk, is logged and the file served as it is: its free pages are then
    reused, not given back)."""
    if not Path(path).exists():  # created private: its WAL and shm files take its mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if incremental and db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            db.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
            try:
                db.execute("VACUUM")  # takes effect only through a rebuild once the file has a table
            except sqlite3.OperationalError as err:
                logger.warning("%s: not rebuilt with auto_vacuum=INCREMENTAL (%s); its free pages are reused, not "
                               "given back", path, err)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
    except BaseException:
        db.close()
        raise
    return db


def incremental_vacuum(db: sqlite3.Connection) -> None:
    """Every free page of ``db`` (``auto_vacuum = INCREMENTAL``) given back to the file system, in one
    transaction; raises :class:`sqlite3.Error` when it cannot write (nothing is lost: the pages stay free)."""
    # executescript steps the pragma to its end: execute() would run one step, which frees one page
    db.executescript("PRAGMA incremental_vacuum;")
