"""``qkdseg emulate``: many trials of one request on real key material.

Each trial starts from full link pools (a fresh :class:`KeyStore`), relays
the route's pieces, builds and relays the global keys (:func:`relay`),
checks that both ends agree byte for byte, draws a compromised set and lets
the attacker try to recompute every global key (:func:`attack`). Over the
trials the fraction of keys that stayed secret is compared with the exact
security.

The top-level numbers are about the ``xor-all`` key, the route's end-to-end
security (docs/model.md section 6). With ``epsilon`` the route's reconstruction
plan is executed as well, over the same delivered pieces and the same
compromised set, and every one of its global keys gets its own empirical and
exact secrecy. The two plans are alternatives measured on one delivery, not
keys meant to be used together.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from ..errors import InvalidRequest
from ..network import Network
from ..security import wilson_interval
from .adversary import attack, draw_compromised, exposed_nodes
from .material import check_block_bits
from .pools import KeyStore
from .relay import Plan, relay

#: Default key piece size of ``emulate``, bits.
DEFAULT_BLOCK_BITS = 256


#: Most trials one call runs (each draws a compromised set of the route's relays).
MAX_TRIALS = 10_000_000


def _rate(secret: int, trials: int, exact: float) -> dict[str, Any]:
    lo, hi = wilson_interval(secret, trials)
    return {
        "empirical_secrecy": secret / trials,
        "ci95": [lo, hi],
        "standard_error": math.sqrt(exact * (1.0 - exact) / trials),
        "exact_security": exact,
    }


def emulate(
    network: Network,
    source: Hashable,
    destination: Hashable,
    algorithm: str = "smr",
    *,
    trials: int = 1000,
    block_bits: int = DEFAULT_BLOCK_BITS,
    seed: int = 0,
    epsilon: float | None = None,
    reconstruction: str | None = None,
    record_compromised: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Emulate ``trials`` runs of one request and return the JSON object.

    Parameters
    ----------
    network : Network
    source, destination : node id
    algorithm : str
        Routing algorithm (``qkdseg.ALGORITHMS``).
    trials : int
        Number of runs, each from full pools with a fresh compromised set.
    block_bits : int
        Key piece size B, a positive multiple of 8 (default 256).
    seed : int
        Seed of the compromised-set draws (``numpy.random.default_rng``).
        The counts in the result depend only on it, not on the key bytes.
    epsilon, reconstruction : optional
        Also execute the route's reconstruction plan at level ``epsilon``
        (scheme default ``paper``), see :func:`qkdseg.route`.
    record_compromised : bool
        Include every trial's compromised set (node ids) in the result.
    options : dict, optional
        Routing options, e.g. ``{"max_paths": 2}`` or MSP's ``{"seed": 3}``
        (that seed draws MSP's walks; ``seed`` above draws compromised sets).

    Returns
    -------
    dict
        ``trials``, ``keys_identical`` (trials whose ends agree on every key),
        ``empirical_secrecy``, ``ci95`` (Wilson), ``standard_error`` (of the
        exact value), ``exact_security`` (the route's), ``bits_consumed``
        (bits debited over all trials, ``trials * route.consumed_bits``), the
        ``route`` JSON, ``seed``, and with ``epsilon`` ``global_keys``, per
        key its empirical and exact secrecy.

    Examples
    --------
    >>> from qkdseg import example_network
    >>> out = emulate(example_network(), 0, 7, trials=200, seed=1)
    >>> out["keys_identical"], out["bits_consumed"] == 200 * out["route"]["consumed_bits"]
    (200, True)
    >>> abs(out["empirical_secrecy"] - out["exact_security"]) < 4 * out["standard_error"]
    True
    """
    from ..api import route as do_route

    B = check_block_bits(block_bits)
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise InvalidRequest(f"trials={trials!r} must be a positive integer, at most {MAX_TRIALS}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidRequest(f"seed={seed!r} must be a non-negative integer")
    r = do_route(
        network, source, destination, algorithm, block_bits=B, epsilon=epsilon, reconstruction=reconstruction, **(options or {})
    )
    out: dict[str, Any] = {
        "network": network.name,
        "source": source,
        "destination": destination,
        "algorithm": algorithm,
        "block_bits": B,
        "trials": trials,
        "seed": seed,
        "blocked": r.blocked,
    }
    plans: list[Plan] = []
    if not r.blocked:
        plans.append(Plan.xor_all(r))
        if r.reconstruction is not None:
            plans.append(Plan.from_any(r.reconstruction, r))
    nodes = exposed_nodes(network, r) if not r.blocked else []
    states = draw_compromised(network, nodes, trials, seed)
    identical = 0
    bits = 0
    secret_top = 0
    n_plan_keys = len(plans[1].keys) if len(plans) > 1 else 0
    secret_keys = [0] * n_plan_keys
    identical_keys = [0] * n_plan_keys
    compromised_sets = []
    if not r.blocked:
        for t in range(trials):
            store = KeyStore(network)
            res = relay(r, store, plans)
            bits += res.bits_consumed
            identical += res.keys_identical
            comp = [v for v, c in zip(nodes, states[t]) if c]
            compromised_sets.append(comp)
            outcome = attack(res, comp)
            secret_top += outcome.secret(0)[0]
            if n_plan_keys:
                for g, ok in enumerate(outcome.secret(1)):
                    secret_keys[g] += ok
                for g, k in enumerate(res.plans[1].keys):
                    identical_keys[g] += k.identical
    exact = float(r.security)
    out.update(
        keys_identical=identical,
        secret_trials=secret_top,
        **_rate(secret_top, trials, exact),
        bits_consumed=bits,
        consumed_bits_per_trial=r.consumed_bits,
    )
    if r.reconstruction is not None:
        rec = r.reconstruction
        keys = []
        for g, key in enumerate(rec.global_keys):
            row = {"key": g, "bits": key.bits, "computational": key.computational}
            row.update(_rate(secret_keys[g], trials, float(key.security)) if not r.blocked else _rate(0, trials, 0.0))
            row["secret_trials"] = secret_keys[g]
            row["keys_identical"] = identical_keys[g]
            keys.append(row)
        out.update(epsilon=rec.epsilon, reconstruction=rec.scheme, global_keys=keys)
    out["route"] = r.to_dict()
    if record_compromised:
        out["exposed_nodes"] = nodes
        out["compromised"] = compromised_sets
    return out
