"""Stored key rows sealed whole: AES-256-GCM under the storage key, every field of the row its associated data.

A row's blob is nonce || AES-GCM ciphertext of the key bytes; the associated data (:func:`row_aad`) binds the
key's id, kind, master, slave, size, security and expiry, so a row whose fields were rewritten by someone with
write access to the database (but not the storage key) fails to decrypt (``InvalidTag``): it is reported and
never served (:func:`check_rows`). Each change of a row's state (a spare key issued, a stock key issued) opens it
and seals it again with its new fields (:func:`reseal`).

Directories written before this binding (``meta.row_binding`` absent: the associated data was
``key_id|size``, :func:`legacy_aad`) are migrated when the store opens (:func:`migrate`), in one transaction.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

logger = logging.getLogger("qkdseg.kms")

#: ``meta.row_binding`` of a directory whose rows are sealed with :func:`row_aad`.
ROW_BINDING = "2"
COLUMNS = "key_id, kind, master, slave, size, security, blob, issued_at, expires_at, route"


@dataclass
class KeyRow:
    """One stored key; ``blob`` is nonce || AES-GCM ciphertext of the key bytes (:func:`row_aad` bound)."""

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
        return row_aad(self)


def row_aad(row: KeyRow) -> bytes:
    """The associated data of a sealed row: every field a reader acts on (floats as exact hex: the database's REAL
    gives back the same double, an int and its float give the same text)."""
    return "|".join(("qkdseg-row-v2", row.key_id, row.kind, row.master, row.slave, str(int(row.size)),
                     float(row.security).hex(), float(row.expires_at).hex())).encode()


def legacy_aad(row: KeyRow) -> bytes:
    """The associated data before issue 38 (``key_id|size``): kept to migrate old directories only."""
    return f"{row.key_id}|{row.size}".encode()


def seal(aead, row: KeyRow, material: bytes) -> None:
    nonce = os.urandom(12)
    row.blob = nonce + aead.encrypt(nonce, material, row_aad(row))


def open_row(aead, row: KeyRow, aad=row_aad) -> bytes:
    """The key bytes of ``row`` (``InvalidTag``: a field or the blob was changed, or another storage key)."""
    return aead.decrypt(row.blob[:12], row.blob[12:], aad(row))


def reseal(aead, row: KeyRow, **fields) -> bytes:
    """Open ``row``, set ``fields`` (its new state), seal it again; returns the key bytes."""
    material = open_row(aead, row)
    for name, value in fields.items():
        setattr(row, name, value)
    seal(aead, row, material)
    return material


def migrate(db, aead, binding: str | None) -> int:
    """Re-seal every row of a directory sealed with :func:`legacy_aad` (``binding`` None), in one transaction,
    and record the binding; returns the rows migrated (a row that does not open under the old binding stays as it
    is: :func:`check_rows` reports it)."""
    if binding == ROW_BINDING:
        return 0
    out = []
    for r in db.execute(f"SELECT {COLUMNS} FROM keys").fetchall():
        row = KeyRow(*r)
        try:
            material = open_row(aead, row, legacy_aad)
        except InvalidTag:
            continue
        seal(aead, row, material)
        out.append((row.blob, row.key_id))
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("UPDATE keys SET blob=? WHERE key_id=?", out)
        db.execute("INSERT INTO meta VALUES ('row_binding', ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                   (ROW_BINDING,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if out:
        logger.info("re-sealed %d stored key rows with every field bound (issue 38's migration)", len(out))
    return len(out)


def check_rows(db, aead) -> list[str]:
    """The ids of the stored rows that do not open with their fields (rewritten, or damaged)."""
    bad = []
    for r in db.execute(f"SELECT {COLUMNS} FROM keys").fetchall():
        try:
            open_row(aead, KeyRow(*r))
        except (InvalidTag, ValueError):
            bad.append(r[0])
    return bad
