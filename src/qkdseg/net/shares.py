"""Threshold sharing in the network of nodes (issue 40; docs/network.md, "Threshold sharing").

With ``sharing = "threshold"`` in the controller's ``kms.toml`` (``net init --tolerate T``) a plan's parts say so
(:class:`qkdseg.keys.steps.NodePart` ``tolerate``) and each segment's paths carry shares of its key, k-of-m with
``k = m - T``. This module is the network's side of it:

- at a node: a relay message of a threshold run that fails (a dead neighbour) costs that path, not the run
  (:func:`message_failed`); after each relay step (:func:`after_step`) the shares found altered are audited here and
  reported to the controller (``qkdseg_shares`` in the next link report, naming the request, the segment and the
  path), and a segment end that holds ``k`` shares but not the proof :func:`~qkdseg.reconstruction.shamir.
  decode_early` waits for decodes what it has after :data:`GRACE_S` (:meth:`~qkdseg.keys.steps.RelayNode.settle`);
  the destination keeps a finished run's state for :data:`GRACE_S` while shares are still on their way
  (:func:`linger`), so that a late altered one is named too;
- at the controller: the paths of each threshold plan (:class:`SharePaths`), so that a reported share names its
  path's nodes (audited, ``share altered``) and feeds the record of failed relays (:mod:`.suspects`); and which
  unreachable relays a plan survives (:func:`tolerable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque

from ..errors import env_number
from .wire import Problem

logger = logging.getLogger("qkdseg.net")
#: Seconds a segment end that holds ``k`` shares waits for the ones that would prove its decoding, then decodes.
GRACE_S = env_number("QKDSEG_SHARE_GRACE_S", 1.0)
#: Share reports a node keeps for its next link report; plans whose paths the controller keeps.
MAX_REPORTS = 1000
MAX_PLANS = 20_000
_WHAT = ("altered", "inconsistent", "undecodable")


# -- at a node ----------------------------------------------------------------------------------------------------
def message_failed(svc, w: dict, why: str) -> None:
    """A relay message not accepted: a threshold run's pieces cost their path only (the segment end decodes without
    them; their pad bits are spent all the same); anything else fails the request as before."""
    st = svc.requests.get(w["request_id"])
    relay = st.relay if st is not None else None
    if w["kind"] == "pieces" and relay is not None and relay.part.tolerate:
        logger.warning("request %s: a share's path is lost (%s); threshold sharing tolerates %d", w["request_id"],
                       why, relay.part.tolerate)
        return
    svc._fail(w["request_id"], why)


def after_step(svc, st) -> None:
    """After a relay step of ``st`` at this node: audit and report the shares found altered since, and start the
    grace timer of a segment end that waits for a proving share."""
    relay = st.relay
    if relay is None or not relay.part.tolerate:
        return
    done = getattr(st, "shares_reported", 0)
    new = relay.share_events[done:]
    st.shares_reported = len(relay.share_events)
    if new:
        _report(svc, st, new)
    if relay.failed and not getattr(st, "fail_noted", False):
        st.fail_noted = True
        svc._fail(st.request_id, relay.failed)
    if relay.waiting and getattr(st, "grace", None) is None:
        st.grace = asyncio.get_running_loop().call_later(GRACE_S, _settle, svc, st)


def linger(svc, st) -> None:
    """The destination is done with ``st``: forget it now, or, when shares of a threshold run are still on their way,
    after :data:`GRACE_S` (they are checked against the decoded key meanwhile: an altered one is named)."""
    relay = st.relay
    if relay is None or not relay.part.tolerate or not relay.part.ends or all(
            (c, j, i) in relay.received for c in range(relay.part.copies) for j, i, _ in relay.part.ends):
        svc.requests.pop(st.request_id, None)
        return

    def forget() -> None:
        if svc.requests.get(st.request_id) is st:
            del svc.requests[st.request_id]

    asyncio.get_running_loop().call_later(GRACE_S, forget)


def _settle(svc, st) -> None:
    if svc.requests.get(st.request_id) is not st or not st.relay.waiting:
        return
    try:
        svc.send(st.relay.settle(), st.request_id)
    except Exception:  # noqa: BLE001 -- not sent: the run fails as a relay that did not answer (its source times out)
        logger.warning("request %s: the settled segment key could not be relayed", st.request_id)
    after_step(svc, st)
    svc._check_done(st)


def _report(svc, st, events: list[dict]) -> None:
    from ..server.store import Batch

    part = st.relay.part
    now = time.time()
    recs, reports = [], svc.__dict__.setdefault("share_reports", deque(maxlen=MAX_REPORTS))
    for ev in events:
        what = ev["what"]
        recs.append({"time": round(now, 6), "event": f"share {what}", "request_id": st.request_id,
                     "node": str(svc.id), "segment": ev["segment"], "path": ev.get("nodes") or ev.get("paths"),
                     "sharing": "threshold", "tolerate": part.tolerate,
                     "outcome": {"altered": "left out of the decoding; reported to the controller",
                                 "inconsistent": "a share off the decoded key (detected, not located: T = 1)",
                                 "undecodable": "the segment key could not be decoded; the run fails"}[what]})
        reports.append({"request_id": st.request_id, "segment": ev["segment"], "path": ev["path"], "what": what})
        logger.warning("request %s: share %s on segment %d, path %s", st.request_id, what, ev["segment"] + 1,
                       ev.get("nodes"))

    async def commit() -> None:
        with contextlib.suppress(Exception):  # a failed write is logged by the store; the report still goes
            await svc._commit(Batch(audit=recs))

    asyncio.get_running_loop().create_task(commit())
    if svc._report_now is not None:
        svc._report_now.set()


def take_reports(svc) -> list[dict]:
    """The share reports for the next link report (``qkdseg_shares``)."""
    return list(svc.__dict__.get("share_reports", ()))


def reported(svc, n: int) -> None:
    """The controller acknowledged a report that carried ``n`` share reports: drop them (later ones are kept)."""
    q = svc.__dict__.get("share_reports")
    for _ in range(min(n, len(q or ()))):
        q.popleft()


# -- at the controller ----------------------------------------------------------------------------------------------
class SharePaths:
    """The segment nodes and paths of the controller's recent threshold plans (by request id)."""

    def __init__(self) -> None:
        self.plans: OrderedDict[str, tuple[tuple, tuple, int]] = OrderedDict()

    def planned(self, rid: str, route) -> None:
        if not getattr(route, "tolerate", 0):
            return
        self.plans[rid] = (tuple(str(v) for v in route.segment_nodes),
                           tuple(tuple(tuple(str(v) for v in p) for p in seg.paths) for seg in route.segments),
                           int(route.tolerate))
        while len(self.plans) > MAX_PLANS:
            self.plans.popitem(last=False)

    def reports(self, caller_node: str, raw) -> list[tuple[dict, list, str]]:
        """A node's ``qkdseg_shares``, checked (400; nothing applied), of plans whose segment it ends: for each, the
        audit record naming the path(s), and the relays and reason for the record of failed relays (:func:`apply`)."""
        if raw is None:
            return []
        if not isinstance(raw, list) or len(raw) > MAX_REPORTS:
            raise Problem(400, "Bad Request", f"qkdseg_shares must be a list of at most {MAX_REPORTS} reports")
        recs = []
        for r in raw:
            if not (isinstance(r, dict) and isinstance(r.get("request_id"), str) and r.get("what") in _WHAT
                    and isinstance(r.get("segment"), int) and not isinstance(r.get("segment"), bool)
                    and (r.get("path") is None or (isinstance(r["path"], int) and not isinstance(r["path"], bool)))):
                raise Problem(400, "Bad Request", "each of qkdseg_shares is {request_id, segment, path, what: "
                                                  f"{'|'.join(_WHAT)}}}")
            plan = self.plans.get(r["request_id"])
            j, i = r["segment"], r["path"]
            if plan is None or not 0 <= j < len(plan[1]) or plan[0][j + 1] != caller_node or (
                    i is not None and not 0 <= i < len(plan[1][j])):
                continue  # not a segment this node ends in a plan kept here: ignored
            paths = [plan[1][j][i]] if i is not None else list(plan[1][j])
            relays = sorted({v for p in paths for v in p[1:-1]})
            rec = ({"time": round(time.time(), 6), "event": f"share {r['what']}", "request_id": r["request_id"],
                    "reporter": caller_node, "segment": j, "path": list(paths[0]) if i is not None else None,
                    "paths": [list(p) for p in paths], "sharing": "threshold", "tolerate": plan[2],
                    "outcome": "the path's relays recorded as failed relays (suspects)" if i is not None and
                    r["what"] == "altered" else "recorded"})
            located = i is not None and r["what"] == "altered"  # evidence against this path's relays
            recs.append((rec, relays if located else [], f"altered a share on path {'-'.join(paths[0])}"))
        return recs


    @staticmethod
    def apply(ctl, checked: list[tuple[dict, list, str]]) -> list[dict]:
        """The checked share reports applied: their records, and those of a node the record of failed relays
        names."""
        out = []
        for rec, relays, why in checked:
            out.append(rec)
            if relays:
                out += ctl.suspects.altered(relays, why)
        return out

    @staticmethod
    def unreachable(rid: str, route, bad: list[str]) -> list[str]:
        """The nodes that did not take their parts and fail the plan: none when the plan survives them
        (:func:`tolerable`; logged)."""
        if tolerable(route, bad):
            logger.warning("request %s: node(s) %s unreachable; their paths' shares are lost (tolerate %d)", rid,
                           ", ".join(bad), route.tolerate)
            return []
        return bad


def tolerable(route, bad: list[str]) -> bool:
    """Whether a threshold plan goes on although nodes ``bad`` did not get their parts: none of them a segment node,
    and in every segment at most ``tolerate`` paths through them (those paths' shares are lost)."""
    tolerate = int(getattr(route, "tolerate", 0) or 0)
    if not tolerate or not bad:
        return False
    down = set(bad)
    if down & {str(v) for v in route.segment_nodes}:
        return False
    return all(sum(bool(down & {str(v) for v in p[1:-1]}) for p in seg.paths) <= tolerate for seg in route.segments)
