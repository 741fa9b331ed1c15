"""A node's listener: the relay and control routes beside the ETSI 014 front end.

:func:`create_node_app` is the shared front end
(:func:`qkdseg.server.frontend.create_app`, ETSI GS QKD 014 to the node's
SAEs) with the routes of :func:`relay_routes` (``/relay/v1/messages``,
``/relay/v1/ack``, ``/relay/v1/links``: other nodes), :func:`control_routes`
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

from .wire import Problem, json_response, problem_routes, read_json, require


async def accept(svc, role, w: dict, offsets: dict, inbox: list, later: list) -> None:
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


async def _accept_batch(svc, role, batch: list):
    """Each message of a batch checked (:func:`accept`): the offsets and inbox rows to store, the messages to
    process once stored, a result per message and the first refusal (or ``None``)."""
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
            await accept(svc, role, w, offsets, inbox, later)
            results.append({"message_id": mid, "status": 202})
        except Problem as p:
            first = first or p
            results.append({"message_id": mid, "status": p.status, "detail": p.detail})
        except (KeyError, TypeError, ValueError) as err:
            first = first or Problem(400, "Bad Request", f"malformed message: {type(err).__name__}")
            results.append({"message_id": mid, "status": 400, "detail": first.detail})
    return offsets, inbox, later, results, first


async def _apply(svc, later: list, results: list, first):
    """The stored messages, in order: voids and issues now (before the answer), the others to their request's
    state machine; returns the first refusal (an ``issue`` that fails updates its result)."""
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
    return first


def relay_routes(svc) -> list[Route]:
    """The routes other nodes call: relay messages, their acknowledgements, this node's link offsets."""

    @problem_routes
    async def messages(request: Request):
        """One relay message, or ``{"messages": [...]}`` (a batch, in order); 202 once every one is stored."""
        role = require(request, "node")
        body = await read_json(request)
        batch = body["messages"] if "messages" in body else [body]
        if not isinstance(batch, list) or len(batch) > 1024:
            raise Problem(400, "Bad Request", "messages must be an array of at most 1,024 relay messages")
        offsets, inbox, later, results, first = await _accept_batch(svc, role, batch)
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
        require(request, "node")
        w = await read_json(request)
        acks = w["acks"] if "acks" in w else [w]
        for a in acks:
            if a.get("status") not in ("relayed", "failed", "voided", "failed to void", "key not present"):
                raise Problem(400, "Bad Request", "status must be one of ETSI GS QKD 020's ack statuses")
        if not svc.relaydb.statuses("outbox", [(a["status"], str(a["message_id"])) for a in acks]):
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
        return json_response({str(d): v for (lk, d), v in svc.offsets.items() if lk == name})

    return [
        Route("/relay/v1/messages", messages, methods=["POST"]),
        Route("/relay/v1/ack", ack, methods=["POST"]),
        Route("/relay/v1/links", links, methods=["GET"]),
    ]


def control_routes(svc) -> list[Route]:
    """The routes the controller calls: a request's plan parts, and the void of a request."""

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

    return [
        Route("/control/v1/parts", parts, methods=["POST"]),
        Route("/control/v1/void", void, methods=["POST"]),
    ]


def health_route(svc) -> Route:
    """``/health``: the node, its waiting keys and requests (and its device-fed links' states)."""

    async def health(request: Request):
        body = {"status": "ok", "role": "node", "node": str(svc.id), "pid": os.getpid(),
                "keys_waiting": len(svc.keys), "requests": len(svc.requests)}
        if svc.device is not None:  # per device-fed link: its device state, keys fetched and skipped, bits held
            body["device_links"] = svc.device.view()
        return json_response(body)

    return Route("/health", health, methods=["GET"])


def create_node_app(svc):
    """The node's application: the ETSI 014 front end, the relay, control and health routes (and the device-fed
    links' routes), its tasks started with the front end's and its HTTP client closed at the end."""
    from ..server.frontend import create_app

    routes = relay_routes(svc) + control_routes(svc) + [health_route(svc)] + (
        svc.device.routes() if svc.device is not None else [])
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
