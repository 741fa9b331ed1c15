"""A node's relay messages: encoded, stored as intents, sent in order, acknowledged.

:class:`Messaging` is the part of :class:`qkdseg.net.node.NodeService` that
sends relay messages to other nodes (one ordered, batched queue per
destination), records their outcomes in the outbox, and gathers the
acknowledgements of the messages it processed (ETSI GS QKD 020's statuses);
with the wire encoding of key material (:func:`_enc`, :func:`_dec`) and the
step trace (``QKDSEG_NET_TRACE=1``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
import uuid

from ..errors import env_number
from ..keys.material import KeyMaterial
from ..server.etsi import KmsError
from .limits import MAX_BATCH, RELAY_MAX_BODY
from .shares import message_failed
from ..server.storehealth import CommitFailed

_TRACE = os.environ.get("QKDSEG_NET_TRACE") == "1"
#: Seconds a node gathers acknowledgements (and inbox statuses) before it sends (writes) them together.
ACK_S = env_number("QKDSEG_ACK_S", 1.0)


def _trace(request_id: str, what: str) -> None:
    """With QKDSEG_NET_TRACE=1: one line per step on standard error (no key material), for profiling."""
    if _TRACE:
        print(f"trace {time.time():.4f} {request_id[:8]} {what}", file=sys.stderr, flush=True)


def _json(item: tuple) -> tuple:
    """A queued message with its JSON; ``sent_at`` (the sender's clock, .retention) set when its first POST is
    built (a retry carries the same)."""
    w, fut = item
    w.setdefault("sent_at", round(time.time(), 3))
    return w, fut, json.dumps(w, separators=(",", ":"))


def _enc(km: KeyMaterial) -> str:
    return base64.b64encode(km.reveal()).decode()


def _dec(s: str) -> KeyMaterial:
    return KeyMaterial(base64.b64decode(s))


class MessageFailed(RuntimeError):
    """A relay message not accepted: ``status`` is the receiver's answer for it (403, 409...), None when no answer
    came (the receiver down, the connection lost: it may have been stored there)."""

    def __init__(self, text: str, status: int | None, detail: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.detail = detail  # the receiver's detail (a quota's message: qkdseg.server.quota)


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class Messaging:
    """Sending relay messages and acknowledging received ones (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    def _http(self):
        if self.client is None:
            from .wire import async_client

            self.client = async_client(self.ctx_client, 64, expect=self._expected_role)
        return self.client

    def _expected_role(self, host: str, port: int):
        """The role whose certificate must answer at ``host:port``: the controller's at a controller's address, node
        ``X``'s at node X's (a neighbour's fault proxy included); ``None`` elsewhere (.wire.async_client)."""
        from .wire import Role

        addr = f"{host}:{port}"
        if addr in self.controllers.addrs:
            return Role("controller", None)
        ids = getattr(self, "_ids_by_address", None)
        if ids is None:
            ids = self._ids_by_address = {a: str(n) for n, a in self.addresses.items()}
        return Role("node", ids[addr]) if addr in ids else None

    def _encode(self, msg: dict, request_id: str) -> dict:
        out = {"message_id": str(uuid.uuid4()), "request_id": request_id, "kind": msg["kind"], "src": self.id,
               "dst": msg["dst"]}
        if msg["kind"] == "pieces":
            out["blocks"] = [[list(pid), off, _enc(c)] for pid, off, c in msg["blocks"]]
        elif msg["kind"] == "global":
            out["segment"] = msg["segment"]
            out["items"] = [[list(kid), _enc(c)] for kid, c in msg["items"]]
        else:
            out.update({k: v for k, v in msg.items() if k not in ("kind", "dst")})
        return out

    def send(self, msgs: list[dict], request_id: str) -> list[asyncio.Future]:
        """Store the intents (and the offsets they took) in one transaction, then queue them, per destination in order.

        When that write fails nothing is sent: the link counters go back to the offsets committed (the pads taken
        for these messages never left the node), the request fails, and :class:`CommitFailed` is raised."""
        if not msgs:
            return []
        wire = [self._encode(m, request_id) for m in msgs]
        now = time.time()
        try:
            self.relaydb.write(dict(self._dirty), outbox=[(w["message_id"], request_id, str(w["dst"]), w["kind"],
                                                           "intent", now) for w in wire])
        except CommitFailed:
            for key in self._dirty:
                self.offsets[key] = self.relaydb.durable.get(key, 0)
            self._dirty.clear()
            self._fail(request_id, "this node's relay store failed a write")
            raise
        self._dirty.clear()
        loop = asyncio.get_running_loop()
        futs = []
        for w in wire:
            fut = loop.create_future()
            # most callers never await their messages (a failure fails the request through _fail): retrieve the
            # outcome here so that asyncio does not log "Future exception was never retrieved"
            fut.add_done_callback(_retrieved)
            dst = str(w["dst"])
            q = self.queues.get(dst)
            if q is None:
                q = self.queues[dst] = asyncio.Queue()
                loop.create_task(self._sender(dst, q))
            q.put_nowait((w, fut))
            futs.append(fut)
        return futs

    async def _sender(self, dst: str, q: asyncio.Queue) -> None:
        """One destination's messages, in order (the receiver checks offsets in order), batched.

        While one POST is in flight the messages queued for the same node
        (of any request) wait; the next POST carries all of them (at most
        1,024, 020's array limit, and at most the receiver's body limit,
        :data:`.limits.RELAY_MAX_BODY`: the rest go in the next POST): one
        HTTPS message per link serves every concurrent request on it.
        """
        url = f"https://{self.addresses[dst]}/relay/v1/messages"
        carry: list = []  # (message, future, its JSON) queued for the next POST
        while True:
            if not carry:
                carry.append(_json(await q.get()))
            while not q.empty() and len(carry) < MAX_BATCH:
                carry.append(_json(q.get_nowait()))
            n, size = 1, len(carry[0][2]) + 20
            while n < len(carry) and size + len(carry[n][2]) + 1 <= RELAY_MAX_BODY:  # no POST over the body limit
                size += len(carry[n][2]) + 1
                n += 1
            chosen, carry = carry[:n], carry[n:]
            if self.hostile is not None:  # TEST ONLY: the hostile-node harness drops or corrupts (net/hostile.py)
                chosen = [_json(x) for x in self.hostile.outgoing([(w, fut) for w, fut, _ in chosen])]
                if not chosen:
                    continue
            batch = [(w, fut) for w, fut, _ in chosen]
            body = '{"messages":[' + ",".join(j for _, _, j in chosen) + "]}"
            results: dict = {}
            err, answered = None, False
            for attempt in range(3):  # the same message ids each time: the receiver keeps one copy of each
                try:
                    r = await self._http().post(url, content=body, headers={"content-type": "application/json"})
                except Exception as exc:  # noqa: BLE001 -- a transport error: the messages may have arrived; retry
                    from .tlsfail import report

                    err = report(f"node {dst} ({self.addresses[dst]})", exc)  # a certificate problem: named, logged
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                answered = True
                try:
                    results = {x["message_id"]: x for x in r.json().get("results", [])}
                except ValueError:
                    results = {}
                err = None if r.status_code == 202 else f"{r.status_code} {r.text[:200]}"
                if r.status_code < 500:
                    break
                await asyncio.sleep(0.05 * (attempt + 1))
            self.stats["posts"] += 1
            self.linkhealth.record(self, dst, answered)  # no answer at all: the link is reported down
            outcomes = []
            for w, fut in batch:
                res = results.get(w["message_id"])
                ok = res is not None and res.get("status") == 202
                why = None if ok else (res.get("detail") if res else err or "no answer")
                _trace(w["request_id"], f"sent {w['kind']} to {dst}: {why or 202} (batch of {len(batch)})")
                outcomes.append((w["message_id"], "accepted" if ok else "failed"))
                if not fut.done():
                    if ok:
                        fut.set_result(None)
                    else:
                        fut.set_exception(MessageFailed(f"relay message to node {dst} failed: {why}",
                                                        res.get("status") if res else None,
                                                        res.get("detail") if res else None))
                if not ok:  # fails its request (a threshold run's pieces: their path only, .shares)
                    message_failed(self, w, f"a relay message to node {dst} failed ({why})")
            self.relaydb.statuses("outbox", [(st_, mid) for mid, st_ in outcomes])
            if self.on_relay is not None:
                self.on_relay(dst, [(w["kind"], st_ == "accepted") for (w, _), (_, st_) in zip(batch, outcomes)])

    def _ack(self, src: str, message_id: str, status: str) -> None:
        """Record a processed message's status (020's statuses) in the inbox and queue its acknowledgement to
        ``src``: both go in batches, the inbox rows in one transaction and the acks in one POST per node every
        ``ACK_S`` seconds (they are off a request's critical path: the 202 already told the sender it is stored)."""
        q = self._acks.setdefault(src, [])
        q.append({"message_id": message_id, "status": status})
        if len(q) == 1:
            asyncio.get_running_loop().call_later(ACK_S, lambda: asyncio.ensure_future(self._flush_acks(src)))

    async def _flush_acks(self, src: str) -> None:
        acks, self._acks[src] = self._acks.get(src, []), []
        if acks:
            self.relaydb.statuses("inbox", [(a["status"], a["message_id"]) for a in acks])
            with contextlib.suppress(Exception):
                await self._http().post(f"https://{self.addresses[src]}/relay/v1/ack", json={"acks": acks})

    def _fail(self, request_id: str, why: str) -> None:
        st = self.requests.get(request_id)
        if st is None:
            return
        if st.future is None:  # the source's own part failed before its enc_keys waits (the controller sends the
            st.failed = st.failed or why  # parts first): enc_keys answers at once with this reason
        elif not st.future.done():
            st.future.set_exception(KmsError(503, f"key relay failed: {why}; no key was issued",
                                             reason="relay_failed"))
