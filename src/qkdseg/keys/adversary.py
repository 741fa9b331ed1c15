"""The adversary of docs/model.md section 1, emulated on real bytes.

Per trial a *compromised set* is drawn: every node that can relay for the
request (the paths' relays and the interior segment nodes; never the source
or the destination) is compromised independently with probability ``1 - p``
(:func:`draw_compromised`, seeded, ``numpy.random.default_rng``). Trusted
relays have ``p = 1`` unless the network says otherwise (``trusted_p``).

A compromised node leaks everything it held in plaintext during the run (its
:class:`~qkdseg.keys.relay.NodeView`): the pieces it relayed, sent or
received, the segment keys it computed, and the global keys it relayed. The
attacker also reads the public classical channel: the one-time-pad
ciphertexts ``C_j = G xor S_j`` of the global-key relay (piece ciphertexts
are useless to it without the link pads, which only the link ends hold).

:func:`attack` then tries to recompute each global key ``G`` from those
records and compares the result with the true key, byte for byte:

- if a compromised segment node relayed ``G``, it has it;
- otherwise, for each segment ``j``: a compromised end of segment ``j`` gives
  the segment key ``S_j``; or the attacker recorded every piece of ``G``'s
  part in segment ``j`` and recombines them (XOR, or HKDF for computational
  keys). One segment key is enough: ``G = C_j xor S_j``.

So ``G`` stays secret iff every segment key is secret and every interior
segment node is safe, the event whose probability is the exact security
(docs/model.md section 2). The attacker never guesses: with no complete record it
fails. Given the compromised set the outcome is deterministic, so counts over
seeded draws are reproducible even though the key bytes are fresh each run.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from ..network import Network
from .combine import combine
from .material import KeyMaterial
from .relay import RelayResult


def exposed_nodes(network: Network, route) -> list:
    """Nodes whose compromise can matter: every relay of every path and every
    interior segment node, never the request's ends; in the network's node order."""
    ends = {route.source, route.destination}
    nodes = {v for seg in route.segments for path in seg.paths for v in path[1:-1]}
    nodes.update(route.segment_nodes[1:-1])
    nodes -= ends
    index = network.arrays.index
    return sorted(nodes, key=index.__getitem__)


def draw_compromised(network: Network, nodes: list, trials: int, seed: int) -> np.ndarray:
    """Compromise states, ``(trials, len(nodes))`` booleans, seeded.

    Node ``v`` is compromised with probability ``1 - p(v)`` independently:
    ``rng.random() >= p(v)`` with ``rng = numpy.random.default_rng(seed)``.

    >>> from qkdseg import example_network
    >>> net = example_network()
    >>> a = draw_compromised(net, [1, 2, 3], 1000, seed=5)
    >>> a.shape, bool(a[:, 2].any()), (a == draw_compromised(net, [1, 2, 3], 1000, seed=5)).all()
    ((1000, 3), False, np.True_)
    """
    p = network.arrays.p[network.indices_of(nodes)] if nodes else np.zeros(0)
    rng = np.random.default_rng(seed)
    return rng.random((trials, len(nodes))) >= p


@dataclass(frozen=True)
class AttackOutcome:
    """The attacker's result against every global key of every plan of one run.

    ``recovered[plan][g]`` is ``True`` when the attacker's recomputed key
    equals the true one, byte for byte.
    """

    compromised: tuple
    recovered: tuple[tuple[bool, ...], ...]

    def secret(self, plan: int = 0) -> tuple[bool, ...]:
        return tuple(not r for r in self.recovered[plan])


def attack(result: RelayResult, compromised: Iterable[Hashable]) -> AttackOutcome:
    """Try to recompute every global key from what ``compromised`` nodes saw.

    Examples
    --------
    >>> from qkdseg import example_network, route
    >>> from qkdseg.keys import KeyStore, relay
    >>> net = example_network()
    >>> res = relay(route(net, 0, 7, block_bits=64), KeyStore(net))
    >>> attack(res, []).recovered, attack(res, [3]).recovered, attack(res, [1]).recovered, attack(res, [1, 2]).recovered
    (((False,),), ((True,),), ((False,),), ((True,),))
    """
    comp = tuple(compromised)
    pieces: dict = {}
    seg_keys: dict = {}
    glob: dict = {}
    for v in comp:
        view = result.views.get(v)
        if view is None:
            continue
        pieces.update(view.pieces)
        seg_keys.update(view.segment_keys)
        glob.update(view.global_keys)
    recovered = []
    for pi, outcome in enumerate(result.plans):
        row = []
        for g, (key, planned) in enumerate(zip(outcome.keys, outcome.plan.keys)):
            guess: KeyMaterial | None = glob.get((pi, g))
            if guess is None:
                for j, idx in enumerate(planned.parts):
                    s = seg_keys.get((pi, g, j))
                    if s is None and all((j, i) in pieces for i in idx):
                        s = combine([pieces[(j, i)] for i in idx], planned.computational)
                    if s is not None:
                        guess = result.transcript[(pi, g, j)] ^ s
                        break
            row.append(guess is not None and guess == key.source_key)
        recovered.append(tuple(row))
    return AttackOutcome(comp, tuple(recovered))
