"""``qkdseg controller serve CTRLDIR``: the paper's centralized key management server (docs/network.md).

It keeps the topology, the SAE registry and every link's level (bits), and
plans each request exactly as ``kms serve`` does, with the same planner
(:class:`qkdseg.server.planner.Planner` on a :class:`qkdseg.server.core.ServiceState`,
which holds no key): it routes with the routing registry on the current
levels, chooses the reconstruction at the requested level, reserves the bits of every link of the route (amounts, never
offsets: the nodes own those), and sends each node of the route its part
(:func:`qkdseg.keys.steps.node_parts`). **It never holds key material**: no
piece, no segment key, no global key, no link seed reaches it.

API (mutual TLS 1.3; callers by certificate role):

- ``POST /control/v1/plans`` (nodes): plan a request of the node's own SAE;
- ``GET /control/v1/status`` (nodes): what ``status`` of ETSI 014 reports;
- ``POST /control/v1/links`` (nodes): a node's report of its links (ETSI GS
  QKD 015's ``qkd_node``, a subset); where it shows more bits consumed (or a
  lower level) than the controller's model, the model takes the report's;
- ``GET /health`` (any).

Test only: ``--capture FILE`` (or ``QKDSEG_CAPTURE_FILE``, which ``net up``
passes on) records every request body the controller receives and every
response body it gets back from the nodes, as received, so that a test can
look for key material in them. It is refused unless
``QKDSEG_ALLOW_CAPTURE=1`` (docs/network.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from ..errors import InvalidRequest, env_number
from ..server.storehealth import CommitFailed
from .capture import Capture
from . import membership
from .membership import load_net_conf
from .limits import CONTROL_MAX_BODY, read_json
from .wire import Problem, client_context, json_response, problem_routes, require, server_context
from .wire import role as role_of


CAPTURE_ENV = "QKDSEG_ALLOW_CAPTURE"
#: Device-fed links: a plan's reservation counts against a link's reported level this long (twice the nodes' relay
#: timeout); by then its bits were used (and the nodes' counters show it) or its request failed.
RESERVED_S = 2 * env_number("QKDSEG_RELAY_TIMEOUT_S", 8.0)


class Controller:
    def __init__(self, directory: Path, *, capture: Path | None = None, store: str | None = None,
                 address: str | None = None) -> None:
        from ..server.core import open_state

        self.dir = Path(directory)
        self.net = load_net_conf(self.dir)
        if address is not None:  # one of several controllers (net up --controllers N)
            self.net["address"] = address
        self.replica = None  # replicated mode (--store etcd://...): net/replica.py
        if store is None:
            self.svc = open_state(self.dir)  # the planner and its levels, the store and the audit; it never relays
        else:
            from .replica import attach

            self.svc, self.replica = attach(self.dir, store, self.net["address"])
        self.addresses = {str(n["id"]): n["address"] for n in self.net["nodes"]}
        self.stock = self.svc.cfg.stock_config()  # the stocked pairs, whose nodes ask for refill runs
        # each node's KME id as its node.json gives it (net init: KME_<its directory>), for ETSI 014's status
        self.kme_ids = {str(n["id"]): f"KME_{n.get('dir', n['id'])}" for n in self.net["nodes"]}
        self.ctx_client = client_context(self.dir / "controller.crt", self.dir / "controller.key", self.dir / "ca.crt")
        self.client = None
        self.plans = 0
        self.queues: dict[str, asyncio.Queue] = {}
        self.capture = Capture(capture) if capture is not None else None
        a = self.svc.arrays
        self.link_index = {frozenset((str(a.node_ids[a.edge_u[k]]), str(a.node_ids[a.edge_v[k]]))): k
                           for k in range(len(a.edge_u))}
        from .layout import link_name

        self.link_names = {k: link_name(a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]) for k in range(len(a.edge_u))}
        self.link_names_back = {k: link_name(a.node_ids[a.edge_v[k]], a.node_ids[a.edge_u[k]])
                                for k in range(len(a.edge_u))}
        self.reported: dict[str, float] = {}  # node -> time of its last report
        from .linkhealth import DownLinks

        self.down = DownLinks()  # links an end reported DOWN: planned around (net/linkhealth.py)
        # net init --link-source device: the model never refills a link; its level is what both ends report they
        # hold (the lower of their latest reports), so a request never routes on device keys not yet fetched
        self.device_fed = self.net.get("link_source") == "device"
        self.device_reports: dict[int, dict[str, tuple[int, int]]] = {}  # link -> node -> (level, consumed)
        self.device_consumed: dict[int, deque] = {}  # link -> (time, the model's consumed bits) at recent reports
        if self.device_fed:
            self.svc.source.rate_bps[:] = 0.0
        self.event_seq: dict[str, tuple] = {}  # node -> (boot, last event seq) of its reports (the dashboard's rows)
        self.stocks: dict[str, dict] = {}  # node -> its key stocks as its last report gave them (the dashboard's)
        from .shares import SharePaths
        from .suspects import Suspects, replicated, settings

        self.suspects = Suspects(self.svc.planner, *settings(self.net, str(self.dir / "net.json")))  # .suspects
        replicated(self)  # replicated controllers: the suspects kept in etcd, restored by a new leader
        membership.attach(self)  # the topology version, the removed nodes (.membership)
        self.share_paths = SharePaths()  # threshold plans' paths: a share reported altered names its path (.shares)

    def _http(self):
        if self.client is None:
            from .wire import Role, async_client

            self.client = async_client(self.ctx_client, 256, expect=lambda host, port: next(  # at a node's address,
                (Role("node", n) for n, a in self.addresses.items() if a == f"{host}:{port}"), None))  # its certificate
            if self.capture is not None:
                self.client.event_hooks = {"response": [self.capture.on_response]}
        return self.client

    def _push(self, node: str, part: dict) -> asyncio.Future:
        """Queue a plan part for ``node``; one POST per node carries every part queued meanwhile (of any request)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        q = self.queues.get(node)
        if q is None:
            q = self.queues[node] = asyncio.Queue()
            loop.create_task(self._sender(node, q))
        q.put_nowait((part, fut))
        return fut

    async def _sender(self, node: str, q: asyncio.Queue) -> None:
        url = f"https://{self.addresses[node]}/control/v1/parts"
        while True:
            batch = [await q.get()]
            while not q.empty() and len(batch) < 1024:
                batch.append(q.get_nowait())
            try:
                r = await self._http().post(url, json={"parts": [p for p, _ in batch]})
                err = None if r.status_code == 202 else f"node {node}: {r.status_code}"
            except Exception as exc:  # noqa: BLE001 -- the node is unreachable: the requests fail cleanly
                from .tlsfail import report

                err = f"node {node}: {report(f'node {node} ({self.addresses[node]})', exc)}"
            for _, fut in batch:
                if not fut.done():
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(RuntimeError(err))

    def _sae(self, sae: str, caller_node: str | None = None) -> int:
        s = self.svc.sae_node.get(sae)
        if s is None:
            raise Problem(400, "Bad Request", f"SAE {sae!r} is not registered", message=f"SAE {sae!r} is not registered")
        if caller_node is not None and str(self.svc.arrays.node_ids[s]) != caller_node:
            raise Problem(403, "Forbidden", f"SAE {sae!r} is not attached to node {caller_node!r}")
        return s

    async def plan(self, caller_node: str, w: dict) -> dict:
        from ..keys.relay import Plan
        from ..keys.steps import node_parts
        from ..server.etsi import KeyRequest, KmsError
        from ..server.store import Batch

        if self.replica is not None:
            self.replica.check()  # 503 not_leader on a standby
        from .suspects import audit

        await audit(self, self.suspects.expire())  # suspect nodes whose time is up: planned through again
        await membership.gate(self)  # a change of membership being applied: after it (from here to the reservation: no await)
        svc = self.svc
        master, slave = str(w["master"]), str(w["slave"])
        s, d = self._sae(master, caller_node), self._sae(slave)
        req = KeyRequest(int(w["number"]), int(w["size"]), float(w["level"]), str(w["level_source"]),
                         bool(w["mandatory"]))
        refill = w.get("refill") is True  # a stock's refill run: no SAE waits, every key is stocked (.spares)
        keep = self._refill_share(master, slave, req) if refill else 0.0
        from ..keys.confirm import mac_keys, refill_keys

        mac = mac_keys(req.size)  # the confirmation's one-time MAC key: the run's last keys (.keys.confirm)
        health = getattr(svc.store, "health", None)  # the etcd store has none (its refusals: not_leader)
        if health is not None and not health.writes_ok:
            raise _store_failed()
        svc.refill(time.time())
        unmask = self.down.mask(svc.levels)  # planning sees a level of 0 on a link reported down
        try:
            try:
                if refill:  # up to req.number keys and the MAC key, each link keeping its reserve
                    _, (r, rec, relays, bits) = svc.planner.plan_refill(s, d, KeyRequest(
                        req.number + mac, req.size, req.level, req.level_source, False), keep)
                    kept = refill_keys(req.number, relays * rec.n_keys, req.size)  # never more than asked
                    if kept < 1:
                        raise KmsError(503, "too few key bits for a refill run and its confirmation key",
                                       reason="no_key_material")
                    req = KeyRequest(kept, req.size, req.level, req.level_source, False)
                    mac = relays * rec.n_keys - kept  # the rest of the run: MAC key material, not kept
                else:
                    r, rec, relays, bits = svc.planner.plan_relays(s, d, req, req.number + mac)
            except KmsError:
                if req.level_source != "extension_optional":
                    raise
                req = KeyRequest(req.number, req.size, svc.cfg.security_level, "default", False)
                r, rec, relays, bits = svc.planner.plan_relays(s, d, req, req.number + mac)
        except KmsError as err:
            raise Problem(err.status, "Bad Request" if err.status == 400 else "Service Unavailable", err.message,
                          message=err.message, details=err.details, reason=err.reason) from None
        finally:
            unmask()
        links = svc.planner.reserve(bits)  # reserved: amounts, on every link of the route, before any node acts
        rid = str(uuid.uuid4())
        plan = Plan.from_any(rec, r)
        parts = node_parts(r, [plan], copies=relays)
        summary = svc.planner.summary(r, rec, relays)
        self.suspects.planned(rid, svc.arrays, parts, s, d)  # its relays, until its source reports the run
        self.share_paths.planned(rid, r)
        securities = [float(gk.security) for _ in range(relays) for gk in rec.global_keys]
        try:
            await svc.committer.commit(Batch(links=svc.planner.link_rows(links), audit=[{
                "time": round(time.time(), 6), "event": "plan", "request_id": rid, "sae": master, "peer": slave,
                "number": req.number, "size": req.size, "level": req.level, "route": summary,
                **({"refill": True} if refill else {}), "outcome": "reserved"}]))
        except BaseException as err:  # not reserved (no node got a part): the levels back as the store holds them
            svc.planner.release(bits)
            if isinstance(err, CommitFailed):
                raise _store_failed() from None
            raise
        body = {"request_id": rid, "master": master, "slave": slave, "number": 0 if refill else req.number,
                "securities": securities, "mac_keys": mac}
        nodes = list(parts)

        futs = [self._push(str(v), {**body, "part": parts[v].to_dict()}) for v in nodes]
        results = await asyncio.gather(*futs, return_exceptions=True)
        bad = self.share_paths.unreachable(rid, r, [str(v) for v, res in zip(nodes, results)
                                                    if isinstance(res, BaseException)])  # threshold: T paths may go
        if bad:
            await asyncio.gather(*(self._http().post(f"https://{self.addresses[str(v)]}/control/v1/void",
                                                     json={"request_id": rid}) for v in nodes),
                                 return_exceptions=True)
            with contextlib.suppress(CommitFailed):  # the answer is the same; the failure is in /readyz
                await svc.committer.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "void",
                                                         "request_id": rid, "sharing": r.sharing, "tolerate": r.tolerate,
                                                         "outcome": f"nodes unreachable: {bad}"}]))
            why = "; ".join(dict.fromkeys(str(res) for res in results if isinstance(res, BaseException)))
            msg = f"node(s) {', '.join(bad)} on the route are unreachable ({why}); nothing was issued (try again)"
            raise Problem(503, "Service Unavailable", msg, message=msg, reason="node_unavailable")
        self.plans += 1
        return {"request_id": rid, "route": summary, "copies": relays, "securities": securities[: req.number],
                "route_paths": [[[str(v) for v in p] for p in seg.paths] for seg in r.segments]}

    def _refill_share(self, master: str, slave: str, req) -> float:
        """A refill run's checks (a stocked pair, the stock's size and level, at most its HIGH keys); returns the
        share of each link's pool the plan must leave (docs/model.md)."""
        sc = self.stock
        if sc is None or (master, slave) not in sc.pairs:
            raise Problem(403, "Forbidden", f"SAEs {master}:{slave} keep no key stock: nothing to refill")
        if req.size != sc.size or req.level != sc.level or not 1 <= req.number <= sc.high:
            msg = (f"a refill of {master}:{slave} is for 1 to {sc.high} keys of {sc.size} bits at level {sc.level} "
                   "(the controller's [stock])")
            raise Problem(400, "Bad Request", msg, message=msg)
        return sc.reserve

    async def report(self, caller_node: str, w: dict) -> dict:
        """A node's link report: the model's level of each link becomes the lower of its own and the report's
        (its consumed bits the higher), audited when it changes anything. On device-fed links the level is the
        lower of both ends' latest reports (up or down; the model does not refill them)."""
        from ..server.store import Batch
        from .reportcheck import check_events, check_links, check_stock, feed_events
        from .suspects import audit, check_runs

        await membership.gate(self)
        version = self.topology_version
        try:  # every number, link and event checked before anything is applied (net/reportcheck.py)
            runs = check_runs(w.get("qkdseg_runs"))  # the relay runs it was the source of (.suspects)
            shares = self.share_paths.reports(caller_node, w.get("qkdseg_shares"))  # threshold sharing (.shares)
            links = check_links(self, caller_node, w)
            events = check_events(self, caller_node, w.get("qkdseg_events"))
            stock = check_stock(self, caller_node, w.get("qkdseg_stock"))
        except Problem as p:
            await self.audit_refused_report(caller_node, p)
            raise
        rows = []
        for k, name, consumed, level, status in links:
            self.down.note(caller_node, k, status)
            rows.append((k, name, consumed, level))
        self._readiness(caller_node, w.get("qkdseg_ready"))
        if self.replica is not None:
            self.replica.check()
        feed_events(self, caller_node, events)
        await audit(self, self.share_paths.apply(self, shares) + self.suspects.outcomes(caller_node, runs))
        if version != self.topology_version:  # checked against the topology before the change: sent again later
            return {"qkdn_id": caller_node, "links": 0, "lowered": [], "topology_version": self.topology_version}
        if stock is not None:
            self.stocks[f"node {caller_node}"] = stock
        svc = self.svc
        svc.refill(time.time())
        lv, changed = svc.levels, {}
        for k, name, consumed, level in rows:
            before = (int(lv.level[k]), int(lv.consumed[k]))
            extra = consumed - int(lv.consumed[k])
            if extra > 0:  # bits the nodes used that the model never reserved (offsets skipped after a crash)
                lv.consumed[k] = consumed
                lv.level[k] = max(0, int(lv.level[k]) - extra)
            if level is not None and self.device_fed:
                # each end's latest report, less what plans reserved that its counters had not used yet (only the
                # last RESERVED_S seconds' reservations: an older one was used, or its request failed and never will)
                ends = self.device_reports.setdefault(k, {})
                ends[caller_node] = (level, consumed)
                hist = self.device_consumed.setdefault(k, deque())
                t_now = time.monotonic()
                hist.append((t_now, int(lv.consumed[k])))
                while len(hist) > 1 and hist[1][0] <= t_now - RESERVED_S:
                    hist.popleft()
                old = hist[0][1] if hist[0][0] <= t_now - RESERVED_S else 0
                now_level = min(lv_ - max(0, int(lv.consumed[k]) - max(c, old)) for lv_, c in ends.values())
                lv.level[k] = max(0, now_level if len(ends) == 2 else min(int(lv.level[k]), now_level))
            elif level is not None and level < lv.level[k]:
                lv.level[k] = max(0, level)
            raised = int(lv.level[k]) > before[0] and int(lv.consumed[k]) == before[1]
            if (int(lv.level[k]), int(lv.consumed[k])) != before and not raised:  # a device feed's refill: no record
                changed[name] = {"level": [before[0], int(lv.level[k])], "consumed": [before[1], int(lv.consumed[k])]}
        self.reported[caller_node] = time.time()
        if changed:
            ks = [k for k, name, _, _ in rows if name in changed]
            try:
                await svc.committer.commit(Batch(links=svc.planner.link_rows(ks), audit=[{
                    "time": round(time.time(), 6), "event": "levels reported", "node": caller_node, "links": changed,
                    "outcome": "model lowered to the node's report"}]))
            except CommitFailed:  # not stored: the model as the store holds it (additive: plans meanwhile stay)
                for k, name, _, _ in rows:
                    if name in changed:
                        (l0, l1), (c0, c1) = changed[name]["level"], changed[name]["consumed"]
                        lv.level[k] = min(int(lv.capacity[k]), max(0, int(lv.level[k]) + l0 - l1))
                        lv.consumed[k] -= c1 - c0
                raise _store_failed() from None
        return {"qkdn_id": caller_node, "links": len(rows), "lowered": sorted(changed)}

    async def audit_refused_report(self, caller_node: str, p: Problem) -> None:
        """The audit record of a link report refused with ``p`` (nothing of it applied)."""
        from ..server.store import Batch

        with contextlib.suppress(Exception):  # a standby replica does not write: the refusal stands anyway
            await self.svc.committer.commit(Batch(audit=[{
                "time": round(time.time(), 6), "event": "report refused", "node": caller_node,
                "status": p.status, "outcome": p.detail}]))

    def _readiness(self, caller_node: str, ready) -> None:
        """A node's readiness in its report (``qkdseg_ready``): not ready (its store fails) excludes it from
        planning (``unready``, :attr:`qkdseg.server.planner.Planner.excluded`); ready admits it again."""
        if ready is False:
            self.svc.planner.exclude(caller_node, "unready")
        elif ready is True:
            self.svc.planner.readmit(caller_node, "unready")

    def status(self, caller_node: str, master: str, slave: str) -> dict:
        if self.replica is not None:
            self.replica.check()
        svc = self.svc
        s, d = self._sae(master, caller_node), self._sae(slave)
        svc.refill(time.time())
        per_relay, relays, summary = svc.planner.capacity(s, d, svc.cfg.key_size, svc.cfg.security_level)
        return {"stored_key_count": int(per_relay * relays), "route": summary,
                "target_KME_ID": self.kme_ids.get(str(svc.arrays.node_ids[d]), f"KME_{svc.arrays.node_ids[d]}")}


def _store_failed() -> Problem:
    """The answer to a plan or report whose write failed at the controller (nothing of it stored)."""
    from ..server.storehealth import UNAVAILABLE

    return Problem(503, "Service Unavailable", UNAVAILABLE, message=UNAVAILABLE, reason="store_failed")


def create_controller_app(ctl: Controller) -> Starlette:
    from .suspects import suspect_routes

    @problem_routes
    async def plans(request: Request):
        role = require(request, "node")
        return json_response(await ctl.plan(role.ident, await read_json(request, CONTROL_MAX_BODY)))

    @problem_routes
    async def status(request: Request):
        role = require(request, "node")
        q = request.query_params
        return json_response(ctl.status(role.ident, q.get("master", ""), q.get("slave", "")))

    @problem_routes
    async def links(request: Request):
        role = require(request, "node")
        try:
            body = await read_json(request, CONTROL_MAX_BODY)
        except Problem as p:  # not JSON, not an object, too large or too deep: refused and audited like the rest
            await ctl.audit_refused_report(role.ident, p)
            raise
        return json_response(await ctl.report(role.ident, body))

    async def health(request: Request):
        r = role_of(request)
        if r is None or r.kind not in ("node", "controller"):  # an SAE: no details (issue 33); admin: its version
            return json_response({"status": "ok", **membership.version_for(r, ctl)})
        return json_response({"status": "ok", "role": "controller", "pid": os.getpid(), "plans": ctl.plans,
                              "reported": sorted(ctl.reported), "links_down": ctl.down.names(ctl.link_index),
                              "links_suspect": ctl.down.names(ctl.link_index, suspect=True),
                              "excluded": ctl.svc.planner.excluded_view(), "suspects": ctl.suspects.view(),
                              "topology_version": ctl.topology_version,
                              **(ctl.replica.health() if ctl.replica else {})})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watch = None if getattr(ctl, "watchdog", None) is None else asyncio.get_running_loop().create_task(
            ctl.watchdog.run())
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
            if ctl.client is not None:
                await ctl.client.aclose()

    return Starlette(routes=[Route("/control/v1/plans", plans, methods=["POST"]),
                             Route("/control/v1/status", status, methods=["GET"]),
                             Route("/control/v1/links", links, methods=["POST"]),
                             Route("/health", health, methods=["GET"]), *suspect_routes(ctl),
                             *membership.membership_routes(ctl)], lifespan=lifespan)


def serve_controller(directory: str | Path, *, capture: Path | None = None, dashboard_port: int | None = None,
                     dashboard_host: str = "127.0.0.1", dashboard_public: bool = False, metrics_port: int | None = None,
                     log_level: str = "warning", log_format: str = "text", store: str | None = None,
                     address: str | None = None, exit_after_unready: float = 30.0) -> int:
    """Serve the controller until SIGINT/SIGTERM; with ``dashboard_port``, the operator dashboard too, fed by the
    nodes' reports (their links' levels and their ETSI 014 events); ``metrics_port``, logs: :mod:`.ops`. Returns
    the exit status: 1 after ``exit_after_unready`` seconds of a failing store (:mod:`qkdseg.server.watchdog`)."""
    from ..server import logs, serving
    from ..server.http import listen_socket
    from ..server.watchdog import Watchdog
    from ..server.tls import is_loopback
    from .ops import attach_controller
    from .wire import RolePeerProtocol

    logs.configure(log_level, log_format, prefix="qkdseg controller")
    if dashboard_port is not None and not is_loopback(dashboard_host) and not dashboard_public:
        raise InvalidRequest(f"--dashboard-host {dashboard_host} is not a loopback address: add --dashboard-public "
                             "(the dashboard then needs the access token in DIR/controller/dashboard.token)")

    d = Path(directory)
    if capture is None and os.environ.get("QKDSEG_CAPTURE_FILE"):  # net up passes the capture on this way
        capture = Path(os.environ["QKDSEG_CAPTURE_FILE"])
    if capture is not None and os.environ.get(CAPTURE_ENV) != "1":
        raise InvalidRequest(f"--capture records every request body the controller receives (for the test of no key "
                             f"material at the controller only); it is refused unless {CAPTURE_ENV}=1")
    serving.private_files()
    with serving.stop_signals() as early, serving.profiled("controller"):
        ctl = Controller(d, capture=capture, store=store, address=address)
        health = getattr(ctl.svc.store, "health", None)  # the etcd store has none: its failures are the election's
        ctl.watchdog = None if health is None else Watchdog(health, exit_after_unready,
                                                            probes=[lambda: ctl.svc.committer.probe()])
        try:
            from .inventory import check_cert_address

            check_cert_address(d / "controller.crt", ctl.net["address"], str(d / "net.json"))
            ctl.svc.warm()  # compile the routing kernels before listening: the first plan must not wait for numba
            host, port = ctl.net["address"].rsplit(":", 1)
            app = create_controller_app(ctl)
            dash = None if dashboard_port is None else {"service": ctl.svc, "host": dashboard_host,
                                                        "port": dashboard_port, "stocks": lambda: dict(ctl.stocks)}
            serving.serve(app if ctl.capture is None else ctl.capture.middleware(app), listen_socket(host, int(port)),
                          http=RolePeerProtocol, ctx=server_context(d / "controller.crt", d / "controller.key",
                                                                    d / "ca.crt"),
                          certfile=d / "controller.crt", keep_alive_s=30.0, ops=attach_controller(ctl),
                          metrics_port=metrics_port, log_level=log_level, dashboard=dash, early=early,
                          watchdog=ctl.watchdog,
                          announce=f"listening on https://{host}:{port} ({len(ctl.addresses)} nodes)")
        finally:
            if ctl.replica is not None:
                ctl.replica.close()
            ctl.svc.close()
            if ctl.capture is not None:
                ctl.capture.close()
    logs.say("stopped", err=True)
    return 0 if ctl.watchdog is None else ctl.watchdog.exit_status
