"""One registry, ``name -> scheme``, used by the API, the CLI and the sweeps.

A scheme is a pure function::

    scheme(p, segments, chain, epsilon, block_bits, **options) -> Reconstruction

registered with :func:`register`, which records its one-line description and
its keyword options. Adding a scheme is one module plus one ``@register``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidRequest, UnknownAlgorithm
from .result import Reconstruction

#: Name -> scheme function, in registration order.
SCHEMES: dict[str, Callable[..., Reconstruction]] = {}

#: Name -> one line for ``qkdseg algorithms``.
SCHEME_DESCRIPTIONS: dict[str, str] = {}

#: Name -> {option: description} (keyword options of the scheme functions).
SCHEME_OPTIONS: dict[str, dict[str, str]] = {}


def register(name: str, description: str, options: dict[str, str] | None = None):
    """Decorator adding a scheme function to :data:`SCHEMES`."""

    def wrap(func: Callable[..., Reconstruction]) -> Callable[..., Reconstruction]:
        SCHEMES[name] = func
        SCHEME_DESCRIPTIONS[name] = description
        SCHEME_OPTIONS[name] = dict(options or {})
        return func

    return wrap


def reconstruct(name: str, p, segments, chain=(), epsilon: float = 0.0, block_bits: int = 0, **options) -> Reconstruction:
    """Run the scheme ``name`` (a key of :data:`SCHEMES`) with its options."""
    try:
        func = SCHEMES[name]
    except KeyError:
        raise UnknownAlgorithm(f"unknown reconstruction scheme {name!r} (known: {', '.join(SCHEMES)})") from None
    for key in options:
        if key not in SCHEME_OPTIONS[name]:
            allowed = ", ".join(sorted(SCHEME_OPTIONS[name])) or "none"
            raise InvalidRequest(f"reconstruction {name!r} has no option {key!r} (options: {allowed})")
    return func(p, segments, chain, epsilon, block_bits, **options)
