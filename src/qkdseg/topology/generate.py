"""``qkdseg topology generate``: one entry point that picks the generator by size.

The Waxman model at any size (docs/topologies.md, "Generated networks"):

- up to :data:`DENSE_MAX_NODES` nodes, :func:`~qkdseg.topology.waxman`
  (exactly ``n`` nodes, redrawn until connected) with the distance decay
  ``alpha`` scaled with ``n`` by :func:`scaled_alpha`, so that the mean
  degree stays near the paper's 100-node networks (about 6.6) instead of
  falling apart at 20 nodes or growing with ``n``;
- above it, :func:`~qkdseg.topology.waxman_large` (KD-tree, the decay set
  for a mean degree of 6.6, the largest connected component kept: a few
  nodes fewer than asked for).

An explicit ``alpha`` always selects the dense generator, an explicit
``mean_degree`` the scalable one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import InvalidRequest, NetworkError
from ..network import DEFAULT_POOL_BITS, Network
from .waxman import WAXMAN_MEAN_DEGREE, waxman
from .waxman_large import waxman_large

#: Largest size the automatic choice gives to the dense, all-pairs generator.
DENSE_MAX_NODES = 200

#: ``alpha`` of the paper's 100-node networks, and the exponent of its scaling.
ALPHA_AT_100 = 0.15
ALPHA_EXPONENT = 0.7


def scaled_alpha(n: int) -> float:
    """``0.15 * (100 / n) ** 0.7``: the dense generator's decay for ``n`` nodes.

    Exactly 0.15 at ``n = 100``. Measured mean degrees (seeds 0-3): about
    4 at 20 nodes, 5.5 at 50, 6.8 at 100, 7 at 200 (docs/topologies.md).

    >>> scaled_alpha(100)
    0.15
    """
    return ALPHA_AT_100 if n == 100 else ALPHA_AT_100 * (100.0 / n) ** ALPHA_EXPONENT


def generate_waxman(
    n: int = 100,
    *,
    trusted: int | None = None,
    p: float = 0.8,
    pool_bits: int = DEFAULT_POOL_BITS,
    trusted_p: float = 1.0,
    alpha: float | None = None,
    beta: float = 0.5,
    mean_degree: float | None = None,
    seed: int = 0,
) -> Network:
    """A Waxman network of about ``n`` nodes, from the generator that suits ``n``.

    Parameters
    ----------
    n : int
        Nodes (the scalable generator keeps the largest component: a few fewer).
    trusted : int, optional
        Trusted relays (default: a tenth of the nodes).
    alpha : float, optional
        Dense generator's distance decay (default :func:`scaled_alpha`).
    mean_degree : float, optional
        Scalable generator's target mean degree (default 6.6).
    Others as for :func:`~qkdseg.topology.waxman`.

    Examples
    --------
    >>> generate_waxman(20, seed=1).n_nodes, generate_waxman(500, seed=1).n_nodes <= 500
    (20, True)
    """
    if alpha is not None and mean_degree is not None:
        raise InvalidRequest("give alpha (the dense generator) or mean_degree (the scalable one), not both")
    dense = alpha is not None or (mean_degree is None and isinstance(n, int) and n <= DENSE_MAX_NODES)
    if dense:
        if trusted is None and isinstance(n, int):
            trusted = n // 10
        a = alpha if alpha is not None else scaled_alpha(n) if isinstance(n, int) and n > 0 else ALPHA_AT_100
        return waxman(n, trusted=trusted, p=p, pool_bits=pool_bits, trusted_p=trusted_p, alpha=a, beta=beta, seed=seed)
    return waxman_large(
        n, trusted=trusted, p=p, pool_bits=pool_bits, trusted_p=trusted_p, beta=beta,
        mean_degree=WAXMAN_MEAN_DEGREE if mean_degree is None else mean_degree, seed=seed,
    )


#: Name -> generator, for ``qkdseg topology generate NAME``.
GENERATORS: dict[str, Callable[..., Network]] = {"waxman": generate_waxman}


def generate(kind: str, n: int, **options) -> Network:
    """Run the generator ``kind`` (a key of :data:`GENERATORS`)."""
    try:
        func = GENERATORS[kind]
    except (KeyError, TypeError):
        raise NetworkError(f"unknown generator {kind!r} (known: {', '.join(GENERATORS)})") from None
    return func(n, **options)
