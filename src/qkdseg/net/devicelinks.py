"""Link keys from QKD devices in the network of nodes (docs/network.md, "Link keys from devices").

With ``net init --link-source device`` each link's two ends are SAEs of the
link's QKD device pair (ETSI GS QKD 014 over mutual TLS; ``qkdseg device
serve DIR/devices`` emulates them). A link has two directions (0: its first
end -> its second end, 1: back), each an ordered byte sequence that only its
sender writes:

1. the *sender* of direction ``d`` calls ``enc_keys`` on its device end
   (slave: the other end's SAE id) when it holds fewer than half of the
   direction's share (``pool_bits / 2``) and the device reports keys;
2. it posts the key ids to the receiver, ``POST /relay/v1/device_keys``
   ``{"link", "direction", "offset", "key_ids"}`` (only from the link's other
   end; 403 otherwise), ``offset`` = where these keys start in the sequence;
3. the receiver calls ``dec_keys`` on its own device end for those ids (one
   by one when the batch is refused with 400), stores the bytes of the keys
   it got, in the sender's order, at exactly ``offset`` (sealed under its
   storage key, in ``relay.sqlite3``) and only then answers 202 with the ids
   it stored;
4. the sender appends the same keys' bytes, in the same order, at the same
   offset (sealed, durable). A key the receiver could not fetch is in
   neither sequence: never used by one end only.

A receiver whose sequence already goes further than ``offset`` (the sender
crashed between the receiver's 202 and its own write) answers 409 with its
end; the sender then moves its end (and its counter, if below) forward to
it: the bytes in between are held by the receiver only and never named by
any piece, so never used. A
retry of the same message (same offset, same ids) gets the same 202.

:class:`DeviceStream` reads the sequences with :class:`.keystream.LinkStream`'s
``read(direction, offset, nbytes)``, so the relay steps, the offsets and the
high-water marks are the emulated links' own; a read beyond what is held
raises (the request fails with 503; never a wrong key). A node reports, per
link, the bits it holds in the direction with fewer (``qkdseg_level_bits``).
Device errors set the link's state (audited when it changes, ``event``
``device``) and the loop retries with a doubling back-off.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from pathlib import Path

from starlette.requests import Request
from starlette.routing import Route

from ..devices.source import DeviceError, _Client, _keys, enc_round
from ..server.etsi import KmsError
from ..server.store import Batch
from ..server.storagekey import load_storage_key
from ..server.storehealth import CommitFailed
from .layout import link_name, seal, unseal
from .limits import read_json
from .wire import Problem, json_response, problem_routes, require

logger = logging.getLogger("qkdseg.net")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_chunks (link TEXT NOT NULL, dir INTEGER NOT NULL, offset INTEGER NOT NULL,
                                          nbytes INTEGER NOT NULL, key_ids TEXT NOT NULL, blob TEXT NOT NULL,
                                          PRIMARY KEY (link, dir, offset));
"""
#: Seconds a chunk stays in memory after both ends' counters passed it (a piece already accepted may still be
#: read, until its request's timeout has passed).
PRUNE_AFTER_S = 60.0


class DeviceShort(KmsError):
    def __init__(self, message: str):
        super().__init__(503, message, reason="device_short")


class DeviceStream:
    """One link's two device key sequences at this node: ``read(direction, offset, nbytes)`` as LinkStream's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks: list[list] = [[], []]  # per direction: sorted [offset, bytes]
        self.ends = [0, 0]  # per direction: where the next chunk starts

    def add(self, direction: int, offset: int, data: bytes) -> None:
        chunks = self.chunks[direction]
        if data:
            i = bisect.bisect_left([c[0] for c in chunks], offset)
            chunks.insert(i, [offset, bytes(data)])
        self.ends[direction] = max(self.ends[direction], offset + len(data))

    def read(self, direction: int, offset: int, nbytes: int) -> bytes:
        out = bytearray()
        pos, stop = offset, offset + nbytes
        chunks = self.chunks[direction]
        i = max(0, bisect.bisect_right([c[0] for c in chunks], offset) - 1)
        while pos < stop:
            if i >= len(chunks) or not chunks[i][0] <= pos < chunks[i][0] + len(chunks[i][1]):
                raise DeviceShort(f"link {self.name}: device key bytes {pos}.. of direction {direction} are not "
                                  "held (the devices have not delivered them yet); nothing was issued")
            start, data = chunks[i]
            take = min(stop, start + len(data)) - pos
            out += data[pos - start: pos - start + take]
            pos += take
            i += 1
        return bytes(out)

    def held(self, direction: int, consumed: int) -> int:
        """Bytes held at or beyond ``consumed`` in ``direction``."""
        return sum(max(0, min(len(d), o + len(d) - consumed)) for o, d in self.chunks[direction])

    def __repr__(self) -> str:
        return f"DeviceStream({self.name!r}, <keys masked>)"


class _End:
    """This node's end of one device-fed link."""

    def __init__(self, node_id, lk: dict, directory: Path) -> None:
        u, v = lk["link"]
        self.name = link_name(u, v)
        self.neighbour = lk["neighbour"]
        self.out_dir = 0 if node_id == u else 1
        self.in_dir = 1 - self.out_dir
        self.pool_bits = int(lk["pool_bits"])
        dev = lk["device"]
        self.url, self.sae, self.peer_sae, self.key_size = dev["url"], dev["sae"], dev["peer_sae"], int(dev["key_size"])
        self.ca, self.cert, self.key = (Path(dev[f]) if Path(dev[f]).is_absolute() else directory / dev[f]
                                        for f in ("ca", "cert", "key"))
        self.stream = DeviceStream(self.name)
        self.state, self.message = "starting", ""
        self.fetched = self.skipped = 0
        self.lock = asyncio.Lock()
        self.client: _Client | None = None
        self.below: dict[tuple, float] = {}  # (dir, offset) -> when both counters passed the chunk

    def dev(self, timeout: float) -> _Client:
        if self.client is None:
            self.client = _Client(self.url, self.ca, self.cert, self.key, timeout)
        return self.client


class DeviceLinks:
    """The device-fed links of one node: their streams, the fetch loops (sender side), the receiver's route."""

    def __init__(self, svc, *, poll_s: float = 0.2, timeout_s: float = 5.0, backoff_max_s: float = 5.0) -> None:
        self.svc = svc
        self.poll_s, self.timeout_s, self.backoff_max_s = poll_s, timeout_s, backoff_max_s
        self.skey = load_storage_key(svc.dir / "storage.key")
        self.db = svc.relaydb.db
        self.db.executescript(_SCHEMA)
        self.ends: dict[str, _End] = {}
        for lk in svc.conf["links"]:
            if "device" in lk:
                end = _End(svc.id, lk, svc.dir)
                self.ends[end.name] = end
        for name, d, off, _n, _ids, blob in self.db.execute(
                "SELECT link, dir, offset, nbytes, key_ids, blob FROM device_chunks ORDER BY link, dir, offset"):
            if name in self.ends:
                data = unseal(self.skey, self._aad(name, d, off), blob) if blob else b""
                self.ends[name].stream.add(d, off, data)

    @staticmethod
    def _aad(name: str, d: int, off: int) -> str:
        return f"device|{name}|{d}|{off}"

    def stream(self, name: str) -> DeviceStream:
        return self.ends[name].stream

    def _write(self, end: _End, d: int, off: int, data: bytes, ids: list[str]) -> None:
        """Store a chunk (sealed), then hold it in memory; :class:`CommitFailed` (nothing held) when the write
        fails."""
        blob = seal(self.skey, self._aad(end.name, d, off), data) if data else ""
        self.svc.relaydb.transaction(lambda db: db.execute("INSERT OR REPLACE INTO device_chunks VALUES (?,?,?,?,?,?)",
                                                           (end.name, d, off, len(data), json.dumps(ids), blob)))
        end.stream.add(d, off, data)

    def _consumed(self, end: _End, d: int) -> int:
        return int(self.svc.offsets.get((end.name, d), 0))

    def level_bits(self, name: str) -> int | None:
        end = self.ends.get(name)
        if end is None:
            return None
        return 8 * min(end.stream.held(d, self._consumed(end, d)) for d in (0, 1))

    def view(self) -> dict:
        return {name: {"state": e.state, "message": e.message, "fetched_keys": e.fetched, "skipped_keys": e.skipped,
                       "held_bits": [8 * e.stream.held(d, self._consumed(e, d)) for d in (0, 1)]}
                for name, e in self.ends.items()}

    # -- state ------------------------------------------------------------------------------
    async def _set_state(self, end: _End, state: str, message: str = "") -> None:
        old = end.state
        end.state, end.message = state, message
        if state == old or (state == "ok" and old == "starting"):
            return
        (logger.info if state == "ok" else logger.warning)("device of link %s: %s -> %s %s", end.name, old, state,
                                                           message)
        with contextlib.suppress(CommitFailed):  # the store fails a write: shown in /readyz; the state still changes
            await self.svc._commit(Batch(audit=[{"time": round(time.time(), 6), "event": "device", "link": end.name,
                                                 "state": state, "previous": old, "outcome": message or state}]))

    def _prune(self, end: _End) -> None:
        """Forget chunks both ends' counters passed more than PRUNE_AFTER_S ago (memory and store)."""
        now = time.monotonic()
        for d in (0, 1):
            consumed = self._consumed(end, d)
            keep = []
            for off, data in end.stream.chunks[d]:
                if off + len(data) <= consumed:
                    t = end.below.setdefault((d, off), now)
                    if now - t > PRUNE_AFTER_S:
                        try:
                            self.svc.relaydb.transaction(lambda db, d=d, off=off: db.execute(
                                "DELETE FROM device_chunks WHERE link=? AND dir=? AND offset=?", (end.name, d, off)))
                        except CommitFailed:  # kept, in memory as on disk: pruned by a later pass
                            keep.append([off, data])
                            continue
                        del end.below[(d, off)]
                        continue
                keep.append([off, data])
            end.stream.chunks[d] = keep

    # -- the sender's loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await asyncio.gather(*(self._loop(end) for end in self.ends.values()))
        finally:
            for end in self.ends.values():
                if end.client is not None:
                    with contextlib.suppress(Exception):
                        await end.client.close()

    async def _loop(self, end: _End) -> None:
        backoff = self.poll_s
        while True:
            try:
                self._prune(end)
                more = await self._fetch_once(end)
                if more is not None:  # a round of calls that worked
                    await self._set_state(end, "ok")
                backoff = self.poll_s
                if not more:
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except DeviceError as err:
                await self._set_state(end, err.state, str(err))
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, max(self.poll_s, backoff * 2))
            except Exception as err:  # never let one link's loop die silently
                logger.exception("device loop of link %s", end.name)
                with contextlib.suppress(Exception):  # the store failed: the node refuses requests anyway
                    await self._set_state(end, "error", type(err).__name__)
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, max(self.poll_s, backoff * 2))

    async def _fetch_once(self, end: _End) -> bool | None:
        """One status / enc_keys / device_keys round for this node's outgoing direction of ``end``.

        None: held enough, no call; True: the device holds more and there is room."""
        d = end.out_dir
        share = end.pool_bits // 2
        held = 8 * end.stream.held(d, self._consumed(end, d))
        if held > share // 2 and end.state == "ok":
            return None
        stored, size, room, enc = await enc_round(end.dev(self.timeout_s), end.peer_sae, end.key_size, share - held,
                                                  "node.json")
        if not enc:
            return False
        ids = [kid for kid, _ in enc]
        offset = end.stream.ends[d]
        body = {"link": end.name, "direction": d, "offset": offset, "key_ids": ids}
        url = f"https://{self.svc.addresses[str(end.neighbour)]}/relay/v1/device_keys"
        r = None
        for attempt in range(3):  # the same body each time: the receiver answers a retry as the first time
            try:
                r = await self.svc._http().post(url, json=body)
                if r.status_code < 500:
                    break
            except Exception:  # noqa: BLE001 -- a transport error: it may have arrived; retry
                r = None
            await asyncio.sleep(0.1 * (attempt + 1))
        answer = {}
        if r is not None:
            try:
                answer = r.json()
            except ValueError:
                answer = {}
        if r is not None and r.status_code == 409 and isinstance(answer.get("end"), int) and answer["end"] > offset:
            new_end = int(answer["end"])
            self._write(end, d, new_end, b"", [])  # the receiver's end: move this end forward to it
            key = (end.name, d)
            if self.svc.offsets.get(key, 0) < new_end:  # and the counter past the gap (a read never spans it)
                self.svc.relaydb.write({key: new_end})  # on disk first (a failure raises: retried next round)
                self.svc.offsets[key] = max(self.svc.offsets.get(key, 0), new_end)
            await self._skipped(end, ids, f"node {end.neighbour} holds this direction up to {answer['end']}")
            return True
        if r is None or r.status_code != 202:
            why = f"HTTP {r.status_code}: {str(answer.get('detail', ''))[:120]}" if r is not None else "no answer"
            await self._skipped(end, ids, f"node {end.neighbour} did not store them ({why})")
            raise DeviceError("peer", f"device_keys to node {end.neighbour}: {why}")
        got = [str(k) for k in answer.get("key_ids", [])]
        mine = dict(enc)
        if any(k not in mine for k in got) or [k for k in ids if k in set(got)] != got:
            raise DeviceError("error", f"node {end.neighbour} answered key ids that were not sent, or out of order")
        data = b"".join(mine[k] for k in got)
        self._write(end, d, offset, data, got)
        end.fetched += len(got)
        if len(got) < len(ids):
            await self._skipped(end, [k for k in ids if k not in set(got)],
                                f"node {end.neighbour} could not fetch them from its device")
        return stored > len(enc) and room > len(enc)

    async def _skipped(self, end: _End, ids: list[str], why: str) -> None:
        end.skipped += len(ids)
        await self.svc._commit(Batch(audit=[{"time": round(time.time(), 6), "event": "device_skip",
                                             "link": end.name, "key_ids": ids[:64], "skipped": len(ids),
                                             "outcome": why[:200]}]))

    # -- the receiver ------------------------------------------------------------------------------------
    async def receive(self, caller: str, w: dict) -> dict:
        try:
            name, d, offset = str(w["link"]), int(w["direction"]), int(w["offset"])
            ids = [str(k) for k in w["key_ids"]]
        except (KeyError, TypeError, ValueError):
            raise Problem(400, "Bad Request", "device_keys is {link, direction, offset, key_ids}") from None
        end = self.ends.get(name)
        if end is None or str(end.neighbour) != caller or d != end.in_dir:
            raise Problem(403, "Forbidden", f"only the sending end of a device-fed link of node {self.svc.id!r} "
                                            f"may name its device keys (link {name!r}, direction {d})")
        if not ids or len(ids) > 1024 or len(set(ids)) != len(ids) or offset < 0:
            raise Problem(400, "Bad Request", "key_ids: 1 to 1,024 distinct ids; offset non-negative")
        async with end.lock:
            row = self.db.execute("SELECT key_ids FROM device_chunks WHERE link=? AND dir=? AND offset=?",
                                  (name, d, offset)).fetchone()
            if row is not None and json.loads(row[0]) and set(json.loads(row[0])) <= set(ids):
                return {"key_ids": json.loads(row[0]), "end": end.stream.ends[d]}  # a retry: the same answer
            if offset != end.stream.ends[d]:
                raise Problem(409, "Conflict", f"link {name} direction {d}: this end's sequence ends at "
                                               f"{end.stream.ends[d]}, not {offset}", end=end.stream.ends[d])
            dev = end.dev(self.timeout_s)
            got: dict[str, bytes] = {}
            try:
                got = dict(_keys(await dev.call("POST", f"{end.peer_sae}/dec_keys",
                                                {"key_IDs": [{"key_ID": k} for k in ids]}), "dec_keys"))
            except DeviceError as err:
                if getattr(err, "status", None) != 400:
                    await self._set_state(end, err.state, str(err))
                    raise Problem(503, "Service Unavailable", f"this end's device: {err}") from None
                for kid in ids:  # one or more ids unknown here: ask for each, keep those it has
                    try:
                        got.update(_keys(await dev.call("GET", f"{end.peer_sae}/dec_keys?key_ID={kid}"), "dec_keys"))
                    except DeviceError as one:
                        if getattr(one, "status", None) != 400:
                            raise Problem(503, "Service Unavailable", f"this end's device: {one}") from None
            stored = [k for k in ids if got.get(k)]
            if stored:  # a write that fails: 503, nothing held here, so the sender skips them too (used by neither)
                self._write(end, d, offset, b"".join(got[k] for k in stored), stored)
            end.fetched += len(stored)
            end.skipped += len(ids) - len(stored)
            return {"key_ids": stored, "end": end.stream.ends[d]}

    def routes(self) -> list[Route]:
        @problem_routes
        async def device_keys(request: Request):
            role = require(request, "node")
            return json_response(await self.receive(role.ident, await read_json(request)), 202)

        return [Route("/relay/v1/device_keys", device_keys, methods=["POST"])]
