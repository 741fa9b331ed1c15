"""``qkdseg node serve NODEDIR``: one node's KME (docs/network.md).

One TLS 1.3 listener, told apart by path and by the caller's certificate role:

- ``/api/v1/keys/...``: ETSI GS QKD 014 to the SAEs attached to this node,
  the same front end as ``kms serve`` (:func:`qkdseg.server.frontend.create_app`);
- ``/relay/v1/messages``: relay messages from other nodes (pieces only from
  neighbours); accepted with 202 once stored, idempotent by message id;
- ``/relay/v1/ack``: the receiver's acknowledgement (020's statuses);
- ``/relay/v1/links``: this node's offsets (after a crash a neighbour skips
  forward to the larger);
- ``/relay/v1/spares``: the other end of a pair checks its spare keys (those
  held by one end only after a crash are dropped: :mod:`.reconcile`);
- ``/control/v1/parts``, ``/control/v1/void``: the controller's plan parts;
- it reports its links (ETSI GS QKD 015's ``qkd_node``, a subset) to the
  controller's ``/control/v1/links`` after its start and every
  ``QKDSEG_REPORT_S`` seconds (default 5);
- ``/health`` (with ``device_links`` on a device-fed node: each link's device state, keys fetched
  and skipped, bits held).

A node never routes: this module imports no routing kernel, no numba and
no scipy. It runs its part of each request with the node-local relay steps
of :mod:`qkdseg.keys.steps`, the same steps ``kms serve`` runs in one process.

This module assembles :class:`NodeService` from its parts: the relay store
and link ends (:mod:`.relaystore`), the relay messages (:mod:`.messaging`),
the requests' state machine (:mod:`.relayrequests`), the ETSI 014 service
(:mod:`.etsi_node`), the spare keys (:mod:`.spares`), the check of spare keys
held by one end only (:mod:`.reconcile`) and the reports to the
controller (:mod:`.reports`); here are its state, its expiry and its tasks,
and :func:`serve_node`; the listener's routes are :mod:`.nodeapp`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path
from types import SimpleNamespace

from ..errors import InvalidRequest
from ..server.audit import DEFAULT_AUDIT_MAX_MB, audit_max_bytes, load_audit_key
from ..server.files import check_fields, load_json, port_of
from ..server.groupcommit import GroupCommit
from ..server.storagekey import load_storage_key
from ..server.quota import Quotas
from ..server.store import Batch, KeyRow, Store
from ..server.storehealth import CommitFailed
from .etsi_node import EtsiNode
from .keystream import LinkStream
from .layout import link_name, unseal
from .limits import EARLY_S, Early
from .messaging import Messaging
from .reconcile import Reconcile
from .relayrequests import REQUEST_TIMEOUT_S, RelayRequests, ReqState
from .relaystore import NetLinkEnd, RelayDB
from .retention import prune_relay, window
from .reports import MAX_EVENTS, Reports
from .spares import Spares
from .inventory import check_cert_address
from .wire import client_context, server_context

TAP_ENV = "QKDSEG_ALLOW_TAP"
logger = logging.getLogger("qkdseg.net")


def load_node_conf(d: Path) -> dict:
    """``DIR/node.json``, checked field by field (a damaged file is one line naming it and the field)."""
    path = d / "node.json"
    conf = load_json(path, "the node's configuration",
                     missing=f"{d}: not a node directory (no node.json; run 'qkdseg net init' first)")

    def positive(name: str) -> bool:
        v = float(conf["etsi"][name])
        return math.isfinite(v) and (0 <= v <= 1 if name == "security_level" else v > 0)

    def links() -> None:
        for lk in conf["links"]:
            u, v = lk["link"]
            if lk["neighbour"] not in (u, v) or int(lk["pool_bits"]) < 0:
                raise ValueError(lk)

    def own_id() -> bool:  # a node of the network's address book, and an end of each of its links
        return str(conf["id"]) in conf["addresses"] and all(conf["id"] in lk["link"] for lk in conf["links"])

    check_fields(path, "the node's configuration", [
        ("id", lambda: str(conf["id"])), ("etsi", lambda: SimpleNamespace(**conf["etsi"])),
        *((f"etsi.{name}", lambda name=name: positive(name))
          for name in ("key_ttl_s", "key_size", "max_key_count", "max_body_bytes", "header_timeout_s",
                       "body_timeout_s", "max_connections", "keep_alive_s", "security_level")),
        *((f"etsi.{name}", lambda name=name: 0 <= float(conf["etsi"].get(name, 0)) <= 2**53)
          for name in ("sae_max_waiting", "sae_rate")),  # net init --sae-max-waiting, --sae-rate (0: none)
        ("saes", lambda: isinstance(conf["saes"], list)), ("registry", lambda: isinstance(conf["registry"], dict)),
        ("addresses", lambda: isinstance(conf["addresses"], dict)), ("links", links), ("id", own_id),
        ("address", lambda: port_of(conf["address"])), ("controller", lambda: port_of(conf["controller"])),
        ("link_seeds", lambda: conf.get("link_seeds", "admin") in ("admin", "agree")),  # net init --link-seeds
        ("topology_version", lambda: type(conf.get("topology_version", 0)) is int  # net add-node ... (.nodemembers)
         and conf.get("topology_version", 0) >= 0), ("removed", lambda: isinstance(conf.get("removed", {}), dict)),
        *((name, lambda name=name: math.isfinite(float(conf.get(name, 0))) and float(conf.get(name, 0)) >= 0)
          for name in ("retention_s", "clock_skew_s", "audit_max_mb")),  # net init --retention ... (.retention)
    ])
    return conf


def _unseal_link(d: Path, skey: bytes, name: str, sealed: dict) -> bytes:
    """The seed of link ``name`` from ``links.sealed.json``; one line when it is missing or does not open."""
    path = d / "links.sealed.json"
    if name not in sealed:
        raise InvalidRequest(f"{path}: the node's file of sealed link seeds is damaged: link {name} is missing; "
                             "restore it from a backup or run 'qkdseg net init' again")
    try:
        return unseal(skey, name, sealed[name])
    except Exception:  # noqa: BLE001 -- bad base64, a cut blob, or another storage key: the file cannot be used
        raise InvalidRequest(f"{path}: link {name}'s seed does not open with {d / 'storage.key'} (the file is "
                             "damaged, or the storage key is another directory's); restore both from one backup"
                             ) from None


class NodeService(Messaging, RelayRequests, EtsiNode, Spares, Reconcile, Reports):
    """One node: its link ends, its SAEs' keys (AES-GCM at rest, audited), its part of each request."""

    def __init__(self, directory: Path, *, tap: Path | None = None) -> None:
        d = Path(directory)
        self.conf = load_node_conf(d)
        self.dir = d
        self.id = self.conf["id"]
        e = self.conf["etsi"]
        self.cfg = SimpleNamespace(**e)
        self.saes = set(self.conf["saes"])
        self.registry: dict[str, str] = self.conf["registry"]
        skey = load_storage_key(d / "storage.key")  # never made here: a missing key refuses to start
        sealed = load_json(d / "links.sealed.json", "the node's file of sealed link seeds")
        # the directory's lock (one process per node), the storage key's check value, the keyed audit chain
        self.store = Store(d, skey, load_audit_key(d / "audit.key"), durability="normal",
                           audit_max_bytes=audit_max_bytes(self.conf.get("audit_max_mb", DEFAULT_AUDIT_MAX_MB)))
        self.window = window(self.conf)  # (retention_s, clock_skew_s): .retention
        self.committer = GroupCommit(self.store, inline=True)  # durability "normal": no wait for the disk
        self.relaydb = RelayDB(d / "relay.sqlite3", self.store.health)  # its failures count in the same health
        self.offsets = self.relaydb.offsets()
        self._dirty: dict = {}
        self.links: dict = {}  # neighbour id -> NetLinkEnd
        self.neighbours: dict[str, object] = {}
        self.device = None  # the device-fed links (net init --link-source device): .devicelinks
        if any("device" in lk for lk in self.conf["links"]):
            from .devicelinks import DeviceLinks

            self.device = DeviceLinks(self)
        self.seeds = None  # net init --link-seeds agree: the seeds this node agrees with its neighbours (.linkseeds)
        if self.conf.get("link_seeds") == "agree":
            from .linkseeds import LinkSeeds

            self.seeds = LinkSeeds(self, skey, sealed)
        for lk in self.conf["links"]:
            u, v = lk["link"]
            name = link_name(u, v)
            if "device" in lk:
                stream = self.device.stream(name)
            elif self.seeds is not None:  # usable once both ends hold the same seed
                stream = self.seeds.add(lk, _unseal_link(d, skey, name, sealed) if name in sealed else None)
            else:
                stream = LinkStream(_unseal_link(d, skey, name, sealed))
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
        self.spares_out: dict[str, KeyRow] = {}  # at a source: spare keys taken from the pool (issued now, set aside)
        self.finishing: set[str] = set()  # at a source: relays done whose keys it is storing (.reconcile)
        self._checks: dict[tuple, bool] = {}  # the pairs whose spare keys are being checked with the other end
        for row in self.store.load_keys():
            if row.kind == "issued":
                self.keys[row.key_id] = row
            elif row.kind == "spare" and row.master in self.saes:
                self.spares[(row.master, row.slave)].append(row)
            elif row.kind == "spare":
                self.held_spares[row.key_id] = row
        from .restore import check_restored

        self.restored = check_restored(self)  # a copy put back: its keys voided, new link streams (.restore)
        self.pending: set[str] = set()
        self.quotas = Quotas(self.cfg)  # max_key_count, sae_max_waiting (keys waiting here), sae_rate (.quota)
        self.init_stock()  # self.stock: node.json's key stocks (.spares; None without)
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
        self.watchdog = None  # serve_node's (--exit-after-unready)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.store.health.listeners.append(self._health_changed)
        self.on_relay = None  # (destination, [(kind, accepted)]) after each POST of relay messages (.ops: metrics)
        self.early = Early()  # per sender: messages held for requests this node has no part of yet (.limits)
        self.hostile = None  # TEST ONLY: the hostile-node harness (net/hostile.py), set by serve_node
        skip = self.conf.get("max_skip_bits")  # net init --max-skip-bits; None: each link's pool size
        self._windows = {end.name: (int(skip) if skip is not None else int(lk["pool_bits"])) // 8
                         for lk in self.conf["links"] for end in [self.links[lk["neighbour"]]]}
        from .nodemembers import attach

        attach(self)  # its topology version, the removed nodes (net add-node, remove-node, ...: .nodemembers)

    # -- what a neighbour may make this node hold or skip (issue 33, .limits, .linkhealth) ----------------
    def window_bytes(self, end) -> int:
        """How far (bytes) a neighbour may move this end's counter or mark on ``end``'s link in one claim."""
        return self._windows[end.name]

    def hold_early(self, rid: str, w: dict) -> None:
        """Keep a message (counted against its sender's backlog in :func:`.nodeapp.accept`) until the request's
        part comes, at most ``EARLY_S`` seconds."""
        st = self.requests.get(rid)
        if st is None:
            st = self.requests[rid] = ReqState(rid)
            asyncio.get_running_loop().call_later(EARLY_S, self._drop_early, rid, st)
        st.early.append(w)

    def _drop_early(self, rid: str, st: ReqState) -> None:
        """``EARLY_S`` after the first message of a request this node had no part of: if it still has none (and
        no SAE waits on it), drop the messages held (their memory goes back) and the request's state."""
        if st.relay is not None:  # its part came: take_early released them
            return
        for w in st.early:  # the sender's backlog is freed whatever happened to the state meanwhile
            if w.pop("_early", False):
                self.early.release(str(w["src"]), w)
        if self.requests.get(rid) is st and st.future is None:
            del self.requests[rid]
            self.stats["early_dropped"] += len(st.early)
            st.early.clear()

    def take_early(self, st: ReqState) -> list[dict]:
        """The messages held for ``st`` now that its part came: their backlog released; those the plan does not
        name the sender of are dropped (a ``global`` not from the previous segment node, pieces not from a
        previous hop), logged."""
        from .nodeapp import planned_sender

        out = []
        for w in st.early:
            if w.pop("_early", False):
                self.early.release(str(w["src"]), w)
            if planned_sender(st.relay.part, w["kind"], w["src"]):
                out.append(w)
            else:
                self.stats["early_refused"] += 1
                logger.warning("request %s: a %s message from node %s, which its plan does not name, was dropped",
                               st.request_id, w["kind"], w["src"])
        st.early.clear()
        return out

    # -- expiry and the node's tasks -----------------------------------------------------
    async def expiry_loop(self) -> None:
        while True:
            # a pass every 5% of the window (at most 30 s): a node holds at most about 1.05 windows of rows
            await asyncio.sleep(max(0.05, min(30.0, self.cfg.key_ttl_s / 4, self.window[0] / 20)))
            now = time.time()
            self.stats["relay_rows_pruned"] += await prune_relay(self, now, REQUEST_TIMEOUT_S)
            gone = [r for r in self.keys.values() if r.expires_at <= now]
            for r in gone:
                del self.keys[r.key_id]
            held = [r for r in self.held_spares.values() if r.expires_at <= now]
            for r in held:
                del self.held_spares[r.key_id]
            pooled = []
            for pair, pool in self.spares.items():
                old = [r for r in pool if r.expires_at <= now]
                for r in old:
                    pool.remove(r)
                pooled += [(pair, r) for r in old]
            stale = [rid for rid, st in self.requests.items() if time.monotonic() - st.created > 3 * REQUEST_TIMEOUT_S]
            for rid in stale:
                self.requests.pop(rid, None)
            old, self._voidable = self._voidable, list(self.request_keys)
            for rid in old:  # a source voids within its timeout; after that the stored ids are forgotten
                self.request_keys.pop(rid, None)
                self.request_keys_source.pop(rid, None)
                self._tapped.pop(rid, None)
            spare_gone = [r.key_id for r in held] + [r.key_id for _, r in pooled]
            if gone or spare_gone:
                try:
                    await self._commit(Batch(delete_keys=[r.key_id for r in gone] + spare_gone, audit=[{
                        "time": round(now, 6), "event": "expire", "key_ids": [r.key_id for r in gone],
                        "spare_keys": len(spare_gone), "outcome": "deleted after key_ttl_s"}]))
                except CommitFailed:  # still stored: back in memory (expired: never delivered), the next pass retries
                    self.keys.update((r.key_id, r) for r in gone)
                    self.held_spares.update((r.key_id, r) for r in held)
                    for pair, r in pooled:
                        self.spares[pair].append(r)
                    continue
                if self.stock is not None:  # stocked keys expired unused, at the master's and the slave's node
                    unused = [((r.master, r.slave), r) for r in held] + pooled
                    for pair in {p for p, _ in unused}:
                        self.stock.expired_rows(pair, [r for p, r in unused if p == pair])

    def _health_changed(self, step: str, failed: bool) -> None:
        """The store's health changed (on any thread): the next link report, with the node's readiness, goes now."""
        if self._loop is not None and self._report_now is not None:
            self._loop.call_soon_threadsafe(self._report_now.set)

    async def start_tasks(self) -> None:
        self._loop = asyncio.get_running_loop()
        seeding = [asyncio.ensure_future(self.seeds.run())] if self.seeds is not None else []  # first: .linkseeds
        await self.sync_offsets()
        await self.check_all()  # spare keys held by one end only (a crash cut a relay): .reconcile
        loops = [self.report_links(), *seeding]
        if self.device is not None:  # and keep each device-fed link's outgoing direction topped up
            loops.append(self.device.run())
        if self.stock is not None:  # and refill the stocks of this node's master SAEs (qkdseg.server.stock)
            loops.append(self.stock.run())
        await asyncio.gather(*loops)

    def close(self) -> None:
        self.committer.close()
        self.relaydb.close()
        if self.tap is not None:
            self.tap.close()


def serve_node(directory: str | Path, *, tap: Path | None = None, metrics_port: int | None = None,
               log_level: str = "warning", log_format: str = "text", exit_after_unready: float = 30.0) -> int:
    """Serve one node until SIGINT/SIGTERM (``metrics_port``, logs: :mod:`.ops`, :mod:`qkdseg.server.logs`; the
    stop: :mod:`qkdseg.server.serving`, exit 0 with its stores closed and checkpointed). Returns the exit status:
    1 after ``exit_after_unready`` seconds of a failing store (:mod:`qkdseg.server.watchdog`)."""
    from ..server import logs, serving
    from ..server.http import limited_protocol, listen_socket
    from ..server.watchdog import Watchdog
    from .nodeapp import create_node_app
    from .ops import attach_node
    from .wire import RolePeerProtocol

    if tap is None and os.environ.get("QKDSEG_TAP_DIR"):  # net up passes the tap to every node this way
        tap = Path(os.environ["QKDSEG_TAP_DIR"]) / f"{Path(directory).resolve().name}.jsonl"
    if tap is not None and os.environ.get(TAP_ENV) != "1":
        raise InvalidRequest(f"--tap records plaintext pieces (the adversary's tap, for the compromise test only); "
                             f"it is refused unless {TAP_ENV}=1")
    from .hostile import Hostile

    hostile = Hostile.from_env()  # TEST ONLY (refused unless QKDSEG_ALLOW_HOSTILE=1)
    logs.configure(log_level, log_format, prefix="qkdseg node")
    serving.private_files()
    d = Path(directory)
    with serving.stop_signals() as early, serving.profiled(f"node-{d.resolve().name}"):
        svc = NodeService(d, tap=tap)
        svc.hostile = hostile
        svc.watchdog = Watchdog(svc.store.health, exit_after_unready, probes=[svc.committer.probe, svc.relaydb.probe])
        logs.configure(log_level, log_format, prefix=f"qkdseg node {svc.id}")
        try:
            check_cert_address(d / "node.crt", svc.conf["address"], str(d / "node.json"))  # one line, not refusals
            host, port = svc.conf["address"].rsplit(":", 1)
            c = svc.cfg
            http = limited_protocol(RolePeerProtocol, header_timeout=c.header_timeout_s,
                                    body_timeout=c.body_timeout_s, max_connections=c.max_connections)
            serving.serve(create_node_app(svc), listen_socket(host, int(port)), http=http,
                          ctx=server_context(d / "node.crt", d / "node.key", d / "ca.crt"), certfile=d / "node.crt",
                          keep_alive_s=c.keep_alive_s, ops=attach_node(svc), metrics_port=metrics_port,
                          log_level=log_level, early=early, watchdog=svc.watchdog,
                          announce=f"listening on https://{host}:{port} ({len(svc.saes)} SAEs, {len(svc.links)} links)")
        finally:
            svc.close()
    logs.say("stopped", err=True)
    return svc.watchdog.exit_status
