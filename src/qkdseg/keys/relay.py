"""The relay engine: execute a route and a reconstruction plan on real bytes.

:func:`relay` runs one key request end to end (docs/model.md sections 2 and 4):

1. **Pieces.** Every path ``(t_j, r1, ..., t_{j+1})`` of segment ``j``
   carries one piece of ``B`` bits, drawn at random at the segment start
   ``t_j``. Hop ``a -> b`` encrypts it with ``B`` one-time-pad bits from the
   link's pool (``a``'s copy) and ``b`` decrypts it with its own copy; every
   relay thus holds the piece in plaintext, and the engine records it in the
   relay's :class:`NodeView`. All the hops of the request are reserved in one
   atomic :meth:`~qkdseg.keys.pools.KeyStore.reserve`, so the pools are
   debited exactly the route's ``consumed_bits`` (sum over paths of hops x B).
2. **Segment keys.** For each global key of the plan, each segment's part (a
   group of the segment's pieces) is combined into a segment key at both
   ends of the segment, from each end's own pieces: XOR, or HKDF for
   ``computational`` (``reuse``) keys (:func:`~qkdseg.keys.combine.combine`).
3. **Global key.** The source draws the global key ``G`` and relays it
   across the segment nodes by one-time pad, with the segment keys as pads:
   ``t_j`` sends ``C_j = G xor S_j`` (a public ciphertext, kept in the
   result's ``transcript``), ``t_{j+1}`` decrypts with its own ``S_j``. The
   interior segment nodes see ``G``.
4. **Comparison.** The destination's key is compared with the source's, byte
   for byte (constant time); the engine never assumes they match. Pieces and
   segment keys are compared end to end as well.

A *plan* is the ``reconstruction`` object of the route JSON (docs/json.md):
``{"scheme", "global_keys": [{"bits", "computational", "parts": [{"segment",
"paths"}]}]}``, a :class:`~qkdseg.reconstruction.Reconstruction`, or a
:class:`Plan`. Without one, the engine executes ``xor-all``: one global key
from all pieces (:meth:`Plan.xor_all`). Several plans may be executed over the
same delivered pieces (alternatives evaluated on one delivery, as
``qkdseg emulate`` does to measure both the route's end-to-end security and a
reconstruction's keys); each plan's keys are built and relayed separately.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import InvalidRequest
from .material import KeyMaterial, check_block_bits
from .pools import KeyStore, Link, LinkPads
from .steps import NodePart, RelayNode, node_parts, run_local

PieceId = tuple[int, int]  # (segment, path index)


# -- plans -----------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedKey:
    """One global key of a plan: ``parts[j]`` are segment ``j``'s path indices."""

    parts: tuple[tuple[int, ...], ...]
    computational: bool = False
    bits: int = 0
    security: float | None = None


@dataclass(frozen=True)
class Plan:
    """A validated reconstruction plan for one route."""

    scheme: str
    keys: tuple[PlannedKey, ...]
    epsilon: float | None = None

    @classmethod
    def xor_all(cls, route) -> "Plan":
        """One global key from every piece of every segment (docs/model.md section 4)."""
        parts = tuple(tuple(range(len(seg.paths))) for seg in route.segments)
        return cls("xor-all", (PlannedKey(parts, False, route.block_bits, route.security),))

    @classmethod
    def from_any(cls, plan: Any, route) -> "Plan":
        """A plan from a :class:`Plan`, a ``Reconstruction`` or its JSON dict, checked against ``route``.

        Raises :class:`~qkdseg.errors.InvalidRequest` naming the key, segment
        or path at fault: a key without exactly one part per segment, a path
        index out of range, a piece in two keys (outside ``computational``
        keys), or a key length other than the route's block size.
        """
        if plan is None:
            return cls.xor_all(route)
        if isinstance(plan, Plan):
            return _validate(plan, route)
        if hasattr(plan, "to_dict"):
            plan = plan.to_dict()
        if not isinstance(plan, Mapping) or "global_keys" not in plan:
            raise InvalidRequest("a reconstruction plan needs 'global_keys' (docs/json.md)")
        keys = []
        n_seg = len(route.segments)
        for g, key in enumerate(plan["global_keys"]):
            parts: dict[int, tuple[int, ...]] = {}
            for part in key.get("parts", ()):
                j = part.get("segment")
                if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < n_seg:
                    raise InvalidRequest(f"global key {g}: segment {j!r} is not one of the route's {n_seg} segments")
                if j in parts:
                    raise InvalidRequest(f"global key {g}: segment {j} has two parts")
                parts[j] = tuple(int(i) for i in part.get("paths", ()))
            if len(parts) != n_seg:
                missing = [j for j in range(n_seg) if j not in parts]
                raise InvalidRequest(f"global key {g}: no part for segment(s) {missing} (one part per segment)")
            keys.append(
                PlannedKey(
                    tuple(parts[j] for j in range(n_seg)),
                    bool(key.get("computational", False)),
                    int(key.get("bits", route.block_bits)),
                    key.get("security"),
                )
            )
        return _validate(cls(str(plan.get("scheme", "custom")), tuple(keys), plan.get("epsilon")), route)


def _validate(plan: Plan, route) -> Plan:
    used: dict[PieceId, int] = {}
    for g, key in enumerate(plan.keys):
        if len(key.parts) != len(route.segments):
            raise InvalidRequest(f"global key {g}: {len(key.parts)} parts for {len(route.segments)} segments")
        if key.bits != route.block_bits:
            raise InvalidRequest(f"global key {g}: bits={key.bits} differs from the route's block_bits={route.block_bits}")
        for j, idx in enumerate(key.parts):
            n = len(route.segments[j].paths)
            if not idx:
                raise InvalidRequest(f"global key {g}: segment {j} has an empty part")
            if len(set(idx)) != len(idx):
                raise InvalidRequest(f"global key {g}: segment {j} names a path twice: {list(idx)}")
            for i in idx:
                if not 0 <= i < n:
                    raise InvalidRequest(f"global key {g}: segment {j} has no path {i} (it has {n})")
                if not key.computational:
                    if (j, i) in used:
                        raise InvalidRequest(
                            f"global keys {used[(j, i)]} and {g} both use piece {i} of segment {j} "
                            "(only computational keys may share pieces)"
                        )
                    used[(j, i)] = g
    return plan


# -- results -------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeView:
    """What one node held in plaintext during a run (what it leaks if compromised).

    ``pieces[(j, i)]``: piece ``i`` of segment ``j`` (relayed, sent or
    received); ``segment_keys[(plan, g, j)]``: segment ``j``'s key of global
    key ``g`` of plan ``plan``; ``global_keys[(plan, g)]``: a global key it
    relayed. Key material only, masked in ``repr``.
    """

    node: Hashable
    pieces: Mapping[PieceId, KeyMaterial]
    segment_keys: Mapping[tuple[int, int, int], KeyMaterial]
    global_keys: Mapping[tuple[int, int], KeyMaterial]


@dataclass(frozen=True)
class KeyOutcome:
    """One global key as both ends hold it."""

    source_key: KeyMaterial
    destination_key: KeyMaterial
    identical: bool
    segment_keys_identical: tuple[bool, ...]


@dataclass(frozen=True)
class PlanOutcome:
    plan: Plan
    keys: tuple[KeyOutcome, ...]

    @property
    def identical(self) -> bool:
        return all(k.identical for k in self.keys)


@dataclass(frozen=True)
class RelayResult:
    """The outcome of :func:`relay`; frozen.

    Attributes
    ----------
    plans : tuple of PlanOutcome
        Per plan, per global key: both ends' keys and whether they match.
    views : mapping node -> NodeView
        What every node that handled key material saw in plaintext.
    transcript : mapping (plan, g, j) -> KeyMaterial
        The public ciphertexts ``G xor S_j`` of the global-key relay.
    pieces_identical : bool
        Every piece arrived at its segment end as it was sent.
    debited : mapping link -> bits
        Bits taken from each link pool.
    bits_consumed : int
        Their sum: the route's ``consumed_bits``.
    """

    segment_nodes: tuple
    block_bits: int
    plans: tuple[PlanOutcome, ...]
    views: Mapping[Hashable, NodeView] = field(repr=False)
    transcript: Mapping[tuple[int, int, int], KeyMaterial] = field(repr=False)
    pieces_identical: bool
    debited: Mapping[Link, int] = field(repr=False)
    bits_consumed: int

    @property
    def keys_identical(self) -> bool:
        """Both ends agree on every piece and every global key of every plan."""
        return self.pieces_identical and all(p.identical for p in self.plans)


# -- the engine ----------------------------------------------------------------------
def relay(route, store: KeyStore, plans: Sequence[Any] | Any = None) -> RelayResult:
    """Execute ``route`` with real key material from ``store``.

    Parameters
    ----------
    route : qkdseg.Route
        A route of ``store.network`` whose ``block_bits`` is a multiple of 8.
    store : KeyStore
        The link pools; debited atomically by the whole request.
    plans : plan or sequence of plans, optional
        What to build from the pieces: a :class:`Plan`, a
        ``Reconstruction``, its JSON dict, or ``None`` for ``xor-all``. A
        list executes each over the same pieces. Default: ``xor-all``.

    Returns
    -------
    RelayResult

    Raises
    ------
    KeyMaterialShort
        When a link pool is short (naming it); no pool has changed.
    InvalidRequest
        For a blocked route, a block size that is not whole bytes, or a bad plan.

    Examples
    --------
    >>> from qkdseg import example_network, route
    >>> from qkdseg.keys import KeyStore, relay
    >>> net = example_network()
    >>> r = route(net, 0, 7, block_bits=256)
    >>> res = relay(r, KeyStore(net))
    >>> res.keys_identical, res.bits_consumed == r.consumed_bits
    (True, True)
    >>> res.plans[0].keys[0].source_key
    KeyMaterial(<256 bits, masked>)
    """
    if route.blocked:
        raise InvalidRequest(f"route {route.source!r} -> {route.destination!r} is blocked: no path to relay keys on")
    B = check_block_bits(route.block_bits)
    if plans is None or isinstance(plans, (Plan, Mapping)) or hasattr(plans, "to_dict"):
        plans = [plans]
    plan_objs = [Plan.from_any(p, route) for p in plans]

    # 1. the whole request, reserved at once
    need: dict[Link, int] = defaultdict(int)
    for seg in route.segments:
        for path in seg.paths:
            for a, b in zip(path, path[1:]):
                need[store.canonical((a, b))] += B
    level_before = store.debited_bits
    pads = store.reserve(need)

    # 2-4. each node's steps (qkdseg.keys.steps), wired by direct calls
    parts = node_parts(route, plan_objs)
    offset: dict[Link, int] = defaultdict(int)
    nodes = {
        v: RelayNode(part, {w: _LocalEnd(store.canonical((v, w)), v, pads, offset) for w in _neighbours(part)})
        for v, part in parts.items()
    }
    run_local(nodes)

    seg_nodes = route.segment_nodes
    sent: dict[PieceId, KeyMaterial] = {}
    received: dict[PieceId, KeyMaterial] = {}
    for j, seg in enumerate(route.segments):
        for i, path in enumerate(seg.paths):
            sent[(j, i)] = nodes[path[0]].drawn[(0, j, i)]
            received[(j, i)] = nodes[path[-1]].received[(0, j, i)]
    pieces_identical = all(sent[pid] == received[pid] for pid in sent)
    transcript: dict[tuple[int, int, int], KeyMaterial] = {}
    outcomes = []
    for pi, plan in enumerate(plan_objs):
        keys = []
        for g, key in enumerate(plan.keys):
            kid = (0, pi, g)
            for j in range(len(key.parts)):
                transcript[(pi, g, j)] = nodes[seg_nodes[j]].transcript[(kid, j)]
            src, dst = nodes[seg_nodes[0]].global_keys[kid], nodes[seg_nodes[-1]].global_keys[kid]
            keys.append(KeyOutcome(
                source_key=src,
                destination_key=dst,
                identical=src == dst,
                segment_keys_identical=tuple(
                    nodes[seg_nodes[j]].segment_keys[(kid, j)] == nodes[seg_nodes[j + 1]].segment_keys[(kid, j)]
                    for j in range(len(key.parts))),
            ))
        outcomes.append(PlanOutcome(plan, tuple(keys)))

    # what every node held in plaintext, in the order the nodes first held key material
    order = [v for seg in route.segments for path in seg.paths for v in path] + list(seg_nodes)
    interior = set(seg_nodes[1:-1])
    views = {}
    for v in dict.fromkeys(order):
        n = nodes[v]
        views[v] = NodeView(
            v,
            MappingProxyType({pid[1:]: k for pid, k in n.pieces.items()}),
            MappingProxyType({(kid[1], kid[2], j): k for (kid, j), k in n.segment_keys.items()}),
            MappingProxyType({kid[1:]: k for kid, k in n.global_keys.items()} if v in interior else {}),
        )
    return RelayResult(
        segment_nodes=tuple(seg_nodes),
        block_bits=B,
        plans=tuple(outcomes),
        views=MappingProxyType(views),
        transcript=MappingProxyType(transcript),
        pieces_identical=pieces_identical,
        debited=MappingProxyType(dict(need)),
        bits_consumed=store.debited_bits - level_before,
    )


class _LocalEnd:
    """A node's end of a link inside one process: its copy of the request's reserved pads, one offset per link."""

    __slots__ = ("link", "node", "pads", "offset")

    def __init__(self, link: Link, node: Hashable, pads: Mapping[Link, LinkPads], offset: dict) -> None:
        self.link, self.node, self.pads, self.offset = link, node, pads, offset

    def take(self, nbytes: int) -> tuple[int, KeyMaterial]:
        off = self.offset[self.link]
        self.offset[self.link] = off + nbytes
        return off, self.at(off, nbytes)

    def at(self, offset: int, nbytes: int) -> KeyMaterial:
        return KeyMaterial(self.pads[self.link].end(self.node).reveal()[offset : offset + nbytes])


def _neighbours(part: NodePart) -> list:
    return list(dict.fromkeys([n for _, _, n in part.starts] + [x for _, _, p, n in part.forwards for x in (p, n)]
                              + [p for _, _, p in part.ends]))
