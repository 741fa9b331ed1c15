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
- At the controller (:class:`DownLinks`): a link is down while either end's
  last report says ``DOWN``; planning sees a level of 0 on it (the routing
  registry then takes another route, or refuses with 503 when none is left).
  The levels themselves (the reservations) are not changed.
"""

from __future__ import annotations

import logging

PROBE_S = 1.0
logger = logging.getLogger("qkdseg.net")

class LinkHealth:
    def __init__(self) -> None:
        self.down: set[str] = set()  # neighbour ids
        self._prober = None

    def record(self, node, dst: str, answered: bool) -> None:
        """After a POST to ``dst`` (with its retries): no answer at all marks the link down and reports it."""
        if dst not in node.neighbours or answered or dst in self.down:
            return
        self.down.add(dst)
        logger.warning("node %s: no answer from neighbour %s in 3 tries: link reported DOWN", node.id, dst)
        self._report(node)
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
        return "DOWN" if str(neighbour) in self.down else "ACTIVE"

    async def _probe_while_down(self, node) -> None:
        import asyncio

        while self.down:
            await asyncio.sleep(PROBE_S)
            if await self.probe(node):
                self._report(node)

    async def probe(self, node) -> bool:
        """Ask each down link's neighbour for its offsets; an answer: the link is up, offsets resynced forward.
        Returns whether a link came up."""
        up = False
        for nb in sorted(self.down):
            end = node.links.get(node.neighbours[nb])
            if end is None:
                self.down.discard(nb)
                continue
            try:
                r = await node._http().get(f"https://{node.addresses[nb]}/relay/v1/links", params={"link": end.name},
                                           timeout=3.0)
                theirs = r.json()
            except Exception:  # noqa: BLE001 -- still down
                continue
            key = (end.name, end.out_dir)
            hwm = int(theirs.get(str(end.out_dir), 0))
            if hwm > node.offsets.get(key, 0):
                try:  # on disk first: a failed write changes nothing (the link stays down, probed again)
                    node.relaydb.write({key: hwm})
                except Exception:  # noqa: BLE001 -- CommitFailed: counted in the node's store health
                    continue
                node.offsets[key] = max(node.offsets.get(key, 0), hwm)
            self.down.discard(nb)
            logger.warning("node %s: neighbour %s answers again: link ACTIVE", node.id, nb)
            up = True
        return up


class DownLinks:
    def __init__(self) -> None:
        self.by: dict[int, set[str]] = {}  # link index -> the ends whose last report says DOWN

    def note(self, caller: str, k: int, status) -> None:
        ends = self.by.setdefault(k, set())
        if status == "DOWN":
            ends.add(caller)
        else:
            ends.discard(caller)

    def links(self) -> list[int]:
        return sorted(k for k, ends in self.by.items() if ends)

    def names(self, link_index: dict) -> list[str]:
        """The down links as ``U-V`` (the controller's ``/health`` lists them as ``links_down``)."""
        ends = {k: "-".join(sorted(e, key=str)) for e, k in link_index.items()}
        return [ends[k] for k in self.links()]

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
