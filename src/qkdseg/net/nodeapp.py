"""A node's listener: the relay and control routes beside the ETSI 014 front end.

:func:`create_node_app` is the shared front end
(:func:`qkdseg.server.frontend.create_app`, ETSI GS QKD 014 to the node's
SAEs) with the routes of :func:`relay_routes` (``/relay/v1/messages``,
``/relay/v1/ack``, ``/relay/v1/links``, ``/relay/v1/spares``: other nodes), :func:`control_routes`
(``/control/v1/parts``, ``/control/v1/void``: the controller) and
``/health``, and a lifespan that runs the node's tasks
(:meth:`qkdseg.net.node.NodeService.start_tasks`). :func:`accept` checks one
relay message before it is stored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time

from starlette.requests import Request
from starlette.routing import Route

from ..server.store import Batch
from .keystream import gap, generation, implausible
from .limits import RELAY_MAX_BODY, check_batch, read_json
from .retention import check_fresh
from .wire import Problem, json_response, malformed, problem_routes, require
from .wire import role as role_of


def planned_sender(part, kind: str, src) -> bool:
    """Whether the plan ``part`` (this node's) names ``src`` as a sender of ``kind`` messages to this node: pieces
    from a previous hop of a path, a ``global`` from the previous segment node (other kinds: checked elsewhere)."""
    s = str(src)
    if kind == "pieces":
        return s in {str(p) for _j, _i, p, _n in part.forwards} | {str(p) for _j, _i, p in part.ends}
    if kind == "global":
        return bool(part.position) and s == str(part.segment_nodes[part.position - 1])
    return True


def _check_sender(svc, st, kind: str, src, rid: str) -> None:
    """Segment-level messages only from the node the request's plan names (pieces: the plan's previous hops);
    ``confirm`` and ``void`` only for a request this node holds (409 otherwise)."""
    known = st is not None and st.relay is not None
    part = st.relay.part if known else None
    s = str(src)
    if kind == "pieces" and known and not planned_sender(part, kind, s):
        raise Problem(403, "Forbidden", f"request {rid}: node {s!r} sends no pieces to node {svc.id!r} in its plan")
    elif kind == "global" and known and not planned_sender(part, kind, s):
        raise Problem(403, "Forbidden", f"request {rid}: node {s!r} is not the previous segment node of node "
                                        f"{svc.id!r} in its plan")
    elif kind == "confirm":
        if not known:
            raise Problem(409, "Conflict", f"request {rid} is not held here: nothing to confirm", status_020="failed")
        if part.position != 0 or s != str(part.segment_nodes[-1]):
            raise Problem(403, "Forbidden", f"request {rid}: only its destination confirms it")
    elif kind == "void":
        if rid in svc.request_keys:
            source = svc.request_keys_source.get(rid)
        elif known and part.position is not None and part.position == len(part.segment_nodes) - 1:
            source = part.segment_nodes[0]
        else:
            raise Problem(409, "Conflict", f"request {rid} is not held here: nothing to void", status_020="failed")
        if s != str(source):
            raise Problem(403, "Forbidden", "only the request's source may void its keys")


def _pieces_offsets(svc, w: dict, offsets: dict, refusals: list) -> tuple:
    """The new high-water mark of a ``pieces`` message's link direction (raises Problem): no block below the
    mark (a link key bit is never used twice), none longer than the largest key, and the offsets skipped within
    the link's window (``max_skip_bits``): a mark further on is refused, audited and the link reported suspect."""
    src = str(w["src"])
    if src not in svc.neighbours:
        raise Problem(403, "Forbidden", f"node {src!r} is not a neighbour of node {svc.id!r}: piece "
                                        "messages come only from neighbours")
    end = svc.links[svc.neighbours[src]]
    key = (end.name, end.in_dir)
    hwm = mark = offsets.get(key, svc.offsets.get(key, 0))
    window, skipped, longest = svc.window_bytes(end), 0, max(1, int(svc.cfg.max_key_size) // 8)
    for _pid, off, c in w["blocks"]:
        off, n = int(off), len(base64.b64decode(c, validate=True))
        if not 0 < n <= longest:
            raise Problem(400, "Bad Request", f"a block of {n} bytes: blocks are 1 to {longest} bytes")
        if off < hwm:
            raise Problem(409, "Conflict", f"offset {off} on link {end.name} is below this end's high-water "
                                           f"mark {hwm}: a link key bit is never used twice", status_020="failed")
        if implausible(off, svc.window[1]):  # a generation no restore drew (not a clock reading, or ahead of ours)
            raise Problem(409, "Conflict", f"offset {off} on link {end.name}: its generation {generation(off)} is "
                                           "not a clock reading up to this node's clock", status_020="failed")
        skipped += gap(hwm, off)  # within a generation the difference; a new generation (.restore) from its position
        if skipped > window:
            refusals.append({"event": "offsets refused", "neighbour": src, "link": end.name, "direction": end.in_dir,
                             "claimed": off, "mark": mark, "window_bytes": window, "request_id": str(w["request_id"]),
                             "outcome": "a pieces message skips further than the link's window: refused, link "
                                        "reported suspect"})
            svc.linkhealth.suspect(svc, src)
            raise Problem(409, "Conflict", f"offset {off} on link {end.name} is {off - mark:,d} bytes beyond this "
                                           f"end's mark {mark}: more than the link's window of {window:,d} bytes "
                                           "(max_skip_bits); refused and audited", status_020="failed")
        hwm = off + n
    return key, hwm


async def accept(svc, role, w: dict, offsets: dict, inbox: list, later: list, refusals: list | None = None) -> None:
    """Check one message and plan its storage (raises Problem)."""
    refusals = [] if refusals is None else refusals
    kind, src, rid, mid = w["kind"], w["src"], str(w["request_id"]), str(w["message_id"])
    if role.ident != str(src):
        raise Problem(403, "Forbidden", f"the message names src {src!r}, the caller's certificate is node "
                                        f"{role.ident!r}")
    if str(w["dst"]) != str(svc.id):
        raise Problem(400, "Bad Request", f"this is node {svc.id!r}, not {w['dst']!r}")
    if kind not in ("pieces", "global", "confirm", "void", "issue", "reserve"):
        raise Problem(400, "Bad Request", f"unknown message kind {kind!r}")
    check_fresh(svc, w, refusals)  # older than the window (its id may be forgotten): 409, audited
    if kind not in ("issue", "reserve") and (svc.relaydb.db.execute("SELECT 1 FROM inbox WHERE message_id=?", (mid,)).fetchone()
                            or any(row[0] == mid for row in inbox)):
        return  # a retry of a message stored already (idempotent by message id): accepted, not processed twice
    st0 = svc.requests.get(rid)
    try:
        _check_sender(svc, st0, kind, src, rid)
    except Problem as p:
        refusals.append({"event": "relay refused", "src": str(src), "kind": kind, "request_id": rid,
                         "status": p.status, "outcome": p.detail})
        raise
    mark = _pieces_offsets(svc, w, offsets, refusals) if kind == "pieces" else None
    if kind in ("pieces", "global") and (st0 is None or st0.relay is None):
        svc.early.charge(str(src), w)  # held until the controller's part comes (at most EARLY_S): 429 when full
        w["_early"] = True
    if mark is not None:
        offsets[mark[0]] = mark[1]
    inbox.append((mid, rid, str(src), kind, "accepted", time.time()))
    later.append(w)


async def _accept_batch(svc, role, batch: list):
    """Each message of a batch checked (:func:`accept`): the offsets and inbox rows to store, the messages to
    process once stored, a result per message, the first refusal (or ``None``) and the refusals to audit."""
    offsets: dict = {}
    inbox: list = []
    later: list = []
    results = []
    refusals: list = []
    first = None
    for w in batch:
        mid = str(w.get("message_id")) if isinstance(w, dict) else "?"
        try:
            if not isinstance(w, dict):
                raise Problem(400, "Bad Request", "a relay message must be an object")
            await accept(svc, role, w, offsets, inbox, later, refusals)
            results.append({"message_id": mid, "status": 202})
        except Problem as p:
            first = first or p
            results.append({"message_id": mid, "status": p.status, "detail": p.detail})
        except (KeyError, TypeError, ValueError, OverflowError) as err:  # OverflowError: an offset of 1e400
            bad = malformed(err)
            first = first or bad
            results.append({"message_id": mid, "status": 400, "detail": bad.detail})
    return offsets, inbox, later, results, first, refusals


def _audit_refusals(svc, caller: str, refusals: list) -> list[dict]:
    """The audit records of a POST's refusals: each offset refusal, and the others (at most 8 named, the rest
    counted), so that a flood of refused messages writes a bounded audit."""
    now = round(time.time(), 6)
    out = [{"time": now, **r} for r in refusals if r["event"] == "offsets refused"]
    others = [r for r in refusals if r["event"] != "offsets refused"]
    out += [{"time": now, **r} for r in others[:8]]
    if len(others) > 8:
        out.append({"time": now, "event": "relay refused", "src": caller, "refused": len(others) - 8,
                    "outcome": "more refused messages in the same POST"})
    return out


async def _apply(svc, later: list, results: list, first):
    """The stored messages, in order: voids and issues now (before the answer), the others to their request's
    state machine (held, at most EARLY_S, while this node has no part of it); returns the first refusal (an
    ``issue`` that fails updates its result)."""
    loop = asyncio.get_running_loop()
    by_id = {r["message_id"]: r for r in results}
    for w in later:
        rid, kind = str(w["request_id"]), w["kind"]
        if kind == "void":
            await svc.void_keys(rid)
            continue
        if kind in ("issue", "reserve"):  # applied before the answer: a 202 means the slave can fetch them now
            try:  # (reserve: room held here for a relay's keys, .quota)
                await svc.issue_spares(w) if kind == "issue" else svc.hold_room(w)
            except Problem as p:
                first = first or p
                by_id[str(w["message_id"])].update(status=p.status, detail=p.detail)
            except (KeyError, TypeError, ValueError) as err:
                first = first or Problem(400, "Bad Request", f"malformed {kind} message: {type(err).__name__}")
                by_id[str(w["message_id"])].update(status=400, detail=first.detail)
            continue
        st = svc.requests.get(rid)
        if st is None or st.relay is None:
            svc.hold_early(rid, w)
        else:
            if w.pop("_early", False):  # its part came meanwhile
                svc.early.release(str(w["src"]), w)
            loop.call_soon(svc._process, st, w)
    return first


def relay_routes(svc) -> list[Route]:
    """The routes other nodes call: relay messages, their acknowledgements, this node's link offsets."""

    @problem_routes
    async def messages(request: Request):
        """One relay message, or ``{"messages": [...]}`` (a batch, in order); 202 once every one is stored."""
        role = require(request, "node")
        body = await read_json(request, RELAY_MAX_BODY)
        batch = check_batch(body["messages"] if "messages" in body else [body], "messages")
        offsets, inbox, later, results, first, refusals = await _accept_batch(svc, role, batch)
        if refusals:
            await svc.committer.commit(Batch(audit=_audit_refusals(svc, role.ident, refusals)))
        svc.relaydb.write(offsets, inbox=inbox)
        for k, v in offsets.items():
            svc.offsets[k] = max(svc.offsets.get(k, 0), v)
        first = await _apply(svc, later, results, first)
        if first is not None:
            first.ext["results"] = results
            raise first
        return json_response({"status": "accepted", "results": results}, 202)

    @problem_routes
    async def ack(request: Request):
        role = require(request, "node")
        w = await read_json(request, RELAY_MAX_BODY)
        acks = check_batch(w["acks"] if "acks" in w else [w], "acks")
        for a in acks:
            if not isinstance(a, dict) or a.get("status") not in ("relayed", "failed", "voided", "failed to void",
                                                                  "key not present"):
                raise Problem(400, "Bad Request", "status must be one of ETSI GS QKD 020's ack statuses")
        ids = [str(a["message_id"]) for a in acks]
        sent = svc.relaydb.sent_to(role.ident, ids)
        unknown = [i for i in ids if i not in sent]
        if unknown:  # all or nothing: an ack names only messages this node sent to the caller
            raise Problem(404, "Not Found", f"{len(unknown)} message id(s) of this ack were never sent to node "
                                            f"{role.ident!r} by node {svc.id!r}; nothing was recorded",
                          unknown=[i[:64] for i in unknown[:16]])
        if not svc.relaydb.statuses("outbox", [(a["status"], i) for a, i in zip(acks, ids)]):
            raise Problem(503, "Service Unavailable", "the acknowledgements could not be stored (a write of this "
                                                      "node's relay store failed)")
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
        answer = {str(d): v for (lk, d), v in svc.offsets.items() if lk == name}
        if svc.hostile is not None:  # TEST ONLY: the hostile-node harness lies about them (net/hostile.py)
            answer = svc.hostile.offsets(name, answer)
        return json_response(answer)

    @problem_routes
    async def spares(request: Request):
        """The other end of a pair checks its spare keys: those it names that this node does not hold (.reconcile)."""
        role = require(request, "node")
        return json_response(svc.answer_spares(role.ident, await read_json(request, RELAY_MAX_BODY)))

    return [
        Route("/relay/v1/messages", messages, methods=["POST"]),
        Route("/relay/v1/ack", ack, methods=["POST"]),
        Route("/relay/v1/links", links, methods=["GET"]),
        Route("/relay/v1/spares", spares, methods=["POST"]),
    ]


def control_routes(svc) -> list[Route]:
    """The routes the controller calls: a request's plan parts, and the void of a request."""

    @problem_routes
    async def parts(request: Request):
        require(request, "controller")
        w = await read_json(request, RELAY_MAX_BODY)
        batch = check_batch(w["parts"] if "parts" in w else [w], "parts")
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
        w = await read_json(request, RELAY_MAX_BODY)
        svc.requests.pop(str(w["request_id"]), None)
        return json_response({"request_id": w["request_id"], "status": "voided"}, 200)

    return [
        Route("/control/v1/parts", parts, methods=["POST"]),
        Route("/control/v1/void", void, methods=["POST"]),
    ]


def health_route(svc) -> Route:
    """``/health``: ``{"status": "ok"}``, and to a node's or the controller's certificate only: the node, its
    waiting keys and requests (and its device-fed links' states)."""

    async def health(request: Request):
        r = role_of(request)
        if r is None or r.kind not in ("node", "controller"):  # an SAE: no details (issue 33); admin: its version
            from .nodemembers import version_for

            return json_response({"status": "ok", **version_for(r, svc)})
        body = {"status": "ok", "role": "node", "node": str(svc.id), "pid": os.getpid(),
                "keys_waiting": len(svc.keys), "requests": len(svc.requests),
                "topology_version": svc.topology_version}  # .nodemembers
        if svc.device is not None:  # per device-fed link: its device state, keys fetched and skipped, bits held
            body["device_links"] = svc.device.view()
        if svc.stock is not None:  # per stocked pair of its SAEs: keys, target, hits, misses, refills (.spares)
            body["stock"] = svc.stock.snapshot()
        if svc.seeds is not None:  # net init --link-seeds agree: the links whose seed this node may not use yet
            body["seeds_pending"] = svc.seeds.pending()
        return json_response(body)

    return Route("/health", health, methods=["GET"])


def create_node_app(svc):
    """The node's application: the ETSI 014 front end, the relay, control and health routes (and the device-fed
    links' routes), its tasks started with the front end's and its HTTP client closed at the end."""
    from ..server.frontend import create_app

    routes = relay_routes(svc) + control_routes(svc) + [health_route(svc)] + (
        svc.device.routes() if svc.device is not None else []) + (svc.seeds.routes() if svc.seeds is not None else [])
    from .nodemembers import membership_routes

    routes += membership_routes(svc)  # the admin's changes of membership
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
