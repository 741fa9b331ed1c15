"""The relay as node-local steps: what node X does when message M arrives.

One request of the relay (docs/model.md sections 2 and 4) is split into the
parts of the nodes that take part in it (:class:`NodePart`, computed from a
route and its plans by :func:`node_parts`), and each node runs its part as a
:class:`RelayNode`: a small state machine whose methods take one message and
return the messages it sends next. The same steps run

- in one process, wired by direct calls (:func:`qkdseg.keys.relay`, used by
  ``qkdseg kms serve`` and ``qkdseg emulate``), and
- in the network of node processes (``qkdseg node serve``), wired by HTTPS
  between the nodes (:mod:`qkdseg.net`).

Messages are plain dicts (their key material as :class:`KeyMaterial`; the
network encodes it as base64 on the wire):

``pieces``
    ``{"kind": "pieces", "link": (u, v), "src": a, "dst": b, "blocks":
    [(pid, offset, cipher)]}``: pieces one-time-padded on link ``a -> b``
    with ``a``'s copy of the link key at ``offset`` (bytes, in the stream of
    direction ``a -> b``). Only between neighbours.
``global``
    ``{"kind": "global", "src": t_j, "dst": t_{j+1}, "segment": j, "items":
    [(kid, cipher)]}``: the global keys one-time-padded with segment ``j``'s
    keys (``C_j = G xor S_j``): public ciphertexts, between segment nodes.

A piece id ``pid`` is ``(copy, segment, path)`` (``copy``: which of the
request's repeated relays of the route), a key id ``kid`` is ``(copy, plan,
global key)``.

Link keys come from a :class:`LinkEnd` per adjacent link: ``take(nbytes)``
at the sending end (its next offset, from its own counter) and ``at(offset,
nbytes)`` at the receiving end (which may refuse an offset it has passed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .combine import combine
from .material import KeyMaterial

Pid = tuple[int, int, int]  # (copy, segment, path)
Kid = tuple[int, int, int]  # (copy, plan, global key)


class LinkEnd(Protocol):
    """One node's end of one link, for one direction each way."""

    def take(self, nbytes: int) -> tuple[int, KeyMaterial]:
        """Sending: the next ``nbytes`` of the outgoing stream and their offset."""

    def at(self, offset: int, nbytes: int) -> KeyMaterial:
        """Receiving: ``nbytes`` of the incoming stream at ``offset``."""


@dataclass(frozen=True)
class KeySpec:
    """One global key of a plan, as its segment nodes need it."""

    plan: int
    index: int
    parts: tuple[tuple[int, ...], ...]
    computational: bool


@dataclass(frozen=True)
class NodePart:
    """One node's part of a request: what it sends, forwards and combines. JSON-able (:meth:`to_dict`).

    ``starts``: ``(segment, path, next hop)`` of each path this node starts
    (it is the segment's start); ``forwards``: ``(segment, path, previous
    hop, next hop)`` of each path it relays; ``ends``: ``(segment, path,
    previous hop)`` of each path it ends. ``position``: its index in the
    segment nodes, or ``None`` for a relay. ``copies``: how many times the
    route is relayed in this request.
    """

    node: Hashable
    block_bits: int
    copies: int
    segment_nodes: tuple
    position: int | None
    starts: tuple[tuple[int, int, Hashable], ...] = ()
    forwards: tuple[tuple[int, int, Hashable, Hashable], ...] = ()
    ends: tuple[tuple[int, int, Hashable], ...] = ()
    keys: tuple[KeySpec, ...] = ()
    tolerate: int = 0
    paths: tuple[tuple[int, int, tuple], ...] = ()

    def to_dict(self) -> dict:
        return {
            "node": self.node, "block_bits": self.block_bits, "copies": self.copies,
            "segment_nodes": list(self.segment_nodes), "position": self.position,
            "starts": [list(x) for x in self.starts], "forwards": [list(x) for x in self.forwards],
            "ends": [list(x) for x in self.ends],
            "keys": [{"plan": k.plan, "index": k.index, "parts": [list(p) for p in k.parts],
                      "computational": k.computational} for k in self.keys],
            "sharing": "threshold" if self.tolerate else "xor", "tolerate": self.tolerate,
            "paths": [[j, i, list(p)] for j, i, p in self.paths],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NodePart":
        return cls(
            d["node"], int(d["block_bits"]), int(d["copies"]), tuple(d["segment_nodes"]), d["position"],
            tuple((int(j), int(i), n) for j, i, n in d["starts"]),
            tuple((int(j), int(i), p, n) for j, i, p, n in d["forwards"]),
            tuple((int(j), int(i), p) for j, i, p in d["ends"]),
            tuple(KeySpec(int(k["plan"]), int(k["index"]), tuple(tuple(int(x) for x in p) for p in k["parts"]),
                          bool(k["computational"])) for k in d["keys"]),
            int(d.get("tolerate", 0)), tuple((int(j), int(i), tuple(p)) for j, i, p in d.get("paths", ())),
        )


def node_parts(route, plans: Sequence, copies: int = 1) -> dict[Hashable, NodePart]:
    """Each node's part of relaying ``route`` ``copies`` times with ``plans`` (validated :class:`~.relay.Plan`).

    A route with ``tolerate = T > 0`` (``sharing = "threshold"``) relays shares: each part's secret (the segment
    key) is shared k-of-m over the part's paths, ``k = m - T``, and each segment end gets the nodes of the paths
    it ends (to name a path whose share it finds altered)."""
    starts: dict = defaultdict(list)
    forwards: dict = defaultdict(list)
    ends: dict = defaultdict(list)
    for j, seg in enumerate(route.segments):
        for i, path in enumerate(seg.paths):
            starts[path[0]].append((j, i, path[1]))
            for h in range(1, len(path) - 1):
                forwards[path[h]].append((j, i, path[h - 1], path[h + 1]))
            ends[path[-1]].append((j, i, path[-2]))
    keys = tuple(KeySpec(pi, g, tuple(tuple(p) for p in key.parts), bool(key.computational))
                 for pi, plan in enumerate(plans) for g, key in enumerate(plan.keys))
    seg_nodes = tuple(route.segment_nodes)
    tolerate = int(getattr(route, "tolerate", 0) or 0)
    out = {}
    for v in dict.fromkeys([*seg_nodes, *starts, *forwards, *ends]):
        pos = seg_nodes.index(v) if v in seg_nodes else None
        paths = tuple((pos - 1, i, tuple(p)) for i, p in enumerate(route.segments[pos - 1].paths)) \
            if tolerate and pos else ()
        out[v] = NodePart(v, int(route.block_bits), int(copies), seg_nodes, pos, tuple(starts.get(v, ())),
                          tuple(forwards.get(v, ())), tuple(ends.get(v, ())), keys if pos is not None else (),
                          tolerate, paths)
    return out


@dataclass
class RelayNode:
    """One node's steps in one request (see the module docstring).

    ``start()`` once, then ``on_message(msg)`` for each message that arrives;
    each returns the messages to send. ``done`` tells when a segment node
    holds every global key it should (the destination: ``keys``).
    """

    part: NodePart
    links: dict  # neighbour -> LinkEnd
    pieces: dict = field(default_factory=dict)  # pid -> KeyMaterial in plaintext here (the node's view)
    drawn: dict = field(default_factory=dict)  # pid -> piece this node drew (segment start)
    received: dict = field(default_factory=dict)  # pid -> piece this node received as segment end
    segment_keys: dict = field(default_factory=dict)  # (kid, segment) -> segment key held here
    global_keys: dict = field(default_factory=dict)  # kid -> global key held here
    transcript: dict = field(default_factory=dict)  # (kid, segment) -> ciphertext this node sent
    _incoming: dict = field(default_factory=dict)  # kid -> ciphertext from the previous segment node
    _sent_global: set = field(default_factory=set)
    started: bool = False
    decoded: dict = field(default_factory=dict)  # (kid, segment) -> Recovered (threshold sharing, a segment end)
    share_events: list = field(default_factory=list)  # shares found altered here, or a segment that did not decode
    failed: str | None = None  # why this node cannot finish its part (a segment's shares did not decode)

    @property
    def nbytes(self) -> int:
        return self.part.block_bits // 8

    # -- pieces --------------------------------------------------------------------
    def _send_pieces(self, items: list[tuple[Pid, Hashable, KeyMaterial]]) -> list[dict]:
        by_hop: dict = defaultdict(list)
        for pid, nxt, piece in items:
            by_hop[nxt].append((pid, piece))
        out = []
        for nxt, group in by_hop.items():
            blocks = []
            end = self.links[nxt]
            for pid, piece in group:
                off, pad = end.take(self.nbytes)
                blocks.append((pid, off, piece ^ pad))
            out.append({"kind": "pieces", "src": self.part.node, "dst": nxt, "blocks": blocks})
        return out

    def start(self, draw=KeyMaterial.random) -> list[dict]:
        """Draw and send this node's pieces (as a segment start); the source also sends its global keys."""
        self.started = True
        items = []
        shared = self._deal(draw) if self.part.tolerate and self.part.starts else {}
        for c in range(self.part.copies):
            for j, i, nxt in self.part.starts:
                pid = (c, j, i)
                piece = shared[pid] if pid in shared else draw(self.part.block_bits)
                self.drawn[pid] = self.pieces[pid] = piece
                items.append((pid, nxt, piece))
        if self.part.position == 0:
            for c in range(self.part.copies):
                for spec in self.part.keys:
                    self.global_keys[(c, spec.plan, spec.index)] = draw(self.part.block_bits)
        return self._send_pieces(items) + self._progress()

    def _deal(self, draw) -> dict:
        """Threshold sharing at a segment start: each part's segment key drawn and shared k-of-m over the part's
        paths (share ``i`` is the piece path ``i`` relays); the segment keys are kept here."""
        from ..reconstruction.shamir import split

        pos, out = self.part.position, {}
        for c in range(self.part.copies):
            for spec in self.part.keys:
                kid, part = (c, spec.plan, spec.index), spec.parts[pos]
                secret = draw(self.part.block_bits)
                self.segment_keys[(kid, pos)] = secret
                for i, share in zip(part, split(secret.reveal(), len(part), self.part.tolerate)):
                    if (c, pos, i) in out:
                        raise ValueError(f"path {i} of segment {pos} is in two parts: a share cannot serve both")
                    out[(c, pos, i)] = KeyMaterial(share)
        return out

    def on_message(self, msg: dict) -> list[dict]:
        if msg["kind"] == "pieces":
            return self.on_pieces(msg)
        if msg["kind"] == "global":
            return self.on_global(msg)
        raise ValueError(f"unknown relay message kind {msg['kind']!r}")

    def on_pieces(self, msg: dict) -> list[dict]:
        """Decrypt each block with this node's copy of the link key; forward it or keep it (segment end)."""
        src = msg["src"]
        end = self.links[src]
        fwd = {(j, i): (p, n) for j, i, p, n in self.part.forwards}
        mine = {(j, i): p for j, i, p in self.part.ends}
        items = []
        for pid, off, cipher in msg["blocks"]:
            pid = tuple(pid)
            piece = cipher ^ end.at(off, self.nbytes)
            self.pieces[pid] = piece
            if pid[1:] in fwd and fwd[pid[1:]][0] == src:
                items.append((pid, fwd[pid[1:]][1], piece))
            elif mine.get(pid[1:]) == src:
                self.received[pid] = piece
                if self.part.tolerate:
                    self._late_share(pid)
            else:
                raise ValueError(f"node {self.part.node!r}: piece {pid} from {src!r} is not in its part of the plan")
        return self._send_pieces(items) + self._progress()

    def on_global(self, msg: dict) -> list[dict]:
        pos = self.part.position
        if not pos or msg["src"] != self.part.segment_nodes[pos - 1]:
            raise ValueError(f"node {self.part.node!r}: a global-key message from {msg['src']!r}, "
                             "not from the previous segment node")
        for kid, cipher in msg["items"]:
            self._incoming[tuple(kid)] = cipher
        return self._progress()

    # -- segment keys and the global key ----------------------------------------------
    def _segment_key(self, kid: Kid, spec: KeySpec, j: int, source: dict) -> KeyMaterial | None:
        if (kid, j) in self.segment_keys:
            return self.segment_keys[(kid, j)]
        pids = [(kid[0], j, i) for i in spec.parts[j]]
        if self.part.tolerate:
            return self._decode(kid, spec, j, source)
        if not all(p in source for p in pids):
            return None
        key = combine([source[p] for p in pids], spec.computational)
        self.segment_keys[(kid, j)] = key
        return key

    def _progress(self) -> list[dict]:
        pos = self.part.position
        if pos is None or not self.started:
            return []
        last = len(self.part.segment_nodes) - 1
        out: dict = defaultdict(list)
        for c in range(self.part.copies):
            for spec in self.part.keys:
                kid = (c, spec.plan, spec.index)
                if kid in self._sent_global:
                    continue
                if pos > 0 and kid not in self.global_keys:
                    s_in = self._segment_key(kid, spec, pos - 1, self.received)
                    if s_in is None or kid not in self._incoming:
                        continue
                    self.global_keys[kid] = self._incoming[kid] ^ s_in
                if pos == last:
                    self._sent_global.add(kid)
                    continue
                s_out = self._segment_key(kid, spec, pos, self.drawn)
                if s_out is None:
                    continue
                cipher = self.global_keys[kid] ^ s_out
                self.transcript[(kid, pos)] = cipher
                out[self.part.segment_nodes[pos + 1]].append((kid, cipher))
                self._sent_global.add(kid)
        return [{"kind": "global", "src": self.part.node, "dst": dst, "segment": pos, "items": items}
                for dst, items in out.items()]

    # -- threshold sharing at a segment end ------------------------------------------------
    def _shares(self, kid: Kid, spec: KeySpec, j: int, source: dict) -> list:
        return [source[p].reveal() if p in source else None for p in ((kid[0], j, i) for i in spec.parts[j])]

    def _decode(self, kid: Kid, spec: KeySpec, j: int, source: dict, force: bool = False) -> KeyMaterial | None:
        """The segment key from its shares: as soon as they prove it (:func:`~qkdseg.reconstruction.shamir.
        decode_early`), or with ``force`` (:meth:`settle`) from what came (at least ``k``); altered shares named."""
        from ..reconstruction.shamir import SharesDoNotDecode, combine as decode, decode_early

        if self.failed:
            return None
        shares = self._shares(kid, spec, j, source)
        try:
            r = decode(shares, self.part.tolerate) if force else decode_early(shares, self.part.tolerate)
        except SharesDoNotDecode as err:
            self.failed = f"segment {j + 1}: {err}"
            self.share_events.append({"copy": kid[0], "segment": j, "path": None, "what": "undecodable",
                                      "paths": [list(self._path(j, i)) for i in spec.parts[j]]})
            return None
        if r is None:
            return None
        self.decoded[(kid, j)] = (r, spec)
        for idx in r.altered:
            self._altered(kid[0], j, spec.parts[j][idx], located=True)
        key = self.segment_keys[(kid, j)] = KeyMaterial(r.secret)
        return key

    def _path(self, j: int, i: int) -> tuple:
        return next((p for jj, ii, p in self.part.paths if (jj, ii) == (j, i)), ())

    def _altered(self, copy: int, j: int, i: int, *, located: bool) -> None:
        self.share_events.append({"copy": copy, "segment": j, "path": i, "nodes": list(self._path(j, i)),
                                  "what": "altered" if located else "inconsistent"})

    def _late_share(self, pid: Pid) -> None:
        """A share that came after its segment key was decoded: checked against it (an altered one named; with
        ``T = 1`` the decoding had no spare share, so a mismatch is detected, not located)."""
        from ..reconstruction.shamir import check_late

        c, j, i = pid
        for (kid, jj), (r, spec) in list(self.decoded.items()):
            if kid[0] != c or jj != j or i not in spec.parts[j]:
                continue
            idx = spec.parts[j].index(i)
            if idx in r.good or idx in r.altered:
                continue
            if not check_late(self._shares(kid, spec, j, self.received), r, idx):  # located when the decoding was
                t = self.part.tolerate  # proven: k + T // 2 >= k + 1 shares agreed (T >= 2)
                self._altered(c, j, i, located=t >= 2 and len(r.good) >= len(spec.parts[j]) - t + t // 2)

    @property
    def waiting(self) -> bool:
        """A segment end holds at least ``k`` shares of a segment key it has not decoded yet (:meth:`settle`)."""
        pos = self.part.position
        if not self.part.tolerate or not pos or self.failed:
            return False
        for c in range(self.part.copies):
            for spec in self.part.keys:
                kid = (c, spec.plan, spec.index)
                if (kid, pos - 1) not in self.segment_keys:
                    got = sum(x is not None for x in self._shares(kid, spec, pos - 1, self.received))
                    if got >= len(spec.parts[pos - 1]) - self.part.tolerate:
                        return True
        return False

    def settle(self) -> list[dict]:
        """Decode every segment key still waiting from the shares that came (the others count as lost)."""
        pos = self.part.position
        for c in range(self.part.copies):
            for spec in self.part.keys:
                kid = (c, spec.plan, spec.index)
                if self.waiting and (kid, pos - 1) not in self.segment_keys and not self.failed:
                    self._decode(kid, spec, pos - 1, self.received, force=True)
        return self._progress()

    @property
    def done(self) -> bool:
        """A segment node has handled every global key of the request (relays: always)."""
        if self.part.position is None:
            return True
        return len(self._sent_global) == self.part.copies * len(self.part.keys)

    def keys(self) -> list[tuple[Kid, KeyMaterial]]:
        """The global keys held here, in key order (at the source and the destination: the request's keys)."""
        return [((c, s.plan, s.index), self.global_keys[(c, s.plan, s.index)])
                for c in range(self.part.copies) for s in self.part.keys if (c, s.plan, s.index) in self.global_keys]


def run_local(nodes: dict[Hashable, RelayNode], draw=KeyMaterial.random) -> None:
    """Run every node's steps in one process: start all, then deliver each message by a direct call."""
    queue: list[dict] = []
    for node in nodes.values():
        queue += node.start(draw)
    while queue:
        msg = queue.pop(0)
        queue += nodes[msg["dst"]].on_message(msg)
