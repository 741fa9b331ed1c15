"""The key service: an ETSI GS QKD 014 request -> route -> relay -> stored keys.

:class:`KeyService` is what the HTTP adapter (:mod:`.app`) calls. It holds
the network, the SAE registry, every link's pool level and the keys waiting
for their slave, and it changes them only on the event loop's thread, one
request at a time, so a request's checks and its debit are atomic. Each
request's changes are written to SQLite in one transaction (group commit)
before it is answered.

A key request (``enc_keys``) for ``number`` keys of ``size`` bits at level
``epsilon`` (docs/kms.md):

1. **Spare keys first.** Keys relayed earlier between the same two SAEs'
   nodes, not yet issued, with the same size and a security of at least
   ``epsilon``, are issued first.
2. **Route.** The pools are refilled to now (:class:`.source.LinkLevels`).
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

import numpy as np

from ..api import route_indices
from ..errors import QkdsegError
from ..keys import KeyStore, relay
from ..keys.levels import with_levels
from ..network import Network
from ..reconstruction import reconstruct
from ..routing.registry import get_algorithm
from .config import KmsConfig
from .logs import REQUEST_ID
from .source import EmulatedKeySource, KeySource, LinkLevels
from .store import Batch, GroupCommit, KeyRow, Store

logger = logging.getLogger("qkdseg.kms")

from .etsi import (  # noqa: F401  (re-exported: the ETSI 014 vocabulary lives in .etsi, shared with the nodes)
    CLIP, Caller, DEFAULT_REASONS, EXTENSION_LEVEL, KeyRequest, KmsError, MAX_DETAILS, MAX_MESSAGE, MSG_EXT_UNMET, MSG_EXT_UNSUPPORTED, MSG_NOT_FOUND, MSG_SIZE_8, _b64, clip, clip_names, parse_key_request,
)


class KeyService:
    """The state and the operations of one key management entity.

    Parameters
    ----------
    cfg : KmsConfig
    network : Network
    store : Store
        The database (levels, keys and the audit chain are loaded from it).
    source : KeySource, optional
        Default: :class:`.source.EmulatedKeySource` at the links' ``rate_bps``.
    clock : callable
        Unix time in seconds (a test may pass its own).
    """

    def __init__(self, cfg: KmsConfig, network: Network, store: Store, source: KeySource | None = None,
                 clock=time.time) -> None:
        self.cfg = cfg
        self.network = network
        self.arrays = network.arrays
        self.store = store
        self.clock = clock
        if source is None and cfg.link_source == "device":
            from .devicesource import device_source

            source = device_source(cfg, network, store, self.arrays.pool_bits)
        self.source = source or EmulatedKeySource(network, cfg.default_rate_bps)
        self.keystore = KeyStore(network, source=self.source.read)
        self.algorithm = cfg.algorithm
        get_algorithm(self.algorithm)
        self.sae_node: dict[str, int] = {}
        for sae, node in cfg.saes.items():
            nid = network.resolve(str(node))
            self.sae_node[sae] = self.arrays.index[nid]
        self.committer = GroupCommit(store)
        #: Called with each audited event after it is committed (``event``: issue, deliver, deny, expire);
        #: an ``issue`` event also carries ``route_paths`` (node ids, per segment, per path). No key bytes.
        self.observers: list = []
        self._load()

    # -- start-up ------------------------------------------------------------------
    def _load(self) -> None:
        a = self.arrays
        now = self.clock()
        cap = a.pool_bits.astype(np.int64)
        level, consumed = cap.copy(), np.zeros_like(cap)
        since = np.zeros(a.n_links)  # seconds each stored level is old
        ids = a.node_ids
        by_ends = {frozenset((str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]))): k for k in range(a.n_links)}
        self.changes = self._network_changes()
        rows, moved = {}, False
        for k_old, (u, v, c, lv, t) in sorted(self.store.load_links().items()):
            k = by_ends.get(frozenset((u, v)))
            if k is None:
                if c > 0:
                    raise QkdsegError(f"{self.store.db_path}: link ({u}, {v}) has consumed {c} pad bits but is not in "
                                      f"network {self.network.name!r} (the network changed since the database was "
                                      "made: removing a used link would lose its consumed offset, so its pad bits "
                                      "could be used twice); put the link back")
                moved = True
                continue
            moved |= k != k_old
            rows[k] = (str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]), c, lv, t)
            consumed[k], level[k], since[k] = c, min(lv, cap[k]), max(0.0, now - t)
        if moved:
            self.store.renumber_links(rows)
        self.store.set_meta("network", self._snapshot)  # remembered once the start is accepted
        if hasattr(self.source, "initial_levels"):  # a device feed: the level is the key held, whatever was stored
            level = self.source.initial_levels()
            since[:] = 0.0
        self.levels = LinkLevels(cap, level, consumed, t=now)
        self.levels.refill(self.source.produced(since), t=now)  # the links kept producing while the service was down
        self.keys: dict[str, KeyRow] = {}
        self.spares: dict[tuple, deque[KeyRow]] = defaultdict(deque)
        for row in self.store.load_keys():
            if row.kind == "issued":
                self.keys[row.key_id] = row
            else:
                self.spares[(row.master, row.slave)].append(row)
        self.pending: set[str] = set()  # issued, not yet committed: invisible to dec_keys

    async def _commit(self, batch: Batch) -> None:
        """Commit ``batch``; a failed write (a full disk) is the same 503 for this request as for every later one."""
        try:
            await self.committer.commit(batch)
        except Exception as err:  # noqa: BLE001 -- the store refuses every write from now on (GroupCommit.failed)
            if not getattr(self, "_store_failure_logged", False):
                self._store_failure_logged = True
                logger.error("the key store failed (%s: %s); every request is refused until a restart",
                             type(err).__name__, err)
            raise KmsError(503, "key store unavailable; restart the service", reason="store_failed") from None

    def warm(self) -> None:
        """Route once between two SAEs' nodes (no debit), so numba's kernels are compiled before the first request."""
        nodes = sorted(set(self.sae_node.values()))
        if len(nodes) >= 2:
            try:
                self._route_and_plan(nodes[0], nodes[-1], self.cfg.key_size, self.cfg.security_level,
                                     self.levels.capacity)
            except Exception:  # noqa: BLE001 -- a warm-up only; a request reports its own error
                logger.debug("warm-up route failed", exc_info=True)

    def _network_snapshot(self) -> dict:
        a = self.arrays
        ids = a.node_ids
        return {"nodes": {str(ids[i]): [bool(a.trusted[i]), float(a.p[i])] for i in range(len(ids))},
                "links": {f"{ids[a.edge_u[k]]}|{ids[a.edge_v[k]]}": int(a.pool_bits[k]) for k in range(a.n_links)}}

    def _network_changes(self) -> list[str]:
        """What changed in the network since the last start (each a line; start-up reports them), and remember it."""
        import json

        now = self._network_snapshot()
        raw = self.store.meta("network")
        self._snapshot = json.dumps(now, sort_keys=True)
        if raw is None:
            return []
        before = json.loads(raw)
        out = []

        def norm(links):
            return {frozenset(k.split("|", 1)): v for k, v in links.items()}

        for node in sorted(set(before["nodes"]) | set(now["nodes"])):
            b, n = before["nodes"].get(node), now["nodes"].get(node)
            if b is None:
                out.append(f"network changed: node {node} added")
            elif n is None:
                out.append(f"network changed: node {node} removed")
            elif b != n:
                what = []
                if b[0] != n[0]:
                    what.append(f"trusted {b[0]} -> {n[0]}")
                if b[1] != n[1]:
                    what.append(f"p {b[1]} -> {n[1]}")
                out.append(f"network changed: node {node}: {', '.join(what)}")
        bl, nl = norm(before["links"]), norm(now["links"])
        for ends in sorted(set(bl) | set(nl), key=lambda e: sorted(e)):
            name = "(" + ", ".join(sorted(ends)) + ")"
            if ends not in bl:
                out.append(f"network changed: link {name} added")
            elif ends not in nl:
                out.append(f"network changed: link {name} removed")
            elif bl[ends] != nl[ends]:
                out.append(f"network changed: link {name}: pool_bits {bl[ends]} -> {nl[ends]}")
        return out

    def _notify(self, rec: dict, **extra) -> None:
        if not self.observers:
            return
        event = {**rec, **extra} if extra else rec
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 -- an observer (the dashboard) never breaks a request
                logger.exception("an observer of the key service failed")

    def refill(self, now: float) -> None:
        if now > self.levels.t:
            self.levels.refill(self.source.produced(now - self.levels.t), t=now)
        held = getattr(self.source, "held_bits", None)
        if held is not None:  # a device feed: never route on more than the bytes held
            np.minimum(self.levels.level, held, out=self.levels.level)

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

    def _link_rows(self, ks) -> dict:
        a, lv = self.arrays, self.levels
        ids = a.node_ids
        return {int(k): (str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]), int(lv.consumed[k]), int(lv.level[k]), lv.t)
                for k in ks}

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
        per_relay, relays, summary = self._capacity(s, d, size, self.cfg.security_level)
        stored = min(spare + per_relay * relays, self.cfg.max_key_count)
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
            },
        }

    def _capacity(self, s: int, d: int, size: int, level: float) -> tuple[int, int, dict | None]:
        """Keys per relay at ``level`` on the route a request would take now, and how many relays the pools afford."""
        if s == d:
            return 1, self.cfg.max_key_count, None
        r, rec = self._route_and_plan(s, d, size, level, self.levels.level)
        if r is None or rec is None or rec.n_keys == 0:
            return 0, 0, None
        bits = self._route_bits(r, size)
        links = np.flatnonzero(bits)
        relays = int((self.levels.level[links] // bits[links]).min()) if links.size else 0
        return rec.n_keys, relays, self._summary(r, rec, relays=None)

    # -- ETSI 014: enc_keys ---------------------------------------------------------------
    def parse_key_request(self, number: Any, size: Any, ext_mandatory: Any, ext_optional: Any,
                          additional: Any) -> KeyRequest:
        """Check a key request's fields (Table 10); :class:`KmsError` 400 names the one at fault."""
        return parse_key_request(self.cfg, number, size, ext_mandatory, ext_optional, additional)

    def _pair(self, a: str, b: str) -> tuple:
        return (a, b) if a <= b else (b, a)

    def _route_and_plan(self, s: int, d: int, size: int, level: float, pool_bits: np.ndarray):
        opts = dict(self.cfg.algorithm_options)
        algo_options = get_algorithm(self.algorithm).options
        if "seed" in algo_options:  # a seeded algorithm (msp): a fresh seed, recorded
            opts["seed"] = secrets.randbits(32)
        if "epsilon" in algo_options:  # smr-level: each request routes to its own level
            opts["epsilon"] = level
        r = route_indices(with_levels(self.arrays, pool_bits), s, d, self.algorithm, block_bits=size, **opts)
        if r.blocked:
            return None, None
        chain = [self.arrays.index[v] for v in r.segment_nodes[1:-1]]
        rec = reconstruct(
            self.cfg.reconstruction, self.arrays.p, [[list(p) for p in seg] for seg in r.index_paths], chain, level, size
        )
        return r, rec

    def _route_links(self, r) -> np.ndarray:
        a = self.arrays
        return np.array([a.edge_index(x, y) for seg in r.index_paths for p in seg for x, y in zip(p, p[1:])],
                        dtype=np.int64)

    def _summary(self, r, rec, relays: int | None) -> dict:
        out = {
            "algorithm": self.algorithm,
            "segment_nodes": [str(v) for v in r.segment_nodes],
            "paths": len(r.paths),
            "hops": r.hops,
            "security": r.security,
            "reconstruction": self.cfg.reconstruction,
            "keys_per_relay": rec.n_keys,
        }
        if "seed" in r.options:
            out["seed"] = r.options["seed"]
        if relays is not None:
            out["relays"] = relays
            out["consumed_bits"] = relays * r.consumed_bits
            if r.level is not None:  # smr-level: the bits the full route over the same chain would have taken more
                out["saved_bits"] = relays * r.level["saved_bits"]
        return out

    def _plan_relays(self, s: int, d: int, req: KeyRequest, missing: int):
        """The route, its plan and the number of relays to make ``missing`` keys; KmsError when impossible."""
        relays = 1
        for _ in range(4):
            pool = self.levels.level if relays == 1 else self.levels.level // relays
            r, rec = self._route_and_plan(s, d, req.size, req.level, pool)
            if r is None:
                raise KmsError(503, f"not enough key material: no route between the SAEs' nodes has {relays * req.size} "
                                    "bits on every link now; nothing was debited", reason="no_key_material")
            if rec.n_keys == 0:
                best = r.security
                r_full, ever = self._route_and_plan(s, d, req.size, req.level, self.levels.capacity)
                if ever is None or ever.n_keys == 0:  # not even with every pool full
                    best = r_full.security if r_full is not None else best
                    never = (f"{EXTENSION_LEVEL}={req.level} can never be met between these SAEs on this network: "
                             f"the best route's exact security is {best:.6f} even with full pools")
                    if req.mandatory:
                        raise KmsError(400, MSG_EXT_UNMET, [{"extension_mandatory_unmet": never}], reason="level_unmet")
                    raise KmsError(503, f"security level {req.level} can never be met between these SAEs on this "
                                        f"network: the best route's exact security is {best:.6f} even with full "
                                        "pools; nothing was debited", reason="level_unmet")
                if req.mandatory:
                    raise KmsError(400, MSG_EXT_UNMET, [{"extension_mandatory_unmet":
                                   f"{EXTENSION_LEVEL}={req.level} cannot be met now: the best route's exact "
                                   f"security is {best:.6f}"}], reason="level_unmet")
                raise KmsError(503, f"security level {req.level} cannot be met now: the best route's exact security is "
                                    f"{best:.6f}; nothing was debited", reason="level_unmet")
            need = -(-missing // rec.n_keys)
            if need <= relays:
                bits = self._route_bits(r, need * req.size)
                if np.all(self.levels.level >= bits):
                    return r, rec, need, bits
            relays = max(need, relays + 1)
        raise KmsError(503, "not enough key material for the keys requested; nothing was debited",
                       reason="no_key_material")

    def _route_bits(self, r, bits_per_use: int) -> np.ndarray:
        """Bits each link pays for a route (``bits_per_use`` per path through it), network link order."""
        return np.bincount(self._route_links(r), minlength=self.arrays.n_links).astype(np.int64) * bits_per_use

    async def enc_keys(self, caller: Caller, slave: str, req: KeyRequest) -> dict:
        """``enc_keys``: ``req.number`` fresh keys for the master, their copies kept for ``slave``."""
        self._check_caller(caller)
        d = self._check_peer(caller, slave, "slave")
        if self.committer.failed is not None:
            raise KmsError(503, "key store unavailable; restart the service", reason="store_failed")
        s = self.sae_node[caller.sae]
        now = self.clock()
        asked = {"level": req.level, "level_source": req.level_source, "size": req.size, "number": req.number}
        if len(self.keys) + req.number > self.cfg.max_key_count:
            err = KmsError(503, f"max_key_count={self.cfg.max_key_count} keys are waiting for their slaves; "
                                "try again later", reason="store_full")
            err.request = asked
            raise err
        level_note = None
        try:
            try:
                keys, spares_used, summary, batch, paths = self._make_keys(caller, slave, s, d, req, now)
            except KmsError as err:
                if req.level_source != "extension_optional" or err.status not in (400, 503):
                    raise
                # an optional level that cannot be met falls back to the default level
                fallback = dataclasses.replace(req, level=self.cfg.security_level, level_source="default")
                keys, spares_used, summary, batch, paths = self._make_keys(caller, slave, s, d, fallback, now)
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
        finally:
            self.pending.difference_update(ids)
        self._notify(batch.audit[-1], route_paths=paths, requested=asked, fallback=level_note)
        level_ext = {"requested": req.level, "source": req.level_source}
        if level_note:
            level_ext["fallback"] = level_note
        ext: dict[str, Any] = {"qkdseg_security_level": level_ext, "qkdseg_route": summary,
                               "qkdseg_spare_keys_used": spares_used}
        if req.ignored:
            ext["qkdseg_ignored_extensions"] = list(req.ignored)
        return {
            "keys": [
                {"key_ID": row.key_id, "key": _b64(material), "key_extension": {"qkdseg_security": row.security}}
                for row, material in keys
            ],
            "key_container_extension": ext,
        }

    def _make_keys(self, caller: Caller, slave: str, s: int, d: int, req: KeyRequest, now: float):
        """Steps 1-5 of the module docstring, in memory; returns the keys and the batch to commit."""
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
                r, rec, relays, bits = self._plan_relays(s, d, req, missing)
                links = np.flatnonzero(bits)
                # the byte pools hold at least what the levels say on the route's links
                for k in links.tolist():
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
                summary = self._summary(r, rec, relays)
                route_json = _json(summary)
                paths = [[[str(v) for v in p] for p in seg.paths] for seg in r.segments] if self.observers else None
                debit = (links, bits[links])
            for i, (material, sec) in enumerate(fresh):
                row = KeyRow(str(uuid.uuid4()), "issued", caller.sae, slave, req.size, sec, b"", now, expires, route_json)
                self.store.seal(row, material)
                if i < missing:
                    issued.append((row, material))
                else:
                    row.kind, row.master, row.slave = "spare", pair[0], pair[1]
                    new_spares.append(row)
                batch.put_keys.append(row.values())  # a snapshot: a spare row changes when it is issued
        # -- from here on nothing can fail: apply the request to memory
        for row in take:
            spares.remove(row)
            row.kind, row.master, row.slave, row.expires_at = "issued", caller.sae, slave, expires
            batch.issue_keys.append((row.key_id, caller.sae, slave, expires))
        issued = [(row, self.store.open(row)) for row in take] + issued
        spares.extend(new_spares)
        if debit is not None:
            self.levels.debit(*debit)
            batch.links = self._link_rows(debit[0])
        if hasattr(self.source, "changes"):  # the device key bytes used, committed with this request
            self.source.changes(batch)
        for row, _ in issued:
            self.keys[row.key_id] = row
        batch.audit.append(self._audit(
            "issue", caller, slave, op="enc_keys", key_ids=[row.key_id for row, _ in issued], size=req.size,
            level=req.level, level_source=req.level_source, securities=[row.security for row, _ in issued],
            spare_keys_used=len(take), spare_keys_added=len(new_spares), route=summary, outcome="ok",
        ))
        return issued, len(take), summary, batch, paths

    # -- ETSI 014: dec_keys ----------------------------------------------------------------
    async def dec_keys(self, caller: Caller, master: str, key_ids: list[str]) -> dict:
        """``dec_keys``: the keys named, to their slave, once; all or nothing."""
        self._check_caller(caller)
        if master not in self.sae_node:
            raise KmsError(400, f"master SAE {clip(master)} is not registered with this KME")
        if self.committer.failed is not None:
            raise KmsError(503, "key store unavailable; restart the service", reason="store_failed")
        if not key_ids:
            raise KmsError(400, "key_IDs must name at least one key")
        if len(set(key_ids)) != len(key_ids):
            raise KmsError(400, "key_IDs names a key twice")
        now = self.clock()
        rows = []
        missing = False
        for kid in key_ids:
            row = self.keys.get(kid)
            if row is None or kid in self.pending or row.expires_at <= now:
                missing = True
                continue
            rows.append(row)
        # section 5.4: 401 if the caller was not the slave of a key it names (or the path names another master)
        if any(row.slave != caller.sae or row.master != master for row in rows):
            raise KmsError(401, "the caller is not the slave SAE of one or more keys requested "
                                "(or the path does not name their master SAE)")
        if missing:
            raise KmsError(400, MSG_NOT_FOUND, reason="key_not_found")
        out = [(row, self.store.open(row)) for row in rows]
        for row in rows:
            del self.keys[row.key_id]
        batch = Batch(delete_keys=[row.key_id for row in rows], audit=[self._audit(
            "deliver", caller, master, op="dec_keys", key_ids=[row.key_id for row in rows],
            size=rows[0].size, securities=[row.security for row in rows], outcome="ok")])
        await self._commit(batch)
        self._notify(batch.audit[0])
        return {"keys": [{"key_ID": row.key_id, "key": _b64(m), "key_extension": {"qkdseg_security": row.security}}
                         for row, m in out]}

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
            spare_gone += old
        if not gone and not spare_gone:
            return 0
        for row in gone:
            del self.keys[row.key_id]
        recs = [{"time": round(now, 6), "event": "expire", "key_ids": [row.key_id for row in gone],
                 "spare_keys": len(spare_gone), "outcome": "deleted after key_ttl_s"}]
        await self._commit(Batch(delete_keys=[r.key_id for r in gone + spare_gone], audit=recs))
        self._notify(recs[0])
        return len(gone) + len(spare_gone)

    async def expiry_loop(self) -> None:
        period = max(0.05, min(30.0, self.cfg.key_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire()
            except Exception:  # noqa: BLE001 -- logged; the store refuses further writes if it failed
                logger.exception("expiry pass failed")

    async def source_loop(self) -> None:
        """Run the key source's own loop (a device feed's fetch loops); nothing for the emulated source."""
        run = getattr(self.source, "run", None)
        if run is not None:
            await run(self)

    def close(self) -> None:
        self.committer.close()


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
