"""What the operator dashboard shows, kept from the key service's events (docs/kms.md, "Dashboard").

:class:`Monitor` observes a :class:`~.service.KeyService` (its ``observers``
hook): every audited event (a key issue, a slave's fetch, a refusal, an
expiry) becomes a *row* of the deliveries table, and the counters of the
last minute and since start are kept from them. It also samples every
link's pool level (refilled to now) into a ring of recent samples, and gives
each link a pool state, QKDNetSim's key-buffer states
(:class:`~qkdseg.keys.pools.PoolState`) with these thresholds
(**[choice]**, docs/model.md section 8):

=========  ===============================================================
READY      ``level >= ready_share * capacity`` (default 0.5)
WARNING    ``empty_bits <= level < ready``, drained from READY (or still WARNING)
CHARGING   ``empty_bits <= level < ready``, refilled from EMPTY (or still CHARGING)
EMPTY      ``level < empty_bits`` (default: the service's key size): the
           link cannot carry one key of the default size
=========  ===============================================================

Nothing here holds key bytes: the events carry none, and key ids are cut to
their first 8 characters. Everything runs on the service's event loop.

The rule is :func:`qkdseg.keys.levels.pool_states`, the simulator's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from typing import Any

import numpy as np

from ..keys.levels import READY, STATES, pool_states
from ..topology import file_positions, node_positions

#: A pool at or above this share of its capacity is READY ([choice]).
DEFAULT_READY_SHARE = 0.5
#: Rows of the deliveries table kept in memory (the audit log keeps all).
MAX_ROWS = 1000
#: Most level samples kept per link (1 s apart by default: 15 minutes).
MAX_SAMPLES = 900
#: Budget of the level history, numbers (samples x links), so a large network keeps fewer samples.
HISTORY_BUDGET = 4_000_000
ID_CHARS = 8


def _clean(obj: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON, NaN and infinity as null (the dashboard's answers and live events)."""
    try:  # the C encoder; only an answer holding NaN or infinity pays for the scrub
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False)


def short_id(key_id: str) -> str:
    """A key id cut to its first 8 characters, as the dashboard shows it."""
    return str(key_id)[:ID_CHARS]


class Monitor:
    """The dashboard's view of one key service: rows, counters, pool levels and states.

    Parameters
    ----------
    service : KeyService
        Observed through ``service.observers``.
    ready_share : float
        A pool at or above this share of its capacity is READY.
    empty_bits : int, optional
        A pool below this level (bits) is EMPTY; default: the service's key size.
    sample_s : float
        Seconds between two samples of the levels kept in the history.
    clock : callable
        Unix time in seconds (default: the service's clock).
    stocks : callable, optional
        ``stocks() -> {where: {pair: counters}}``: the key stocks to show (the controller: each node's, as its
        reports give them); default: the service's own (``kms serve``), as ``"kms serve"``.
    """

    def __init__(self, service, *, ready_share: float = DEFAULT_READY_SHARE, empty_bits: int | None = None,
                 sample_s: float = 1.0, clock=None, stocks=None) -> None:
        if not 0.0 < ready_share <= 1.0:
            raise ValueError(f"ready_share={ready_share!r} must be in (0, 1]")
        self.service = service
        self.clock = clock or service.clock
        self.sample_s = float(sample_s)
        a = service.arrays
        self.capacity = service.levels.capacity.copy()
        self.ready_share = float(ready_share)
        self.ready_bits = np.ceil(self.capacity * self.ready_share).astype(np.int64)
        self.empty_bits = int(empty_bits if empty_bits is not None else service.cfg.key_size)
        self.state = np.full(a.n_links, READY, dtype=np.int8)
        self.state = pool_states(service.levels.level, self.ready_bits, self.empty_bits, self.state)
        self.started = self.clock()
        self.rows: deque[dict] = deque(maxlen=MAX_ROWS)
        self.seq = 0
        self.total: dict[str, Any] = _empty_counts()
        self.window_s = 60.0
        self._recent: deque[tuple] = deque()  # (time, kind, reason, keys, bits, security sum) of the last minute
        self._window: dict[str, Any] = _empty_counts()  # the sums of _recent, kept as items come and go
        n_samples = int(max(1, min(MAX_SAMPLES, HISTORY_BUDGET // max(1, a.n_links))))
        self.history_t: deque[float] = deque(maxlen=n_samples)
        self.history: deque[np.ndarray] = deque(maxlen=n_samples)
        self._subscribers: set[asyncio.Queue] = set()
        self._dirty = True
        self._last_pushed: tuple | None = None
        self.closing = False
        self._network_view: dict | None = None
        self.restored = self._restore(getattr(getattr(service, "store", None), "audit_path", None))
        service.observers.append(self.observe)
        own = getattr(service, "stock", None)
        self._stocks = stocks or (lambda: {} if own is None else {"kms serve": own.snapshot()})

    def stocks(self) -> dict:
        """The key stocks, one row per pair and place (``where``: ``kms serve``, or the node): keys now, target,
        watermarks, hits, misses, refill runs and failures, keys expired unused, keys dropped as held by one end
        only, whether it is refilled there."""
        rows = []
        for where, stocks in sorted(self._stocks().items()):
            for pair, s in sorted(stocks.items()):
                rows.append({"where": where, "pair": pair, **{k: s.get(k) for k in STOCK_FIELDS}})
        return {"time": self.clock(), "rows": rows}

    def _restore(self, audit_path, max_bytes: int = 4 << 20) -> int:
        """Rows of the newest audit records (``restored``: before this start), so a restart shows recent history.

        Only the last ``max_bytes`` of the log are read; the counters are not
        touched (they count from this start). Returns how many rows came back.
        """
        if audit_path is None or not audit_path.exists():
            return 0
        with open(audit_path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            tail = fh.read().split(b"\n")
        if size > max_bytes:
            tail = tail[1:]  # the first line may be cut
        rows = []
        for line in tail[-4 * MAX_ROWS:]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # an empty or cut line
            try:
                row = self._row(rec) if isinstance(rec, dict) else None
            except (TypeError, ValueError, KeyError):  # a record this version does not read: left out
                row = None
            if row is not None:
                row["restored"] = True
                rows.append(row)
        for row in rows[-MAX_ROWS:]:
            self.seq += 1
            row["seq"] = self.seq
            self.rows.append(row)
        return min(len(rows), MAX_ROWS)

    # -- the network, once ------------------------------------------------------------
    def network_view(self) -> dict:
        """Nodes (position, kind, SAEs), links (ends, capacity) and the SAE registry, for the map."""
        if self._network_view is None:
            svc = self.service
            a, net = svc.arrays, svc.network
            from_file = file_positions(net)
            pos = from_file if from_file is not None else node_positions(net)
            saes_at: dict[int, list[str]] = {}
            for sae, i in svc.sae_node.items():
                saes_at.setdefault(i, []).append(sae)
            g = net.graph
            nodes = []
            for i, v in enumerate(a.node_ids):
                x, y = pos[v]
                nodes.append({
                    "id": str(v), "index": i, "x": float(x), "y": float(y), "trusted": bool(a.trusted[i]),
                    "p": float(a.p[i]), "saes": sorted(saes_at.get(i, [])),
                })
            links = []
            for k in range(a.n_links):
                u, v = a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]
                d = g.edges[u, v]
                links.append({
                    "index": k, "u": str(u), "v": str(v), "capacity_bits": int(self.capacity[k]),
                    "rate_bps": float(d.get("rate_bps", svc.cfg.default_rate_bps)),
                    "length_km": None if d.get("length_km") is None else float(d["length_km"]),
                })
            self._network_view = {
                "name": net.name, "kme_id": svc.cfg.kme_id, "algorithm": svc.algorithm,
                "reconstruction": svc.cfg.reconstruction, "security_level": svc.cfg.security_level,
                "key_size": svc.cfg.key_size, "positions": "file" if from_file is not None else "layout",
                "nodes": nodes, "links": links, "saes": {s: str(a.node_ids[i]) for s, i in sorted(svc.sae_node.items())},
            }
        return self._network_view

    # -- pools --------------------------------------------------------------------------
    def sample(self, *, record: bool = False) -> float:
        """Refill the service's levels to now and update the pool states; ``record`` keeps the sample in the history."""
        now = self.clock()
        self.service.refill(now)
        lv = self.service.levels.level
        self.state = pool_states(lv, self.ready_bits, self.empty_bits, self.state)
        if record:
            self.history_t.append(now)
            self.history.append(lv.copy())
        return now

    def pools(self) -> dict:
        """Every link's level (bits) and state now, network link order."""
        now = self.sample()
        out = {
            "time": now, "levels": self.service.levels.level.tolist(), "capacity": self.capacity.tolist(),
            "states": [STATES[s] for s in self.state.tolist()],
            "ready_share": self.ready_share, "empty_bits": self.empty_bits,
            "excluded": self.service.planner.excluded_view(),  # nodes planned around, with the reason (suspect...)
        }
        view = getattr(self.service.source, "view", None)
        if view is not None:  # link keys from QKD devices: each link's device state beside its pool
            out["devices"] = view()
        return out

    def link_history(self, k: int, seconds: float | None = None) -> dict:
        """Link ``k``'s sampled levels (bits) over time, oldest first (the last ``seconds`` if given)."""
        a = self.service.arrays
        times = list(self.history_t)
        levels = [int(h[k]) for h in self.history]
        if seconds is not None and times:
            cut = times[-1] - seconds
            keep = [i for i, t in enumerate(times) if t >= cut]
            times, levels = [times[i] for i in keep], [levels[i] for i in keep]
        return {
            "index": k, "u": str(a.node_ids[a.edge_u[k]]), "v": str(a.node_ids[a.edge_v[k]]),
            "capacity_bits": int(self.capacity[k]), "sample_s": self.sample_s, "times": times, "levels": levels,
        }

    # -- events -> rows ---------------------------------------------------------------------
    def observe(self, event: dict) -> None:
        """The service's observer: one audited event becomes one row (and is pushed to the live clients)."""
        row = self._row(event)
        if row is None:
            return
        self.seq += 1
        row["seq"] = self.seq
        self.rows.append(row)
        self._count(row)
        self._dirty = True
        self._publish("delivery", row)

    def _row(self, e: dict) -> dict | None:
        kind = e.get("event")
        if kind in ("issue", "deliver") and "sae" not in e:
            return None
        ids = [short_id(k) for k in e.get("key_ids", [])]
        secs = [float(s) for s in e.get("securities", [])]
        base = {"time": e.get("time"), "node": e.get("node"),  # the node that reported it (network of nodes)
                "key_ids": ids, "keys": len(ids), "size": e.get("size"),
                "achieved_security": min(secs) if secs else None,
                "mean_security": (sum(secs) / len(secs)) if secs else None}
        if kind == "issue":
            route = e.get("route") or {}
            asked = e.get("requested") or {}
            seg_nodes = route.get("segment_nodes")
            return {**base, "kind": "issue", "outcome": "ok", "master": e["sae"], "slave": e.get("peer"),
                    "requested_security": asked.get("level", e.get("level")),
                    "applied_security": e.get("level"), "level_source": e.get("level_source"),
                    "fallback": e.get("fallback"),
                    "segments": (len(seg_nodes) - 1) if seg_nodes else (0 if route.get("local") else None),
                    "segment_nodes": seg_nodes or [], "paths": route.get("paths", 0),
                    "route_paths": e.get("route_paths") or [], "hops": route.get("hops", 0),
                    "route_security": route.get("security"), "relays": route.get("relays", 0),
                    "consumed_bits": route.get("consumed_bits", 0), "spare_keys_used": e.get("spare_keys_used", 0),
                    "bits": len(ids) * int(e.get("size") or 0)}
        if kind == "deliver":
            return {**base, "kind": "fetch", "outcome": "ok", "master": e.get("peer"), "slave": e["sae"],
                    "consumed_bits": 0, "segments": None, "paths": None, "bits": len(ids) * int(e.get("size") or 0)}
        if kind == "deny":
            op = e.get("op")
            asked = e.get("request") or {}
            caller = None if e.get("sae") == "-" else e.get("sae")
            master, slave = (e.get("peer"), caller) if op == "dec_keys" else (caller, e.get("peer"))
            return {**base, "kind": "refusal", "outcome": "refused", "op": op, "master": master, "slave": slave,
                    "status": e.get("status"), "reason": e.get("reason", "refused"), "message": e.get("outcome"),
                    "requested_security": asked.get("level"), "size": asked.get("size"),
                    "keys": asked.get("number", 0), "consumed_bits": 0, "segments": None, "paths": None, "bits": 0}
        if kind == "expire":
            return {**base, "kind": "expiry", "outcome": "expired", "master": None, "slave": None,
                    "keys": len(ids), "spare_keys": e.get("spare_keys", 0), "message": e.get("outcome"),
                    "consumed_bits": 0, "segments": None, "paths": None, "bits": 0}
        return None

    def _count(self, row: dict) -> None:
        t = row["time"] or self.clock()
        kind = row["kind"]
        sec_sum = 0.0
        if kind == "issue" and row["mean_security"] is not None:
            sec_sum = row["mean_security"] * row["keys"]
        item = (t, kind, row.get("reason"), row["keys"], row["bits"], sec_sum)
        _add(self.total, item)
        _add(self._window, item)
        self._recent.append(item)

    def counters(self) -> dict:
        """Deliveries, refusals by reason, key bits served and mean security, over the last minute and since start.

        The last minute's sums are kept incrementally (an item is added when
        it happens and subtracted when it leaves the window), so a call costs
        the items that left, not the whole window.
        """
        now = self.clock()
        cut = now - self.window_s
        while self._recent and self._recent[0][0] < cut:
            _add(self._window, self._recent.popleft(), sign=-1)
        if not self._recent:
            self._window = _empty_counts()  # exact zeros again (no float residue)
        return {"time": now, "started": self.started, "uptime_s": now - self.started, "window_s": self.window_s,
                "last_minute": _finish(dict(self._window)), "since_start": _finish(dict(self.total))}

    def deliveries(self, limit: int = 100, after: int = 0) -> list[dict]:
        """The newest ``limit`` rows with ``seq > after``, newest first."""
        out = []
        for row in reversed(self.rows):
            if row["seq"] <= after or len(out) >= limit:
                break
            out.append(row)
        return out

    # -- live clients -------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue:
        """A queue of ``(event, json_text)`` for one live client (bounded; a slow client is dropped)."""
        q: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._last_pushed = None  # a new client starts from the pools it is sent at once; push the next change
        self._subscribers.add(q)
        return q

    @property
    def viewers(self) -> int:
        """Live clients now."""
        return len(self._subscribers)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def _publish(self, event: str, data: Any) -> None:
        if not self._subscribers:
            return
        text = dumps(data)  # once, whatever the number of viewers
        for q in list(self._subscribers):
            try:
                q.put_nowait((event, text))
            except asyncio.QueueFull:  # a client that does not read: it gets a "reload" and is dropped
                self._subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(("reload", "{}"))

    async def run(self, push_s: float = 0.25) -> None:
        """Push pools and counters to live clients (within ``push_s`` of a change, else once per sample) and keep the history."""
        next_record = 0.0
        while not self.closing:
            now = time.monotonic()
            record = now >= next_record
            if record:
                next_record = now + self.sample_s
            if record or self._dirty:
                self._dirty = False
                if self._subscribers:
                    pools = self.pools()
                    key = (pools["levels"], pools["states"])
                    if key != self._last_pushed:  # full, idle pools are not sent again and again
                        self._last_pushed = key
                        self._publish("pools", pools)
                    self._publish("counters", self.counters())
                if record:
                    self.sample(record=True)
            await asyncio.sleep(push_s)

    def stop(self) -> None:
        """Ask :meth:`run` and the live streams to end within a second (safe in a signal handler)."""
        self.closing = True

    def close(self) -> None:
        """Stop :meth:`run` and end every live stream now."""
        self.closing = True
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(("close", "{}"))
        with contextlib.suppress(ValueError):
            self.service.observers.remove(self.observe)


#: What the dashboard shows of each stock (:meth:`qkdseg.server.stock.Stock.snapshot`'s fields).
STOCK_FIELDS = ("keys", "target", "low", "high", "hits", "misses", "refill_runs", "refill_failures", "expired_unused",
                "dropped_one_end", "refilled_here")


def _empty_counts() -> dict:
    return {"deliveries": 0, "fetches": 0, "refusals": 0, "expiries": 0, "keys_served": 0, "key_bits_served": 0,
            "security_sum": 0.0, "refusals_by_reason": {}}


def _add(c: dict, item: tuple, sign: int = 1) -> None:
    """Add (``sign=1``) or take away (``-1``) one item's counts."""
    _, kind, reason, keys, bits, sec_sum = item
    if kind == "issue":
        c["deliveries"] += sign
        c["keys_served"] += sign * keys
        c["key_bits_served"] += sign * bits
        c["security_sum"] += sign * sec_sum
    elif kind == "fetch":
        c["fetches"] += sign
    elif kind == "refusal":
        c["refusals"] += sign
        by = c["refusals_by_reason"] = dict(c["refusals_by_reason"])  # a copy: answers already given keep theirs
        by[reason] = by.get(reason, 0) + sign
        if not by[reason]:
            del by[reason]
    elif kind == "expiry":
        c["expiries"] += sign


def _finish(c: dict) -> dict:
    s = c.pop("security_sum")
    c["mean_security"] = (s / c["keys_served"]) if c["keys_served"] else None
    if c["mean_security"] is not None and not math.isfinite(c["mean_security"]):
        c["mean_security"] = None
    return c
