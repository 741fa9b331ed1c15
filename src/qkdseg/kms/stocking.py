"""``kms serve``'s relay step and its key stocks (:mod:`qkdseg.server.stock`, docs/kms.md "Key stocks").

:class:`Stocking` is a part of :class:`qkdseg.kms.service.KeyService`: the
relay step that ``enc_keys`` and the refill runs share
(:meth:`Stocking._relay_fresh`: plan, relay, confirm), the stock's count
(the pair's spare keys of the stock's size and level) and its refill run:
blocks of at most :data:`CHUNK_KEYS` keys, each planned, relayed and
reserved at once (as one ``enc_keys``), the loop free between two blocks,
every key kept as a spare key of the pair, all committed in one transaction
at the end (or every block's bits released).

In ``kms serve`` one process holds both ends of every key, and spare keys
belong to the two SAEs whichever asks: so one stock serves both directions
of its pair (``A:B`` and ``B:A`` are one stock, named as configured first).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np

from ..keys import relay
from ..server.etsi import KeyRequest, KmsError
from ..server.stock import Stock, usable
from ..server.store import Batch, KeyRow
from ..server.storehealth import CommitFailed

#: Keys a refill run relays before it lets other requests in (a block is relayed, confirmed and reserved at once).
CHUNK_KEYS = 16


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Stocking:
    """The relay step and the key stocks of :class:`qkdseg.kms.service.KeyService`."""

    def _init_stock(self) -> None:
        sc = self.cfg.stock_config()
        self.stock = None if sc is None else Stock(sc, self._stock_count, self._refill_stock,
                                                   block=self.cfg.max_key_per_request,
                                                   canon=lambda p: self._pair(*p))

    def _stock_count(self, pool: tuple) -> int:
        c = self.stock.config
        return len(usable(self.spares.get(pool, ()), c.size, c.level, self.clock()))

    async def stock_loop(self) -> None:
        """The refill scheduler (:meth:`qkdseg.server.stock.Stock.run`); nothing without a stock."""
        if self.stock is not None:
            await self.stock.run()

    def _relay_fresh(self, s: int, d: int, req: KeyRequest, missing: int, keep: float | None = None):
        """Plan ``missing`` keys between node indices ``s`` and ``d`` and relay them: ``(fresh, summary,
        route_json, paths, debit)`` with ``fresh`` the ``(key bytes, security)`` of every key the relays made
        and ``debit`` each link's bits (not reserved here). :class:`KmsError` when it cannot be done. ``keep``: a
        refill's (up to ``missing`` keys, each link keeping that share of its pool: :meth:`.Planner.plan_refill`)."""
        if keep is None:
            r, rec, relays, bits = self.planner.plan_relays(s, d, req, missing)
        else:
            _, (r, rec, relays, bits) = self.planner.plan_refill(s, d, req, keep)
        # the byte pools hold at least what the levels say on the route's links
        for k in np.flatnonzero(bits).tolist():
            pool = self.keystore._pool(k)
            if pool.level < self.levels.level[k]:
                pool.charge(int(self.levels.level[k]) - pool.level)
        fresh = []
        for _ in range(relays):
            res = relay(r, self.keystore, rec)
            for out, gk in zip(res.plans[0].keys, rec.global_keys):
                if not out.identical:  # key confirmation failed: never hand out a wrong key
                    raise KmsError(503, "key confirmation failed on a relay (the two ends' keys differ); "
                                        "no key was issued", reason="confirmation_failed")
                fresh.append((out.destination_key.reveal(), float(gk.security)))
        summary = self.planner.summary(r, rec, relays)
        paths = [[[str(v) for v in p] for p in seg.paths] for seg in r.segments] if self.observers else None
        return fresh, summary, _json(summary), paths, bits

    async def _refill_stock(self, pool: tuple, n: int) -> int:
        """One refill run of the stock of ``pool`` (its two SAEs, sorted): up to ``n`` keys at the stock's level
        and size, each link keeping its reserve; returns how many were stocked (:class:`KmsError` if none)."""
        c = self.stock.config
        s, d = self.sae_node[pool[0]], self.sae_node[pool[1]]
        self._check_writable()
        now = self.clock()
        rows: list[KeyRow] = []
        debits: list[np.ndarray] = []
        routes = []
        try:
            while len(rows) < n:
                self.refill(self.clock())
                want = min(CHUNK_KEYS, n - len(rows))
                try:
                    fresh, summary, route_json, _, debit = self._relay_fresh(
                        s, d, KeyRequest(want, c.size, c.level, "stock", False), want, keep=c.reserve)
                except KmsError:
                    if rows:  # the links' reserve (or the level) stops the run here: what it made is kept
                        break
                    raise
                if len(fresh) < want:  # the links' reserve allowed only part of the block: the run ends with it
                    n = len(rows) + len(fresh)
                self.planner.reserve(debit)
                debits.append(debit)
                routes.append(summary)
                for material, sec in fresh:
                    row = KeyRow(str(uuid.uuid4()), "spare", pool[0], pool[1], c.size, sec, b"", now,
                                 now + self.cfg.key_ttl_s, route_json)
                    self.store.seal(row, material)
                    rows.append(row)
                await asyncio.sleep(0)  # the requests waiting meanwhile go first
        except BaseException:  # nothing of the run stored: every block's bits back (additive: others' stay)
            self._release(debits)
            raise
        batch = Batch(put_keys=[row.values() for row in rows],
                      links=self.planner.link_rows(np.flatnonzero(np.sum(debits, axis=0))))
        if hasattr(self.source, "changes"):  # the device key bytes used, committed with the run
            self.source.changes(batch)
        batch.audit.append({
            "time": round(now, 6), "event": "stock refill", "sae": pool[0], "peer": pool[1],
            "key_ids": [row.key_id for row in rows], "size": c.size, "level": c.level,
            "securities": [row.security for row in rows], "routes": routes, "outcome": "stocked"})
        try:
            await self._commit(batch)
        except CommitFailed:  # not stored (a stop during the commit: kept debited, the safe side)
            self._release(debits, batch)
            raise
        self.spares[pool].extend(rows)
        return len(rows)

    def _release(self, debits: list, batch: Batch | None = None) -> None:
        """A refill run not stored: each block's bits back to the levels; device key bytes read, back in line."""
        for debit in debits:
            self.planner.release(debit)
        if batch is not None and batch.device_used and hasattr(self.source, "requeue"):
            self.source.requeue(batch.device_used)
