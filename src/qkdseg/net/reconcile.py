"""Spare keys held by one end only: a check between the master's node and the slave's node of a pair.

A relay cut by a crash can leave a pair's spare keys (a stock's keys are
spare keys) at one end only: a refill run (or a request relayed on demand)
whose destination stored its keys, when the source dies before it stores its
copies, or when the source's void is lost with a dead destination. The two
nodes of each pair check with each other (:class:`Reconcile`, a mixin of
:class:`qkdseg.net.node.NodeService`), over ``POST /relay/v1/spares`` (node
certificates, mutual TLS):

- **the slave's node asks** (``"end": "slave"``): it names the spare keys of
  the pair it holds, each with the request that made it; the master's node
  answers those it does not hold (in its pool, set aside, or being issued)
  **and** whose request is not under way there (a relay in flight, or one
  storing its copies). Those it will never hold: the slave's node drops
  them, if still spare keys (an ``issue`` applied meanwhile keeps a key).
- **the master's node asks** (``"end": "master"``): it names the spare keys in
  its pool; the slave's node answers those it holds neither as spare keys nor
  as issued keys of the pair. The slave's node stored each before the master's
  node stored its copy, so one it does not hold now it deleted (voided,
  expired, dropped): the master's node drops it.

A key dropped is deleted, audited (``"event": "reconcile"``) and counted (a
stock's ``dropped_one_end``). A request the check cannot settle (the other
node down) is tried again, the wait doubling up to :data:`RETRY_S`, until
:data:`GIVE_UP_S`; the other node checks on its own start anyway.

When: each node checks every pair it holds spare keys of, or stocks, at its
start (the master's node asks the slave's node to check back); the master's
node asks again after a relay of a pair that failed or timed out (its keys
at the slave's node are voided, and a void lost with a dead node is settled
by the check).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..server.store import Batch
from ..server.storehealth import CommitFailed
from .limits import MAX_BATCH, check_batch
from .wire import Problem

logger = logging.getLogger("qkdseg.net")
#: The longest wait (seconds) between two tries of a check the other node did not answer.
RETRY_S = 8.0
#: Seconds after which a check still unanswered is given up (the other node checks at its own start).
GIVE_UP_S = 120.0
#: Seconds a master's node waits after a failed relay before it asks (its void goes first).
AFTER_FAILURE_S = 1.0


class Reconcile:
    """The check of a pair's spare keys between its two nodes (a mixin of :class:`qkdseg.net.node.NodeService`)."""

    # -- what each end holds ---------------------------------------------------------------
    def _pairs_here(self) -> set[tuple[str, str]]:
        """The pairs whose spare keys this node holds or stocks, with the other SAE at another node."""
        pairs = {p for p, pool in self.spares.items() if pool} | {(r.master, r.slave) for r in self.held_spares.values()}
        if self.stock is not None:
            pairs |= {p for p in self.stock.config.pairs if p[0] in self.saes or p[1] in self.saes}
        return {p for p in pairs if str(self.registry.get(p[0])) != str(self.registry.get(p[1]))}

    def _master_holds(self, pair: tuple) -> set[str]:
        return {r.key_id for r in self.spares.get(pair, ())} | {
            k for k, r in self.spares_out.items() if (r.master, r.slave) == pair}

    def _under_way(self) -> set[str]:
        """Requests whose keys this node may still store (in flight, or storing its copies)."""
        return set(self.requests) | set(self.finishing)

    # -- the answer (the other end asks) ------------------------------------------------------
    def answer_spares(self, caller: str, w: dict) -> dict:
        """``POST /relay/v1/spares`` from node ``caller``: the keys it names that this node does not hold (see the
        module docstring); raises :class:`Problem` (403: the caller is not the other end of the pair)."""
        pair = (str(w["master"]), str(w["slave"]))
        end = str(w["end"])
        if end not in ("master", "slave") or pair[0] not in self.registry or pair[1] not in self.registry:
            raise Problem(400, "Bad Request", "end must be master or slave, master and slave registered SAEs")
        mine, theirs = (pair[1], pair[0]) if end == "master" else (pair[0], pair[1])
        if str(self.registry[theirs]) != caller or str(self.registry[mine]) != str(self.id) or caller == str(self.id):
            raise Problem(403, "Forbidden", f"node {caller!r} is not the {end}'s node of {pair[0]}:{pair[1]}, or "
                                            f"node {self.id!r} is not the other end")
        keys = check_batch(w["keys"], "keys")
        if end == "master":  # the slave's node: which of the master's pool it no longer holds (deleted: final)
            held = {k for k, r in self.held_spares.items() if (r.master, r.slave) == pair} | {
                k for k, r in self.keys.items() if (r.master, r.slave) == pair}
            unknown = [str(k) for k in keys if str(k) not in held]
            if w.get("check_back"):
                self.check_soon(pair, 0.0)
        else:  # the master's node: which it does not hold and will never hold
            held, busy = self._master_holds(pair), self._under_way()
            unknown = [str(k) for k, rid in keys if str(k) not in held and str(rid) not in busy]
        return {"unknown": unknown}

    # -- the check (this end asks) ------------------------------------------------------------
    def check_soon(self, pair: tuple, delay: float = AFTER_FAILURE_S) -> None:
        """Check ``pair``'s spare keys with its other node in ``delay`` seconds (one check per pair at a time: a
        second asked meanwhile runs once the first ends)."""
        pair = (str(pair[0]), str(pair[1]))
        if str(self.registry.get(pair[0])) == str(self.registry.get(pair[1])):
            return
        if pair in self._checks:
            self._checks[pair] = True  # again after this one
            return
        self._checks[pair] = False
        asyncio.get_running_loop().create_task(self._check_loop(pair, delay))

    async def check_all(self) -> None:
        """At the start: every pair this node holds spare keys of, or stocks."""
        for pair in sorted(self._pairs_here()):
            self.check_soon(pair, 0.0)

    async def _check_loop(self, pair: tuple, delay: float) -> None:
        try:
            while True:
                await asyncio.sleep(delay)
                self._checks[pair] = False
                await self._check_until_answered(pair)
                if not self._checks.get(pair):
                    return
                delay = 0.0
        finally:
            self._checks.pop(pair, None)

    async def _check_until_answered(self, pair: tuple) -> None:
        wait, start = 0.5, time.monotonic()
        while True:
            try:
                await self.check_pair(pair)
                return
            except Exception as err:  # noqa: BLE001 -- the other node down or failing: tried again, then given up
                if time.monotonic() - start > GIVE_UP_S:
                    logger.warning("spare keys of %s:%s not checked with the other node: %s", *pair, err)
                    return
            await asyncio.sleep(wait)
            wait = min(RETRY_S, 2 * wait)

    async def check_pair(self, pair: tuple) -> int:
        """One check of ``pair`` with its other node: the keys this end holds that the other end does not (and,
        at the slave's node, will not) are dropped here; returns how many (raises when no answer came)."""
        master, slave = pair
        end = "master" if master in self.saes else "slave"
        other = str(self.registry[slave if end == "master" else master])
        if end == "master":
            rows = {r.key_id: r for r in self.spares.get(pair, ())}
            items = list(rows)
        else:
            rows = {k: r for k, r in self.held_spares.items() if (r.master, r.slave) == pair}
            items = [[k, _request_of(r)] for k, r in rows.items()]
        unknown: list[str] = []
        url = f"https://{self.addresses[other]}/relay/v1/spares"
        for i in range(0, max(1, len(items)), MAX_BATCH):
            body = {"master": master, "slave": slave, "end": end, "keys": items[i:i + MAX_BATCH],
                    "check_back": end == "master" and i == 0}
            r = await self._http().post(url, json=body)
            if r.status_code != 200:
                raise RuntimeError(f"node {other} answered {r.status_code}: {r.text[:200]}")
            unknown += [str(k) for k in r.json()["unknown"]]
        return await self._drop_one_end(pair, end, other, [rows[k] for k in unknown if k in rows])

    async def _drop_one_end(self, pair: tuple, end: str, other: str, rows: list) -> int:
        """Delete ``rows`` (spare keys the other end does not hold) if this end still holds them as spare keys."""
        if end == "master":
            pool = self.spares.get(pair, [])
            rows = [r for r in rows if r in pool]
            for r in rows:
                pool.remove(r)
        else:
            rows = [r for r in rows if self.held_spares.get(r.key_id) is r]
            for r in rows:
                del self.held_spares[r.key_id]
        if not rows:
            return 0
        try:
            await self.committer.commit(Batch(delete_keys=[r.key_id for r in rows], audit=[{
                "time": round(time.time(), 6), "event": "reconcile", "sae": pair[0], "peer": pair[1],
                "key_ids": [r.key_id for r in rows], "node": other,
                "outcome": f"spare keys dropped: held by one end only (node {other} does not hold them)"}]))
        except CommitFailed:  # still stored: back as they were, the next check drops them
            if end == "master":
                self.spares[pair].extend(rows)
            else:
                self.held_spares.update((r.key_id, r) for r in rows)
            raise
        self.stats["spares_one_end_dropped"] += len(rows)
        if self.stock is not None:
            self.stock.dropped(pair, len(rows))
        logger.info("spare keys of %s:%s: %d held here only (not at node %s) dropped", *pair, len(rows), other)
        return len(rows)


def _request_of(row) -> str:
    """The request that made a spare key (its row's ``route``: ``{"request_id": ...}``)."""
    import json

    try:
        return str(json.loads(row.route).get("request_id", ""))
    except (ValueError, AttributeError):
        return ""
