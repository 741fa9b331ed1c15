"""The planner: routing on the links' current levels, the reconstruction at the requested level, the reservations.

Both deployments plan with it: ``kms serve`` (:class:`qkdseg.kms.service.KeyService`)
before it relays in its own process, and the network's controller
(:mod:`qkdseg.net.controller`) before it sends each node its part. It holds
every link's pool level (:class:`qkdseg.keys.levels.LinkLevels`), refilled
from the key source, and changes them only through :meth:`Planner.reserve`
(the bits a planned request takes). It never touches key bytes.

A plan for ``missing`` keys of ``size`` bits at level ``epsilon``
(:meth:`Planner.plan_relays`):

1. **Route.** The routing algorithm (SMR by default) runs between the two
   SAEs' nodes on the links that hold enough key: with ``r`` relays needed,
   a link is usable only if it holds ``r * size`` bits.
2. **Reconstruct.** The configured reconstruction at ``epsilon`` gives
   ``n`` global keys of ``size`` bits per relay, each with its exact
   security. No key at ``epsilon`` -> the level cannot be met (now, or ever
   with full pools: the error says which).
3. **Relays.** ``r = ceil(missing / n)`` relays of the route, if every
   link of the route holds ``r`` times its share; the bits each link pays are
   returned with the plan for the caller to reserve.

**Excluded nodes.** :attr:`Planner.excluded` is the one set of nodes the
planner does not plan through, each with its reason(s) (``unready``: the
node said its store fails; later ``suspect``, ``removed``): routing sees a
level of 0 on every link of an excluded node, and a request whose own SAE
sits at one is refused with 503 ``node_excluded``. The levels themselves are
not changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time

import numpy as np

from ..api import route_indices
from ..errors import InvalidRequest, QkdsegError
from ..keys.levels import LinkLevels, with_levels
from ..reconstruction import reconstruct
from ..reconstruction.xor_all import xor_all
from ..routing.registry import get_algorithm
from .etsi import EXTENSION_LEVEL, MSG_EXT_UNMET, KeyRequest, KmsError

logger = logging.getLogger("qkdseg.kms")


class Planner:
    """Route, reconstruct and reserve on ``network``'s link levels (``cfg``: a :class:`.config.KmsConfig`).

    The levels are read from a store by :meth:`load` (they survive restarts:
    the consumed offset of a link only grows, so no pad bit is used twice).
    """

    def __init__(self, cfg, network, source, clock=time.time) -> None:
        self.cfg = cfg
        self.network = network
        self.arrays = network.arrays
        self.source = source
        self.clock = clock
        self.algorithm = cfg.algorithm
        get_algorithm(self.algorithm)
        self.levels: LinkLevels | None = None
        self.changes: list[str] = []
        #: Node id (text) -> the reasons it is excluded from planning (see the module docstring).
        self.excluded: dict[str, set[str]] = {}

    # -- the levels -------------------------------------------------------------------
    def load(self, store) -> None:
        """The links' levels and consumed offsets from ``store``, refilled for the time the service was down.

        A link that is in the store but no longer in the network is dropped if
        none of its bits were consumed, else the start is refused (its offset
        would be lost). ``changes`` lists what changed in the network since
        the last start, one line each.
        """
        a = self.arrays
        now = self.clock()
        cap = a.pool_bits.astype(np.int64)
        level, consumed = cap.copy(), np.zeros_like(cap)
        since = np.zeros(a.n_links)  # seconds each stored level is old
        ids = a.node_ids
        by_ends = {frozenset((str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]))): k for k in range(a.n_links)}
        self.changes = self._network_changes(store)
        rows, moved = {}, False
        for k_old, (u, v, c, lv, t) in sorted(store.load_links().items()):
            k = by_ends.get(frozenset((u, v)))
            if k is None:
                if c > 0:
                    raise QkdsegError(f"{store.db_path}: link ({u}, {v}) has consumed {c} pad bits but is not in "
                                      f"network {self.network.name!r} (the network changed since the database was "
                                      "made: removing a used link would lose its consumed offset, so its pad bits "
                                      "could be used twice); put the link back")
                moved = True
                continue
            moved |= k != k_old
            rows[k] = (str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]), c, lv, t)
            consumed[k], level[k], since[k] = c, min(lv, cap[k]), max(0.0, now - t)
        if moved:
            store.renumber_links(rows)
        store.set_meta("network", self._snapshot)  # remembered once the start is accepted
        if hasattr(self.source, "initial_levels"):  # a device feed: the level is the key held, whatever was stored
            level = self.source.initial_levels()
            since[:] = 0.0
        self.levels = LinkLevels(cap, level, consumed, t=now)
        self.levels.refill(self.source.produced(since), t=now)  # the links kept producing while the service was down

    def _network_snapshot(self) -> dict:
        a = self.arrays
        ids = a.node_ids
        return {"nodes": {str(ids[i]): [bool(a.trusted[i]), float(a.p[i])] for i in range(len(ids))},
                "links": {f"{ids[a.edge_u[k]]}|{ids[a.edge_v[k]]}": int(a.pool_bits[k]) for k in range(a.n_links)}}

    def _network_changes(self, store) -> list[str]:
        """What changed in the network since the last start (each a line; start-up reports them), and remember it."""
        now = self._network_snapshot()
        raw = store.meta("network")
        self._snapshot = json.dumps(now, sort_keys=True)
        if raw is None:
            return []
        before = json.loads(raw)
        out = []

        def norm(links):
            return {frozenset(k.split("|", 1)): v for k, v in links.items()}

        for node in sorted(set(before["nodes"]) | set(now["nodes"])):
            b, n = before["nodes"].get(node), now["nodes"].get(node)
            if b is None:
                out.append(f"network changed: node {node} added")
            elif n is None:
                out.append(f"network changed: node {node} removed")
            elif b != n:
                what = []
                if b[0] != n[0]:
                    what.append(f"trusted {b[0]} -> {n[0]}")
                if b[1] != n[1]:
                    what.append(f"p {b[1]} -> {n[1]}")
                out.append(f"network changed: node {node}: {', '.join(what)}")
        bl, nl = norm(before["links"]), norm(now["links"])
        for ends in sorted(set(bl) | set(nl), key=lambda e: sorted(e)):
            name = "(" + ", ".join(sorted(ends)) + ")"
            if ends not in bl:
                out.append(f"network changed: link {name} added")
            elif ends not in nl:
                out.append(f"network changed: link {name} removed")
            elif bl[ends] != nl[ends]:
                out.append(f"network changed: link {name}: pool_bits {bl[ends]} -> {nl[ends]}")
        return out

    def refill(self, now: float) -> None:
        """The pools refilled from the key source up to ``now`` (never above what a device feed holds)."""
        if now > self.levels.t:
            self.levels.refill(self.source.produced(now - self.levels.t), t=now)
        held = getattr(self.source, "held_bits", None)
        if held is not None:  # a device feed: never route on more than the bytes held
            np.minimum(self.levels.level, held, out=self.levels.level)

    def link_rows(self, ks) -> dict:
        """The store's rows (``links`` table) of links ``ks`` as the levels hold them now."""
        a, lv = self.arrays, self.levels
        ids = a.node_ids
        return {int(k): (str(ids[a.edge_u[k]]), str(ids[a.edge_v[k]]), int(lv.consumed[k]), int(lv.level[k]), lv.t)
                for k in ks}

    def reserve(self, bits: np.ndarray) -> np.ndarray:
        """Debit ``bits`` (network link order) from the levels; returns the links debited (for :meth:`link_rows`)."""
        links = np.flatnonzero(bits)
        self.levels.debit(links, bits[links])
        return links

    def release(self, bits: np.ndarray) -> None:
        """Undo :meth:`reserve` of ``bits`` whose commit failed (nothing used them): the level back (at most the
        capacity) and the consumed offset back down; additive, so the reservations made meanwhile stay."""
        lv = self.levels
        links = np.flatnonzero(bits)
        lv.consumed[links] -= bits[links]
        lv.level[links] = np.minimum(lv.capacity[links], lv.level[links] + bits[links])

    # -- the excluded nodes -----------------------------------------------------------------
    def exclude(self, node, reason: str) -> bool:
        """Stop planning through ``node`` for ``reason``; True when that changed something."""
        reasons = self.excluded.setdefault(str(node), set())
        if reason in reasons:
            return False
        reasons.add(reason)
        logger.warning("node %s excluded from planning (%s)", node, ", ".join(sorted(reasons)))
        return True

    def readmit(self, node, reason: str) -> bool:
        """Withdraw ``reason`` for ``node`` (planned through again once no reason is left); True when it changed."""
        reasons = self.excluded.get(str(node))
        if not reasons or reason not in reasons:
            return False
        reasons.discard(reason)
        if not reasons:
            del self.excluded[str(node)]
            logger.warning("node %s planned through again (no longer %s)", node, reason)
        return True

    def excluded_view(self) -> dict[str, str]:
        """``{node: reason}`` (several reasons joined by ``,``): what ``/health`` and ``net status`` show."""
        return {node: ",".join(sorted(r)) for node, r in sorted(self.excluded.items())}

    def _excluded_index(self) -> list[int]:
        index = {str(v): i for i, v in enumerate(self.arrays.node_ids)}
        return [index[n] for n in self.excluded if n in index]

    def usable(self, pool_bits: np.ndarray) -> np.ndarray:
        """``pool_bits`` with 0 on every link of an excluded node (a copy; the array itself when none is)."""
        nodes = self._excluded_index()
        if not nodes:
            return pool_bits
        a = self.arrays
        out = np.array(pool_bits, copy=True)
        out[np.isin(a.edge_u, nodes) | np.isin(a.edge_v, nodes)] = 0
        return out

    def check_ends(self, s: int, d: int) -> None:
        """Refuse (503 ``node_excluded``) a request between node indices ``s`` and ``d`` if either is excluded."""
        for i in (s, d):
            node = str(self.arrays.node_ids[i])
            if node in self.excluded:
                why = ",".join(sorted(self.excluded[node]))
                raise KmsError(503, f"node {node} of the request's SAEs is excluded from planning ({why}); nothing "
                                    "was debited; try again later", reason="node_excluded")

    # -- routes and plans ---------------------------------------------------------------
    def route_and_plan(self, s: int, d: int, size: int, level: float, pool_bits: np.ndarray, *, usable: bool = True):
        """The route between node indices ``s`` and ``d`` on ``pool_bits`` (with 0 on the excluded nodes' links,
        unless ``usable`` is false) and its reconstruction at ``level``; ``(None, None)`` when no route exists."""
        if usable:
            pool_bits = self.usable(pool_bits)
        opts = dict(self.cfg.algorithm_options)
        algo_options = get_algorithm(self.algorithm).options
        if "seed" in algo_options:  # a seeded algorithm (msp): a fresh seed, recorded
            opts["seed"] = secrets.randbits(32)
        if "epsilon" in algo_options:  # smr-level: each request routes to its own level
            opts["epsilon"] = level
        tolerate = int(getattr(self.cfg, "tolerate", 0))
        try:
            r = route_indices(with_levels(self.arrays, pool_bits), s, d, self.algorithm, block_bits=size,
                              tolerate=tolerate, **opts)
        except InvalidRequest as err:  # threshold sharing: a segment with too few paths now (named)
            if not tolerate:
                raise
            raise KmsError(503, f"{err}; nothing was debited", reason="too_few_paths") from None
        if r.blocked:
            return None, None
        chain = [self.arrays.index[v] for v in r.segment_nodes[1:-1]]
        paths = [[list(p) for p in seg] for seg in r.index_paths]
        if tolerate:  # each segment's key shared k-of-m over all its paths (kms.toml sharing = "threshold")
            rec = xor_all(self.arrays.p, paths, chain, level, size, tolerate=tolerate)
        else:
            rec = reconstruct(self.cfg.reconstruction, self.arrays.p, paths, chain, level, size)
        return r, rec

    def capacity(self, s: int, d: int, size: int, level: float) -> tuple[int, int, dict | None]:
        """Keys per relay at ``level`` on the route a request would take now, and how many relays the pools afford."""
        if s == d:
            return 1, self.cfg.max_key_count, None
        if any(str(self.arrays.node_ids[i]) in self.excluded for i in (s, d)):
            return 0, 0, None
        try:
            r, rec = self.route_and_plan(s, d, size, level, self.levels.level)
        except KmsError:  # threshold sharing and too few paths per segment now
            return 0, 0, None
        if r is None or rec is None or rec.n_keys == 0:
            return 0, 0, None
        bits = self.route_bits(r, size)
        links = np.flatnonzero(bits)
        relays = int((self.levels.level[links] // bits[links]).min()) if links.size else 0
        return rec.n_keys, relays, self.summary(r, rec, relays=None)

    def route_links(self, r) -> np.ndarray:
        """The link index of every hop of every path of route ``r`` (a link twice if two paths cross it)."""
        a = self.arrays
        return np.array([a.edge_index(x, y) for seg in r.index_paths for p in seg for x, y in zip(p, p[1:])],
                        dtype=np.int64)

    def route_bits(self, r, bits_per_use: int) -> np.ndarray:
        """Bits each link pays for a route (``bits_per_use`` per path through it), network link order."""
        return np.bincount(self.route_links(r), minlength=self.arrays.n_links).astype(np.int64) * bits_per_use

    def summary(self, r, rec, relays: int | None) -> dict:
        """The route as answered and audited (``qkdseg_route``): algorithm, segment nodes, paths, security, bits."""
        out = {
            "algorithm": self.algorithm,
            "segment_nodes": [str(v) for v in r.segment_nodes],
            "paths": len(r.paths),
            "hops": r.hops,
            "security": r.security,
            "reconstruction": self.cfg.reconstruction,
            "keys_per_relay": rec.n_keys,
            "sharing": r.sharing,  # every record of a relay run names how its segment keys were joined
            "tolerate": r.tolerate,
        }
        if "seed" in r.options:
            out["seed"] = r.options["seed"]
        if relays is not None:
            out["relays"] = relays
            out["consumed_bits"] = relays * r.consumed_bits
            if r.level is not None:  # smr-level: the bits the full route over the same chain would have taken more
                out["saved_bits"] = relays * r.level["saved_bits"]
        return out

    def plan_relays(self, s: int, d: int, req: KeyRequest, missing: int, *, keep: float = 0.0):
        """The route, its plan, the number of relays to make ``missing`` keys and each link's bits for them;
        :class:`.etsi.KmsError` when impossible (nothing is reserved here).

        ``keep`` (a stock's refill, :mod:`.stock`): the share of each link's capacity the plan must leave in its
        pool; the plan sees only the bits above it (and never the bits reserved by plans in flight: those are
        debited from the levels already)."""
        self.check_ends(s, d)
        level = self.levels.level
        if keep > 0:
            level = np.maximum(0, level - np.ceil(keep * self.levels.capacity).astype(np.int64))
        relays = 1
        for _ in range(4):
            pool = level if relays == 1 else level // relays
            r, rec = self.route_and_plan(s, d, req.size, req.level, pool)
            if r is None:
                raise KmsError(503, f"not enough key material: no route between the SAEs' nodes has {relays * req.size} "
                                    "bits on every link now; nothing was debited", reason="no_key_material")
            if rec.n_keys == 0:
                self._level_unmet(s, d, req, r.security)
            need = -(-missing // rec.n_keys)
            if need <= relays:
                bits = self.route_bits(r, need * req.size)
                if np.all(level >= bits):
                    return r, rec, need, bits
            relays = max(need, relays + 1)
        raise KmsError(503, "not enough key material for the keys requested; nothing was debited",
                       reason="no_key_material")

    def plan_refill(self, s: int, d: int, req: KeyRequest, keep: float):
        """A stock's refill run (:mod:`.stock`): :meth:`plan_relays` of up to ``req.number`` keys, each link keeping
        ``keep`` of its capacity; fewer keys (halving) where the links' bits above their reserve do not make that
        many. Returns ``(keys planned, (route, reconstruction, relays, bits))``; :class:`.etsi.KmsError` when not
        even one key can be planned."""
        n = req.number
        while True:
            try:
                return n, self.plan_relays(s, d, dataclasses.replace(req, number=n), n, keep=keep)
            except KmsError as err:
                if err.reason != "no_key_material" or n <= 1:
                    raise
                n //= 2

    def _level_unmet(self, s: int, d: int, req: KeyRequest, best: float):
        """Raise the refusal of a level no route meets now: 400 if mandatory, else 503; says if it never can be."""
        r_full, ever = self.route_and_plan(s, d, req.size, req.level, self.levels.capacity, usable=False)
        if ever is None or ever.n_keys == 0:  # not even with every pool full
            best = r_full.security if r_full is not None else best
            never = (f"{EXTENSION_LEVEL}={req.level} can never be met between these SAEs on this network: "
                     f"the best route's exact security is {best:.6f} even with full pools")
            if req.mandatory:
                raise KmsError(400, MSG_EXT_UNMET, [{"extension_mandatory_unmet": never}], reason="level_unmet")
            raise KmsError(503, f"security level {req.level} can never be met between these SAEs on this "
                                f"network: the best route's exact security is {best:.6f} even with full "
                                "pools; nothing was debited", reason="level_unmet")
        if req.mandatory:
            raise KmsError(400, MSG_EXT_UNMET, [{"extension_mandatory_unmet":
                           f"{EXTENSION_LEVEL}={req.level} cannot be met now: the best route's exact "
                           f"security is {best:.6f}"}], reason="level_unmet")
        raise KmsError(503, f"security level {req.level} cannot be met now: the best route's exact security is "
                            f"{best:.6f}; nothing was debited", reason="level_unmet")

    def warm(self, nodes: list[int], size: int, level: float) -> None:
        """Route once between two of ``nodes`` (no debit), so numba's kernels are compiled before the first request."""
        nodes = sorted(set(nodes))
        if len(nodes) >= 2:
            try:
                self.route_and_plan(nodes[0], nodes[-1], size, level, self.levels.capacity)
            except Exception:  # noqa: BLE001 -- a warm-up only; a request reports its own error
                logger.debug("warm-up route failed", exc_info=True)
