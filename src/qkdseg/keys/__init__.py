"""Key material, link key pools, the relay engine and the adversary.

Layers (STYLE.md): the network model and the pure routing, security and
reconstruction functions below; this package holds the state that changes
(key pools) and the engine that moves real bytes; the CLI sits above.

- :mod:`.material`: :class:`KeyMaterial`, bytes with a masked ``repr``.
- :mod:`.pools`: :class:`LinkKeyPool` (both ends' bytes, QKDNetSim states)
  and :class:`KeyStore` (one pool per link, atomic :meth:`KeyStore.reserve`).
- :mod:`.combine`: pieces -> segment key (XOR, or HKDF for ``reuse``).
- :mod:`.relay`: :func:`relay`, a route plus a reconstruction plan, executed.
- :mod:`.adversary`: seeded compromised sets; :func:`attack` recomputes keys.
- :mod:`.emulate`: :func:`emulate`, N trials -> the ``qkdseg emulate`` JSON.
- :mod:`.levels`: :class:`LinkLevels`, pool levels over time as arrays (refill, debit).

docs/keys.md describes the protocol and the JSON.
"""

from .adversary import AttackOutcome, attack, draw_compromised, exposed_nodes
from .combine import combine
from .emulate import DEFAULT_BLOCK_BITS, emulate
from .levels import LinkLevels
from .material import KeyMaterial, check_block_bits
from .pools import KeyMaterialShort, KeyStore, LinkKeyPool, LinkPads, PoolState
from .relay import KeyOutcome, NodeView, Plan, PlannedKey, PlanOutcome, RelayResult, relay

__all__ = [
    "AttackOutcome",
    "DEFAULT_BLOCK_BITS",
    "KeyMaterial",
    "KeyMaterialShort",
    "KeyOutcome",
    "KeyStore",
    "LinkKeyPool",
    "LinkLevels",
    "LinkPads",
    "NodeView",
    "Plan",
    "PlanOutcome",
    "PlannedKey",
    "PoolState",
    "RelayResult",
    "attack",
    "check_block_bits",
    "combine",
    "draw_compromised",
    "emulate",
    "exposed_nodes",
    "relay",
]
