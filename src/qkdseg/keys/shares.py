"""Threshold sharing on real bytes (issue 40): segment keys shared k-of-m over a route's paths.

:func:`relay_shared` runs one request with ``sharing = "threshold"``:

1. **Pieces.** :func:`~qkdseg.keys.relay.relay` relays one random piece of
   ``B`` bits over every path, one-time padded hop by hop (every relay of
   the path holds it in plaintext), the pools debited atomically as always.
2. **Shares.** Each segment start ``t_j`` draws the segment key ``S_j``
   (``B`` bits), splits it k-of-m over its ``m`` paths
   (:func:`~qkdseg.reconstruction.shamir.split`, ``k = m - T``) and sends
   share ``i`` under piece ``i`` as a one-time pad: ``c_i = share_i xor
   piece_i`` on the public channel. **[choice: the share rides on the
   relayed piece as its pad rather than being relayed itself; the relays of
   path ``i`` hold exactly what they would hold if the share were relayed
   (piece ``i``, hence share ``i``), the pools are debited the same, and the
   relay engine both deployments run is unchanged.]**
3. **Loss and tampering.** A path in ``lost`` delivers nothing; a path in
   ``altered`` delivers its piece with bytes flipped, as a relay that alters
   the piece it forwards would (a one-time pad is malleable: flipping a
   ciphertext bit flips the plaintext bit). The segment end ``t_{j+1}``
   decodes the shares it got, ``c_i xor`` its own piece
   (:func:`~qkdseg.reconstruction.shamir.combine`), naming the altered ones.
4. **Global key.** The source draws ``G`` and relays it over the segment
   nodes under the segment keys, ``C_j = G xor S_j`` (public), as for XOR;
   the destination's ``G`` is compared byte for byte.

:func:`attack_shared` is the adversary: a compromised relay of path ``i``
holds piece ``i``, so with the public ``c_i`` it has share ``i``; with ``k``
shares of one segment it decodes ``S_j`` and ``G = C_j xor S_j``; a
compromised interior segment node has ``G``.
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from ..reconstruction.shamir import SharesDoNotDecode, combine, split
from .material import KeyMaterial
from .pools import KeyStore
from .relay import RelayResult, relay


@dataclass(frozen=True)
class SegmentOutcome:
    """One segment key at its end: decoded or not, equal to the start's, which shares were lost or altered."""

    decoded: bool
    identical: bool
    lost: tuple[int, ...]
    altered: tuple[int, ...]
    error: str | None = None


@dataclass(frozen=True)
class SharedRun:
    """The outcome of :func:`relay_shared`.

    ``identical``: every segment decoded and both ends hold the same ``G``.
    ``shares[(j, i)]``, ``public[(j, i)]`` (the ``c_i``) and ``transcript[j]``
    (the ``C_j``) are what the attack reads; ``pieces`` is the relay run.
    """

    tolerate: int
    segments: tuple[SegmentOutcome, ...]
    source_key: KeyMaterial
    destination_key: KeyMaterial | None
    identical: bool
    pieces: RelayResult = field(repr=False)
    public: dict = field(repr=False)
    transcript: dict = field(repr=False)
    sizes: tuple[int, ...] = ()


def _flip(piece: KeyMaterial) -> KeyMaterial:
    """A piece with one random byte changed (what a tampering relay delivers)."""
    data = bytearray(piece.reveal())
    data[secrets.randbelow(len(data))] ^= 1 + secrets.randbelow(255)
    return KeyMaterial(data)


def relay_shared(route, store: KeyStore, tolerate: int, *, lost: Iterable[tuple[int, int]] = (),
                 altered: Iterable[tuple[int, int]] = ()) -> SharedRun:
    """Relay ``route`` with every segment key shared k-of-m over its paths, ``k = m - tolerate``.

    ``lost`` and ``altered`` are ``(segment, path)`` pairs: those pieces are
    deleted or altered on the way (the adversary's doing, or a dead relay).

    >>> from qkdseg import example_network, route
    >>> net = example_network()
    >>> r = route(net, 0, 7, block_bits=64, sharing="threshold", tolerate=1)
    >>> run = relay_shared(r, KeyStore(net), 1, lost=[(0, 1)])
    >>> run.identical, run.segments[0].lost, run.segments[1].lost
    (True, (1,), ())
    """
    lost, altered = set(lost), set(altered)
    for j, i in lost | altered:
        if not (0 <= j < len(route.segments) and 0 <= i < len(route.segments[j].paths)):
            raise InvalidRequest(f"path ({j}, {i}) is not a path of the route")
    res = relay(route, store)
    bits = res.block_bits
    public: dict = {}
    transcript: dict = {}
    outcomes = []
    g_key = KeyMaterial.random(bits)
    key = g_key
    for j, seg in enumerate(route.segments):
        start, end = route.segment_nodes[j], route.segment_nodes[j + 1]
        s_key = KeyMaterial.random(bits)
        shares = split(s_key.reveal(), len(seg.paths), tolerate)
        got: list[bytes | None] = []
        for i, share in enumerate(shares):
            public[(j, i)] = KeyMaterial(share) ^ res.views[start].pieces[(j, i)]
            received = res.views[end].pieces[(j, i)]
            if (j, i) in altered:
                received = _flip(received)
            got.append(None if (j, i) in lost else (public[(j, i)] ^ received).reveal())
        transcript[j] = key ^ s_key if key is not None else None
        try:
            r = combine(got, tolerate)
        except SharesDoNotDecode as err:
            outcomes.append(SegmentOutcome(False, False, tuple(sorted(i for jj, i in lost if jj == j)), (), str(err)))
            key = None
            continue
        end_key = KeyMaterial(r.secret)
        outcomes.append(SegmentOutcome(True, end_key == s_key, r.lost, r.altered))
        key = transcript[j] ^ end_key if key is not None else None
    return SharedRun(int(tolerate), tuple(outcomes), g_key, key, key is not None and key == g_key, res, public,
                     transcript, tuple(len(seg.paths) for seg in route.segments))


def attack_shared(run: SharedRun, compromised: Iterable[Hashable], route) -> bool:
    """``True`` when the compromised nodes' records rebuild ``G`` byte for byte (never a guess)."""
    comp = set(compromised)
    if comp & set(route.segment_nodes[1:-1]):
        return True  # an interior segment node relayed G
    views = run.pieces.views
    for j, seg in enumerate(route.segments):
        spies = [next((v for v in path[1:-1] if v in comp), None) for path in seg.paths]  # a relay that held piece i
        held = [None if v is None else (run.public[(j, i)] ^ views[v].pieces[(j, i)]).reveal()
                for i, v in enumerate(spies)]
        if sum(h is not None for h in held) < len(seg.paths) - run.tolerate or run.transcript[j] is None:
            continue
        guess = run.transcript[j] ^ KeyMaterial(combine(held, run.tolerate).secret)
        if guess == run.source_key:
            return True
    return False


def emulate_shared(network, source: Hashable, destination: Hashable, algorithm: str = "smr", *, tolerate: int,
                   trials: int = 200, block_bits: int = 256, seed: int = 0, lose: int = 0, alter: int = 0,
                   options: dict | None = None) -> dict:
    """``trials`` runs of one request with threshold sharing, ``lose`` pieces deleted and ``alter`` pieces
    altered per segment (paths drawn at random each trial), against a sampled adversary.

    Returns the counts: ``keys_identical`` (both ends hold the same ``G``), ``altered_named`` (trials where
    every segment named exactly the altered paths), ``empirical_secrecy`` with its Wilson ``ci95`` against
    the route's exact ``exact_security`` under this sharing, and the route's JSON.

    >>> from qkdseg import example_network
    >>> out = emulate_shared(example_network(), 0, 7, tolerate=1, trials=50, lose=1)
    >>> out["keys_identical"], out["route"]["sharing"]
    (50, 'threshold')
    """
    import numpy as np

    from ..api import route as do_route
    from ..security import wilson_interval
    from .adversary import draw_compromised, exposed_nodes
    from .emulate import MAX_TRIALS
    from .material import check_block_bits, is_int

    B = check_block_bits(block_bits)
    if not is_int(trials) or not 1 <= trials <= MAX_TRIALS:
        raise InvalidRequest(f"trials={trials!r} must be a positive integer, at most {MAX_TRIALS}")
    for name, v in (("seed", seed), ("lose", lose), ("alter", alter)):
        if not is_int(v) or v < 0:
            raise InvalidRequest(f"{name}={v!r} must be a non-negative integer")
    r = do_route(network, source, destination, algorithm, block_bits=B, sharing="threshold", tolerate=tolerate,
                 **(options or {}))
    if r.blocked:
        raise InvalidRequest(f"route {source!r} -> {destination!r} is blocked: nothing to relay")
    short = [j + 1 for j, seg in enumerate(r.segments) if len(seg.paths) < lose + alter]
    if short:
        raise InvalidRequest(f"lose={lose} + alter={alter} exceeds the paths of segment {short[0]}")
    nodes = exposed_nodes(network, r)
    states = draw_compromised(network, nodes, trials, seed)
    pick = np.random.default_rng([seed, 40])  # which paths lose or alter their piece: a stream of its own
    identical = named = secret = 0
    for t in range(trials):
        lost, altered = [], []
        for j, seg in enumerate(r.segments):
            order = pick.permutation(len(seg.paths)).tolist()
            lost += [(j, i) for i in order[:lose]]
            altered += [(j, i) for i in order[lose:lose + alter]]
        run = relay_shared(r, KeyStore(network), tolerate, lost=lost, altered=altered)
        identical += run.identical
        named += all(o.decoded and set(o.altered) == {i for jj, i in altered if jj == j}
                     for j, o in enumerate(run.segments))
        secret += not attack_shared(run, [v for v, c in zip(nodes, states[t]) if c], r)
    lo, hi = wilson_interval(secret, trials)
    exact = float(r.security)
    return {"network": network.name, "source": source, "destination": destination, "algorithm": algorithm,
            "block_bits": B, "trials": trials, "seed": seed, "sharing": "threshold", "tolerate": tolerate,
            "lose": lose, "alter": alter, "keys_identical": identical, "altered_named": named,
            "secret_trials": secret, "empirical_secrecy": secret / trials, "ci95": [lo, hi],
            "exact_security": exact, "standard_error": (exact * (1 - exact) / trials) ** 0.5,
            "route": r.to_dict()}
