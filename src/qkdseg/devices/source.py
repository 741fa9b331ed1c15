"""Link keys from QKD devices over ETSI GS QKD 014: :class:`Etsi014KeySource` (docs/kms.md, "Link keys from devices").

A link's two ends are SAEs of their QKD devices' KMEs. For each link the
source runs one fetch loop, on the service's event loop:

1. ``GET {a_url}/api/v1/keys/{b_sae}/status`` as end *a* (its client
   certificate): the device's ``stored_key_count`` and ``key_size``;
2. ``POST {a_url}/api/v1/keys/{b_sae}/enc_keys`` as *a* for as many keys as
   the device holds and the link's pool has room for (at most the device's
   ``max_key_per_request``);
3. ``POST {b_url}/api/v1/keys/{a_sae}/dec_keys`` as end *b* with those key
   ids (one by one when the batch is refused with 400, so that one lost
   key does not cost the others);
4. keys that both ends got, with the same bytes, are stored encrypted in
   the service's database (``device_keys``) in the order *a* received them,
   and only then count in the link's level; a key id that end *b* could
   not fetch, or whose bytes differ, is recorded as ``skipped`` and used by
   neither end.

The relays read a link's key as one byte stream: the held device keys in
order, each byte once (the bytes used are committed with the request that
used them). **[choice]** The level a request routes on is the bits held
(fetched and not yet used), not the device's buffer too: a relay reads its
bytes synchronously and must never be promised bits it cannot read; the
loop fetches as soon as the device reports keys (every ``device_poll_s``),
so the device's buffer stays near empty while the pool has room, and the
device's own count is shown beside the level (``device_bits``).

A device error (a 503 or other refusal, a timeout, a 401, a device that
does not answer) leaves the level at what is held, sets the link's device
state (shown on the dashboard), is audited when the state changes, and the
loop retries with a doubling back-off up to ``device_backoff_max_s``; the
service itself never stops for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections import deque
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest
from ..network import Network
from ..server.config import DeviceLink
from ..server.etsi import KmsError
from ..server.store import Batch

logger = logging.getLogger("qkdseg.kms")

#: The device states a link can be in (``ok``: the last exchange worked).
DEVICE_STATES = ("starting", "ok", "no_key", "refused", "unauthorized", "timeout", "unreachable", "error")
class DeviceError(Exception):
    """One failed exchange with a device: its state (:data:`DEVICE_STATES`) and a message."""

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state


class _Client:
    """One end's ETSI 014 client: httpx over mutual TLS, with the configured timeout."""

    def __init__(self, base: str, ca: Path, cert: Path, key: Path, timeout: float):
        import httpx

        for p in (ca, cert, key):
            if not p.is_file():
                raise InvalidRequest(f"{p}: no such file (a device link's TLS material in kms.toml)")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.base = base.rstrip("/") + "/api/v1/keys"
        self.http = httpx.AsyncClient(verify=ctx, timeout=timeout, limits=httpx.Limits(max_connections=2))

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        try:
            if method == "GET":
                r = await self.http.get(f"{self.base}/{path}")
            else:
                r = await self.http.post(f"{self.base}/{path}", json=body)
        except httpx.TimeoutException:
            raise DeviceError("timeout", f"{path}: no answer within device_timeout_s") from None
        except (httpx.TransportError, ssl.SSLError, OSError) as err:
            raise DeviceError("unreachable", f"{path}: {type(err).__name__}: {str(err)[:120]}") from None
        if r.status_code != 200:
            try:
                msg = str(r.json().get("message", ""))[:160]
            except ValueError:
                msg = r.text[:160]
            state = {401: "unauthorized", 503: "no_key"}.get(r.status_code, "refused")
            err = DeviceError(state, f"{path}: HTTP {r.status_code}: {msg}")
            err.status = r.status_code  # type: ignore[attr-defined]
            raise err
        try:
            data = r.json()
        except ValueError:
            raise DeviceError("error", f"{path}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise DeviceError("error", f"{path}: the answer is not a JSON object")
        return data

    async def close(self) -> None:
        await self.http.aclose()


async def enc_round(client: "_Client", peer_sae: str, key_size: int, room_bits: int, config: str, seen=None):
    """One sending end's device round: ``status``, then ``enc_keys`` for as many keys as fit in ``room_bits`` (at most
    the device's ``max_key_per_request``). Returns ``(stored, size, room, keys)``, ``keys`` empty when none fit;
    ``seen(bits)`` gets the device's count from ``status`` first. :class:`DeviceError` for an answer that does not fit
    (``config`` names the file whose key size it contradicts). Used by the centralized service's
    :class:`Etsi014KeySource` and by the nodes' device-fed links (:mod:`qkdseg.net.devicelinks`)."""
    st = await client.call("GET", f"{peer_sae}/status")
    try:
        stored, size, most = int(st["stored_key_count"]), int(st["key_size"]), int(st["max_key_per_request"])
    except (KeyError, TypeError, ValueError):
        raise DeviceError("error", "status: missing stored_key_count, key_size or max_key_per_request") from None
    if seen is not None:
        seen(stored * size)
    if size != key_size:
        raise DeviceError("refused", f"status: the device's key_size is {size}, {config} asks for {key_size}")
    room = room_bits // size
    number = min(stored, room, max(1, most))
    if number <= 0:
        return stored, size, room, []
    enc = _keys(await client.call("POST", f"{peer_sae}/enc_keys", {"number": number, "size": size}), "enc_keys")
    if len({kid for kid, _ in enc}) != len(enc):
        raise DeviceError("error", "enc_keys: a key id given twice")
    return stored, size, room, enc


def _keys(data: dict, where: str) -> list[tuple[str, bytes]]:
    out = []
    items = data.get("keys")
    if not isinstance(items, list):
        raise DeviceError("error", f"{where}: no keys array in the answer")
    for item in items:
        try:
            out.append((str(item["key_ID"]), base64.b64decode(item["key"], validate=True)))
        except (KeyError, TypeError, ValueError):
            raise DeviceError("error", f"{where}: a key without a key_ID or valid base64 key") from None
    return out


class Etsi014KeySource:
    """The key source of links fed by QKD devices over ETSI 014 (:class:`.source.KeySource`).

    Parameters
    ----------
    network : Network
    links : dict
        Link index (network link order) -> :class:`DeviceLink`; every link needs one.
    store : Store
        Holds the fetched keys (sealed) and the bytes used of each.
    directory : Path
        The service directory (relative TLS paths).
    capacity : numpy.ndarray
        Each link's pool capacity, bits: the loop fetches no more than fits.
    poll_s, timeout_s, backoff_max_s : float
        Seconds between status polls, per device call, and the longest retry wait.
    """

    def __init__(self, network: Network, links: dict[int, DeviceLink], store, directory: Path, capacity,
                 *, poll_s: float = 0.2, timeout_s: float = 5.0, backoff_max_s: float = 5.0, clock=time.time) -> None:
        a = network.arrays
        self.arrays = a
        self.links = links
        self.store = store
        self.directory = Path(directory)
        self.capacity = np.asarray(capacity, dtype=np.int64)
        self.poll_s, self.timeout_s, self.backoff_max_s = poll_s, timeout_s, backoff_max_s
        self.clock = clock
        n = a.n_links
        missing = [k for k in range(n) if k not in links]
        if missing:
            k = missing[0]
            raise InvalidRequest(f"link_source = \"device\" but link ({a.node_ids[a.edge_u[k]]}, "
                                 f"{a.node_ids[a.edge_v[k]]}) has no [device_links] table in kms.toml "
                                 f"({len(missing)} link(s) without one)")
        self._held: list[deque] = [deque() for _ in range(n)]  # [seq, key_id, bytearray remaining, used, nbytes]
        self.held_bits = np.zeros(n, dtype=np.int64)
        self._new = np.zeros(n, dtype=np.float64)  # bits fetched since the last produced()
        self._used: dict[tuple[int, int], int] = {}
        self.device_bits = np.zeros(n, dtype=np.int64)
        self.state = ["starting"] * n
        self.message = [""] * n
        self.fetched_keys = np.zeros(n, dtype=np.int64)
        self.skipped_keys = np.zeros(n, dtype=np.int64)
        self._seq = store.device_seq()
        for k, seq, key_id, nbytes, used, blob in store.load_device_keys():
            material = store.open_device(k, seq, key_id, blob)
            self._held[k].append([seq, key_id, bytearray(material[used:]), used, nbytes])
            self.held_bits[k] += 8 * (nbytes - used)
        self.service = None
        self._tasks: list[asyncio.Task] = []

    # -- the KeySource interface -------------------------------------------------------
    def produced(self, seconds) -> np.ndarray:
        """Bits fetched and stored since the last call (the device's own rate is the device's business)."""
        out, self._new = self._new, np.zeros_like(self._new)
        return out

    def initial_levels(self) -> np.ndarray:
        """The level each link starts with: the bits held (capped at its capacity)."""
        return np.minimum(self.held_bits, self.capacity)

    def read(self, link, nbytes: int) -> bytes:
        """The link's next ``nbytes`` held bytes, in fetch order; each byte once."""
        a = self.arrays
        k = a.edge_index(a.index[link[0]], a.index[link[1]])
        queue = self._held[k]
        out = bytearray()
        while len(out) < nbytes:
            if not queue:
                raise KmsError(503, f"link ({link[0]}, {link[1]}): the device keys held are fewer than its level "
                                    "(nothing was issued)", reason="device_short")
            item = queue[0]
            take = min(nbytes - len(out), len(item[2]))
            out += item[2][:take]
            del item[2][:take]
            item[3] += take
            self._used[(k, item[0])] = item[3]
            if not item[2]:
                queue.popleft()
        self.held_bits[k] -= 8 * nbytes
        return bytes(out)

    def changes(self, batch: Batch) -> None:
        """Put the bytes used since the last call into ``batch`` (committed with the request that used them)."""
        if self._used:
            batch.device_used.update(self._used)
            self._used = {}

    def requeue(self, used: dict[tuple[int, int], int]) -> None:
        """The bytes used of a request whose commit failed: recorded used with the next commit (they are never read
        again, though nobody saw them: memory stays ahead of the store on the safe side)."""
        for key, n in used.items():
            self._used[key] = max(self._used.get(key, 0), n)

    def view(self) -> dict:
        """Per link: device state, the device's reported bits, bits held, keys fetched and skipped (dashboard)."""
        return {"states": list(self.state), "device_bits": self.device_bits.tolist(),
                "held_bits": self.held_bits.tolist(), "fetched_keys": self.fetched_keys.tolist(),
                "skipped_keys": self.skipped_keys.tolist(), "messages": list(self.message)}

    # -- the fetch loops ---------------------------------------------------------------------
    def _name(self, k: int) -> str:
        a = self.arrays
        return f"{a.node_ids[a.edge_u[k]]}|{a.node_ids[a.edge_v[k]]}"

    async def run(self, service) -> None:
        """Run every link's fetch loop until cancelled (the service's lifespan starts it)."""
        self.service = service
        clients: dict[tuple, _Client] = {}

        def client(url: str, cert: str, key: str, ca: str) -> _Client:
            ident = (url, cert, key, ca)
            if ident not in clients:
                p = lambda s: Path(s) if Path(s).is_absolute() else self.directory / s  # noqa: E731
                clients[ident] = _Client(url, p(ca), p(cert), p(key), self.timeout_s)
            return clients[ident]

        try:
            loops = []
            for k, dl in sorted(self.links.items()):
                a = client(dl.a_url, dl.a_cert, dl.a_key, dl.ca)
                b = client(dl.b_url, dl.b_cert, dl.b_key, dl.ca)
                loops.append(self._loop(k, dl, a, b))
            await asyncio.gather(*loops)
        finally:
            for c in clients.values():
                try:
                    await c.close()
                except Exception:  # noqa: BLE001
                    pass

    async def _set_state(self, k: int, state: str, message: str = "") -> None:
        if state == self.state[k]:
            self.message[k] = message
            return
        old, self.state[k], self.message[k] = self.state[k], state, message
        if state == "ok" and old == "starting":
            return
        rec = {"time": round(self.clock(), 6), "event": "device", "link": self._name(k), "state": state,
               "previous": old, "outcome": message or state}
        (logger.info if state == "ok" else logger.warning)("device of link %s: %s -> %s %s", self._name(k), old,
                                                           state, message)
        await self.service._commit(Batch(audit=[rec]))
        self.service._notify(rec)

    async def _loop(self, k: int, dl: DeviceLink, a: _Client, b: _Client) -> None:
        backoff = self.poll_s
        while True:
            try:
                more = await self._fetch_once(k, dl, a, b)
                if more is None:  # the pool is full: no call was made, the state stays as it was
                    await asyncio.sleep(self.poll_s)
                    continue
                await self._set_state(k, "ok")
                backoff = self.poll_s
                if more:
                    continue
                await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except KmsError:  # the store failed a write (nothing of it stored): try again after the back-off
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, max(self.poll_s, backoff * 2))
            except DeviceError as err:
                self.device_bits[k] = 0
                with contextlib.suppress(KmsError):  # a store that fails a write: the state is still shown
                    await self._set_state(k, err.state, str(err))
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, max(self.poll_s, backoff * 2))
            except Exception as err:  # noqa: BLE001 -- never let one link's loop die silently
                logger.exception("device loop of link %s", self._name(k))
                with contextlib.suppress(KmsError):
                    await self._set_state(k, "error", f"{type(err).__name__}")
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, max(self.poll_s, backoff * 2))

    async def _fetch_once(self, k: int, dl: DeviceLink, a: _Client, b: _Client) -> bool | None:
        """One status / enc_keys / dec_keys round; True when the device holds more keys than this round took.

        A link whose pool has no room for one key is not polled (None: no call until a relay uses some of its key).
        """
        if int(self.capacity[k] - self.held_bits[k]) < dl.key_size and self.state[k] != "starting":
            return None
        def seen(bits: int) -> None:
            self.device_bits[k] = bits

        stored, size, room, enc = await enc_round(a, dl.b_sae, dl.key_size,
                                                  int(self.capacity[k] - self.held_bits[k]), "kms.toml", seen)
        if not enc:
            return False
        ids = [kid for kid, _ in enc]
        try:
            got = dict(_keys(await b.call("POST", f"{dl.a_sae}/dec_keys",
                                          {"key_IDs": [{"key_ID": kid} for kid in ids]}), "dec_keys"))
        except DeviceError as err:
            if getattr(err, "status", None) != 400:
                await self._store(k, enc, {}, reason=str(err))  # end b has none of them: all skipped
                raise
            got = {}  # one or more ids unknown to end b: ask for each, keep those it has
            for kid in ids:
                try:
                    got.update(_keys(await b.call("GET", f"{dl.a_sae}/dec_keys?key_ID={kid}"), "dec_keys"))
                except DeviceError as one:
                    if getattr(one, "status", None) != 400:
                        await self._store(k, enc, got, reason=str(one))
                        raise
        await self._store(k, enc, got)
        self.device_bits[k] = max(0, stored - len(enc)) * size
        return stored > len(enc) and room > len(enc)

    async def _store(self, k: int, enc: list[tuple[str, bytes]], got: dict[str, bytes], reason: str = "") -> None:
        """Commit the keys both ends got (in end a's order) and record the others as skipped; then count them."""
        now = self.clock()
        seq = self._seq.get(k, 0)
        rows, held, skipped = [], [], []
        known = {item[1] for item in self._held[k]}  # a device that repeats a held key's id: skip the repeat
        for kid, material in enc:
            seq += 1
            if got.get(kid) == material and material and kid not in known:
                known.add(kid)
                rows.append((k, seq, kid, len(material), 0, "held", self.store.seal_device(k, seq, kid, material), now))
                held.append([seq, kid, bytearray(material), 0, len(material)])
            else:
                rows.append((k, seq, kid, len(material), 0, "skipped", b"", now))
                skipped.append(kid)
        batch = Batch(device_put=rows)
        if skipped:
            why = reason or "end b got no key, or other bytes, for these ids"
            batch.audit.append({"time": round(now, 6), "event": "device_skip", "link": self._name(k),
                                "key_ids": skipped[:64], "skipped": len(skipped), "outcome": why[:200]})
        await self.service._commit(batch)
        self._seq[k] = seq
        self._held[k].extend(held)
        bits = 8 * sum(item[4] for item in held)
        self.held_bits[k] += bits
        self._new[k] += bits
        self.fetched_keys[k] += len(held)
        self.skipped_keys[k] += len(skipped)


def device_source(cfg, network: Network, store, capacity) -> Etsi014KeySource:
    """The :class:`Etsi014KeySource` of a ``kms.toml`` with ``link_source = "device"``."""
    a = network.arrays
    links: dict[int, DeviceLink] = {}
    where = str(cfg._dir / "kms.toml")
    for name, table in cfg.device_links.items():
        u, sep, v = name.partition("|")
        if not sep:
            raise InvalidRequest(f"{where}: [device_links.{name!r}] must be named \"U|V\" (the link's two node ids)")
        try:
            iu, iv = a.index[network.resolve(u)], a.index[network.resolve(v)]
            k = a.edge_index(iu, iv)
        except Exception:  # noqa: BLE001 -- a node not in the network
            k = -1
        if k < 0:
            raise InvalidRequest(f"{where}: [device_links.{name!r}]: no link ({u}, {v}) in the network")
        dl = DeviceLink.from_table(name, table, where)
        if a.edge_u[k] != iu:  # named V|U: swap the ends so that end a is the link's first node
            dl = DeviceLink(dl.b_sae, dl.a_sae, dl.b_url, dl.a_url, dl.ca, dl.b_cert, dl.b_key, dl.a_cert, dl.a_key,
                            dl.key_size)
        links[k] = dl
    return Etsi014KeySource(network, links, store, cfg._dir, capacity, poll_s=cfg.device_poll_s,
                            timeout_s=cfg.device_timeout_s, backoff_max_s=cfg.device_backoff_max_s)
