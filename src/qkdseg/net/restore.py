"""A node started from a copy of its directory (docs/deploy.md, "Backup and restore").

A copy holds the keys and link offsets of the moment it was taken. What
happened after it is in no file of the copy: keys the slave SAEs fetched, keys
issued, pad bits used, at both ends of a link when both were put back. So a
node that starts from a copy must neither hand out a key it holds nor read its
links' key streams where it read before. It finds out at its start, before it
serves anything:

- ``qkdseg node restore NODEDIR`` (``qkdseg net restore DIR``: every node of a
  deployment) left the file ``NODEDIR/restored``; or
- ``relay.sqlite3`` or ``kms.sqlite3`` is not the file the node last ran from:
  another inode number or another birth time (a copy put back, the directory
  copied to another disk or host). Each start records both files' identity in
  ``relay.sqlite3`` (table ``node_files``).

A node found restored then, in this order:

1. voids every key it holds: those waiting for a slave SAE and the spare keys
   (at a source and at a destination), deleted with one audit record
   ``"event": "restore"`` (their ids; the SAEs ask again);
2. moves each emulated link direction it sends on to a new generation of the
   link's key stream (:mod:`.keystream`: its clock in milliseconds, above every
   generation drawn before), its position kept: each offset it uses from now
   on is larger than any offset used before on that direction, and reads
   bytes of a stream no node read before, whatever the other end was put back
   to; on a device-fed direction its counter moves past every device key byte
   it holds (what the devices deliver next was never delivered before);
3. records the files' identity and removes ``restored``.

A crash between the steps repeats them at the next start (nothing left to
void; another generation). A write that fails refuses the start (one line).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import time
from pathlib import Path

from ..errors import InvalidRequest
from ..server.schema import DB_NAME
from ..server.store import Batch
from ..server.storehealth import CommitFailed
from .generations import next_generation
from .keystream import LinkStream

MARKER = "restored"
FILES = ("relay.sqlite3", DB_NAME)
_TABLE = "CREATE TABLE IF NOT EXISTS node_files (name TEXT PRIMARY KEY, identity TEXT NOT NULL)"
logger = logging.getLogger("qkdseg.net")


class _Time(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]


class _Statx(ctypes.Structure):  # struct statx (Linux 4.11+, glibc 2.28+): 256 bytes, with room to spare
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attributes", ctypes.c_uint64),
                ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("pad0", ctypes.c_uint16), ("ino", ctypes.c_uint64),
                ("size", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", _Time), ("btime", _Time), ("ctime", _Time), ("mtime", _Time),
                ("rest", ctypes.c_uint64 * 32)]  # rdev, dev, mnt_id, alignments, spare: 128 of these 256 bytes


def identity(path: Path) -> str:
    """``INODE:BIRTH_NS`` of ``path`` (a copy gets another birth time even where its inode number is reused), or
    ``INODE`` where the system gives no birth time."""
    ino = os.stat(path).st_ino
    try:
        statx = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return str(ino)
    buf = _Statx()
    if statx(-100, os.fsencode(path), 0, 0x100 | 0x800, ctypes.byref(buf)) != 0 or not buf.mask & 0x800:
        return str(ino)  # AT_FDCWD; STATX_INO | STATX_BTIME: no birth time here
    born = buf.btime.sec * 1_000_000_000 + buf.btime.nsec
    return f"{ino}:{born}" if born else str(ino)


def _same(recorded: str, now: str) -> bool:
    if ":" in recorded and ":" in now:
        return recorded == now
    return recorded.split(":")[0] == now.split(":")[0]


def detect(svc) -> tuple[str | None, dict[str, str]]:
    """Why ``svc``'s directory is a restored copy (``None``: it is not), and its files' identities now."""
    db = svc.relaydb.db
    db.execute(_TABLE)
    recorded = dict(db.execute("SELECT name, identity FROM node_files"))
    now = {name: identity(svc.dir / name) for name in FILES}
    if (svc.dir / MARKER).exists():
        return "marked restored ('qkdseg node restore')", now
    for name in FILES:
        if name in recorded and not _same(recorded[name], now[name]):
            return f"{name} is not the file this node last ran from (a copy put back)", now
    return None, now


def check_restored(svc) -> str | None:
    """At a node's start (before it serves): the steps of the module's docstring when its directory is a restored
    copy; returns the reason (``None``: not restored). A failed write raises :class:`InvalidRequest`."""
    try:
        reason, files = detect(svc)
        if reason is not None:
            _restore(svc, reason)
        recorded = dict(svc.relaydb.db.execute("SELECT name, identity FROM node_files"))
        if recorded != files:
            svc.relaydb.transaction(lambda db: db.executemany(
                "INSERT OR REPLACE INTO node_files VALUES (?, ?)", sorted(files.items())))
    except (CommitFailed, sqlite3.Error, OSError) as err:
        raise InvalidRequest(f"{svc.dir}: cannot record the node's start ({err}); is the disk full?") from None
    (svc.dir / MARKER).unlink(missing_ok=True)
    return reason


def _restore(svc, reason: str) -> None:
    now = time.time()
    issued = list(svc.keys)
    spares = [r.key_id for pool in svc.spares.values() for r in pool] + list(svc.held_spares)
    moved, links = {}, {}
    for end in svc.links.values():
        key = (end.name, end.out_dir)
        off = svc.offsets.get(key, 0)
        if isinstance(end.stream, LinkStream):
            new = next_generation(off, time.time_ns() // 1_000_000)
        else:  # device-fed: past every byte held
            new = max(off, end.stream.ends[end.out_dir])
        moved[key] = new
        links[end.name] = {"direction": end.out_dir, "from": off, "to": new}
    svc.store.commit(Batch(delete_keys=issued + spares, audit=[{
        "time": round(now, 6), "event": "restore", "reason": reason, "key_ids": issued, "spare_keys": len(spares),
        "links": links, "outcome": "started from a copy: the keys held voided (they may have been delivered or "
                                   "issued after the copy was taken; the SAEs ask again), each link direction this "
                                   "node sends on moved to a key stream no node read before"}]))
    svc.relaydb.write(moved)
    svc.offsets.update(moved)
    svc.keys.clear()
    svc.spares.clear()
    svc.held_spares.clear()
    logger.warning("node %s: %s: voided %d keys and %d spare keys, %d link directions moved to new key streams",
                   svc.id, reason, len(issued), len(spares), len(moved))


def mark(node_dir: Path) -> None:
    """``qkdseg node restore NODEDIR``: mark a node directory restored (refused while a process holds it)."""
    from ..server.lock import lock_directory

    d = Path(node_dir)
    if not (d / "node.json").exists():
        raise InvalidRequest(f"{d}: not a node directory (no node.json)")
    with lock_directory(d, "a node"):
        fd = os.open(d / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"marked restored at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
