"""A link whose messages keep failing is reported down, and the controller routes around it (docs/network.md).

- At a node (:class:`LinkHealth`): a POST to a neighbour that got no answer
  in all its tries (a transport error each time: the link is cut, the
  neighbour is gone) marks that link ``DOWN`` and sends a link report at
  once (``link_status`` of ETSI GS QKD 015). While a link is down the node
  probes it every second (``GET /relay/v1/links``, the offsets query); an
  answer marks the link ``ACTIVE`` again (reported at once), and the node's
  outgoing counter on it skips forward to the neighbour's mark when that is
  larger (the resync after a partition heals: bits wasted, never reused). A
  call from that neighbour (a restarted node syncing its offsets) marks it
  up too.
- Suspect links (issue 33): a neighbour that claims an offset further on than the link's window
  (``max_skip_bits`` in ``node.json``, default the link's pool size) is refused and audited
  (:func:`adopt_offsets`, ``"event": "offsets refused"``, naming the neighbour), and the link is reported
  ``SUSPECT`` for at least ``QKDSEG_SUSPECT_S`` seconds (default 5); it is probed every second as a down
  link is, and a probe answered within the window (the genuine neighbour back) makes it ``ACTIVE`` again.
- At the controller (:class:`DownLinks`): a link is down while either end's
  last report says ``DOWN``; planning sees a level of 0 on it (the routing
  registry then takes another route, or refuses with 503 when none is left).
  The levels themselves (the reservations) are not changed.
"""

from __future__ import annotations

import contextlib
import logging
import time

from ..errors import env_number
from .keystream import gap, implausible

PROBE_S = 1.0
SUSPECT_S = env_number("QKDSEG_SUSPECT_S", 5.0)
logger = logging.getLogger("qkdseg.net")


async def adopt_offsets(node, nb: str, end, theirs) -> bool:
    """A neighbour's offsets on ``end``'s link (its answer to ``GET /relay/v1/links``): this end's outgoing counter
    skips forward to the neighbour's mark when that is larger and within the link's window; a mark further on
    (or not a number) is refused, audited naming the neighbour, and the link is reported suspect.
    Returns whether the answer was taken."""
    key = (end.name, end.out_dir)
    ours = node.offsets.get(key, 0)
    claimed = theirs.get(str(end.out_dir), 0) if isinstance(theirs, dict) else None
    window = node.window_bytes(end)
    if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed < 0 or (
            claimed > ours and (gap(ours, claimed) > window or implausible(claimed, node.window[1]))):
        if str(nb) in node.linkhealth.suspects:  # audited when this suspicion began; still suspect
            node.linkhealth.suspect(node, nb)
            return False
        logger.warning("node %s: neighbour %s claims offset %r on link %s (this end's counter %d, window %d "
                       "bytes): refused, link reported SUSPECT", node.id, nb, claimed, end.name, ours, window)
        node.linkhealth.suspect(node, nb)
        with contextlib.suppress(Exception):  # a failed write: counted in the node's store health; still suspect
            await node.committer.commit(_batch([{
            "time": round(time.time(), 6), "event": "offsets refused", "neighbour": str(nb), "link": end.name,
                "direction": end.out_dir, "claimed": claimed if isinstance(claimed, int) else repr(claimed)[:64],
                "counter": ours, "window_bytes": window,
                "outcome": "a neighbour's offset beyond the link's window: not adopted, link reported suspect"}]))
        return False
    if claimed > ours:
        try:  # on disk first: a failed write changes nothing (the link stays down, probed again)
            node.relaydb.write({key: claimed})
        except Exception:  # noqa: BLE001 -- CommitFailed: counted in the node's store health
            return False
        node.offsets[key] = max(node.offsets.get(key, 0), claimed)
    return True


def _batch(audit: list):
    from ..server.store import Batch

    return Batch(audit=audit)


class LinkHealth:
    def __init__(self) -> None:
        self.down: set[str] = set()  # neighbour ids
        self.suspects: dict[str, float] = {}  # neighbour id -> when it last claimed too much (time.monotonic)
        self._prober = None

    def record(self, node, dst: str, answered: bool) -> None:
        """After a POST to ``dst`` (with its retries): no answer at all marks the link down and reports it."""
        if dst not in node.neighbours or answered or dst in self.down:
            return
        self.down.add(dst)
        logger.warning("node %s: no answer from neighbour %s in 3 tries: link reported DOWN", node.id, dst)
        self._report(node)
        self._start_prober(node)

    def suspect(self, node, nb: str) -> None:
        """``nb`` claimed an offset beyond the window: the link is reported SUSPECT (at once) and probed."""
        nb = str(nb)
        new = nb not in self.suspects
        self.suspects[nb] = time.monotonic()
        if new:
            self._report(node)
        self._start_prober(node)

    def _start_prober(self, node) -> None:
        if self._prober is None or self._prober.done():
            import asyncio

            self._prober = asyncio.get_running_loop().create_task(self._probe_while_down(node))

    def heard(self, node, src: str) -> None:
        """``src`` called us (a restarted neighbour syncing its offsets): the link is up again."""
        if src in self.down:
            self.down.discard(src)
            self._report(node)

    @staticmethod
    def _report(node) -> None:
        if node._report_now is not None:
            node._report_now.set()

    def status(self, neighbour) -> str:
        nb = str(neighbour)
        return "DOWN" if nb in self.down else "SUSPECT" if nb in self.suspects else "ACTIVE"

    async def _probe_while_down(self, node) -> None:
        import asyncio

        while self.down or self.suspects:
            await asyncio.sleep(PROBE_S)
            if await self.probe(node):
                self._report(node)

    async def probe(self, node) -> bool:
        """Ask each down or suspect link's neighbour for its offsets; an answer within the window: the link is up,
        offsets resynced forward (a suspect one once ``SUSPECT_S`` passed since its last refusal). Returns whether a
        link came up."""
        up = False
        for nb in sorted(self.down | set(self.suspects)):
            end = node.links.get(node.neighbours[nb])
            if end is None:
                self.down.discard(nb)
                self.suspects.pop(nb, None)
                continue
            try:
                r = await node._http().get(f"https://{node.addresses[nb]}/relay/v1/links", params={"link": end.name},
                                           timeout=3.0)
                theirs = r.json()
            except Exception:  # noqa: BLE001 -- still down
                continue
            if not await adopt_offsets(node, nb, end, theirs):
                continue  # suspect (again)
            was = nb in self.down or nb in self.suspects
            self.down.discard(nb)
            if nb in self.suspects and time.monotonic() - self.suspects[nb] >= SUSPECT_S:
                del self.suspects[nb]
            if was and nb not in self.suspects:
                logger.warning("node %s: neighbour %s answers again within the window: link ACTIVE", node.id, nb)
                up = True
        return up


class DownLinks:
    def __init__(self) -> None:
        self.by: dict[int, set[str]] = {}  # link index -> the ends whose last report says DOWN
        self.suspect_by: dict[int, set[str]] = {}  # link index -> the ends whose last report says SUSPECT

    def note(self, caller: str, k: int, status) -> None:
        for table, word in ((self.by, "DOWN"), (self.suspect_by, "SUSPECT")):
            ends = table.setdefault(k, set())
            if status == word:
                ends.add(caller)
            else:
                ends.discard(caller)

    def links(self) -> list[int]:
        """The links planned around: an end's last report says DOWN or SUSPECT."""
        return sorted({k for table in (self.by, self.suspect_by) for k, ends in table.items() if ends})

    def names(self, link_index: dict, suspect: bool = False) -> list[str]:
        """The down (or suspect) links as ``U-V`` (the controller's ``/health``: ``links_down``,
        ``links_suspect``)."""
        ends = {k: "-".join(sorted(e, key=str)) for e, k in link_index.items()}
        table = self.suspect_by if suspect else self.by
        return [ends[k] for k in sorted(k for k, e in table.items() if e)]

    def mask(self, levels):
        """Set a level of 0 on every down link (for planning); returns the function that puts the levels back."""
        ks = self.links()
        saved = [int(levels.level[k]) for k in ks]
        for k in ks:
            levels.level[k] = 0

        def unmask() -> None:
            for k, v in zip(ks, saved):
                levels.level[k] = v

        return unmask
