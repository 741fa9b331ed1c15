"""Networks read from records (files, large generators), validated with array operations."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .arrays import arrays_from_edges
from .model import Network, NetworkRecords
from .values import DEFAULT_POOL_BITS, MAX_POOL_BITS, check_probability


def _column(records: Sequence[Mapping], key: str, default: Any, allowed: set) -> list | None:
    col = [r.get(key, default) for r in records]
    return col if set(map(type, col)) <= allowed else None


def _float_column(col: list) -> tuple[np.ndarray, np.ndarray] | None:
    """Values (NaN where None) and the None mask; ``None`` if a value is NaN or infinite."""
    try:
        arr = np.array(col, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        return None
    missing = np.isnan(arr)
    # Every None became NaN; any other NaN came from the data.
    if int(missing.sum()) != col.count(None) or np.isinf(arr).any():
        return None
    return arr, missing


def network_from_records(
    node_ids: Sequence[Hashable],
    index: Mapping[Hashable, int],
    node_attrs: Sequence[Mapping[str, Any]],
    link_u: np.ndarray,
    link_v: np.ndarray,
    link_attrs: Sequence[Mapping[str, Any]],
    *,
    graph_attrs: Mapping[str, Any],
    name: str,
    default_p: float | None = None,
    default_pool_bits: int = DEFAULT_POOL_BITS,
) -> "Network | None":
    """Validate records with array operations and build the network from them.

    The fast path for large files and generators. ``node_ids`` are distinct
    and ``index`` maps them to ``0..n-1``; ``link_u, link_v`` are the links'
    end indices in file order. Returns ``None`` when any value is not of the
    plain kinds this path handles (booleans for ``trusted``, numbers for
    ``p``, ``pool_bits``, ``rate_bps`` and ``length_km``) or breaks a rule
    (a self-loop, a duplicate link, a value out of range): the caller then
    builds the network with :class:`Network`, which accepts the same
    networks and names the fault. The result equals that network: same node
    and link order, same arrays, same graph.
    """
    if default_p is not None:
        default_p = check_probability(default_p, "default_p")
    number = {int, float}
    t_col = _column(node_attrs, "trusted", False, {bool})
    p_col = _column(node_attrs, "p", None, number | {type(None)})
    pool_col = _column(link_attrs, "pool_bits", default_pool_bits, number)
    if t_col is None or p_col is None or pool_col is None:
        return None
    trusted = np.array(t_col, dtype=bool)
    got = _float_column(p_col)
    if got is None:
        return None
    p, missing = got
    p[missing & trusted] = 1.0
    if (missing & ~trusted).any():
        if default_p is None:
            return None
        p[missing & ~trusted] = float(default_p)
    if not np.all((p >= 0.0) & (p <= 1.0)):
        return None
    got = _float_column(pool_col)
    if got is None or got[1].any():
        return None
    pool_f = got[0]
    if not np.all((pool_f >= 0) & (pool_f <= MAX_POOL_BITS) & (pool_f == np.floor(pool_f))):
        return None
    length = None
    for field in ("rate_bps", "length_km"):
        col = _column(link_attrs, field, None, number | {type(None)})
        got = None if col is None else _float_column(col)
        if got is None or (got[0] < 0).any():
            return None
        if field == "length_km":
            length = got[0]
    n = len(node_ids)
    lo = np.minimum(link_u, link_v).astype(np.int64)
    hi = np.maximum(link_u, link_v).astype(np.int64)
    keys = np.sort(lo * n + hi)
    if (lo == hi).any() or (keys[1:] == keys[:-1]).any():
        return None
    # networkx's edge order: by the earlier end in node order, then file order.
    order = np.argsort(lo, kind="stable")
    arrays = arrays_from_edges(
        lo[order], hi[order], p, trusted, pool_f.astype(np.int64)[order], length[order],
        node_ids=tuple(node_ids), index=index,
    )
    order_l = order.tolist()
    records = NetworkRecords(dict(graph_attrs), node_attrs, [link_attrs[k] for k in order_l])
    return Network.from_records(records, arrays, name=name)
