"""The key service: an ETSI GS QKD 014 request -> route -> relay -> stored keys.

:class:`KeyService` is what the ETSI 014 front end
(:mod:`qkdseg.server.frontend`) calls. On the shared planning state
(:class:`qkdseg.server.core.ServiceState`: the network, the SAE registry,
every link's pool level in the :mod:`planner <qkdseg.server.planner>`) it
holds the keys waiting for their slave, and it changes them only on the event loop's thread, one
request at a time, so a request's checks and its debit are atomic. Each
request's changes are written to SQLite in one transaction (group commit)
before it is answered.

A key request (``enc_keys``) for ``number`` keys of ``size`` bits at level
``epsilon`` (docs/kms.md):

1. **Spare keys first.** Keys relayed earlier between the same two SAEs'
   nodes, not yet issued, with the same size and a security of at least
   ``epsilon``, are issued first.
2. **Route** (steps 2 to 4 are planned by :class:`qkdseg.server.planner.Planner`).
   The pools are refilled to now (:class:`qkdseg.keys.levels.LinkLevels`).
   The routing algorithm (SMR by default) runs between the two SAEs' nodes
   on the links that hold enough key: with ``r`` relays needed, a link
   is usable only if it holds ``r * size`` bits.
3. **Reconstruct.** The paper's flexible reconstruction at ``epsilon``
   gives ``n`` global keys of ``size`` bits per relay, each with its exact
   security. No key at ``epsilon`` -> the level cannot be met.
4. **Relay.** ``r = ceil(missing / n)`` relays of the route by the relay
   engine (:func:`qkdseg.keys.relay`): real pieces under one-time pad hop by
   hop, segment keys at both ends of each segment, the global keys relayed
   across the segment nodes. Both ends' copies of every key are compared
   (key confirmation); the pools are debited ``r * consumed_bits``.
5. **Issue.** ``number`` keys get fresh UUIDv4 ids and go to the master;
   the slave's copies are stored (encrypted) for ``dec_keys``; the rest of
   the last relay's keys become spare keys.

Nothing is debited and no key is issued unless every step succeeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
import uuid
from collections import defaultdict, deque
from typing import Any

from ..keys import KeyStore
from ..network import Network
from ..server.config import KmsConfig
from ..server.core import ServiceState
from ..server.delivery import commit_delivery, keys_body, take_keys
from ..server.etsi import CLIP, EXTENSION_LEVEL, Caller, KeyRequest, KmsError, _b64, clip, parse_key_request
from ..server.logs import REQUEST_ID
from ..server.source import KeySource
from ..server.quota import Quotas
from ..server.store import Batch, KeyRow, Store
from ..server.storehealth import CommitFailed, store_unavailable
from .stocking import Stocking

logger = logging.getLogger("qkdseg.kms")


class KeyService(Stocking, ServiceState):
    """The state and the operations of one key management entity.

    Parameters
    ----------
    cfg : KmsConfig
    network : Network
    store : Store
        The database (levels, keys and the audit chain are loaded from it).
    source : KeySource, optional
        Default: a device feed (:mod:`qkdseg.devices.source`) with ``link_source = "device"``, else
        :class:`qkdseg.server.source.EmulatedKeySource` at the links' ``rate_bps``.
    clock : callable
        Unix time in seconds (a test may pass its own).
    """

    def __init__(self, cfg: KmsConfig, network: Network, store: Store, source: KeySource | None = None,
                 clock=time.time) -> None:
        if source is None and cfg.link_source == "device":
            from ..devices.source import device_source

            source = device_source(cfg, network, store, network.arrays.pool_bits)
        super().__init__(cfg, network, store, source, clock)
        self.keystore = KeyStore(network, source=self.source.read)
        self._init_stock()  # self.stock: the key stocks of kms.toml's [stock] (None without); .stocking

    def load(self) -> None:
        """The links' levels, the keys waiting for their slaves and the spare keys, from the store."""
        super().load()
        self.keys: dict[str, KeyRow] = {}
        self.spares: dict[tuple, deque[KeyRow]] = defaultdict(deque)
        for row in self.store.load_keys():
            if row.kind == "issued":
                self.keys[row.key_id] = row
            else:
                self.spares[(row.master, row.slave)].append(row)
        self.pending: set[str] = set()  # issued, not yet committed: invisible to dec_keys
        self.quotas = Quotas(self.cfg)  # max_key_count, sae_max_waiting, sae_rate (the front end asks it)

    async def _commit(self, batch: Batch) -> None:
        """Commit ``batch``: :class:`qkdseg.server.storehealth.CommitFailed` (a JSON 503, nothing of it stored)
        when the transaction fails; the caller then restores what it changed in memory."""
        await self.committer.commit(batch)

    def _check_writable(self) -> None:
        """Refuse at once (the same 503 as a failed commit) while the store's transactions fail."""
        if not self.store.health.writes_ok:
            raise store_unavailable()

    def waiting_keys(self) -> int:
        return len(self.keys)

    def spare_keys(self) -> int:
        return sum(len(q) for q in self.spares.values())

    # -- helpers -----------------------------------------------------------------
    def _check_caller(self, caller: Caller) -> None:
        if caller.sae not in self.sae_node:
            raise KmsError(401, f"SAE {clip(caller.sae)} is not registered with this KME")

    def _check_peer(self, caller: Caller, peer: str, role: str) -> int:
        if peer not in self.sae_node:
            raise KmsError(400, f"{role} SAE {clip(peer)} is not registered with this KME")
        if peer == caller.sae:
            raise KmsError(400, f"{role} SAE {clip(peer)} is the caller itself")
        return self.sae_node[peer]

    def _audit(self, event: str, caller: Caller, peer: str | None, **fields) -> dict:
        rec = {"time": round(self.clock(), 6), "event": event, "sae": caller.sae[:CLIP],
               "cert_sha256": caller.fingerprint}
        rid = REQUEST_ID.get()
        if rid is not None:  # the id of the HTTP request, as in its X-Request-ID header and the JSON logs
            rec["http_request_id"] = rid
        if peer is not None:
            rec["peer"] = peer if len(peer) <= CLIP else clip(peer)
        rec.update(fields)
        return rec

    async def deny(self, err: KmsError, caller: Caller | None, op: str, peer: str | None = None) -> None:
        """Audit a refused request (the caller answers it with ``err``)."""
        who = caller or Caller("-", "-")
        extra = {"request": err.request} if err.request else {}
        rec = self._audit("deny", who, peer, op=op if len(op) <= CLIP else clip(op), status=err.status, reason=err.reason, outcome=err.message, **extra)
        await self._commit(Batch(audit=[rec]))
        self._notify(rec)

    # -- ETSI 014: status -----------------------------------------------------------
    def status(self, caller: Caller, slave: str) -> dict:
        """``GET /status`` (Table 9): the 11 required fields, extras in ``status_extension``."""
        self._check_caller(caller)
        d = self._check_peer(caller, slave, "slave")
        s = self.sae_node[caller.sae]
        size = self.cfg.key_size
        now = self.clock()
        self.refill(now)
        spare = sum(1 for row in self.spares[self._pair(caller.sae, slave)]
                    if row.size == size and row.security >= self.cfg.security_level and row.expires_at > now)
        per_relay, relays, summary = self.planner.capacity(s, d, size, self.cfg.security_level)
        stored = min(spare + per_relay * relays, self.cfg.max_key_count)
        stock = None if self.stock is None else self.stock.view((caller.sae, slave))
        if stock is not None:  # a stocked pair: the keys in its stock (max_key_count counts issued keys only)
            stored = stock["keys"]
        return {
            "source_KME_ID": self.cfg.kme_id,
            "target_KME_ID": self.cfg.kme_id,
            "master_SAE_ID": caller.sae,
            "slave_SAE_ID": slave,
            "key_size": size,
            "stored_key_count": int(stored),
            "max_key_count": self.cfg.max_key_count,
            "max_key_per_request": self.cfg.max_key_per_request,
            "max_key_size": self.cfg.max_key_size,
            "min_key_size": self.cfg.min_key_size,
            "max_SAE_ID_count": 0,
            "status_extension": {
                "qkdseg_security_level": self.cfg.security_level,
                "qkdseg_spare_keys": spare,
                "qkdseg_keys_per_relay": per_relay,
                "qkdseg_relays_affordable": relays,
                "qkdseg_route": summary,
                "qkdseg_algorithm": self.algorithm,
                **({"qkdseg_stock": stock} if stock is not None else {}),
            },
        }

    # -- ETSI 014: enc_keys ---------------------------------------------------------------
    def parse_key_request(self, number: Any, size: Any, ext_mandatory: Any, ext_optional: Any,
                          additional: Any) -> KeyRequest:
        """Check a key request's fields (Table 10); :class:`KmsError` 400 names the one at fault."""
        return parse_key_request(self.cfg, number, size, ext_mandatory, ext_optional, additional)

    def _pair(self, a: str, b: str) -> tuple:
        return (a, b) if a <= b else (b, a)

    async def enc_keys(self, caller: Caller, slave: str, req: KeyRequest) -> dict:
        """``enc_keys``: ``req.number`` fresh keys for the master, their copies kept for ``slave``."""
        self._check_caller(caller)
        d = self._check_peer(caller, slave, "slave")
        self._check_writable()
        s = self.sae_node[caller.sae]
        now = self.clock()
        asked = {"level": req.level, "level_source": req.level_source, "size": req.size, "number": req.number}
        try:  # the keys waiting for their slaves (self.keys: issued, not fetched; stocked keys are spare keys)
            self.quotas.check(self.keys.values(), (caller.sae, slave), req.number)
        except KmsError as err:
            err.request = asked
            raise
        level_note = None
        try:
            try:
                keys, spares_used, summary, batch, paths, made = self._make_keys(caller, slave, s, d, req, now)
            except KmsError as err:
                if req.level_source != "extension_optional" or err.status not in (400, 503):
                    raise
                # an optional level that cannot be met falls back to the default level
                fallback = dataclasses.replace(req, level=self.cfg.security_level, level_source="default")
                keys, spares_used, summary, batch, paths, made = self._make_keys(caller, slave, s, d, fallback, now,
                                                                                 count_miss=False)
                level_note = (f"{EXTENSION_LEVEL}={req.level} could not be met; the default level {fallback.level} "
                              "was applied")
                req = fallback
        except KmsError as err:
            err.request = asked
            raise
        ids = [row.key_id for row, _ in keys]
        self.pending.update(ids)
        try:
            await self._commit(batch)
        except CommitFailed:
            made.undo(self, batch)
            raise
        finally:
            self.pending.difference_update(ids)
        made.done(self)
        if made.from_stock:  # a hit, counted once committed (.stock)
            self.stock.served((caller.sae, slave), len(keys))
        self._notify(batch.audit[-1], route_paths=paths, requested=asked, fallback=level_note)
        level_ext = {"requested": req.level, "source": req.level_source}
        if level_note:
            level_ext["fallback"] = level_note
        ext: dict[str, Any] = {"qkdseg_security_level": level_ext, "qkdseg_route": summary,
                               "qkdseg_spare_keys_used": spares_used}
        stocked = {"qkdseg_from_stock": True} if made.from_stock else {}
        if made.from_stock is not None:
            ext["qkdseg_from_stock"] = made.from_stock
        if req.ignored:
            ext["qkdseg_ignored_extensions"] = list(req.ignored)
        return {
            "keys": [
                {"key_ID": row.key_id, "key": _b64(material),
                 "key_extension": {"qkdseg_security": row.security, **stocked}}
                for row, material in keys
            ],
            "key_container_extension": ext,
        }

    def _make_keys(self, caller: Caller, slave: str, s: int, d: int, req: KeyRequest, now: float,
                   count_miss: bool = True):
        """Steps 1-5 of the module docstring, in memory; returns the keys and the batch to commit (``count_miss``:
        false for the second try of a request at the default level: its stock's miss is counted once)."""
        self.refill(now)
        pair = self._pair(caller.sae, slave)
        expires = now + self.cfg.key_ttl_s
        issued: list[tuple[KeyRow, bytes]] = []
        batch = Batch()
        # 1. spare keys
        spares = self.spares[pair]
        take = [row for row in spares if row.size == req.size and row.security >= req.level and row.expires_at > now]
        take = take[: req.number]
        missing = req.number - len(take)
        stocked = self.stock is not None and self.stock.takes((caller.sae, slave), req.size, req.level)
        if stocked and missing and count_miss:  # a miss: counted now, whatever the relay on demand gives
            self.stock.missed((caller.sae, slave), req.number)
        summary = None
        paths = None
        new_spares: list[KeyRow] = []
        debit = None
        if missing:
            if s == d:  # both SAEs on one node: no relay, local random key
                fresh = [(secrets.token_bytes(req.size // 8), 1.0) for _ in range(missing)]
                route_json = '{"local": true}'
                summary = {"local": True, "security": 1.0, "consumed_bits": 0}
            else:
                fresh, summary, route_json, paths, debit = self._relay_fresh(s, d, req, missing)
            for i, (material, sec) in enumerate(fresh):
                row = KeyRow(str(uuid.uuid4()), "issued", caller.sae, slave, req.size, sec, b"", now, expires, route_json)
                if i < missing:
                    issued.append((row, material))
                else:
                    row.kind, row.master, row.slave = "spare", pair[0], pair[1]
                    new_spares.append(row)
                self.store.seal(row, material)  # with its fields (kind, master, slave...: .sealing)
                batch.put_keys.append(row.values())  # a snapshot: a spare row changes when it is issued
        # -- from here on nothing can fail: apply the request to memory (undone if its commit fails, _Made)
        made = _Made(pair, [(row, (row.kind, row.master, row.slave, row.expires_at, row.blob)) for row in take],
                     new_spares, debit)
        if stocked:
            made.from_stock = not missing  # a hit: the stock (the pair's spare keys) covered the request whole
        opened = []
        for row in take:  # issued: sealed again with its new fields (.sealing)
            spares.remove(row)
            opened.append((row, self.store.reseal(row, kind="issued", master=caller.sae, slave=slave,
                                                  expires_at=expires)))
            batch.issue_keys.append((row.key_id, caller.sae, slave, expires, row.blob))
        issued = opened + issued
        if debit is not None:
            batch.links = self.planner.link_rows(self.planner.reserve(debit))
        if hasattr(self.source, "changes"):  # the device key bytes used, committed with this request
            self.source.changes(batch)
        for row, _ in issued:
            self.keys[row.key_id] = row
        batch.audit.append(self._audit(
            "issue", caller, slave, op="enc_keys", key_ids=[row.key_id for row, _ in issued], size=req.size,
            level=req.level, level_source=req.level_source, securities=[row.security for row, _ in issued],
            spare_keys_used=len(take), spare_keys_added=len(new_spares), route=summary, outcome="ok",
            **({"from_stock": True} if made.from_stock else {})))
        made.issued = [row for row, _ in issued]
        return issued, len(take), summary, batch, paths, made

    # -- ETSI 014: dec_keys ----------------------------------------------------------------
    async def dec_keys(self, caller: Caller, master: str, key_ids: list[str]) -> dict:
        """``dec_keys``: the keys named, to their slave, once; all or nothing."""
        self._check_caller(caller)
        if master not in self.sae_node:
            raise KmsError(400, f"master SAE {clip(master)} is not registered with this KME")
        self._check_writable()
        out, batch = take_keys(self.keys, self.pending, self.store, caller, master, key_ids, self.clock())
        rows = [row for row, _ in out]
        batch.audit.append(self._audit(
            "deliver", caller, master, op="dec_keys", key_ids=[row.key_id for row in rows],
            size=rows[0].size, securities=[row.security for row in rows], outcome="ok"))
        await commit_delivery(self.keys, out, batch, self._commit)  # failed: the keys fetchable again, as they were
        self._notify(batch.audit[0])
        return keys_body(out)

    # -- expiry --------------------------------------------------------------------------
    async def expire(self) -> int:
        """Delete issued and spare keys past their TTL (audited); returns how many."""
        now = self.clock()
        gone = [row for row in self.keys.values() if row.expires_at <= now and row.key_id not in self.pending]
        spare_gone = []
        for pair, rows in self.spares.items():
            old = [row for row in rows if row.expires_at <= now]
            for row in old:
                rows.remove(row)
            spare_gone += [(pair, row) for row in old]
        if not gone and not spare_gone:
            return 0
        for row in gone:
            del self.keys[row.key_id]
        recs = [{"time": round(now, 6), "event": "expire", "key_ids": [row.key_id for row in gone],
                 "spare_keys": len(spare_gone), "outcome": "deleted after key_ttl_s"}]
        try:
            await self._commit(Batch(delete_keys=[r.key_id for r in gone] + [r.key_id for _, r in spare_gone],
                                     audit=recs))
        except CommitFailed:  # still stored: back in memory, deleted by the next pass
            for row in gone:
                self.keys[row.key_id] = row
            for pair, row in spare_gone:
                self.spares[pair].append(row)
            raise
        if self.stock is not None:
            for pool in {pair for pair, _ in spare_gone}:
                self.stock.expired_rows(pool, [row for pair, row in spare_gone if pair == pool])
        self._notify(recs[0])
        return len(gone) + len(spare_gone)

    async def expiry_loop(self) -> None:
        period = max(0.05, min(30.0, self.cfg.key_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire()
                if self.cfg.link_source == "device":  # used-up device key rows after the retention (issue 31)
                    await self.committer.commit(Batch(device_prune=self.clock() - self.cfg.retention_s))
            except CommitFailed:  # kept, as stored: the next pass tries again (the failure is in the store's health)
                pass
            except Exception:  # noqa: BLE001 -- logged; the next pass tries again
                logger.exception("expiry pass failed")

    async def source_loop(self) -> None:
        """Run the key source's own loop (a device feed's fetch loops); nothing for the emulated source."""
        run = getattr(self.source, "run", None)
        if run is not None:
            await run(self)


class _Made:
    """What an ``enc_keys`` changed in memory before its commit: undone if the commit fails, completed if it works.

    Spare keys taken are put back as they were; the levels' debit is credited back (additive, so other requests'
    debits in between stay); the device key bytes read are recorded used with the next commit (never read twice);
    the keys issued leave the waiting keys; the new spare keys become visible only once committed.
    """

    def __init__(self, pair: tuple, taken: list, new_spares: list, debit) -> None:
        self.pair, self.taken, self.new_spares, self.debit = pair, taken, new_spares, debit
        self.issued: list = []
        self.from_stock: bool | None = None  # None: not a request its pair's stock serves (.stock)

    def undo(self, svc, batch: Batch) -> None:
        for row in self.issued:
            svc.keys.pop(row.key_id, None)
        for row, (kind, master, slave, expires, blob) in reversed(self.taken):
            row.kind, row.master, row.slave, row.expires_at, row.blob = kind, master, slave, expires, blob
            svc.spares[self.pair].appendleft(row)
        if self.debit is not None:
            svc.planner.release(self.debit)
        if batch.device_used and hasattr(svc.source, "requeue"):
            svc.source.requeue(batch.device_used)

    def done(self, svc) -> None:
        svc.spares[self.pair].extend(self.new_spares)
