"""``qkdseg kms status DIR``: the checks of ``/readyz``, computed from the service directory, read-only.

The same three checks as a running service's ``/readyz`` (docs/deploy.md,
"Health"), and the same body, plus ``serving`` (whether a process holds the
directory's lock now):

``store``
    The database opens read-only, its schema version is the one this qkdseg
    reads, and the storage key matches its check value (what ``kms serve``
    would refuse to start on).
``audit_chain``
    ``DIR/audit.jsonl``'s keyed chain is intact against the database's head
    (what ``kms audit`` checks).
``key_material``
    At least one link holds ``key_size`` bits now: each link's committed
    level, refilled at its rate since it was written, capped at its pool.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from ..errors import QkdsegError
from ..server.lock import LOCK_NAME
from ..server.metrics import ready_body


def _held(directory: Path) -> bool:
    """Whether a live process holds ``DIR/lock`` (the pid in the file alive and, on Linux, its flock listed)."""
    path = directory / LOCK_NAME
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    try:
        inode = path.stat().st_ino
        with open("/proc/locks") as fh:
            return any(line.split()[1] == "FLOCK" and line.split()[4] == str(pid)
                       and line.split()[5].rsplit(":", 1)[-1] == str(inode) for line in fh if len(line.split()) > 5)
    except OSError:
        return True  # no /proc/locks: the live pid is the best answer


def directory_status(directory: str | Path) -> dict:
    """``/readyz``'s body for ``DIR`` (module docstring), with ``serving``."""
    from ..server.audit import load_audit_key
    from ..server.config import load_config
    from ..server.schema import DB_NAME, SCHEMA_VERSION
    from ..server.directory import _open_readonly, check_audit_dir
    from ..server.storagekey import load_storage_key, storage_key_id

    d = Path(directory)
    cfg = load_config(d)  # a missing or broken kms.toml is the one-line error of every kms command
    db_path = d / DB_NAME
    links: dict = {}
    if not db_path.exists():
        store = (False, f"{db_path}: no database yet (start the service once with 'qkdseg kms serve')")
    else:
        try:
            db = _open_readonly(db_path)
            try:
                meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
                links = {(u, v): (c, lv, t) for u, v, c, lv, t in
                         db.execute("SELECT u, v, consumed, level, t FROM links").fetchall()}
            finally:
                db.close()
            version = meta.get("schema_version")
            if version is None or int(version) != SCHEMA_VERSION:
                store = (False, f"schema version {version}, this qkdseg reads {SCHEMA_VERSION} (docs/deploy.md, "
                                "'Upgrading')")
            else:
                try:
                    kid = storage_key_id(load_storage_key(cfg.path(cfg.storage_key)))
                except QkdsegError as err:
                    kid, store = None, (False, str(err))
                if kid is not None:
                    if meta.get("storage_key_id") not in (None, kid):
                        store = (False, "the storage key does not match the one the stored keys are sealed with")
                    else:
                        store = (True, f"schema version {version}; storage key matches")
        except sqlite3.Error as err:
            store = (False, f"{db_path}: {err}")
    try:
        rep = check_audit_dir(d, load_audit_key(cfg.path(cfg.audit_key)))
        audit = ((not rep.problems), f"{rep.records} records intact" if not rep.problems else
                 f"{len(rep.problems)} problem(s) in {rep.records} records; first: {rep.problems[0]}")
    except QkdsegError as err:
        audit = (False, str(err))
    key = _key_material(cfg, links)
    body = ready_body("kms", {"store": store, "audit_chain": audit, "key_material": key})
    body["serving"] = _held(d)
    return body


def _key_material(cfg, links: dict) -> tuple[bool, str]:
    from ..topology import load
    from ..server.source import EmulatedKeySource

    spec = cfg.network
    if not (spec == "example" or spec.startswith("topohub:")):
        spec = str(cfg.path(spec))
    try:
        net = load(spec)
    except QkdsegError as err:
        return False, f"the network cannot be read: {err}"
    a = net.arrays
    cap = a.pool_bits.astype(np.int64)
    level = cap.astype(np.float64)
    since = np.zeros(a.n_links)
    now = time.time()
    ids = a.node_ids
    for k in range(a.n_links):
        u, v = str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]])
        row = links.get((u, v)) or links.get((v, u))
        if row is not None:
            level[k], since[k] = row[1], max(0.0, now - row[2])
    level = np.minimum(cap, np.floor(level + EmulatedKeySource(net, cfg.default_rate_bps).produced(since)))
    n = int((level >= cfg.key_size).sum())
    return n > 0, f"{n} of {a.n_links} links hold at least key_size={cfg.key_size} bits"
