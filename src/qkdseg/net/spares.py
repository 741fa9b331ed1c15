"""A node's spare keys: the other keys of a relay, kept at both ends for the same pair of SAEs.

:class:`Spares` (a mixin of :class:`qkdseg.net.node.NodeService`) serves a
whole request from the pair's spare keys at the source (the slave's node
issues them first, with an ``issue`` message) and applies that ``issue`` at
the destination.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from ..server.store import Batch
from ..server.storehealth import CommitFailed
from .relayrequests import REQUEST_TIMEOUT_S
from .wire import Problem


class Spares:
    """Spare keys at a source and at a destination (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    async def _use_spares(self, master: str, slave: str, req, now: float):
        """Spare keys of the pair for the whole request (size, level, not expired), or ``None``.

        The slave's node issues them first (``issue`` message, applied before
        its 202); a message that fails leaves their state there uncertain, so
        they are dropped here (deleted, audited), never offered again. A write
        that fails here (the intent, the drop) puts them back in the pool as the
        store holds them and raises :class:`CommitFailed`; so does the caller
        when it cannot commit their issue (:meth:`put_back`): offered again
        later, to the same pair, an ``issue`` the slave's node already applied
        is accepted again there.
        """
        pool = self.spares.get((master, slave))
        if not pool:
            return None
        take = [row for row in pool if row.size == req.size and row.security >= req.level and row.expires_at > now]
        if len(take) < req.number:
            return None
        take = take[: req.number]
        for row in take:
            pool.remove(row)
        rid = str(uuid.uuid4())
        dst = str(self.registry[slave])
        try:
            futs = self.send([{"kind": "issue", "dst": dst, "master": master, "slave": slave,
                               "key_ids": [row.key_id for row in take]}], rid)
        except CommitFailed:
            self.put_back(master, slave, take)
            raise
        try:
            await asyncio.wait_for(asyncio.gather(*futs), REQUEST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- not issued there, or not known: never offered again
            try:
                await self.committer.commit(Batch(delete_keys=[row.key_id for row in take], audit=[{
                    "time": round(time.time(), 6), "event": "void", "request_id": rid, "sae": master, "peer": slave,
                    "key_ids": [row.key_id for row in take],
                    "outcome": f"spare keys dropped: node {dst} did not issue them ({type(exc).__name__})"}]))
            except CommitFailed:
                self.put_back(master, slave, take)
                raise
            return None
        keys = [(row.key_id, self.store.open(row), row.security) for row in take]
        summary = {"spare": True, "request_id": rid, "security": min(row.security for row in take)}
        return keys, summary, Batch(delete_keys=[row.key_id for row in take]), take

    def put_back(self, master: str, slave: str, rows: list) -> None:
        """Spare keys taken by a request whose write failed: back at the front of their pool, as stored."""
        self.spares[(master, slave)].extendleft(reversed(rows))

    async def issue_spares(self, w: dict) -> None:
        """At a destination: the source's ``issue`` of spare keys it holds for the slave (durable, then 202; a
        failed commit changes nothing and raises :class:`CommitFailed`: the source does not issue them)."""
        rows = []
        for key_id in [str(k) for k in w["key_ids"]]:
            row = self.held_spares.get(key_id)
            if row is None:
                if key_id in self.keys:  # issued by a retry of this message already
                    continue
                raise Problem(409, "Conflict", f"no spare key {key_id[:8]}... is held here", status_020="failed")
            if str(self.registry.get(row.master)) != str(w["src"]) or (row.master, row.slave) != (
                    str(w["master"]), str(w["slave"])):
                raise Problem(403, "Forbidden", "only the node of a spare key's master SAE may issue it")
            rows.append(row)
        if rows:
            await self.committer.commit(Batch(
                issue_keys=[(row.key_id, row.master, row.slave, row.expires_at) for row in rows],
                audit=[{"time": round(time.time(), 6), "event": "issue spare keys", "request_id": str(w["request_id"]),
                        "sae": rows[0].master, "peer": rows[0].slave, "key_ids": [row.key_id for row in rows],
                        "outcome": "spare keys issued by their source"}]))
        for row in rows:
            row.kind = "issued"
            del self.held_spares[row.key_id]
            self.keys[row.key_id] = row
