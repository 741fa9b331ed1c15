"""A node's reports to the controller: its links, their health, and the dashboard's events.

:class:`Reports` (a mixin of :class:`qkdseg.net.node.NodeService`) commits
batches and keeps their ETSI 014 events for the controller's dashboard,
syncs the link offsets with the neighbours after a start, and reports the
links (ETSI GS QKD 015's ``qkd_node``, a subset) with those events every
``QKDSEG_REPORT_S`` seconds (default 5) or soon after an event.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque

from ..errors import env_number
from ..server.store import Batch
from .keystream import position
from .layout import link_name
from .shares import reported, take_reports

REPORT_S = env_number("QKDSEG_REPORT_S", 5.0)  # how often a node reports its links to the controller
#: Dashboard events a node keeps for its next report (the oldest go first when the controller is away).
MAX_EVENTS = 2000
#: After an event, the next report goes at most this many seconds later (the dashboard's delay).
EVENTS_REPORT_S = 0.5
#: A report carries the stocks' counts (qkdseg_stock) at most this often (seconds).
STOCK_REPORT_S = 1.0
#: Outcomes of relay runs a node keeps for its next report (the oldest go first when the controller is away).
MAX_RUNS = 1000
_DASHBOARD_EVENTS = ("issue", "deliver", "deny", "expire")
_EVENT_FIELDS = ("time", "event", "sae", "peer", "op", "size", "level", "securities", "route", "route_paths", "outcome",
                 "status", "reason")


class Reports:
    """Events, offset sync and link reports (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    async def _commit(self, batch: Batch) -> None:
        """Commit, then keep the batch's ETSI 014 events for the controller's dashboard (no key, ids cut)."""
        await self.committer.commit(batch)
        for rec in batch.audit:
            if rec.get("event") in _DASHBOARD_EVENTS:
                self.event_seq += 1
                ev = {k: rec[k] for k in _EVENT_FIELDS if k in rec}
                ev.update(seq=self.event_seq, node=str(self.id), key_ids=[k[:8] for k in rec.get("key_ids", [])])
                self.events.append(ev)
        if self._report_now is not None and self.events:
            self._report_now.set()

    def note_run(self, rid: str, ok: bool, why: str = "") -> None:
        """The outcome of a relay run this node was the source of, for the controller's next report
        (``qkdseg_runs``: it names the relays of failing runs, :mod:`.suspects`); a failure is reported soon."""
        runs = self.__dict__.setdefault("run_outcomes", deque(maxlen=MAX_RUNS))
        runs.append({"request_id": rid, "ok": ok, **({"why": why[:200]} if why else {})})
        if not ok and self._report_now is not None:
            self._report_now.set()

    async def sync_offsets(self) -> None:
        """After a start: each outgoing counter skips forward to the neighbour's high-water mark if that is larger,
        within the link's window (further on: refused, audited, the link reported suspect; :mod:`.linkhealth`)."""
        from .linkhealth import adopt_offsets

        for nb, end in self.links.items():
            try:
                r = await self._http().get(f"https://{self.addresses[str(nb)]}/relay/v1/links",
                                           params={"link": end.name})
                theirs = r.json()
            except Exception:  # noqa: BLE001 -- the neighbour is down: it syncs with us when it starts
                continue
            await adopt_offsets(self, str(nb), end, theirs)

    def link_report(self) -> dict:
        """This node's links as a JSON subset of ETSI GS QKD 015's model (``qkd_node``: ``qkdn_id``, ``qkd_links``,
        each ``qkd_link`` with ``link_id``, ``link_status``, both ends' ``qkdn_id``) plus qkdseg's fields: the pool's
        size, the bits consumed in both directions (this end's durable offsets) and its level: ``null`` for an
        emulated link (its refill is the controller's model), the device key bits held in the direction with fewer
        for a device-fed link (:mod:`.devicelinks`)."""
        out = []
        for lk in self.conf["links"]:
            name = link_name(*lk["link"])
            consumed = 8 * (position(self.offsets.get((name, 0), 0)) + position(self.offsets.get((name, 1), 0)))
            up = self.seeds is None or self.seeds.ready(name)  # a seed not agreed yet (.linkseeds): down
            out.append({"link_id": name, "link_status": self.linkhealth.status(lk["neighbour"]) if up else "DOWN",
                        "qkdl_local": {"qkdn_id": str(self.id)}, "qkdl_remote": {"qkdn_id": str(lk["neighbour"])},
                        "qkdseg_pool_bits": int(lk["pool_bits"]), "qkdseg_consumed_bits": consumed,
                        "qkdseg_level_bits": self.device.level_bits(name) if self.device else None})
        return {"qkd_node": {"qkdn_id": str(self.id), "qkd_links": {"qkd_link": out}},
                "qkdseg_events": {"boot": self.boot, "events": list(itertools.islice(self.events, 500))},
                **self._stock_report(), "qkdseg_runs": list(self.__dict__.get("run_outcomes", ())),
                "qkdseg_shares": take_reports(self),  # threshold sharing: shares found altered here (.shares)
                # not ready while a write of its store fails: the controller then plans around it
                "qkdseg_ready": self.store.health.ok, "qkdseg_store": self.store.health.detail()}

    def _stock_report(self) -> dict:
        """``qkdseg_stock`` (the stocks' counts, for the dashboard) at most once a second: a report that goes
        for events in between does without (counting the stocks costs their keys)."""
        now = time.monotonic()
        if self.stock is None or now - getattr(self, "_stock_sent", -1e9) < STOCK_REPORT_S:
            return {}
        self._stock_sent = now
        return {"qkdseg_stock": self.stock.snapshot()}

    async def report_links(self) -> None:
        """After the start's offset sync, every ``QKDSEG_REPORT_S`` seconds, and within ``EVENTS_REPORT_S`` of an
        ETSI 014 event: the links' report to the controller, with the events since the last acknowledged report."""
        self._report_now = asyncio.Event()
        while True:
            body = self.link_report()
            if self.hostile is not None:  # TEST ONLY: the hostile-node harness forges it (net/hostile.py)
                body = self.hostile.report(body)
            sent = body["qkdseg_events"]["events"]
            ok = False
            try:  # the controller is down: the next report goes when it is back
                r = await self.controllers.request(self._http(), "POST", "/control/v1/links", json=body)
                ok = r.status_code == 200
            except Exception as err:  # noqa: BLE001 -- a certificate problem is logged (.tlsfail)
                from .tlsfail import report

                report(f"the controller ({self.controllers.current})", err)
            if ok and sent:  # acknowledged: those events are the controller's now
                while self.events and self.events[0]["seq"] <= sent[-1]["seq"]:
                    self.events.popleft()
            runs = self.__dict__.get("run_outcomes")
            if ok and runs:  # so are the runs it carried (appended since: kept for the next)
                for _ in range(min(len(body.get("qkdseg_runs", ())), len(runs))):
                    runs.popleft()
            if ok:
                reported(self, len(body.get("qkdseg_shares", ())))
            self._report_now.clear()
            if ok and self.events:  # events came meanwhile: soon, not in REPORT_S
                await asyncio.sleep(EVENTS_REPORT_S)
                continue
            try:
                await asyncio.wait_for(self._report_now.wait(), REPORT_S)
            except asyncio.TimeoutError:
                continue
            await asyncio.sleep(EVENTS_REPORT_S)  # gather the events of the next half second into one report
