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
from .combine import combine
from .material import KeyMaterial, check_block_bits
from .pools import KeyStore, Link

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
    nb = B // 8
    if plans is None or isinstance(plans, (Plan, Mapping)) or hasattr(plans, "to_dict"):
        plans = [plans]
    plan_objs = [Plan.from_any(p, route) for p in plans]

    # 1. the whole request, reserved at once
    need: dict[Link, int] = defaultdict(int)
    hops: list[list[list[tuple[Link, Hashable, Hashable]]]] = []
    for seg in route.segments:
        seg_hops = []
        for path in seg.paths:
            path_hops = []
            for a, b in zip(path, path[1:]):
                link = store.canonical((a, b))
                need[link] += B
                path_hops.append((link, a, b))
            seg_hops.append(path_hops)
        hops.append(seg_hops)
    level_before = store.debited_bits
    pads = store.reserve(need)
    offset: dict[Link, int] = defaultdict(int)

    pieces: dict[Hashable, dict] = defaultdict(dict)
    seg_keys: dict[Hashable, dict] = defaultdict(dict)
    glob_keys: dict[Hashable, dict] = defaultdict(dict)
    sent: dict[PieceId, KeyMaterial] = {}
    received: dict[PieceId, KeyMaterial] = {}
    for j, seg in enumerate(route.segments):
        for i, path in enumerate(seg.paths):
            piece = KeyMaterial.random(B)
            sent[(j, i)] = piece
            pieces[path[0]][(j, i)] = piece
            cur = piece
            for link, a, b in hops[j][i]:
                off = offset[link]
                offset[link] = off + nb
                pad_a = KeyMaterial(pads[link].end(a).reveal()[off : off + nb])
                pad_b = KeyMaterial(pads[link].end(b).reveal()[off : off + nb])
                cipher = cur ^ pad_a  # on the classical channel a -> b
                cur = cipher ^ pad_b  # at b
                pieces[b][(j, i)] = cur
            received[(j, i)] = cur
    pieces_identical = all(sent[pid] == received[pid] for pid in sent)

    # 2-4. every plan: segment keys at both segment ends, global key relayed over them
    nodes = route.segment_nodes
    transcript: dict[tuple[int, int, int], KeyMaterial] = {}
    outcomes = []
    for pi, plan in enumerate(plan_objs):
        keys = []
        for g, key in enumerate(plan.keys):
            send_keys, recv_keys = [], []
            for j, idx in enumerate(key.parts):
                s_key = combine([sent[(j, i)] for i in idx], key.computational)
                r_key = combine([received[(j, i)] for i in idx], key.computational)
                seg_keys[nodes[j]][(pi, g, j)] = s_key
                seg_keys[nodes[j + 1]][(pi, g, j)] = r_key
                send_keys.append(s_key)
                recv_keys.append(r_key)
            gkey = KeyMaterial.random(B)
            cur = gkey
            for j in range(len(key.parts)):
                cipher = cur ^ send_keys[j]  # at t_j, to the public channel
                transcript[(pi, g, j)] = cipher
                cur = cipher ^ recv_keys[j]  # at t_{j+1}
                if j + 1 < len(key.parts):
                    glob_keys[nodes[j + 1]][(pi, g)] = cur
            keys.append(
                KeyOutcome(
                    source_key=gkey,
                    destination_key=cur,
                    identical=gkey == cur,
                    segment_keys_identical=tuple(a == b for a, b in zip(send_keys, recv_keys)),
                )
            )
        outcomes.append(PlanOutcome(plan, tuple(keys)))

    views = {
        v: NodeView(
            v,
            MappingProxyType(pieces.get(v, {})),
            MappingProxyType(seg_keys.get(v, {})),
            MappingProxyType(glob_keys.get(v, {})),
        )
        for v in dict.fromkeys([*pieces, *seg_keys, *glob_keys])
    }
    return RelayResult(
        segment_nodes=tuple(nodes),
        block_bits=B,
        plans=tuple(outcomes),
        views=MappingProxyType(views),
        transcript=MappingProxyType(transcript),
        pieces_identical=pieces_identical,
        debited=MappingProxyType(dict(need)),
        bits_consumed=store.debited_bits - level_before,
    )
