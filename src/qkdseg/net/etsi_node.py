"""A node's ETSI GS QKD 014 service to the SAEs attached to it.

:class:`EtsiNode` (a mixin of :class:`qkdseg.net.node.NodeService`) holds
the methods the shared front end (:func:`qkdseg.server.frontend.create_app`)
calls: ``status``, ``enc_keys`` (local keys, spare keys, or a plan from the
controller and its relay), ``dec_keys`` (through
:func:`qkdseg.server.delivery.take_keys`, as ``kms serve``) and ``deny``;
with the caller's checks and the calls to the controller.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid

from ..server.delivery import commit_delivery, keys_body, take_keys
from ..server.etsi import Caller, KmsError, _b64, parse_key_request
from ..server.quota import refusal as quota_refusal
from ..server.store import Batch, KeyRow
from ..server.storehealth import CommitFailed, store_unavailable
from .messaging import _trace
from .relayrequests import REQUEST_TIMEOUT_S
from .wire import Problem


#: What an SAE is told while the replicated controllers elect a new leader (the standard's 503; no internals).
FAILING_OVER = "the network's controller is failing over; try again in a few seconds"


class EtsiNode:
    """ETSI 014 at a node (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    def _check_caller(self, caller: Caller) -> None:
        if caller.sae not in self.saes:
            raise KmsError(401, f"SAE {caller.sae!r} is not attached to this KME")

    def _check_peer(self, caller: Caller, peer: str, role: str) -> None:
        if peer not in self.registry:
            raise KmsError(400, f"{role} SAE {peer!r} is not registered in this network")
        if peer == caller.sae:
            raise KmsError(400, f"{role} SAE {peer!r} is the caller itself")

    def parse_key_request(self, number, size, ext_mandatory, ext_optional, additional):
        return parse_key_request(self.cfg, number, size, ext_mandatory, ext_optional, additional)

    async def _controller(self, method: str, path: str, **kw):
        import httpx

        try:
            r = await self.controllers.request(self._http(), method, path, **kw)  # the leader (net/leader.py)
        except httpx.HTTPError as err:
            from .tlsfail import tls_problem, warn

            problem = tls_problem(err)  # a certificate that does not match: named here and logged
            if problem is None:
                raise KmsError(503, "the network's controller is unreachable; try again later",
                               reason="controller_unavailable") from None
            warn(f"the controller ({self.controllers.current})", problem)
            raise KmsError(503, f"the network's controller is unreachable: TLS failed, {problem}; try again later",
                           reason="controller_unavailable") from None
        if r.status_code != 200:
            try:
                p = r.json()
            except ValueError:
                p = {}
            status = r.status_code if r.status_code in (400, 503) else 503
            if isinstance(p, dict) and p.get("reason") == "not_leader":  # no controller leads yet: no internals
                raise KmsError(503, FAILING_OVER, reason="not_leader")
            raise KmsError(status, p.get("message") or p.get("detail") or "the controller refused the request",
                           p.get("details"), reason=p.get("reason"))
        return r.json()

    async def status(self, caller: Caller, slave: str) -> dict:
        self._check_caller(caller)
        self._check_peer(caller, slave, "slave")
        c = self.cfg
        stock = None if self.stock is None else self.stock.view((caller.sae, slave))
        if stock is not None:  # a stocked pair: the keys in its stock, counted here (the controller is not asked)
            cap = {"target_KME_ID": f"node {self.registry[slave]}"}
            stored = stock["keys"]
        else:
            cap = await self._controller("GET", "/control/v1/status", params={"master": caller.sae, "slave": slave})
            stored = min(cap["stored_key_count"] + sum(
                1 for row in self.spares.get((caller.sae, slave), ()) if row.size == c.key_size), c.max_key_count)
        return {
            "source_KME_ID": c.kme_id, "target_KME_ID": cap.get("target_KME_ID", c.kme_id),
            "master_SAE_ID": caller.sae, "slave_SAE_ID": slave, "key_size": c.key_size,
            "stored_key_count": int(stored),
            "max_key_count": c.max_key_count,
            "max_key_per_request": c.max_key_per_request, "max_key_size": c.max_key_size,
            "min_key_size": c.min_key_size, "max_SAE_ID_count": 0,
            "status_extension": {"qkdseg_security_level": c.security_level, "qkdseg_node": str(self.id),
                                 "qkdseg_route": cap.get("route"), **({"qkdseg_stock": stock} if stock else {})},
        }

    async def enc_keys(self, caller: Caller, slave: str, req) -> dict:
        self._check_caller(caller)
        self._check_peer(caller, slave, "slave")
        if not self.store.health.writes_ok:
            raise store_unavailable()
        now = time.time()  # before any relay: the spare keys made here expire before the slave's node's copies
        stocked = self.stock is not None and self.stock.takes((caller.sae, slave), req.size, req.level)
        from_stock = False
        new_spares: list[KeyRow] = []
        local: list[KeyRow] = []
        taken = None  # spare keys of the pair used: put back if the commit fails
        route_paths = None  # a relay's paths (node ids per segment, per path), for the dashboard
        rid = None  # a relay's request id: its keys at the destination are voided if the commit fails
        hold = None  # room held here for local keys (.quota): given back once they are in self.keys
        if str(self.registry[slave]) == str(self.id):  # both SAEs here: no relay
            hold = self.quotas.reserve(self.keys.values(), (caller.sae, slave), req.number)
            keys = [(str(uuid.uuid4()), secrets.token_bytes(req.size // 8), 1.0) for _ in range(req.number)]
            summary = {"local": True, "security": 1.0}
            batch = Batch()
            for key_id, material, sec in keys:
                row = KeyRow(key_id, "issued", caller.sae, slave, req.size, sec, b"", now, now + self.cfg.key_ttl_s,
                             '{"local":true}')
                self.store.seal(row, material)
                batch.put_keys.append(row.values())
                local.append(row)
        elif (spare := await self._use_spares(caller.sae, slave, req, now)) is not None:
            keys, summary, batch, taken = spare
            from_stock = stocked  # the pair's stock (its spare keys) covered the request whole
        else:
            if stocked:  # a miss: counted now, whatever the relay on demand gives
                self.stock.missed((caller.sae, slave), req.number)
            await self._room_at(caller.sae, slave, req.number)  # max_key_count, sae_max_waiting: the slave's node
            plan = await self._controller("POST", "/control/v1/plans", json={
                "master": caller.sae, "slave": slave, "number": req.number, "size": req.size, "level": req.level,
                "level_source": req.level_source, "mandatory": req.mandatory})
            rid = plan["request_id"]
            try:
                keys, extra = await self._relayed(rid)
            except KmsError:  # failed: its keys at the slave's node voided, a lost void settled (.reconcile)
                self.check_soon((caller.sae, slave))
                raise
            summary, route_paths = plan.get("route"), plan.get("route_paths")
            new_spares = self._spare_rows(caller.sae, slave, extra, rid, now)  # spare keys of this pair, both ends
            batch = Batch(put_keys=[row.values() for row in new_spares])
        batch.audit.append({"time": round(now, 6), "event": "issue", "sae": caller.sae, "cert_sha256": caller.fingerprint,
                            "peer": slave, "op": "enc_keys", "key_ids": [k for k, _, _ in keys], "size": req.size,
                            "level": req.level, "securities": [s for _, _, s in keys], "route": summary, "outcome": "ok",
                            **({"from_stock": True} if from_stock else {}),
                            **({"route_paths": route_paths} if route_paths else {})})
        try:
            await self._commit(batch)
        except CommitFailed:  # nothing issued: as it was before the request
            if taken is not None:
                self.put_back(caller.sae, slave, taken)
            if rid is not None:  # the slave's node stored the relay's keys: void them there (their ids never left)
                self._void_at(slave, rid)
                self.check_soon((caller.sae, slave))
            raise
        finally:
            self.finishing.discard(rid)
            if hold is not None:
                self.quotas.release((caller.sae, slave), hold)
        if taken is not None:
            self.taken_out(taken)
        for row in local:  # visible to dec_keys once committed
            self.keys[row.key_id] = row
        self.spares[(caller.sae, slave)].extend(new_spares)
        if from_stock:  # a hit, counted once committed (qkdseg.server.stock)
            self.stock.served((caller.sae, slave), len(keys))
        mark = {"qkdseg_from_stock": True} if from_stock else {}
        ext = {"qkdseg_security_level": {"requested": req.level, "source": req.level_source}, "qkdseg_route": summary}
        if stocked:
            ext["qkdseg_from_stock"] = from_stock
        return {"keys": [{"key_ID": key_id, "key": _b64(m), "key_extension": {"qkdseg_security": sec, **mark}}
                         for key_id, m, sec in keys],
                "key_container_extension": ext}

    async def _room_at(self, master: str, slave: str, number: int) -> None:
        """Room for ``number`` keys of the pair at the slave's node, where they will wait (``reserve`` message,
        applied there before its 202, :meth:`hold_room`): its refusal (429 there) is this request's 503 (nothing
        relayed). A slave's node that cannot answer cannot store the keys either: the request goes on and fails
        as it did before quotas."""
        try:
            futs = self.send([{"kind": "reserve", "dst": str(self.registry[slave]), "master": master, "slave": slave,
                               "number": int(number)}], str(uuid.uuid4()))
            await asyncio.wait_for(asyncio.gather(*futs), REQUEST_TIMEOUT_S)
        except CommitFailed:
            raise store_unavailable() from None
        except Exception as exc:  # noqa: BLE001 -- refused (a quota), or it cannot answer (down, its store failed)
            if getattr(exc, "status", None) == 429 and getattr(exc, "detail", None):
                raise quota_refusal(exc.detail) from None
            # no answer or another failure: its keys could not be stored there either; the request goes on and
            # gets the answer it got before quotas (the controller plans around an excluded node, the relay fails)

    def hold_room(self, w: dict) -> None:
        """At the slave's node: a master's node's ``reserve`` of room for a relay's keys (held until they are
        stored here, :data:`qkdseg.server.quota.HOLD_S` at most); a quota refuses it with 429 (a 5xx would be
        retried by the sender)."""
        master, slave, number = str(w["master"]), str(w["slave"]), int(w["number"])
        if str(self.registry.get(master)) != str(w["src"]) or slave not in self.saes:
            raise Problem(403, "Forbidden", "only the node of the master SAE may reserve room, at the slave's node")
        if not 1 <= number <= int(self.cfg.max_key_per_request):
            raise Problem(400, "Bad Request", f"reserve: number {number} is out of range")
        try:
            self.quotas.reserve(self.keys.values(), (master, slave), number)
        except KmsError as err:
            raise Problem(429, "Too Many Requests", err.message, status_020="failed") from None

    async def _relayed(self, rid: str) -> tuple[list, list]:
        """Wait for the relay of request ``rid`` (this node its source): ``(the keys for the master, the other
        keys)``, each ``(key id, bytes, security)``; a relay that fails or times out is voided at its destination
        (:class:`KmsError` 503), so is one whose waiter is cancelled (a stop)."""
        _trace(rid, "plan returned")
        st = self._state(rid)
        if st.future is None:
            st.future = asyncio.get_running_loop().create_future()
            if st.failed is not None:  # this node's own part failed already (e.g. its key stream is used up)
                self._fail(rid, st.failed)
        self._check_done(st)
        try:
            out = await asyncio.wait_for(asyncio.shield(st.future), REQUEST_TIMEOUT_S)
            self.finishing.add(rid)  # its keys are stored here next: the caller discards it (.reconcile)
            self.note_run(rid, True)  # the run's outcome, for the controller (.suspects)
            return out
        except asyncio.TimeoutError:
            self._void(rid)
            self.note_run(rid, False, "timed out")
            raise KmsError(503, "key relay timed out (a node on the route did not answer); no key was issued",
                           reason="relay_failed") from None
        except (KmsError, asyncio.CancelledError) as exc:  # a failed relay, or a stop whose grace ran out
            self._void(rid)
            if isinstance(exc, KmsError):
                self.note_run(rid, False, exc.message)
            raise
        finally:
            self.requests.pop(rid, None)

    def _spare_rows(self, master: str, slave: str, extra: list, rid: str, now: float) -> list[KeyRow]:
        """Rows (sealed, not stored yet) of a relay's keys kept as spare keys of the pair (the destination keeps
        its copies as spare keys too); ``now``: taken before the relay began, so this end's copies expire first."""
        rows = []
        for key_id, m, sec in extra:
            row = KeyRow(key_id, "spare", master, slave, 8 * len(m), sec, b"", now, now + self.cfg.key_ttl_s,
                         json.dumps({"request_id": rid}))
            self.store.seal(row, m)
            rows.append(row)
        return rows

    def _void_at(self, slave: str, rid: str) -> None:
        """Void relay ``rid``'s keys at the slave's node (stored there; their ids never left this node)."""
        try:
            self.send([{"kind": "void", "dst": str(self.registry[slave])}], rid)
        except CommitFailed:  # not sent: those keys expire there unfetched
            pass

    async def dec_keys(self, caller: Caller, master: str, key_ids: list[str]) -> dict:
        self._check_caller(caller)
        if master not in self.registry:
            raise KmsError(400, f"master SAE {master!r} is not registered in this network")
        if not self.store.health.writes_ok:
            raise store_unavailable()
        now = time.time()
        out, batch = take_keys(self.keys, self.pending, self.store, caller, master, key_ids, now)
        rows = [row for row, _ in out]
        batch.audit.append({
            "time": round(now, 6), "event": "deliver", "sae": caller.sae, "cert_sha256": caller.fingerprint,
            "peer": master, "op": "dec_keys", "key_ids": [r.key_id for r in rows], "size": rows[0].size,
            "securities": [r.security for r in rows], "outcome": "ok"})
        await commit_delivery(self.keys, out, batch, self._commit)  # failed: the keys fetchable again, as they were
        return keys_body(out)

    async def deny(self, err: KmsError, caller: Caller | None, op: str, peer: str | None = None) -> None:
        who = caller or Caller("-", "-")
        rec = {"time": round(time.time(), 6), "event": "deny", "sae": who.sae, "cert_sha256": who.fingerprint,
               "op": op, "status": err.status, "reason": err.reason, "outcome": err.message}
        if peer is not None:
            rec["peer"] = peer
        await self._commit(Batch(audit=[rec]))
