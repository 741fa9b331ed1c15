"""A node's side of a change of membership (``net add-link``, ``net sae add``, ...: :mod:`.membership`).

``POST /control/v1/membership`` (the ``admin`` role only; any other: 403 with a problem detail) carries the
node's new ``node.json`` whole (``conf``), the topology version it belongs to, the new links' seeds sealed under
this node's storage key (``sealed``, ``net init --link-seeds admin``) and the removed nodes (``removed``). The node
applies the difference to what it runs, without a restart:

- a new link: its end, usable at once (a sealed seed) or once its two ends agree its seed (``--link-seeds
  agree``: the link's first end proposes it, :mod:`.linkseeds`);
- a removed link: its end dropped and its **remaining key destroyed** (the seed deleted from
  ``links.sealed.json``, the stream in memory replaced by one that refuses every read), audited; a request in
  flight on it fails cleanly (503, nothing issued);
- a removed SAE: its waiting keys (issued to it, or by it, spare or stocked) deleted, audited;
- the registry, the addresses, the removed nodes (their certificates refused from now on: :data:`.wire.REMOVED`).

Then ``node.json`` is written (the same file a restart reads) and the version kept: ``/health``'s
``topology_version``. A version at or below the node's is answered as applied already (a retried command).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..server.etsi import KmsError
from ..server.files import write_durably
from .keystream import LinkStream
from .layout import link_name, unseal
from .limits import CONTROL_MAX_BODY, read_json
from .wire import REMOVED, Problem, json_response, problem_routes, require

logger = logging.getLogger("qkdseg.net")


class Destroyed(LinkStream):
    """The stream of a removed link: its seed gone; every read refused (a request in flight fails cleanly)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__(bytes(32))
        self.name = name

    def read(self, direction: int, offset: int, nbytes: int) -> bytes:
        raise KmsError(503, f"link {self.name} was removed from the network (net remove-link); no key was issued",
                       reason="link_removed")


def version_for(role, process) -> dict:
    """What ``/health`` adds for the admin's and the operator's certificates (``net status``): the topology version."""
    return {"topology_version": process.topology_version} if role is not None and role.kind in ("admin", "operator") \
        else {}


def attach(svc) -> None:
    """At the node's start: its topology version and the removed nodes of its ``node.json``."""
    svc.topology_version = int(svc.conf.get("topology_version", 0))
    REMOVED.update({str(k): str(v) for k, v in svc.conf.get("removed", {}).items()})


def _links(conf: dict) -> dict[str, dict]:
    return {link_name(*lk["link"]): lk for lk in conf["links"]}


def _sealed_file(svc) -> dict:
    path = svc.dir / "links.sealed.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _add_link(svc, lk: dict, sealed_blob: str | None, skey: bytes | None, sealed: dict) -> str:
    from .relaystore import NetLinkEnd

    u, v = lk["link"]
    name = link_name(u, v)
    if "device" in lk:
        raise Problem(409, "Conflict", f"link {name} is device-fed: a device-fed link is not added to a running "
                                       "node (restart the two ends after net add-link)")
    if svc.seeds is not None:  # its two ends agree the seed (.linkseeds); the proposer starts now
        stream = svc.seeds.add(lk, None)
        what = "its seed agreed by its two ends"
    else:
        if sealed_blob is None or skey is None:
            raise Problem(400, "Bad Request", f"link {name}: no sealed seed for this node")
        stream = LinkStream(unseal(skey, name, sealed_blob))
        sealed[name] = sealed_blob
        what = "its seed sealed to this node's storage key"
    nb = lk["neighbour"]
    svc.links[nb] = NetLinkEnd(svc.id, (u, v), stream, svc.offsets, svc._dirty)
    svc.neighbours[str(nb)] = nb
    skip = svc.conf.get("max_skip_bits")
    svc._windows[name] = (int(skip) if skip is not None else int(lk["pool_bits"])) // 8
    return what


def _remove_link(svc, lk: dict, sealed: dict) -> None:
    name = link_name(*lk["link"])
    nb = lk["neighbour"]
    end = svc.links.pop(nb, None)
    svc.neighbours.pop(str(nb), None)
    if end is not None:
        end.stream = Destroyed(name)  # an end a request holds now refuses to read: it fails, nothing issued
    sealed.pop(name, None)
    if svc.seeds is not None:
        svc.seeds.ends.pop(name, None)
        svc.seeds.sealed.pop(name, None)


def _void_sae(svc, sae: str) -> list[str]:
    """The ids of every key this node holds for or from ``sae``, taken out of memory (the caller deletes them)."""
    ids = [k for k, row in svc.keys.items() if sae in (row.master, row.slave)]
    ids += [k for k, row in svc.held_spares.items() if sae in (row.master, row.slave)]
    for pair in [p for p in svc.spares if sae in p]:
        ids += [row.key_id for row in svc.spares.pop(pair)]
    for k in ids:
        svc.keys.pop(k, None)
        svc.held_spares.pop(k, None)
    return ids


async def apply(svc, w: dict) -> dict:
    """Apply one change of membership (see the module docstring); returns what was done."""
    from ..server.store import Batch
    from ..server.storagekey import load_storage_key

    version, conf = int(w["version"]), w["conf"]
    if version <= svc.topology_version:
        return {"topology_version": svc.topology_version, "applied": False}
    if str(conf["id"]) != str(svc.id):
        raise Problem(400, "Bad Request", f"this is node {svc.id!r}, the change's node.json is node {conf['id']!r}")
    old, new = _links(svc.conf), _links(conf)
    sealed = svc.seeds.sealed if svc.seeds is not None else _sealed_file(svc)
    blobs = w.get("sealed") or {}
    skey = load_storage_key(svc.dir / "storage.key") if blobs else None
    audit, now = [], round(time.time(), 6)
    for name in [n for n in old if n not in new]:
        _remove_link(svc, old[name], sealed)
        audit.append({"time": now, "event": "link removed", "link": name, "version": version,
                      "outcome": "its remaining key destroyed at this end (the seed deleted, the stream refused)"})
    for name in [n for n in new if n not in old]:
        what = _add_link(svc, new[name], blobs.get(name), skey, sealed)
        audit.append({"time": now, "event": "link added", "link": name, "version": version, "outcome": what})
    gone_saes = sorted(set(svc.registry) - set(conf["registry"]))
    voided = [k for sae in gone_saes for k in _void_sae(svc, sae)]
    if gone_saes:
        audit.append({"time": now, "event": "sae removed", "saes": gone_saes, "version": version, "key_ids": voided,
                      "outcome": f"their waiting keys voided at this node ({len(voided)} keys)"})
    removed = {str(k): str(v) for k, v in (w.get("removed") or {}).items()}
    audit.append({"time": now, "event": "membership", "op": str(w.get("op", ""))[:200], "version": version,
                  "outcome": "applied"})
    # in memory at once (no await since the links changed: a report or a metric sees the old or the new), then
    # the files, then the audit and the voided keys' rows
    svc.registry, svc.saes = dict(conf["registry"]), set(conf["saes"])
    from .leader import peer_addresses

    svc.addresses = {**conf["addresses"], **peer_addresses(svc.neighbours)}
    svc._ids_by_address = None  # the roles expected at each address, computed again (.messaging)
    REMOVED.update(removed)
    svc.conf = {**conf, "topology_version": version, "removed": {**svc.conf.get("removed", {}), **removed}}
    svc.topology_version = version
    if svc.seeds is None and (blobs or any(n not in new for n in old)):
        write_durably(svc.dir / "links.sealed.json", json.dumps(sealed, indent=1) + "\n")
    elif svc.seeds is not None:
        write_durably(svc.seeds.path, json.dumps(svc.seeds.sealed, indent=1) + "\n")
    write_durably(svc.dir / "node.json", json.dumps(svc.conf, indent=1) + "\n")
    await svc.committer.commit(Batch(delete_keys=voided, audit=audit))
    if svc.seeds is not None and any(n not in old for n in new):  # the links this node proposes a seed for
        asyncio.get_running_loop().create_task(svc.seeds.run())
    logger.warning("topology version %d applied (%s)", version, w.get("op", ""))
    return {"topology_version": version, "applied": True, "voided_keys": len(voided)}


async def refuse_unless_admin(request, committer) -> None:
    """403 (a problem detail) to any role but ``admin``, audited."""
    from ..server.store import Batch
    from ..server.storehealth import CommitFailed

    try:
        require(request, "admin")
    except Problem as p:
        try:
            await committer.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "membership refused",
                                                 "path": request.url.path, "status": 403, "outcome": p.detail}]))
        except CommitFailed:  # the refusal stands whatever the audit
            pass
        raise


def membership_routes(svc) -> list:
    """``POST /control/v1/membership``: the admin's change of membership (403 for any other role)."""
    from starlette.routing import Route

    lock = asyncio.Lock()

    @problem_routes
    async def change(request):
        await refuse_unless_admin(request, svc.committer)
        w = await read_json(request, CONTROL_MAX_BODY)
        async with lock:
            return json_response(await apply(svc, w))

    return [Route("/control/v1/membership", change, methods=["POST"])]
