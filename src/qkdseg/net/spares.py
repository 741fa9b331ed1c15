"""A node's spare keys: the other keys of a relay, kept at both ends for the same pair of SAEs; and its stocks.

:class:`Spares` (a mixin of :class:`qkdseg.net.node.NodeService`) serves a
whole request from the pair's spare keys at the source (the slave's node
issues them first, with an ``issue`` message) and applies that ``issue`` at
the destination.

A key stock (:mod:`qkdseg.server.stock`, ``node.json``'s ``stock``) is the
spare keys of a stocked pair, made on purpose: the master's node runs the
refill scheduler and its refill runs (:meth:`Spares.refill_stock`: a plan
from the controller with no SAE waiting, the relay, every key kept as a
spare key at both ends); the slave's node holds its copies as it holds any
spare keys, and counts those that expire unused.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from ..server.etsi import KmsError
from ..server.quota import refusal as quota_refusal
from ..server.stock import Stock, usable
from ..server.stockconfig import parse_stock
from ..server.store import Batch, KeyRow
from ..server.storehealth import CommitFailed, store_unavailable
from .relayrequests import REQUEST_TIMEOUT_S
from .wire import Problem

#: Seconds spare keys whose ``issue`` got no answer are set aside before they are offered again.
RETRY_S = 2 * REQUEST_TIMEOUT_S
#: Refill runs a node has under way at once, for all its stocks (qkdseg.server.stock.Stock's ``runs``).
REFILL_RUNS = 4


class Spares:
    """Spare keys at a source and at a destination (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    async def _use_spares(self, master: str, slave: str, req, now: float):
        """Spare keys of the pair for the whole request (size, level, not expired), or ``None``.

        The slave's node issues them first (``issue`` message, applied before
        its 202). One it refuses (it does not hold them: expired, voided) is
        dropped here (deleted, audited), never offered again. One that got no
        answer (the slave's node down, the answer lost) is set aside and put
        back in the pool :data:`RETRY_S` seconds later: offered again to the
        same pair, an ``issue`` the slave's node applied already is accepted
        again there, so a key is never issued to two masters nor held by one
        end only. A write that fails here (the intent, the drop) puts them back
        in the pool as the store holds them and raises :class:`CommitFailed`;
        so does the caller when it cannot commit their issue (:meth:`put_back`).
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
            self.spares_out[row.key_id] = row  # held still (.reconcile): issued now, or set aside
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
        except Exception as exc:  # noqa: BLE001 -- no answer: set aside; refused: never offered again
            if getattr(exc, "status", None) is None:
                asyncio.get_running_loop().call_later(RETRY_S, self.put_back, master, slave, take, True)
                return None
            if exc.status == 429 and getattr(exc, "detail", None):  # a quota there: kept, the request refused
                self.put_back(master, slave, take)
                raise quota_refusal(exc.detail) from None
            try:
                await self.committer.commit(Batch(delete_keys=[row.key_id for row in take], audit=[{
                    "time": round(time.time(), 6), "event": "void", "request_id": rid, "sae": master, "peer": slave,
                    "key_ids": [row.key_id for row in take],
                    "outcome": f"spare keys dropped: node {dst} did not issue them ({type(exc).__name__})"}]))
            except CommitFailed:
                self.put_back(master, slave, take)
                raise
            self.taken_out(take)
            return None
        keys = [(row.key_id, self.store.open(row), row.security) for row in take]
        summary = {"spare": True, "request_id": rid, "security": min(row.security for row in take)}
        return keys, summary, Batch(delete_keys=[row.key_id for row in take]), take

    # -- key stocks ---------------------------------------------------------------------------
    def init_stock(self) -> None:
        """``self.stock``: the stocks of ``node.json`` (None without): refilled here where this node's SAE is the
        master, counted here where it is the slave."""
        table = self.conf.get("stock")
        self.stock = None
        if table:
            c = self.cfg
            sc = parse_stock(table, saes=self.registry, min_size=int(c.min_key_size), max_size=int(c.max_key_size),
                             where=str(self.dir / "node.json"))
            self.stock = Stock(sc, self._stock_count, self.refill_stock, block=int(c.max_key_per_request),
                               refills=[p for p in sc.pairs if p[0] in self.saes], runs=REFILL_RUNS)

    def _stock_count(self, pair: tuple) -> int:
        c = self.stock.config
        rows = self.spares.get(pair, ()) if pair[0] in self.saes else (
            row for row in self.held_spares.values() if (row.master, row.slave) == pair)
        return len(usable(rows, c.size, c.level, time.time()))

    async def refill_stock(self, pair: tuple, n: int) -> int:
        """One refill run of ``pair``'s stock (this node its master's): the controller plans ``n`` keys at the
        stock's level and size with no SAE waiting (each link keeping its reserve), the relay runs, and every key
        is kept as a spare key here and at the slave's node. Returns how many (:class:`KmsError` when it fails;
        the keys stored at the slave's node are then voided)."""
        c = self.stock.config
        master, slave = pair
        if not self.store.health.writes_ok:
            raise store_unavailable()
        now = time.time()  # before the relay: the copies kept here expire before the slave's node's
        plan = await self._controller("POST", "/control/v1/plans", json={
            "master": master, "slave": slave, "number": n, "size": c.size, "level": c.level, "level_source": "stock",
            "mandatory": False, "refill": True})
        rid = plan["request_id"]
        try:
            _, extra = await self._relayed(rid)
            rows = self._spare_rows(master, slave, extra, rid, now)
            try:
                await self._commit(Batch(put_keys=[row.values() for row in rows], audit=[{
                    "time": round(now, 6), "event": "stock refill", "request_id": rid, "sae": master, "peer": slave,
                    "key_ids": [row.key_id for row in rows], "size": c.size, "level": c.level,
                    "securities": [row.security for row in rows], "route": plan.get("route"), "outcome": "stocked"}]))
            except BaseException:  # not stored here (or a stop): void the slave's node's copies
                self._void_at(slave, rid)
                raise
            self.spares[pair].extend(rows)
        except Exception:  # the run failed: its keys at the slave's node voided, a lost void settled (.reconcile)
            self.check_soon(pair)
            raise
        finally:
            self.finishing.discard(rid)
        return len(rows)

    def put_back(self, master: str, slave: str, rows: list, at_end: bool = False) -> None:
        """Spare keys taken by a request whose write failed: back at the front of their pool, as stored (``at_end``:
        those whose issue got no answer, after :data:`RETRY_S`; the expiry deletes them in time)."""
        self.taken_out(rows)
        if at_end:
            self.spares[(master, slave)].extend(rows)
        else:
            self.spares[(master, slave)].extendleft(reversed(rows))

    def taken_out(self, rows: list) -> None:
        """Spare keys taken from the pool are back in it, or deleted (issued, dropped)."""
        for row in rows:
            self.spares_out.pop(row.key_id, None)

    async def issue_spares(self, w: dict) -> None:
        """At a destination: the source's ``issue`` of spare keys it holds for the slave (durable, then 202; a
        failed commit changes nothing and raises :class:`CommitFailed`: the source does not issue them).

        An ``issue`` this node applied already (its answer lost: the source offers the keys again) is applied
        again: each key gets a fresh ``key_ttl_s`` from now, when its master may get it, not from the first
        ``issue``. A key that left ``held_spares`` while the issue was being committed (expired, voided: its
        deletion committed after the issue) is refused (409): the source drops it, its master never gets it."""
        rows, again = [], []
        expires = time.time() + float(self.cfg.key_ttl_s)  # issued now: the slave has key_ttl_s to fetch them
        for key_id in [str(k) for k in w["key_ids"]]:
            row, mine = self.held_spares.get(key_id), rows
            if row is None:
                row, mine = self.keys.get(key_id), again  # issued by an earlier copy of this issue (answer lost)
                if row is None:
                    raise Problem(409, "Conflict", f"no spare key {key_id[:8]}... is held here", status_020="failed")
            if str(self.registry.get(row.master)) != str(w["src"]) or (row.master, row.slave) != (
                    str(w["master"]), str(w["slave"])):
                raise Problem(403, "Forbidden", "only the node of a spare key's master SAE may issue it")
            mine.append(row)
        if rows:  # they wait here once issued: max_key_count, sae_max_waiting (.quota) checked first, room held
            pair = (rows[0].master, rows[0].slave)
            try:
                hold = self.quotas.reserve(self.keys.values(), pair, len(rows))
            except KmsError as err:
                raise Problem(429, "Too Many Requests", err.message, status_020="failed") from None
            try:
                await self._issue_rows(rows, again, w, expires)
            finally:
                self.quotas.release(pair, hold)
        elif again:  # issued before (waiting here already: counted): a fresh key_ttl_s only
            await self._issue_rows(rows, again, w, expires)

    async def _issue_rows(self, rows: list, again: list, w: dict, expires: float) -> None:
        """Commit the issue of ``rows`` (held spares) and ``again`` (issued by an earlier copy: a fresh expiry), each
        row sealed again with its new state (:mod:`qkdseg.server.sealing`); applied to the rows once committed."""
        sealed = []  # (row, expiry, blob)
        for row, exp in [(r, expires) for r in rows] + [(r, max(r.expires_at, expires)) for r in again]:
            new = KeyRow(*row.values())
            self.store.reseal(new, kind="issued", expires_at=exp)
            sealed.append((row, exp, new.blob))
        await self.committer.commit(Batch(
            issue_keys=[(row.key_id, row.master, row.slave, exp, blob) for row, exp, blob in sealed],
            audit=[{"time": round(time.time(), 6), "event": "issue spare keys", "request_id": str(w["request_id"]),
                    "sae": str(w["master"]), "peer": str(w["slave"]), "key_ids": [row.key_id for row in rows + again],
                    "outcome": "spare keys issued by their source" + (
                        f" ({len(again)} issued before: a fresh key_ttl_s)" if again else "")}]))
        gone = []
        for row, exp, blob in sealed:
            if self.held_spares.get(row.key_id) is row:
                del self.held_spares[row.key_id]
                row.kind, row.expires_at, row.blob = "issued", exp, blob
                self.keys[row.key_id] = row
            elif self.keys.get(row.key_id) is row:  # issued before, or by a copy of this issue applied meanwhile
                row.expires_at, row.blob = exp, blob
            else:
                gone.append(row)
        if gone:  # expired or voided while the issue was committed: deleted here, never to be given to the master
            raise Problem(409, "Conflict", f"spare key {gone[0].key_id[:8]}... was deleted here (expired or voided) "
                                           "while it was issued", status_020="failed")
