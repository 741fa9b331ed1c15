"""Health, readiness and metrics of a key service's state (:class:`.core.ServiceState`: ``kms serve`` and the
network's controller)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np


def service_metrics(service, kind: str = "kms", ready=None):
    """The :class:`.metrics.Metrics` of ``service`` (``kind``: kms, or the network's controller), hooked to its group
    commit; ``ready``: its ``/readyz`` body (default :func:`kms_ready`), for the ``qkdseg_ready`` gauge."""
    ready = ready or (lambda: kms_ready(service, kind))
    from .. import __version__
    from ..keys.levels import READY, STATES, pool_states
    from .metrics import Metrics

    a = service.arrays
    names = [f"{a.node_ids[a.edge_u[k]]}-{a.node_ids[a.edge_v[k]]}" for k in range(a.n_links)]
    cap = service.levels.capacity
    ready_bits = np.ceil(cap * 0.5).astype(np.int64)  # the dashboard's thresholds (monitor.DEFAULT_READY_SHARE)
    empty_bits = service.cfg.key_size
    state = [np.full(a.n_links, READY, dtype=np.int8)]

    def links():
        service.refill(service.clock())
        lv = service.levels.level
        state[0] = pool_states(lv, ready_bits, empty_bits, state[0])
        consumed = service.levels.consumed
        return [(names[k], int(lv[k]), int(cap[k]), int(consumed[k]), STATES[int(state[0][k])])
                for k in range(a.n_links)]

    def db_bytes():
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(str(service.store.db_path) + suffix).stat().st_size
        return total

    gauges = {
        "qkdseg_store_database_bytes": ("Size of the SQLite database and its WAL file, bytes.", db_bytes),
        "qkdseg_audit_head_seq": ("Sequence number of the last audit record in the chain.",
                                  lambda: service.store.audit_seq),
        "qkdseg_keys_waiting": ("Issued keys waiting for their slave's dec_keys.", service.waiting_keys),
        "qkdseg_spare_keys": ("Relayed keys kept for later requests (not issued yet).",
                              service.spare_keys),
        "qkdseg_ready": ("1 when /readyz answers ready, else 0.", lambda: 1.0 if ready()["ready"] else 0.0),
    }
    stock = getattr(service, "stock", None)  # kms serve's key stocks (the controller holds none)
    m = Metrics(kind, __version__, links=links, gauges=gauges, stocks=None if stock is None else stock.snapshot)
    service.committer.on_commit = m.observe_commit
    if getattr(service.store, "health", None) is not None:
        m.watch_store(service.store.health)
    return m


def kms_ready(service, kind: str = "kms") -> dict:
    """``/readyz``: the store open and writable, the audit chain checked at start, a link holding a key's worth."""
    from .metrics import ready_body
    from .storehealth import store_check

    store = service.store
    rep = getattr(store, "audit_at_start", None)
    if rep is None:
        audit = (False, "not checked")
    elif rep.problems:
        audit = (True, f"checked at start: {rep.records} records, {len(rep.problems)} problem(s) accepted "
                       "(--accept-broken-audit, audited)")
    else:
        audit = (True, f"checked at start: {rep.records} records intact; head seq {store.audit_seq} now")
    service.refill(service.clock())
    size = service.cfg.key_size
    n = int((service.levels.level >= size).sum())
    return ready_body(kind, {
        "store": store_check(store, service.committer),
        "audit_chain": audit,
        "key_material": (n > 0, f"{n} of {service.arrays.n_links} links hold at least key_size={size} bits"),
    })


def kms_health(service, metrics) -> dict:
    import os

    from .metrics import health_body

    return health_body("kms", metrics, kme_id=service.cfg.kme_id, pid=os.getpid())
