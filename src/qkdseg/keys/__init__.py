"""Key material, link key pools, the relay engine and the adversary.

Layers (STYLE.md): the network model and the pure routing, security and
reconstruction functions below; this package holds the state that changes
(key pools) and the engine that moves real bytes; the CLI sits above.

- :mod:`.material`: :class:`KeyMaterial`, bytes with a masked ``repr``.
- :mod:`.pools`: :class:`LinkKeyPool` (both ends' bytes, QKDNetSim states)
  and :class:`KeyStore` (one pool per link, atomic :meth:`KeyStore.reserve`).
- :mod:`.combine`: pieces -> segment key (XOR, or HKDF for ``reuse``).
- :mod:`.steps`: the relay as node-local steps (what a node does when a message arrives).
- :mod:`.relay`: :func:`relay`, a route plus a reconstruction plan, executed (the steps by direct calls).
- :mod:`.adversary`: seeded compromised sets; :func:`attack` recomputes keys.
- :mod:`.emulate`: :func:`emulate`, N trials -> the ``qkdseg emulate`` JSON.
- :mod:`.levels`: :class:`LinkLevels`, pool levels over time as arrays (refill, debit).

docs/keys.md describes the protocol and the JSON.
"""

import sys
import types

# Loaded on first use (PEP 562): a network node imports .steps and .material without the routing and
# security code behind .emulate and .adversary (docs/network.md).
_LAZY = {
    "AttackOutcome": "adversary", "attack": "adversary", "draw_compromised": "adversary",
    "exposed_nodes": "adversary", "combine": "combine", "DEFAULT_BLOCK_BITS": "emulate", "emulate": "emulate",
    "LinkLevels": "levels", "KeyMaterial": "material", "check_block_bits": "material",
    "KeyMaterialShort": "pools", "KeyStore": "pools", "LinkKeyPool": "pools", "LinkPads": "pools",
    "PoolState": "pools", "KeyOutcome": "relay", "NodeView": "relay", "Plan": "relay", "PlannedKey": "relay",
    "PlanOutcome": "relay", "RelayResult": "relay", "relay": "relay",
}


class _Package(types.ModuleType):
    """``qkdseg.keys.relay`` (and ``combine``, ``emulate``) stay the functions, as when they were imported eagerly:
    the import system sets a submodule as its package's attribute, and here the function of that name wins."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in ("relay", "combine", "emulate"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'qkdseg.keys' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


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
