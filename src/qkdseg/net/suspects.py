"""A misbehaving relay named and routed around (issue 38; docs/network.md, "Threat model").

The controller keeps, per node, the outcome of the relay runs through it: each plan's relays (its untrusted
nodes between the two SAEs' nodes: the ends cannot be routed around, a trusted node is trusted), and each run's
outcome as its source node reports it (``qkdseg_runs`` in its link report: confirmation failed, timed out,
refused, or confirmed). A node whose last ``suspect_after`` runs all failed, with no run through it confirmed
since (a failure another route explains: that route's runs through it work), is **suspect** (one node at a time,
the one with the most such runs; a suspect named before whose failed runs all went through the node named now is
readmitted, its failures explained by that node): it joins the
planner's excluded set (:attr:`qkdseg.server.planner.Planner.excluded`, reason ``suspect``) for
``suspect_for_s`` seconds or until ``qkdseg net clear-suspect DIR NODE``; audited, counted in ``/metrics``, shown
in ``/health``'s and ``net status --format json``'s ``excluded`` and on the dashboard.

A run is reported by its source only (the plan's first node), once; an unknown or another node's run is ignored.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from ..errors import InvalidRequest
from .wire import Problem

SUSPECT_AFTER = 3
SUSPECT_FOR_S = 600.0
#: Plans whose outcome is awaited (the oldest forgotten first: a source that never reports).
MAX_RUNS = 20_000
#: Runs one report may carry.
MAX_REPORTED = 1000
#: The reason of a failed run recorded from an altered share (threshold sharing): a confirmed run does not clear it.
ALTERED = "share altered"


def settings(conf: dict, where: str) -> tuple[int, float]:
    """``(suspect_after, suspect_for_s)`` of the controller's ``net.json`` (net init's flags), checked."""
    after, for_s = conf.get("suspect_after", SUSPECT_AFTER), conf.get("suspect_for_s", SUSPECT_FOR_S)
    if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= 1_000_000:
        raise InvalidRequest(f"{where}: field 'suspect_after'={after!r} must be a whole number >= 1")
    if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not (math.isfinite(for_s) and for_s > 0):
        raise InvalidRequest(f"{where}: field 'suspect_for_s'={for_s!r} must be a number of seconds > 0")
    return after, float(for_s)


def check_runs(runs) -> list[tuple[str, bool, str]]:
    """A report's ``qkdseg_runs`` (``[{"request_id", "ok", "why"}]``), checked (400 otherwise)."""
    if runs is None:
        return []
    if not isinstance(runs, list) or len(runs) > MAX_REPORTED:
        raise Problem(400, "Bad Request", f"qkdseg_runs must be a list of at most {MAX_REPORTED} runs")
    out = []
    for r in runs:
        if not (isinstance(r, dict) and isinstance(r.get("request_id"), str) and len(r["request_id"]) <= 64
                and isinstance(r.get("ok"), bool) and isinstance(r.get("why", ""), str)):
            raise Problem(400, "Bad Request", "each of qkdseg_runs is {request_id: text, ok: true|false, why: text}")
        out.append((r["request_id"], r["ok"], r.get("why", "")[:200]))
    return out


class Suspects:
    """The runs through each node and the suspect nodes (the controller's; :attr:`planner` plans around them)."""

    def __init__(self, planner, after: int = SUSPECT_AFTER, for_s: float = SUSPECT_FOR_S, clock=time.time) -> None:
        self.planner, self.after, self.for_s, self.clock = planner, after, for_s, clock
        self.runs: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()  # request -> (source, relays)
        self.failed: dict[str, list[tuple]] = {}  # node -> (why, relays) of its failed runs since one confirmed
        self.until: dict[str, float] = {}  # suspect node -> when it is planned through again
        self.on_named = None  # metrics: called each time a node is named suspect

    def planned(self, rid: str, arrays, route_nodes, s: int, d: int) -> None:
        """Plan ``rid`` of source ``s`` to ``d`` (node indices) through ``route_nodes`` (node ids)."""
        ends = {str(arrays.node_ids[s]), str(arrays.node_ids[d])}
        index = {str(v): i for i, v in enumerate(arrays.node_ids)}
        relays = tuple(sorted({str(v) for v in route_nodes} - ends))
        relays = tuple(v for v in relays if v in index and not bool(arrays.trusted[index[v]]))
        self.runs[rid] = (str(arrays.node_ids[s]), relays)
        while len(self.runs) > MAX_RUNS:
            self.runs.popitem(last=False)

    def outcomes(self, source: str, runs: list[tuple[str, bool, str]]) -> list[dict]:
        """The runs ``source`` reports; returns the audit records of the nodes named suspect (or readmitted) now."""
        recs: list[dict] = []
        for rid, ok, why in runs:
            entry = self.runs.get(rid)
            if entry is None or entry[0] != source:  # not a plan of this source's, or reported already
                continue
            del self.runs[rid]
            relays = entry[1]
            for node in relays:
                if ok:  # a confirmed run through it: its failures are explained by the other nodes of theirs
                    kept = [f for f in self.failed.get(node, ()) if f[0].startswith(ALTERED)]  # not an altered share
                    if kept:
                        self.failed[node] = kept
                    else:
                        self.failed.pop(node, None)
                else:
                    self.failed.setdefault(node, []).append((why or "failed", relays))
            if not ok:
                recs += self._name_one()
        return recs

    def altered(self, relays, why: str) -> list[dict]:
        """A segment end found a share altered on a path through ``relays`` (threshold sharing, :mod:`.shares`):
        each untrusted one gets a failed run that no confirmed run clears (the run itself was confirmed: the share
        was corrected); returns the records of a node named suspect now."""
        a = self.planner.arrays
        index = {str(v): i for i, v in enumerate(a.node_ids)}
        relays = tuple(v for v in relays if v in index and not bool(a.trusted[index[v]]))
        for node in relays:
            self.failed.setdefault(node, []).append((f"{ALTERED}: {why}", relays))
        return self._name_one() if relays else []

    def _name_one(self) -> list[dict]:
        """Name at most one node suspect after a failed run: of those with ``after`` failed runs and none confirmed
        since, the one with the most (ties: the lowest id). A suspect named earlier whose failed runs all went
        through the node named now is readmitted: they are explained by it."""
        ready = [n for n, f in self.failed.items() if len(f) >= self.after and n not in self.until]
        if not ready:
            return []
        node = min(ready, key=lambda n: (-len(self.failed[n]), n))
        fails = self.failed[node]
        now = self.clock()
        self.until[node] = now + self.for_s
        self.planner.exclude(node, "suspect")
        if self.on_named is not None:
            self.on_named()
        recs = [{"time": round(now, 6), "event": "node suspect", "node": node, "failed_runs": len(fails),
                 "why": sorted({w for w, _ in fails})[:5], "until": round(now + self.for_s, 3),
                 "outcome": f"excluded from planning for {self.for_s:g} s (suspect)"}]
        for other in [n for n in self.until if n != node]:
            theirs = self.failed.get(other)
            if theirs and all(node in relays for _, relays in theirs):
                recs.append(self._readmit(other, f"its failed runs all went through node {node}, named suspect"))
        return recs

    def expire(self) -> list[dict]:
        """Readmit the nodes whose time is up; their audit records."""
        now = self.clock()
        return [self._readmit(node, "suspect_for_s elapsed") for node, t in list(self.until.items()) if t <= now]

    def clear(self, node: str) -> dict | None:
        """``net clear-suspect``: readmit ``node`` now (None when it is not suspect)."""
        return self._readmit(str(node), "cleared by the operator") if str(node) in self.until else None

    def _readmit(self, node: str, why: str) -> dict:
        del self.until[node]
        self.failed.pop(node, None)
        self.planner.readmit(node, "suspect")
        return {"time": round(self.clock(), 6), "event": "node readmitted", "node": node,
                "outcome": f"no longer suspect: {why}"}

    def state(self) -> dict:
        """What a new leader needs (replicated controllers keep it in etcd: :func:`replicated`): the suspect nodes
        and until when (wall-clock time), and each node's failed runs since one confirmed. The plans awaiting their
        outcome are not kept (a run planned by the old leader and reported to the new one is not counted)."""
        until, failed = dict(self.until), dict(self.failed)  # copies: the store's thread reads them (group commit)
        return {"until": until, "failed": {n: [[w, list(r)] for w, r in list(f)] for n, f in failed.items()}}

    def restore(self, state: dict | None) -> None:
        """Take ``state`` (:meth:`state`, as etcd holds it; None: none) as this controller's: its suspects are
        excluded from planning, until the same time; a node suspect here but not there is planned through again."""
        state = state or {}
        until = {str(n): float(t) for n, t in (state.get("until") or {}).items()}
        for node in set(self.until) - set(until):
            self.planner.readmit(node, "suspect")
        for node in until:
            self.planner.exclude(node, "suspect")
        self.until = until
        self.failed = {str(n): [(str(w), tuple(str(x) for x in r)) for w, r in f]
                       for n, f in (state.get("failed") or {}).items()}

    def view(self) -> dict:
        """Per node with failed runs: how many in a row, and until when it is suspect (``/health``'s ``suspects``)."""
        return {node: {"failed_runs": len(f), **({"until": round(self.until[node], 3)} if node in self.until else {})}
                for node, f in sorted(self.failed.items())} | {
            node: {"failed_runs": 0, "until": round(t, 3)} for node, t in self.until.items() if node not in self.failed}


def replicated(ctl) -> None:
    """With replicated controllers (:mod:`.replica`): every commit writes :meth:`Suspects.state` into etcd's
    ``PREFIX/state``, and a controller that takes over (or reloads after a failed commit) restores it, so a failover
    keeps the suspects and their expiry. Nothing to do with one controller (its suspects live in its memory)."""
    if ctl.replica is None:
        return
    store = ctl.svc.store
    store.sections["suspects"] = ctl.suspects.state
    ctl.replica.on_reload.append(lambda: ctl.suspects.restore(store.extra.get("suspects")))


async def audit(ctl, recs: list[dict]) -> None:
    """Commit the controller's records of suspect nodes (a failed write: logged by the store; the state stands)."""
    from ..server.store import Batch
    from ..server.storehealth import CommitFailed

    if recs:
        try:
            await ctl.svc.committer.commit(Batch(audit=recs))
        except CommitFailed:
            pass


def suspect_routes(ctl) -> list:
    """``POST /control/v1/suspects/clear`` (the operator, with the controller's certificate: ``net clear-suspect``)."""
    from starlette.routing import Route

    from .limits import CONTROL_MAX_BODY, read_json
    from .wire import json_response, problem_routes, require

    @problem_routes
    async def clear(request):
        require(request, "controller")
        if ctl.replica is not None:
            ctl.replica.check()  # 503 not_leader on a standby: the leader holds the suspects
        w = await read_json(request, CONTROL_MAX_BODY)
        node = str(w.get("node", ""))
        if node not in {str(v) for v in ctl.svc.arrays.node_ids}:
            raise Problem(404, "Not Found", f"no node {node[:64]!r} in this network")
        rec = ctl.suspects.clear(node)
        await audit(ctl, [rec] if rec else [])
        return json_response({"node": node, "cleared": rec is not None,
                              "excluded": ctl.svc.planner.excluded_view()}, 200)

    return [Route("/control/v1/suspects/clear", clear, methods=["POST"])]

