"""Bounded relay state: a node forgets finished relay messages after the idempotency window (issue 31).

A node keeps the id of every relay message it received (``inbox``) and sent
(``outbox``) in ``relay.sqlite3``: a retry of a stored message is accepted
once and processed once. :func:`prune_relay` deletes the rows older than the
window, ``retention_s`` of ``node.json`` (``net init --retention``, default
3,600 s), in batches of :data:`PRUNE_BATCH`, never a row of a request in
flight (one this node holds, younger than its timeout ``QKDSEG_RELAY_TIMEOUT_S``).

So that a pruned id can never let a replay through, every relay message
carries ``sent_at``, its sender's clock when it was put in its first POST,
and :func:`check_fresh` refuses (409, audited) a message whose ``sent_at`` is
more than ``retention_s - clock_skew_s`` seconds old, or more than
``clock_skew_s`` in the future (``net init --clock-skew``, default 60 s). A
message accepted at the receiver's time ``t0`` has ``sent_at <= t0 + skew``;
its inbox row goes only after ``t0 + retention_s``; a replay after that has
an age above ``retention_s - skew`` and is refused.
"""

from __future__ import annotations

import asyncio
import math
import time

from .wire import Problem

#: Rows deleted per transaction (the event loop runs between two batches).
PRUNE_BATCH = 2000
DEFAULT_RETENTION_S = 3600.0
DEFAULT_CLOCK_SKEW_S = 60.0


def window(conf: dict) -> tuple[float, float]:
    """``(retention_s, clock_skew_s)`` of a node's ``node.json`` (the defaults for a file without them)."""
    return (float(conf.get("retention_s", DEFAULT_RETENTION_S)),
            float(conf.get("clock_skew_s", DEFAULT_CLOCK_SKEW_S)))


def check_fresh(svc, w: dict, refusals: list) -> None:
    """Refuse (409, audited) a message whose ``sent_at`` lies outside the window (raises Problem)."""
    sent = w["sent_at"]
    if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not math.isfinite(sent):
        raise Problem(400, "Bad Request", "sent_at must be the sender's clock (seconds since the epoch)")
    retention, skew = svc.window
    now = time.time()
    age = now - float(sent)
    if age <= retention - skew and age >= -skew:
        return
    why = (f"it was sent {age:.1f} s ago, more than the window ({retention:g} s retention less {skew:g} s clock "
           "skew): its id may have been forgotten, a replay is refused") if age > 0 else \
        f"its sent_at is {-age:.1f} s ahead of this node's clock (more than the {skew:g} s clock skew allowed)"
    refusals.append({"event": "relay refused", "src": str(w["src"]), "kind": str(w["kind"]),
                     "request_id": str(w["request_id"]), "message_id": str(w["message_id"])[:64], "status": 409,
                     "sent_at": float(sent), "outcome": why})
    raise Problem(409, "Conflict", f"message {str(w['message_id'])[:64]}: {why}", status_020="failed")


async def prune_relay(svc, now: float, timeout_s: float) -> int:
    """Delete the inbox and outbox rows older than the retention, except those of requests in flight (younger
    than ``timeout_s``); returns the rows deleted. A write that fails leaves the rows (a later pass deletes them)."""
    from ..server.storehealth import CommitFailed

    cutoff = now - svc.window[0]
    # in flight: a request younger than its timeout (a relay node keeps a finished request's state longer)
    live = {rid for rid, st in svc.requests.items() if time.monotonic() - st.created < timeout_s}
    db = svc.relaydb
    deleted = 0
    for table in ("inbox", "outbox"):
        while True:
            rows = db.db.execute(f"SELECT message_id, request_id FROM {table} WHERE t < ? LIMIT ?",
                                 (cutoff, PRUNE_BATCH)).fetchall()
            gone = [(mid,) for mid, rid in rows if rid not in live]
            if gone:
                try:
                    db.transaction(lambda c, g=gone, t=table: c.executemany(
                        f"DELETE FROM {t} WHERE message_id=?", g))
                except CommitFailed:
                    return deleted
                deleted += len(gone)
            if len(rows) < PRUNE_BATCH or not gone:
                break
            await asyncio.sleep(0)  # the event loop serves between two batches
    if deleted:
        db.compact()  # the pages the rows held go back to the file system (the file does not keep its peak)
    return deleted
