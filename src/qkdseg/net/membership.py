"""The controller's side of a change of membership (``net add-node``, ``add-link``, ``remove-*``, ``sae add|remove``).

``POST /control/v1/membership`` takes a change from the ``admin`` role only (``DIR/pki/admin.crt``, which ``net
init`` makes and the operator keeps); any other role gets 403 with a problem detail, and the refusal is audited.
A change carries the whole new topology (``network``: node-link JSON), the SAE registry (``saes``), the nodes'
entries of ``net.json`` (``nodes``), the removed nodes (``removed``: id -> why) and its ``version`` (one more than
the last; a version at or below the controller's is answered as applied already). The controller:

1. stops taking new plans and link reports for the time of the change (they wait; a request already planned
   keeps its reservation, written before the change: its nodes finish it, or it fails cleanly at a removed link);
2. builds the new planner over the new network: each link that stays keeps its level and consumed offset, a new
   link starts full (as ``net init``'s do), a removed link is forgotten (its row leaves the store: its key is
   destroyed at both ends); the excluded set keeps its reasons, a removed node is in it with reason ``removed``
   and a new node with ``unready`` until its first report says it is ready;
3. writes its own files (``network.json``, ``kms.toml``'s network and SAEs, ``net.json``), audits the change,
   and plans over the new topology from the next request.

Replicated controllers (``--store etcd://``) do not take changes yet (409).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..server.files import check_fields, load_json, write_durably
from .inventory import split_address
from .limits import CONTROL_MAX_BODY, read_json
from .nodemembers import refuse_unless_admin, version_for  # noqa: F401 -- version_for: the controller's /health
from .wire import REMOVED, Problem, json_response, problem_routes


def attach(ctl) -> None:
    """At the controller's start: its topology version, the removed nodes (refused; excluded ``removed``)."""
    ctl.topology_version = int(ctl.net.get("topology_version", 0))
    ctl.members_open = asyncio.Event()
    ctl.members_open.set()
    removed = {str(k): str(v) for k, v in ctl.net.get("removed", {}).items()}
    REMOVED.update(removed)
    for node in removed:
        ctl.svc.planner.exclude(node, "removed")


async def gate(ctl) -> None:
    """Wait while a change of membership is applied (plans and reports; no wait otherwise)."""
    ev = getattr(ctl, "members_open", None)
    if ev is not None and not ev.is_set():
        await ev.wait()


def _new_planner(svc, net, cfg, excluded: dict):
    """The planner over ``net``: the links that stay keep their levels and consumed offsets (matched by their ends),
    new ones start full; and the store's rows of the links used, renumbered."""
    from ..keys.levels import LinkLevels
    from ..server.planner import Planner
    from ..server.source import EmulatedKeySource

    source = EmulatedKeySource(net, cfg.default_rate_bps)
    planner = Planner(cfg, net, source, svc.clock)
    oa, olv, a = svc.arrays, svc.levels, net.arrays
    oids, ids = oa.node_ids, a.node_ids
    old = {frozenset((str(oids[oa.edge_u[k]]), str(oids[oa.edge_v[k]]))): k for k in range(oa.n_links)}
    cap = a.pool_bits.astype(np.int64)
    level, consumed = cap.copy(), np.zeros_like(cap)
    rows = {}
    for k in range(a.n_links):
        u, v = str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]])
        ko = old.get(frozenset((u, v)))
        if ko is not None:
            level[k], consumed[k] = min(int(olv.level[ko]), int(cap[k])), int(olv.consumed[ko])
            if consumed[k] or level[k] != cap[k]:
                rows[k] = (u, v, int(consumed[k]), int(level[k]), olv.t)
    planner.levels = LinkLevels(cap, level, consumed, t=olv.t)
    planner.excluded = excluded
    return planner, source, rows


def _check(ctl, w: dict):
    """The change's parts checked (400 naming the field), its network loaded; ``(version, network, saes)``."""
    from ..topology import load

    if ctl.replica is not None:
        raise Problem(409, "Conflict", "replicated controllers (--store etcd://) do not take changes of membership "
                                       "yet: stop them, change, start them again")
    if ctl.device_fed:
        raise Problem(409, "Conflict", "a device-fed network (--link-source device) does not take changes of "
                                       "membership yet")
    version = int(w["version"])
    path = ctl.dir / "network.new.json"
    write_durably(path, json.dumps(w["network"]) + "\n")
    try:
        net = load(str(path))
    except Exception as err:  # noqa: BLE001 -- a network the loader refuses: the change is refused, nothing applied
        raise Problem(400, "Bad Request", f"the change's network: {err}") from None
    saes = {str(s): str(n) for s, n in dict(w["saes"]).items()}
    for sae, node in saes.items():
        try:
            net.resolve(node)
        except Exception:  # noqa: BLE001
            raise Problem(400, "Bad Request", f"SAE {sae!r}: node {node!r} is not in the change's network") from None
    for n in w["nodes"]:
        str(n["id"]), str(n["address"]), str(n["dir"]), list(n["saes"])
    return version, net, saes


async def apply(ctl, w: dict) -> dict:
    """Apply one change (see the module docstring); returns what was done."""
    from ..server.config import write_config
    from ..server.store import Batch
    from .layout import link_name
    from .linkhealth import DownLinks

    version = int(w["version"])
    if version <= ctl.topology_version:
        return {"topology_version": ctl.topology_version, "applied": False}
    version, net, saes = _check(ctl, w)
    svc = ctl.svc
    removed = {str(k): str(v) for k, v in (w.get("removed") or {}).items()}
    before = {str(v) for v in svc.arrays.node_ids}
    ctl.members_open.clear()
    try:
        now = round(time.time(), 6)
        await svc.committer.commit(Batch(audit=[{"time": now, "event": "membership", "op": str(w.get("op", ""))[:200],
                                                 "version": version, "outcome": "applying"}]))
        # every plan and report before this point is written; those after wait at the gate until the swap is done
        svc.refill(time.time())
        cfg = dataclasses.replace(svc.cfg, network="network.json", saes=saes)
        nodes = {str(v) for v in net.arrays.node_ids}
        excluded = {n: set(r) for n, r in svc.planner.excluded.items() if n in nodes or "removed" in r}
        for n in removed:
            excluded.setdefault(n, set()).add("removed")
        for n in nodes - before:  # a new node: planned through once its first report says it is ready
            excluded.setdefault(n, set()).add("unready")
        planner, source, rows = _new_planner(svc, net, cfg, excluded)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(svc.committer._executor, svc.store.renumber_links, rows)
        (ctl.dir / "network.new.json").replace(ctl.dir / "network.json")
        write_config(ctl.dir, cfg)
        svc.cfg, svc.network, svc.arrays, svc.source, svc.planner = cfg, net, net.arrays, source, planner
        svc.sae_node = {s: net.arrays.index[net.resolve(n)] for s, n in saes.items()}
        ctl.suspects.planner = planner
        a = net.arrays
        ctl.link_index = {frozenset((str(a.node_ids[a.edge_u[k]]), str(a.node_ids[a.edge_v[k]]))): k
                          for k in range(a.n_links)}
        ctl.link_names = {k: link_name(a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]) for k in range(a.n_links)}
        ctl.link_names_back = {k: link_name(a.node_ids[a.edge_v[k]], a.node_ids[a.edge_u[k]])
                               for k in range(a.n_links)}
        ctl.down = DownLinks()  # by link index: the nodes' next reports say again which are down
        ctl.addresses = {str(n["id"]): n["address"] for n in w["nodes"]}
        ctl.kme_ids = {str(n["id"]): f"KME_{n.get('dir', n['id'])}" for n in w["nodes"]}
        REMOVED.update(removed)
        conf = json.loads((ctl.dir / "net.json").read_text())
        conf.update(nodes=list(w["nodes"]), topology_version=version, removed={**conf.get("removed", {}), **removed})
        write_durably(ctl.dir / "net.json", json.dumps(conf, indent=1) + "\n")
        ctl.net.update(nodes=conf["nodes"], topology_version=version, removed=conf["removed"])
        ctl.topology_version = version
        await svc.committer.commit(Batch(audit=[{
            "time": round(time.time(), 6), "event": "membership", "op": str(w.get("op", ""))[:200],
            "version": version, "nodes": len(nodes), "links": int(a.n_links), "saes": len(saes),
            "removed": sorted(removed), "outcome": "applied: planned over from the next request"}]))
    finally:
        ctl.members_open.set()
    return {"topology_version": version, "applied": True, "nodes": len(nodes), "links": int(a.n_links),
            "excluded": planner and ctl.svc.planner.excluded_view()}


def membership_routes(ctl) -> list:
    """``POST /control/v1/membership``: the admin's change (403 for any other role, audited)."""
    from starlette.routing import Route

    lock = asyncio.Lock()

    @problem_routes
    async def change(request):
        await refuse_unless_admin(request, ctl.svc.committer)
        w = await read_json(request, CONTROL_MAX_BODY)
        async with lock:
            return json_response(await apply(ctl, w))

    return [Route("/control/v1/membership", change, methods=["POST"])]


def load_net_conf(d: Path) -> dict:
    """``CTRLDIR/net.json`` (the nodes' addresses, the controller's), checked (a damaged file is one line)."""
    path = d / "net.json"
    conf = load_json(path, "the network's layout",
                     missing=f"{d}: not a controller directory (no net.json; run 'qkdseg net init')")

    def nodes() -> None:
        for n in conf["nodes"]:
            str(n["id"]), split_address(n["address"]), str(n["dir"]), list(n["saes"])

    version = conf.get("topology_version", 0)  # net add-node ... (.membership): a whole number >= 0
    check_fields(path, "the network's layout", [("address", lambda: split_address(conf["address"])), ("nodes", nodes),
                 ("topology_version", lambda: type(version) is int and version >= 0),
                 ("removed", lambda: isinstance(conf.get("removed", {}), dict))])
    return conf
