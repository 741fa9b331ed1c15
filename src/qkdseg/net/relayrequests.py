"""A node's part of each relay request: the state machine over :mod:`qkdseg.keys.steps`.

:class:`RelayRequests` (a mixin of :class:`qkdseg.net.node.NodeService`)
starts the controller's plan part (:class:`qkdseg.keys.steps.RelayNode`),
processes the relay messages of the request, stores and confirms the keys
at the destination, checks the confirmation at the source, voids, and
records the adversary's tap (``--tap``, the compromise test only).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from ..errors import env_number
from ..keys.confirm import message as confirm_message, tag as confirm_tag
from ..keys.steps import NodePart, RelayNode
from ..server.etsi import KmsError
from ..server.store import Batch, KeyRow
from ..server.storehealth import CommitFailed
from .messaging import _dec, _enc, _trace
from .shares import after_step, linger

logger = logging.getLogger("qkdseg.net")
#: A source's wait for its keys; below the 10 s that SAE clients such as etsi-qkd-014-client wait, so that a
#: request caught by a relay's death gets the JSON 503 rather than the client's own timeout.
REQUEST_TIMEOUT_S = env_number("QKDSEG_RELAY_TIMEOUT_S", 8.0)


@dataclass
class ReqState:
    request_id: str
    relay: RelayNode | None = None
    meta: dict = field(default_factory=dict)
    early: list = field(default_factory=list)
    future: asyncio.Future | None = None
    confirm_sent: bool = False
    tag: bytes | None = None  # the destination's confirmation tag, at the source (qkdseg.keys.confirm)
    finishing: bool = False
    key_ids: list | None = None  # the destination's key ids, at the source
    created: float = field(default_factory=time.monotonic)
    failed: str | None = None  # why this node's part failed before anyone waited for the request (at the source)


def _confirmation(request_id: str, meta: dict, held: list) -> tuple[list, bytes]:
    """``(the request's keys, the confirmation tag)`` of the global keys ``held`` at one end: the last
    ``meta["mac_keys"]`` are the one-time MAC key, relayed with the keys and never kept (:mod:`qkdseg.keys.confirm`);
    ValueError when the plan left none."""
    m = int(meta.get("mac_keys", 0))
    if m < 1 or len(held) <= m:
        raise ValueError("the plan relays no confirmation key")
    keys, mac = held[:-m], b"".join(k.reveal() for _, k in held[-m:])
    return keys, confirm_tag(mac, confirm_message(request_id, [(kid, k.reveal()) for kid, k in keys]))


class RelayRequests:
    """The node's part of each request (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    def _state(self, request_id: str) -> ReqState:
        st = self.requests.get(request_id)
        if st is None:
            st = self.requests[request_id] = ReqState(request_id)
        return st

    def _record_tap(self, request_id: str, relay: RelayNode) -> None:
        if self.tap is None:
            return
        done = self._tapped.setdefault(request_id, set())
        new = [(pid, k) for pid, k in relay.pieces.items() if pid not in done]
        done.update(pid for pid, _ in new)
        rec = {"request_id": request_id, "node": self.id, "pieces": [[list(pid), _enc(k)] for pid, k in new]}
        if relay.part.position is not None:  # public: the plan's parts and the ciphertexts G xor S_j sent
            rec["keys"] = [[k.plan, k.index, [list(p) for p in k.parts], k.computational] for k in relay.part.keys]
            rec["transcript"] = [[list(kid), j, _enc(c)] for (kid, j), c in relay.transcript.items()]
        self.tap.write(json.dumps(rec) + "\n")
        self.tap.flush()

    def start_part(self, request_id: str, body: dict) -> None:
        _trace(request_id, "part")
        st = self._state(request_id)
        if st.relay is not None:
            return
        st.meta = body
        st.relay = RelayNode(NodePart.from_dict(body["part"]), self.links)
        try:
            out = st.relay.start()
        except KmsError as err:  # a device-fed link holds fewer key bytes than the plan takes: nothing is sent
            logger.warning("request %s: %s", request_id, err.message)
            self._fail(request_id, err.message)
            return
        self._record_tap(request_id, st.relay)
        try:
            self.send(out, request_id)
        except CommitFailed:  # nothing sent, the counters put back; the request failed (send)
            logger.warning("request %s: its part was not sent (the relay store failed a write)", request_id)
            return
        for msg in self.take_early(st):  # their backlog released; senders the plan does not name: dropped
            self._process(st, msg)
        after_step(self, st)
        self._check_done(st)

    def _decode(self, w: dict) -> dict:
        if w["kind"] == "pieces":
            return {"kind": "pieces", "src": w["src"], "dst": w["dst"],
                    "blocks": [(tuple(pid), int(off), _dec(c)) for pid, off, c in w["blocks"]]}
        return {"kind": "global", "src": w["src"], "dst": w["dst"], "segment": w["segment"],
                "items": [(tuple(kid), _dec(c)) for kid, c in w["items"]]}

    def _process(self, st: ReqState, w: dict) -> None:
        _trace(st.request_id, f"process {w['kind']} from {w['src']}")
        try:
            if w["kind"] in ("pieces", "global"):
                out = st.relay.on_message(self._decode(w))
                self.send(out, st.request_id)
                self._record_tap(st.request_id, st.relay)
            elif w["kind"] == "confirm":
                if st.relay.part.position != 0 or w["src"] != st.relay.part.segment_nodes[-1]:
                    raise ValueError("a confirmation not from the request's destination")
                st.tag = base64.b64decode(w["tag"], validate=True)
                st.key_ids = [(tuple(k), str(i)) for k, i in w["key_ids"]]
            self._ack(str(w["src"]), w["message_id"], "relayed")
        except Exception as exc:  # noqa: BLE001 -- a message that does not fit the plan fails its request
            logger.warning("request %s: message %s failed: %s", st.request_id, w["message_id"], type(exc).__name__)
            self._ack(str(w["src"]), w["message_id"], "failed")
            self._fail(st.request_id, "a relay message did not fit the plan")
        after_step(self, st)
        self._check_done(st)

    def _check_done(self, st: ReqState) -> None:
        relay = st.relay
        if relay is None or not relay.done or relay.part.position is None:
            return
        last = len(relay.part.segment_nodes) - 1
        if relay.part.position == last and not st.confirm_sent:
            st.confirm_sent = True
            asyncio.get_running_loop().create_task(self._store_and_confirm(st))
        if (relay.part.position == 0 and st.tag is not None and st.future is not None and not st.future.done()
                and not st.finishing):
            st.finishing = True
            asyncio.get_running_loop().create_task(self._finish(st))

    async def _store_and_confirm(self, st: ReqState) -> None:
        """At the destination: store the request's keys for the slave (encrypted, durably), then confirm.

        The keys get fresh UUIDv4 ids here; the slave can ask for them only
        once the source has checked the confirmation and given the ids to the
        master. A mismatch makes the source void them (deleted, audited).
        """
        relay, meta = st.relay, st.meta
        try:
            held, tag = _confirmation(st.request_id, meta, relay.keys())
        except ValueError:  # not stored: no confirmation, the source times out and voids
            logger.warning("request %s: its plan relays no confirmation key", st.request_id)
            if int(meta["number"]):  # the room its source reserved here (.quota)
                self.quotas.release((meta["master"], meta["slave"]), number=int(meta["number"]))
            self.requests.pop(st.request_id, None)
            return
        number, secs = int(meta["number"]), meta["securities"]
        now = time.time()
        batch = Batch()
        rows = []
        for i, (kid, k) in enumerate(held):  # the first `number` for the slave; the others spare keys of the pair
            row = KeyRow(str(uuid.uuid4()), "issued" if i < number else "spare", meta["master"], meta["slave"],
                         relay.part.block_bits, float(secs[i]), b"", now, now + float(self.cfg.key_ttl_s),
                         json.dumps({"request_id": st.request_id}))
            self.store.seal(row, k.reveal())
            rows.append((kid, row))
            batch.put_keys.append(row.values())
        batch.audit.append({"time": round(now, 6), "event": "store", "request_id": st.request_id,
                            "sae": meta["master"], "peer": meta["slave"], "key_ids": [r.key_id for _, r in rows],
                            "sharing": "threshold" if relay.part.tolerate else "xor",
                            "tolerate": relay.part.tolerate, "outcome": "stored; confirmation sent"})
        try:
            await self.committer.commit(batch)
        except CommitFailed:  # not stored: no confirmation, the source times out and voids (nothing issued)
            logger.warning("request %s: the keys could not be stored (the store failed a write)", st.request_id)
            self.requests.pop(st.request_id, None)
            return
        except Exception:  # noqa: BLE001 -- not stored: no confirmation, the source times out and voids
            logger.exception("request %s: the keys could not be stored", st.request_id)
            return
        finally:  # the room its source reserved here (.quota): the keys are counted in self.keys from now on
            if number:
                self.quotas.release((meta["master"], meta["slave"]), number=number)
        for _, row in rows:
            (self.keys if row.kind == "issued" else self.held_spares)[row.key_id] = row
        self.request_keys[st.request_id] = [row.key_id for _, row in rows]
        self.request_keys_source[st.request_id] = relay.part.segment_nodes[0]
        try:  # not sent: the source times out and voids the keys stored here
            self.send([{"kind": "confirm", "dst": relay.part.segment_nodes[0], "tag": base64.b64encode(tag).decode(),
                        "key_ids": [[list(kid), row.key_id] for kid, row in rows]}], st.request_id)
        except CommitFailed:
            logger.warning("request %s: the confirmation was not sent (the relay store failed a write)", st.request_id)
        linger(self, st)  # popped (threshold sharing: once the shares still on their way are checked, .shares)

    async def _finish(self, st: ReqState) -> None:
        """At the source: key confirmation; the keys (stored at the destination already) go to the master."""
        relay, meta = st.relay, st.meta
        try:  # one tag over all the keys, under the request's one-time MAC key (qkdseg.keys.confirm)
            mine, tag = _confirmation(st.request_id, meta, relay.keys())
            ok = hmac.compare_digest(tag, st.tag)
        except ValueError:
            mine, ok = [], False
        number, secs = int(meta["number"]), meta["securities"]
        ids = dict(st.key_ids or [])
        chosen = [(ids.get(kid), k, float(secs[i])) for i, (kid, k) in enumerate(mine)]
        ok = ok and len(chosen) >= number and all(key_id for key_id, _, _ in chosen)
        if not ok:
            try:
                self.send([{"kind": "void", "dst": relay.part.segment_nodes[-1]}], st.request_id)
                await self.committer.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "void",
                                                          "request_id": st.request_id,
                                                          "outcome": "confirmation failed"}]))
            except CommitFailed:  # not voided (or not audited) here: the destination's keys expire unfetched
                logger.warning("request %s: the void was not sent or not audited (the store failed a write)",
                               st.request_id)
            self._fail(st.request_id, "key confirmation failed (the two ends' keys differ); the keys were voided")
            return
        _trace(st.request_id, "confirmed")
        if not st.future.done():  # the master's keys, then the spare keys (kept here and at the destination)
            st.future.set_result(([(key_id, k.reveal(), sec) for key_id, k, sec in chosen[:number]],
                                  [(key_id, k.reveal(), sec) for key_id, k, sec in chosen[number:]]))

    async def void_keys(self, request_id: str) -> None:
        """At the destination: delete a voided request's keys (never delivered), audited. A failed commit puts
        them back as they were (stored; their master never got their ids) and raises :class:`CommitFailed`."""
        self.requests.pop(request_id, None)
        stored = self.request_keys.pop(request_id, [])
        ids = [k for k in stored if k in self.keys or k in self.held_spares]
        gone = {k: (self.keys.pop(k, None), self.held_spares.pop(k, None)) for k in ids}
        try:
            await self.committer.commit(Batch(delete_keys=ids, audit=[{
                "time": round(time.time(), 6), "event": "void", "request_id": request_id, "key_ids": ids,
                "outcome": "voided by the source"}]))
        except CommitFailed:
            for k, (issued, spare) in gone.items():
                if issued is not None:
                    self.keys[k] = issued
                if spare is not None:
                    self.held_spares[k] = spare
            self.request_keys[request_id] = stored
            raise

    def _void(self, request_id: str) -> None:
        st = self.requests.get(request_id)
        if st is not None and st.relay is not None:
            try:
                self.send([{"kind": "void", "dst": st.relay.part.segment_nodes[-1]}], request_id)
            except CommitFailed:  # not sent: the destination's keys expire unfetched (their ids never left)
                logger.warning("request %s: the void was not sent (the relay store failed a write)", request_id)
