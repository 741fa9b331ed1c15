"""One entry point for a CLI argument: a path, a built-in name, or a topohub key."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import TopologyFileError
from ..network import Network, check_probability
from .example import example_network
from .files import read_network
from .topohub import load_topohub

#: Names accepted by :func:`load` besides files and topohub keys.
BUILTIN = ("example",)

_QUERY_TYPES = {"trusted": float, "p": float, "seed": int, "placement": str, "pool_bits": int, "trusted_p": float}


def load(spec: str | Path, *, default_p: float | None = None) -> Network:
    """Load a network from a CLI-style spec.

    ``spec`` is a file path, a built-in name (``example``) or
    ``topohub:GROUP/NAME`` with optional query parameters, e.g.
    ``topohub:topozoo/Abilene?trusted=3&p=0.9&seed=2&placement=degree``.
    """
    if default_p is not None:
        check_probability(default_p, "default_p")
    if not isinstance(spec, (str, Path)):
        raise TopologyFileError(f"load: expected a file path, a built-in name or a topohub key, got {type(spec).__name__}")
    text = str(spec)
    if not text.strip():
        raise TopologyFileError("empty network name (give a file, 'example' or 'topohub:GROUP/NAME')")
    if text in BUILTIN:
        return example_network()
    if text.startswith("topohub:"):
        key, _, query = text.partition("?")
        kwargs: dict[str, Any] = {}
        for field, value in parse_qsl(query, keep_blank_values=True):
            if field in kwargs:
                raise TopologyFileError(f"{text}: parameter {field!r} is given twice")
            if field not in _QUERY_TYPES:
                raise TopologyFileError(f"{text}: unknown parameter {field!r} (use {', '.join(_QUERY_TYPES)})")
            try:
                val = _QUERY_TYPES[field](value)
            except ValueError:
                raise TopologyFileError(f"{text}: parameter {field}={value!r} is not a valid {_QUERY_TYPES[field].__name__}") from None
            if field == "trusted" and float(val).is_integer() and val >= 1:
                val = int(val)
            kwargs[field] = val
        return load_topohub(key, **kwargs)
    return read_network(text, default_p=default_p)
