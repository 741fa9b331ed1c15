"""``qkdseg node serve NODEDIR``: one node's KME (docs/network.md).

One TLS 1.3 listener, told apart by path and by the caller's certificate role:

- ``/api/v1/keys/...``: ETSI GS QKD 014 to the SAEs attached to this node,
  the same front end as ``kms serve`` (:func:`qkdseg.kms.app.create_app`);
- ``/relay/v1/messages``: relay messages from other nodes (pieces only from
  neighbours); accepted with 202 once stored, idempotent by message id;
- ``/relay/v1/ack``: the receiver's acknowledgement (020's statuses);
- ``/relay/v1/links``: this node's offsets (after a crash a neighbour skips
  forward to the larger);
- ``/control/v1/parts``, ``/control/v1/void``: the controller's plan parts;
- it reports its links (ETSI GS QKD 015's ``qkd_node``, a subset) to the
  controller's ``/control/v1/links`` after its start and every
  ``QKDSEG_REPORT_S`` seconds (default 5);
- ``/health`` (with ``device_links`` on a device-fed node: each link's device state, keys fetched
  and skipped, bits held).

A node never routes: this module imports no routing kernel, no numba and
no scipy. It runs its part of each request with the node-local relay steps
of :mod:`qkdseg.keys.steps`, the same steps ``kms serve`` runs in one process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import secrets
import sqlite3
import sys
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from starlette.requests import Request
from starlette.routing import Route

from ..errors import InvalidRequest
from ..keys.material import KeyMaterial
from ..keys.steps import NodePart, RelayNode
from ..server.etsi import MSG_NOT_FOUND, Caller, KmsError, _b64, parse_key_request
from ..server.audit import load_audit_key
from ..server.store import Batch, KeyRow, Store
from ..server.groupcommit import GroupCommit
from ..server.storagekey import load_storage_key
from .keystream import LinkStream
from .layout import link_name, unseal
from .wire import Problem, client_context, json_response, problem_routes, read_json, require, server_context

logger = logging.getLogger("qkdseg.net")
#: A source's wait for its keys; below the 10 s that SAE clients such as etsi-qkd-014-client wait, so that a
#: request caught by a relay's death gets the JSON 503 rather than the client's own timeout.
REQUEST_TIMEOUT_S = float(os.environ.get("QKDSEG_RELAY_TIMEOUT_S", "8"))
TAP_ENV = "QKDSEG_ALLOW_TAP"
REPORT_S = float(os.environ.get("QKDSEG_REPORT_S", "5"))  # how often a node reports its links to the controller
_TRACE = os.environ.get("QKDSEG_NET_TRACE") == "1"
#: Seconds a node gathers acknowledgements (and inbox statuses) before it sends (writes) them together.
ACK_S = float(os.environ.get("QKDSEG_ACK_S", "1.0"))
#: Dashboard events a node keeps for its next report (the oldest go first when the controller is away).
MAX_EVENTS = 2000
#: After an event, the next report goes at most this many seconds later (the dashboard's delay).
EVENTS_REPORT_S = 0.5
_DASHBOARD_EVENTS = ("issue", "deliver", "deny", "expire")
_EVENT_FIELDS = ("time", "event", "sae", "peer", "op", "size", "level", "securities", "route", "outcome", "status",
                 "reason")


def _trace(request_id: str, what: str) -> None:
    """With QKDSEG_NET_TRACE=1: one line per step on standard error (no key material), for profiling."""
    if _TRACE:
        print(f"trace {time.time():.4f} {request_id[:8]} {what}", file=sys.stderr, flush=True)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (link TEXT NOT NULL, dir INTEGER NOT NULL, value INTEGER NOT NULL,
                                    PRIMARY KEY (link, dir));
CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, src TEXT NOT NULL,
                                  kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (message_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, dst TEXT NOT NULL,
                                   kind TEXT NOT NULL, status TEXT NOT NULL, t REAL NOT NULL);
"""


class RelayDB:
    """The node's relay state (SQLite, WAL): link offsets, and the relay messages sent and received.

    Written on the event loop's thread; WAL with ``synchronous=NORMAL`` survives
    a crash of the process (``kill -9``), which is the failure the offsets guard.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(lk, d): v for lk, d, v in self.db.execute("SELECT link, dir, value FROM offsets")}

    def write(self, offsets: dict, inbox=(), outbox=()) -> list[bool]:
        """One transaction: offsets, then rows; returns, per inbox row, whether it was new."""
        db = self.db
        new = []
        db.execute("BEGIN IMMEDIATE")
        try:
            if offsets:
                db.executemany("INSERT INTO offsets VALUES (?,?,?) ON CONFLICT(link, dir) DO UPDATE SET "
                               "value=max(value, excluded.value)", [(lk, d, v) for (lk, d), v in offsets.items()])
            for row in inbox:
                cur = db.execute("INSERT OR IGNORE INTO inbox VALUES (?,?,?,?,?,?)", row)
                new.append(cur.rowcount == 1)
            if outbox:
                db.executemany("INSERT OR REPLACE INTO outbox VALUES (?,?,?,?,?,?)", outbox)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def statuses(self, table: str, rows: list[tuple[str, str]]) -> None:
        """``(status, message_id)`` rows in one transaction."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(f"UPDATE {table} SET status=? WHERE message_id=?", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


class NetLinkEnd:
    """This node's end of one link: its own outgoing counter, the incoming high-water mark (bytes)."""

    def __init__(self, node, link: tuple, stream: LinkStream, offsets: dict, dirty: dict) -> None:
        self.name = link_name(*link)
        self.out_dir = 0 if node == link[0] else 1
        self.in_dir = 1 - self.out_dir
        self.stream, self.offsets, self.dirty = stream, offsets, dirty

    def take(self, nbytes: int) -> tuple[int, KeyMaterial]:
        key = (self.name, self.out_dir)
        off = self.offsets.get(key, 0)
        km = KeyMaterial(self.stream.read(self.out_dir, off, nbytes))  # a device-fed link may not hold them: raises
        self.offsets[key] = self.dirty[key] = off + nbytes
        return off, km

    def at(self, offset: int, nbytes: int) -> KeyMaterial:
        return KeyMaterial(self.stream.read(self.in_dir, offset, nbytes))


@dataclass
class ReqState:
    request_id: str
    relay: RelayNode | None = None
    meta: dict = field(default_factory=dict)
    early: list = field(default_factory=list)
    future: asyncio.Future | None = None
    confirm_sent: bool = False
    tags: dict | None = None  # the destination's confirmation tags, at the source
    finishing: bool = False
    key_ids: list | None = None  # the destination's key ids, at the source
    created: float = field(default_factory=time.monotonic)


def _tag(request_id: str, kid, key: KeyMaterial) -> bytes:
    return hmac.new(key.reveal(), f"qkdseg-confirm|{request_id}|{json.dumps(list(kid))}".encode(),
                    hashlib.sha256).digest()


def _enc(km: KeyMaterial) -> str:
    return base64.b64encode(km.reveal()).decode()


def _dec(s: str) -> KeyMaterial:
    return KeyMaterial(base64.b64decode(s))


class NodeService:
    """One node: its link ends, its SAEs' keys (AES-GCM at rest, audited), its part of each request."""

    def __init__(self, directory: Path, *, tap: Path | None = None) -> None:
        d = Path(directory)
        try:
            self.conf = json.loads((d / "node.json").read_text())
        except FileNotFoundError:
            raise InvalidRequest(f"{d}: not a node directory (no node.json; run 'qkdseg net init' first)") from None
        self.dir = d
        self.id = self.conf["id"]
        e = self.conf["etsi"]
        self.cfg = SimpleNamespace(**e)
        self.saes = set(self.conf["saes"])
        self.registry: dict[str, str] = self.conf["registry"]
        skey = load_storage_key(d / "storage.key")  # never made here: a missing key refuses to start
        sealed = json.loads((d / "links.sealed.json").read_text())
        # the directory's lock (one process per node), the storage key's check value, the keyed audit chain
        self.store = Store(d, skey, load_audit_key(d / "audit.key"), durability="normal")
        self.committer = GroupCommit(self.store)
        self.relaydb = RelayDB(d / "relay.sqlite3")
        self.offsets = self.relaydb.offsets()
        self._dirty: dict = {}
        self.links: dict = {}  # neighbour id -> NetLinkEnd
        self.neighbours: dict[str, object] = {}
        self.device = None  # the device-fed links (net init --link-source device): .devicelinks
        if any("device" in lk for lk in self.conf["links"]):
            from .devicelinks import DeviceLinks

            self.device = DeviceLinks(self)
        for lk in self.conf["links"]:
            u, v = lk["link"]
            name = link_name(u, v)
            stream = self.device.stream(name) if "device" in lk else LinkStream(unseal(skey, name, sealed[name]))
            self.links[lk["neighbour"]] = NetLinkEnd(self.id, (u, v), stream, self.offsets, self._dirty)
            self.neighbours[str(lk["neighbour"])] = lk["neighbour"]
        self.addresses: dict[str, str] = self.conf["addresses"]
        from .leader import Controllers, peer_addresses

        self.addresses = {**self.addresses, **peer_addresses(self.neighbours)}  # net up --faults: via the link's proxy
        self.controllers = Controllers(self.conf)  # every controller's address; the leader is the one that plans
        from .linkhealth import LinkHealth

        self.linkhealth = LinkHealth()  # links whose messages got no answer: reported DOWN until they answer
        self.keys: dict[str, KeyRow] = {}  # issued keys waiting for this node's slave SAEs
        self.spares: dict[tuple, deque[KeyRow]] = defaultdict(deque)  # at a source: (master, slave) -> spare keys
        self.held_spares: dict[str, KeyRow] = {}  # at a destination: spare keys not yet issued by their source
        for row in self.store.load_keys():
            if row.kind == "issued":
                self.keys[row.key_id] = row
            elif row.kind == "spare" and row.master in self.saes:
                self.spares[(row.master, row.slave)].append(row)
            elif row.kind == "spare":
                self.held_spares[row.key_id] = row
        self.pending: set[str] = set()
        self.requests: dict[str, ReqState] = {}
        self.ctx_client = client_context(d / "node.crt", d / "node.key", d / "ca.crt")
        self.client = None
        self.queues: dict[str, asyncio.Queue] = {}
        self.tap = open(tap, "a", encoding="utf-8") if tap is not None else None
        self._tapped: dict = {}
        self._acks: dict[str, list] = {}
        self.request_keys: dict[str, list[str]] = {}  # at a destination: the key ids each request stored
        self.request_keys_source: dict[str, object] = {}
        self._voidable: list[str] = []
        self.stats = defaultdict(int)
        # the dashboard's rows, sent to the controller with the next link report (key ids cut to 8 characters)
        self.events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self.event_seq = 0
        self.boot = str(uuid.uuid4())
        self._report_now: asyncio.Event | None = None
        self.on_relay = None  # (destination, [(kind, accepted)]) after each POST of relay messages (.ops: metrics)

    # -- sending ------------------------------------------------------------------
    def _http(self):
        if self.client is None:
            from .wire import async_client

            self.client = async_client(self.ctx_client, 64)
        return self.client

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
        """Store the intents (and the offsets they took) in one transaction, then queue them, per destination in order."""
        if not msgs:
            return []
        wire = [self._encode(m, request_id) for m in msgs]
        now = time.time()
        self.relaydb.write(dict(self._dirty), outbox=[(w["message_id"], request_id, str(w["dst"]), w["kind"], "intent", now)
                                                      for w in wire])
        self._dirty.clear()
        loop = asyncio.get_running_loop()
        futs = []
        for w in wire:
            fut = loop.create_future()
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
        1,024, 020's array limit): one HTTPS message per link serves every
        concurrent request on it.
        """
        url = f"https://{self.addresses[dst]}/relay/v1/messages"
        while True:
            batch = [await q.get()]
            while not q.empty() and len(batch) < 1024:
                batch.append(q.get_nowait())
            body = json.dumps({"messages": [w for w, _ in batch]}, separators=(",", ":"))
            results: dict = {}
            err, answered = None, False
            for attempt in range(3):  # the same message ids each time: the receiver keeps one copy of each
                try:
                    r = await self._http().post(url, content=body, headers={"content-type": "application/json"})
                except Exception as exc:  # noqa: BLE001 -- a transport error: the messages may have arrived; retry
                    err = f"{type(exc).__name__}"
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
                        fut.set_exception(RuntimeError(f"relay message to node {dst} failed: {why}"))
                if not ok:
                    self._fail(w["request_id"], f"a relay message to node {dst} failed ({why})")
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
        if st is not None and st.future is not None and not st.future.done():
            st.future.set_exception(KmsError(503, f"key relay failed: {why}; no key was issued",
                                             reason="relay_failed"))

    # -- requests ---------------------------------------------------------------------
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
        self.send(out, request_id)
        for msg in st.early:
            self._process(st, msg)
        st.early.clear()
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
                st.tags = {tuple(k): base64.b64decode(t) for k, t in w["tags"]}
                st.key_ids = [(tuple(k), str(i)) for k, i in w["key_ids"]]
            self._ack(str(w["src"]), w["message_id"], "relayed")
        except Exception as exc:  # noqa: BLE001 -- a message that does not fit the plan fails its request
            logger.warning("request %s: message %s failed: %s", st.request_id, w["message_id"], type(exc).__name__)
            self._ack(str(w["src"]), w["message_id"], "failed")
            self._fail(st.request_id, "a relay message did not fit the plan")
        self._check_done(st)

    def _check_done(self, st: ReqState) -> None:
        relay = st.relay
        if relay is None or not relay.done or relay.part.position is None:
            return
        last = len(relay.part.segment_nodes) - 1
        if relay.part.position == last and not st.confirm_sent:
            st.confirm_sent = True
            asyncio.get_running_loop().create_task(self._store_and_confirm(st))
        if (relay.part.position == 0 and st.tags is not None and st.future is not None and not st.future.done()
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
        held = relay.keys()
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
                            "outcome": "stored; confirmation sent"})
        try:
            await self.committer.commit(batch)
        except Exception:  # noqa: BLE001 -- not stored: no confirmation, the source times out and voids
            logger.exception("request %s: the keys could not be stored", st.request_id)
            return
        for _, row in rows:
            (self.keys if row.kind == "issued" else self.held_spares)[row.key_id] = row
        self.request_keys[st.request_id] = [row.key_id for _, row in rows]
        self.request_keys_source[st.request_id] = relay.part.segment_nodes[0]
        tags = [[list(kid), base64.b64encode(_tag(st.request_id, kid, k)).decode()] for kid, k in held]
        self.send([{"kind": "confirm", "dst": relay.part.segment_nodes[0], "tags": tags,
                    "key_ids": [[list(kid), row.key_id] for kid, row in rows]}], st.request_id)
        self.requests.pop(st.request_id, None)

    async def _finish(self, st: ReqState) -> None:
        """At the source: key confirmation; the keys (stored at the destination already) go to the master."""
        relay, meta = st.relay, st.meta
        mine = relay.keys()
        ok = len(mine) == len(st.tags) and all(
            hmac.compare_digest(_tag(st.request_id, kid, k), st.tags.get(kid, b"")) for kid, k in mine)
        number, secs = int(meta["number"]), meta["securities"]
        ids = dict(st.key_ids or [])
        chosen = [(ids.get(kid), k, float(secs[i])) for i, (kid, k) in enumerate(mine)]
        ok = ok and len(chosen) >= number and all(key_id for key_id, _, _ in chosen)
        if not ok:
            self.send([{"kind": "void", "dst": relay.part.segment_nodes[-1]}], st.request_id)
            await self.committer.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "void",
                                                      "request_id": st.request_id, "outcome": "confirmation failed"}]))
            self._fail(st.request_id, "key confirmation failed (the two ends' keys differ); the keys were voided")
            return
        _trace(st.request_id, "confirmed")
        if not st.future.done():  # the master's keys, then the spare keys (kept here and at the destination)
            st.future.set_result(([(key_id, k.reveal(), sec) for key_id, k, sec in chosen[:number]],
                                  [(key_id, k.reveal(), sec) for key_id, k, sec in chosen[number:]]))

    async def void_keys(self, request_id: str) -> None:
        """At the destination: delete a voided request's keys (never delivered), audited."""
        self.requests.pop(request_id, None)
        ids = [k for k in self.request_keys.pop(request_id, []) if k in self.keys or k in self.held_spares]
        for k in ids:
            self.keys.pop(k, None)
            self.held_spares.pop(k, None)
        await self.committer.commit(Batch(delete_keys=ids, audit=[{
            "time": round(time.time(), 6), "event": "void", "request_id": request_id, "key_ids": ids,
            "outcome": "voided by the source"}]))

    # -- ETSI 014 (the methods qkdseg.kms.app calls) ----------------------------------------
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
        except httpx.HTTPError:
            raise KmsError(503, "the network's controller is unreachable; try again later",
                           reason="controller_unavailable") from None
        if r.status_code != 200:
            try:
                p = r.json()
            except ValueError:
                p = {}
            status = r.status_code if r.status_code in (400, 503) else 503
            raise KmsError(status, p.get("message") or p.get("detail") or "the controller refused the request",
                           p.get("details"), reason=p.get("reason"))
        return r.json()

    async def status(self, caller: Caller, slave: str) -> dict:
        self._check_caller(caller)
        self._check_peer(caller, slave, "slave")
        cap = await self._controller("GET", "/control/v1/status", params={"master": caller.sae, "slave": slave})
        c = self.cfg
        return {
            "source_KME_ID": c.kme_id, "target_KME_ID": cap.get("target_KME_ID", c.kme_id),
            "master_SAE_ID": caller.sae, "slave_SAE_ID": slave, "key_size": c.key_size,
            "stored_key_count": int(min(cap["stored_key_count"] + sum(
                1 for row in self.spares.get((caller.sae, slave), ()) if row.size == c.key_size), c.max_key_count)),
            "max_key_count": c.max_key_count,
            "max_key_per_request": c.max_key_per_request, "max_key_size": c.max_key_size,
            "min_key_size": c.min_key_size, "max_SAE_ID_count": 0,
            "status_extension": {"qkdseg_security_level": c.security_level, "qkdseg_node": str(self.id),
                                 "qkdseg_route": cap.get("route")},
        }

    async def enc_keys(self, caller: Caller, slave: str, req) -> dict:
        self._check_caller(caller)
        self._check_peer(caller, slave, "slave")
        if self.committer.failed is not None:
            raise KmsError(503, "key store unavailable; restart the node", reason="store_failed")
        now = time.time()
        new_spares: list[KeyRow] = []
        if str(self.registry[slave]) == str(self.id):  # both SAEs here: no relay
            keys = [(str(uuid.uuid4()), secrets.token_bytes(req.size // 8), 1.0) for _ in range(req.number)]
            summary = {"local": True, "security": 1.0}
            batch = Batch()
            for key_id, material, sec in keys:
                row = KeyRow(key_id, "issued", caller.sae, slave, req.size, sec, b"", now, now + self.cfg.key_ttl_s,
                             '{"local":true}')
                self.store.seal(row, material)
                batch.put_keys.append(row.values())
                self.keys[key_id] = row
        elif (spare := await self._use_spares(caller.sae, slave, req, now)) is not None:
            keys, summary, batch = spare
        else:
            plan = await self._controller("POST", "/control/v1/plans", json={
                "master": caller.sae, "slave": slave, "number": req.number, "size": req.size, "level": req.level,
                "level_source": req.level_source, "mandatory": req.mandatory})
            rid = plan["request_id"]
            _trace(rid, "plan returned")
            st = self._state(rid)
            if st.future is None:
                st.future = asyncio.get_running_loop().create_future()
            self._check_done(st)
            try:
                keys, extra = await asyncio.wait_for(asyncio.shield(st.future), REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                self._void(rid)
                raise KmsError(503, "key relay timed out (a node on the route did not answer); no key was issued",
                               reason="relay_failed") from None
            except KmsError:
                self._void(rid)
                raise
            finally:
                self.requests.pop(rid, None)
            summary = plan.get("route")
            batch = Batch()
            for key_id, m, sec in extra:  # the relay's other keys: spare keys of this pair, at both ends
                row = KeyRow(key_id, "spare", caller.sae, slave, 8 * len(m), sec, b"", now, now + self.cfg.key_ttl_s,
                             json.dumps({"request_id": rid}))
                self.store.seal(row, m)
                batch.put_keys.append(row.values())
                new_spares.append(row)
        batch.audit.append({"time": round(now, 6), "event": "issue", "sae": caller.sae, "cert_sha256": caller.fingerprint,
                            "peer": slave, "op": "enc_keys", "key_ids": [k for k, _, _ in keys], "size": req.size,
                            "level": req.level, "securities": [s for _, _, s in keys], "route": summary, "outcome": "ok"})
        await self._commit(batch)
        self.spares[(caller.sae, slave)].extend(new_spares)
        return {"keys": [{"key_ID": key_id, "key": _b64(m), "key_extension": {"qkdseg_security": sec}}
                         for key_id, m, sec in keys],
                "key_container_extension": {"qkdseg_security_level": {"requested": req.level,
                                                                      "source": req.level_source},
                                            "qkdseg_route": summary}}

    async def _use_spares(self, master: str, slave: str, req, now: float):
        """Spare keys of the pair for the whole request (size, level, not expired), or ``None``.

        The slave's node issues them first (``issue`` message, applied before
        its 202); a message that fails leaves their state there uncertain, so
        they are dropped here (deleted, audited), never offered again.
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
        futs = self.send([{"kind": "issue", "dst": dst, "master": master, "slave": slave,
                           "key_ids": [row.key_id for row in take]}], rid)
        try:
            await asyncio.wait_for(asyncio.gather(*futs), REQUEST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- not issued there, or not known: never offered again
            await self.committer.commit(Batch(delete_keys=[row.key_id for row in take], audit=[{
                "time": round(time.time(), 6), "event": "void", "request_id": rid, "sae": master, "peer": slave,
                "key_ids": [row.key_id for row in take],
                "outcome": f"spare keys dropped: node {dst} did not issue them ({type(exc).__name__})"}]))
            return None
        keys = [(row.key_id, self.store.open(row), row.security) for row in take]
        summary = {"spare": True, "request_id": rid, "security": min(row.security for row in take)}
        return keys, summary, Batch(delete_keys=[row.key_id for row in take])

    async def issue_spares(self, w: dict) -> None:
        """At a destination: the source's ``issue`` of spare keys it holds for the slave (durable, then 202)."""
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

    def _void(self, request_id: str) -> None:
        st = self.requests.get(request_id)
        if st is not None and st.relay is not None:
            self.send([{"kind": "void", "dst": st.relay.part.segment_nodes[-1]}], request_id)

    async def dec_keys(self, caller: Caller, master: str, key_ids: list[str]) -> dict:
        self._check_caller(caller)
        if master not in self.registry:
            raise KmsError(400, f"master SAE {master!r} is not registered in this network")
        if not key_ids:
            raise KmsError(400, "key_IDs must name at least one key")
        if len(set(key_ids)) != len(key_ids):
            raise KmsError(400, "key_IDs names a key twice")
        now = time.time()
        rows, missing = [], False
        for kid in key_ids:
            row = self.keys.get(kid)
            if row is None or kid in self.pending or row.expires_at <= now:
                missing = True
                continue
            rows.append(row)
        if any(row.slave != caller.sae or row.master != master for row in rows):
            raise KmsError(401, "the caller is not the slave SAE of one or more keys requested "
                                "(or the path does not name their master SAE)")
        if missing:
            raise KmsError(400, MSG_NOT_FOUND, reason="key_not_found")
        out = [(row, self.store.open(row)) for row in rows]
        for row in rows:
            del self.keys[row.key_id]
        await self._commit(Batch(delete_keys=[r.key_id for r in rows], audit=[{
            "time": round(now, 6), "event": "deliver", "sae": caller.sae, "cert_sha256": caller.fingerprint,
            "peer": master, "op": "dec_keys", "key_ids": [r.key_id for r in rows], "size": rows[0].size,
            "securities": [r.security for r in rows], "outcome": "ok"}]))
        return {"keys": [{"key_ID": row.key_id, "key": _b64(m), "key_extension": {"qkdseg_security": row.security}}
                         for row, m in out]}

    async def _commit(self, batch: Batch) -> None:
        """Commit, then keep the batch's ETSI 014 events for the controller's dashboard (no key, ids cut)."""
        await self.committer.commit(batch)
        for rec in batch.audit:
            if rec.get("event") in _DASHBOARD_EVENTS:
                self.event_seq += 1
                ev = {k: rec[k] for k in _EVENT_FIELDS if k in rec}
                ev.update(seq=self.event_seq, node=str(self.id), key_ids=[k[:8] for k in rec.get("key_ids", [])])
                self.events.append(ev)
        if self._report_now is not None and self.events:
            self._report_now.set()

    async def deny(self, err: KmsError, caller: Caller | None, op: str, peer: str | None = None) -> None:
        who = caller or Caller("-", "-")
        rec = {"time": round(time.time(), 6), "event": "deny", "sae": who.sae, "cert_sha256": who.fingerprint,
               "op": op, "status": err.status, "reason": err.reason, "outcome": err.message}
        if peer is not None:
            rec["peer"] = peer
        await self._commit(Batch(audit=[rec]))

    async def expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(30.0, self.cfg.key_ttl_s / 4)))
            now = time.time()
            gone = [r.key_id for r in self.keys.values() if r.expires_at <= now]
            for k in gone:
                del self.keys[k]
            spare_gone = [r.key_id for r in self.held_spares.values() if r.expires_at <= now]
            for k in spare_gone:
                del self.held_spares[k]
            for pool in self.spares.values():
                old = [r for r in pool if r.expires_at <= now]
                for r in old:
                    pool.remove(r)
                spare_gone += [r.key_id for r in old]
            stale = [rid for rid, st in self.requests.items() if time.monotonic() - st.created > 3 * REQUEST_TIMEOUT_S]
            for rid in stale:
                self.requests.pop(rid, None)
            old, self._voidable = self._voidable, list(self.request_keys)
            for rid in old:  # a source voids within its timeout; after that the stored ids are forgotten
                self.request_keys.pop(rid, None)
                self.request_keys_source.pop(rid, None)
                self._tapped.pop(rid, None)
            if gone or spare_gone:
                await self._commit(Batch(delete_keys=gone + spare_gone, audit=[{
                    "time": round(now, 6), "event": "expire", "key_ids": gone, "spare_keys": len(spare_gone),
                    "outcome": "deleted after key_ttl_s"}]))

    async def sync_offsets(self) -> None:
        """After a start: each outgoing counter skips forward to the neighbour's high-water mark if that is larger."""
        for nb, end in self.links.items():
            try:
                r = await self._http().get(f"https://{self.addresses[str(nb)]}/relay/v1/links",
                                           params={"link": end.name})
                theirs = r.json()
            except Exception:  # noqa: BLE001 -- the neighbour is down: it syncs with us when it starts
                continue
            key = (end.name, end.out_dir)
            hwm = int(theirs.get(str(end.out_dir), 0))
            if hwm > self.offsets.get(key, 0):
                self.offsets[key] = self._dirty[key] = hwm
        if self._dirty:
            self.relaydb.write(dict(self._dirty))
            self._dirty.clear()

    def link_report(self) -> dict:
        """This node's links as a JSON subset of ETSI GS QKD 015's model (``qkd_node``: ``qkdn_id``, ``qkd_links``,
        each ``qkd_link`` with ``link_id``, ``link_status``, both ends' ``qkdn_id``) plus qkdseg's fields: the pool's
        size, the bits consumed in both directions (this end's durable offsets) and its level: ``null`` for an
        emulated link (its refill is the controller's model), the device key bits held in the direction with fewer
        for a device-fed link (:mod:`.devicelinks`)."""
        out = []
        for lk in self.conf["links"]:
            name = link_name(*lk["link"])
            consumed = 8 * (self.offsets.get((name, 0), 0) + self.offsets.get((name, 1), 0))
            out.append({"link_id": name, "link_status": self.linkhealth.status(lk["neighbour"]),
                        "qkdl_local": {"qkdn_id": str(self.id)}, "qkdl_remote": {"qkdn_id": str(lk["neighbour"])},
                        "qkdseg_pool_bits": int(lk["pool_bits"]), "qkdseg_consumed_bits": consumed,
                        "qkdseg_level_bits": self.device.level_bits(name) if self.device else None})
        return {"qkd_node": {"qkdn_id": str(self.id), "qkd_links": {"qkd_link": out}},
                "qkdseg_events": {"boot": self.boot, "events": list(itertools.islice(self.events, 500))}}

    async def report_links(self) -> None:
        """After the start's offset sync, every ``QKDSEG_REPORT_S`` seconds, and within ``EVENTS_REPORT_S`` of an
        ETSI 014 event: the links' report to the controller, with the events since the last acknowledged report."""
        self._report_now = asyncio.Event()
        while True:
            body = self.link_report()
            sent = body["qkdseg_events"]["events"]
            ok = False
            with contextlib.suppress(Exception):  # the controller is down: the next report goes when it is back
                r = await self.controllers.request(self._http(), "POST", "/control/v1/links", json=body)
                ok = r.status_code == 200
            if ok and sent:  # acknowledged: those events are the controller's now
                while self.events and self.events[0]["seq"] <= sent[-1]["seq"]:
                    self.events.popleft()
            self._report_now.clear()
            if ok and self.events:  # events came meanwhile: soon, not in REPORT_S
                await asyncio.sleep(EVENTS_REPORT_S)
                continue
            try:
                await asyncio.wait_for(self._report_now.wait(), REPORT_S)
            except asyncio.TimeoutError:
                continue
            await asyncio.sleep(EVENTS_REPORT_S)  # gather the events of the next half second into one report

    async def start_tasks(self) -> None:
        await self.sync_offsets()
        if self.device is not None:  # and keep each device-fed link's outgoing direction topped up
            await asyncio.gather(self.report_links(), self.device.run())
        await self.report_links()

    def close(self) -> None:
        self.committer.close()
        self.relaydb.close()
        if self.tap is not None:
            self.tap.close()


def create_node_app(svc: NodeService):
    from ..server.frontend import create_app

    async def accept(role, w: dict, offsets: dict, inbox: list, later: list) -> None:
        """Check one message and plan its storage (raises Problem)."""
        kind, src, rid, mid = w["kind"], w["src"], str(w["request_id"]), str(w["message_id"])
        if role.ident != str(src):
            raise Problem(403, "Forbidden", f"the message names src {src!r}, the caller's certificate is node "
                                            f"{role.ident!r}")
        if str(w["dst"]) != str(svc.id):
            raise Problem(400, "Bad Request", f"this is node {svc.id!r}, not {w['dst']!r}")
        if kind not in ("pieces", "global", "confirm", "void", "issue"):
            raise Problem(400, "Bad Request", f"unknown message kind {kind!r}")
        if kind != "issue" and (svc.relaydb.db.execute("SELECT 1 FROM inbox WHERE message_id=?", (mid,)).fetchone()
                                or any(row[0] == mid for row in inbox)):
            return  # a retry of a message stored already (idempotent by message id): accepted, not processed twice
        if kind == "pieces":
            if str(src) not in svc.neighbours:
                raise Problem(403, "Forbidden", f"node {src!r} is not a neighbour of node {svc.id!r}: piece "
                                                "messages come only from neighbours")
            end = svc.links[svc.neighbours[str(src)]]
            key = (end.name, end.in_dir)
            hwm = offsets.get(key, svc.offsets.get(key, 0))
            for _pid, off, c in w["blocks"]:
                if int(off) < hwm:
                    raise Problem(409, "Conflict", f"offset {off} on link {end.name} is below this end's high-water "
                                                   f"mark {hwm}: a link key bit is never used twice",
                                  status_020="failed")
                hwm = int(off) + len(base64.b64decode(c))
            offsets[key] = hwm
        st0 = svc.requests.get(rid)
        if kind == "void" and st0 is not None and st0.relay is not None and src != st0.relay.part.segment_nodes[0]:
            raise Problem(403, "Forbidden", "only the request's source may void its keys")
        if kind == "void" and st0 is None and rid in svc.request_keys and str(src) != str(
                svc.request_keys_source.get(rid)):
            raise Problem(403, "Forbidden", "only the request's source may void its keys")
        inbox.append((mid, rid, str(src), kind, "accepted", time.time()))
        later.append(w)

    @problem_routes
    async def messages(request: Request):
        """One relay message, or ``{"messages": [...]}`` (a batch, in order); 202 once every one is stored."""
        role = require(request, "node")
        body = await read_json(request)
        batch = body["messages"] if "messages" in body else [body]
        if not isinstance(batch, list) or len(batch) > 1024:
            raise Problem(400, "Bad Request", "messages must be an array of at most 1,024 relay messages")
        offsets: dict = {}
        inbox: list = []
        later: list = []
        results = []
        first = None
        for w in batch:
            mid = str(w.get("message_id")) if isinstance(w, dict) else "?"
            try:
                if not isinstance(w, dict):
                    raise Problem(400, "Bad Request", "a relay message must be an object")
                await accept(role, w, offsets, inbox, later)
                results.append({"message_id": mid, "status": 202})
            except Problem as p:
                first = first or p
                results.append({"message_id": mid, "status": p.status, "detail": p.detail})
            except (KeyError, TypeError, ValueError) as err:
                first = first or Problem(400, "Bad Request", f"malformed message: {type(err).__name__}")
                results.append({"message_id": mid, "status": 400, "detail": first.detail})
        svc.relaydb.write(offsets, inbox=inbox)
        for k, v in offsets.items():
            svc.offsets[k] = max(svc.offsets.get(k, 0), v)
        loop = asyncio.get_running_loop()
        by_id = {r["message_id"]: r for r in results}
        for w in later:
            rid, kind = str(w["request_id"]), w["kind"]
            if kind == "void":
                await svc.void_keys(rid)
                continue
            if kind == "issue":  # applied before the answer: a 202 means the slave can fetch them now
                try:
                    await svc.issue_spares(w)
                except Problem as p:
                    first = first or p
                    by_id[str(w["message_id"])].update(status=p.status, detail=p.detail)
                except (KeyError, TypeError, ValueError) as err:
                    first = first or Problem(400, "Bad Request", f"malformed issue message: {type(err).__name__}")
                    by_id[str(w["message_id"])].update(status=400, detail=first.detail)
                continue
            st = svc._state(rid)
            if st.relay is None:
                st.early.append(w)
            else:
                loop.call_soon(svc._process, st, w)
        if first is not None:
            first.ext["results"] = results
            raise first
        return json_response({"status": "accepted", "results": results}, 202)

    @problem_routes
    async def ack(request: Request):
        require(request, "node")
        w = await read_json(request)
        acks = w["acks"] if "acks" in w else [w]
        for a in acks:
            if a.get("status") not in ("relayed", "failed", "voided", "failed to void", "key not present"):
                raise Problem(400, "Bad Request", "status must be one of ETSI GS QKD 020's ack statuses")
        svc.relaydb.statuses("outbox", [(a["status"], str(a["message_id"])) for a in acks])
        return json_response({"acknowledged": len(acks)}, 200)

    @problem_routes
    async def links(request: Request):
        role = require(request, "node")
        svc.linkhealth.heard(svc, role.ident)  # a neighbour syncing: our link to it is up
        name = request.query_params.get("link", "")
        ends = {str(end.name): str(nb) for nb, end in svc.links.items()}
        if name not in ends:
            raise Problem(404, "Not Found", f"node {svc.id!r} has no link {name!r}")
        if role.ident not in (ends[name], str(svc.id)):
            raise Problem(403, "Forbidden", f"only the nodes at the ends of link {name} may read its offsets here")
        return json_response({str(d): v for (lk, d), v in svc.offsets.items() if lk == name})

    @problem_routes
    async def parts(request: Request):
        require(request, "controller")
        w = await read_json(request)
        batch = w["parts"] if "parts" in w else [w]
        rids = [str(x["request_id"]) for x in batch]
        svc.relaydb.write({}, inbox=[(f"part:{rid}", rid, "controller", "part", "accepted", time.time())
                                     for rid in rids])
        loop = asyncio.get_running_loop()
        for rid, x in zip(rids, batch):
            loop.call_soon(svc.start_part, rid, x)
        return json_response({"request_ids": rids, "status": "accepted"}, 202)

    @problem_routes
    async def void(request: Request):
        require(request, "controller")
        w = await read_json(request)
        svc.requests.pop(str(w["request_id"]), None)
        return json_response({"request_id": w["request_id"], "status": "voided"}, 200)

    async def health(request: Request):
        body = {"status": "ok", "role": "node", "node": str(svc.id), "pid": os.getpid(),
                "keys_waiting": len(svc.keys), "requests": len(svc.requests)}
        if svc.device is not None:  # per device-fed link: its device state, keys fetched and skipped, bits held
            body["device_links"] = svc.device.view()
        return json_response(body)

    routes = [
        Route("/relay/v1/messages", messages, methods=["POST"]),
        Route("/relay/v1/ack", ack, methods=["POST"]),
        Route("/relay/v1/links", links, methods=["GET"]),
        Route("/control/v1/parts", parts, methods=["POST"]),
        Route("/control/v1/void", void, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ] + (svc.device.routes() if svc.device is not None else [])
    app = create_app(svc, routes=routes)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a):
            task = asyncio.get_running_loop().create_task(svc.start_tasks())
            try:
                yield
            finally:
                task.cancel()
                if svc.client is not None:
                    await svc.client.aclose()
    app.router.lifespan_context = lifespan
    return app


def serve_node(directory: str | Path, *, tap: Path | None = None, metrics_port: int | None = None,
               log_level: str = "warning", log_format: str = "text") -> None:
    """Serve one node until SIGINT/SIGTERM (``metrics_port``, logs: :mod:`.ops`, :mod:`qkdseg.kms.logs`)."""
    from ..server import logs
    from ..server.http import limited_protocol
    from .ops import attach_node
    from .wire import RolePeerProtocol, run_uvicorn

    if tap is None and os.environ.get("QKDSEG_TAP_DIR"):  # net up passes the tap to every node this way
        tap = Path(os.environ["QKDSEG_TAP_DIR"]) / f"{Path(directory).resolve().name}.jsonl"
    if tap is not None and os.environ.get(TAP_ENV) != "1":
        raise InvalidRequest(f"--tap records plaintext pieces (the adversary's tap, for the compromise test only); "
                             f"it is refused unless {TAP_ENV}=1")
    logs.configure(log_level, log_format, prefix="qkdseg node")
    svc = NodeService(Path(directory), tap=tap)
    logs.configure(log_level, log_format, prefix=f"qkdseg node {svc.id}")
    host, port = svc.conf["address"].rsplit(":", 1)
    d = Path(directory)
    ctx = server_context(d / "node.crt", d / "node.key", d / "ca.crt")
    prof = None
    if os.environ.get("QKDSEG_PROFILE_DIR"):  # profiling: cProfile of the whole process, written at its stop
        import cProfile
        import signal

        prof = cProfile.Profile()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn re-raises SIGTERM at its exit: exit cleanly
        prof.enable()
    try:
        c = svc.cfg
        http = limited_protocol(RolePeerProtocol, header_timeout=c.header_timeout_s, body_timeout=c.body_timeout_s,
                                max_connections=c.max_connections)
        run_uvicorn(create_node_app(svc), host, int(port), ctx, d / "node.crt", http=http,
                    keep_alive_s=c.keep_alive_s, ops=attach_node(svc), metrics_port=metrics_port, log_level=log_level,
                    on_ready=lambda: logs.say(f"listening on https://{host}:{port} "
                                              f"({len(svc.saes)} SAEs, {len(svc.links)} links)"))
    finally:
        svc.close()
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(Path(os.environ["QKDSEG_PROFILE_DIR"]) / f"node-{d.resolve().name}.prof"))
    logs.say("stopped", err=True)
