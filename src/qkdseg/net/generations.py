"""Link offsets with their generation, as ``relay.sqlite3`` keeps them (:mod:`.keystream`, :mod:`.restore`).

An offset is ``generation * GEN_STRIDE + position`` (:mod:`.keystream`); the
generation of a restored node's outgoing directions is its clock in
milliseconds, too large for SQLite's 64-bit integers together with the
position, so the ``offsets`` table keeps them in two columns (``value``: the
position, ``gen``: the generation, 0 in a table from before it) and a write
keeps the larger offset, as before: a later generation, or the same one further
on.
"""

from __future__ import annotations

import time

from ..errors import InvalidRequest
from .keystream import GEN_FLOOR, GEN_STRIDE

OFFSETS_UPSERT = ("INSERT INTO offsets (link, dir, value, gen) VALUES (?,?,?,?) ON CONFLICT(link, dir) DO UPDATE SET "
                  "value=excluded.value, gen=excluded.gen WHERE excluded.gen > offsets.gen OR "
                  "(excluded.gen = offsets.gen AND excluded.value > offsets.value)")


def add_generation_column(db) -> None:
    """The ``gen`` column of ``offsets`` (added to a table made before it: every offset of generation 0)."""
    if "gen" not in {row[1] for row in db.execute("PRAGMA table_info(offsets)")}:
        db.execute("ALTER TABLE offsets ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")


def read_offsets(db) -> dict[tuple[str, int], int]:
    return {(lk, d): gen * GEN_STRIDE + v for lk, d, v, gen in db.execute("SELECT link, dir, value, gen FROM offsets")}


def offset_rows(offsets: dict) -> list[tuple]:
    return [(lk, d, v % GEN_STRIDE, v // GEN_STRIDE) for (lk, d), v in offsets.items()]


def next_generation(offset: int, now_ms: int) -> int:
    """``offset`` moved to a new generation, its position kept: the clock in milliseconds, or one past
    ``offset``'s own generation when the clock is not past it. A clock before :data:`.keystream.GEN_FLOOR` is
    refused (one line): generations are clock readings, and a receiver refuses one below it."""
    if now_ms < GEN_FLOOR:
        raise InvalidRequest(f"this host's clock reads {time.strftime('%Y-%m-%d', time.gmtime(now_ms / 1000))}: a "
                             "restored node numbers its links' new key streams by the clock; set the clock first")
    gen = max(offset // GEN_STRIDE + 1, now_ms)
    return gen * GEN_STRIDE + offset % GEN_STRIDE
