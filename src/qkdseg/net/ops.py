"""Metrics and health of a network node and of the controller (docs/deploy.md, "Metrics" and "Health").

A node's and the controller's only listener is mutual TLS (ETSI 014, relay
and control by path and the caller certificate's role), which a Prometheus
server or a load balancer cannot easily present. So **[choice]** their
``/metrics``, ``/healthz`` and ``/readyz`` are served on a separate
plain-HTTP port bound to 127.0.0.1, ``--metrics-port PORT`` (none without
it), read on the host or through a local agent. Nothing there carries key
material or key ids.

A node must not import the routing kernels: this module imports
:mod:`qkdseg.kms.metrics` (prometheus_client, Starlette) and, for the
controller only, :mod:`qkdseg.kms.server` inside :func:`attach_controller`.
"""

from __future__ import annotations

import os

from ..server.metrics import Metrics, health_body, ready_body

#: The gauges a node exports beyond :class:`~qkdseg.kms.metrics.Metrics`' own (name: help).
NODE_GAUGES = {
    "qkdseg_keys_waiting": "Issued keys waiting for their slave's dec_keys.",
    "qkdseg_relay_requests": "Relay requests this node is taking part in now.",
    "qkdseg_ready": "1 when the store is open and the audit chain was checked at start, else 0 "
                    "(the controller's reachability is asked by /readyz only).",
}


def _version() -> str:
    from .. import __version__

    return __version__


def metrics_for(kind: str, *, links=None, gauges: dict | None = None, stocks=None) -> Metrics:
    """The metrics of a ``node`` or ``controller`` (``links``, gauge callables and ``stocks`` as :class:`Metrics`
    takes them)."""
    if kind == "node" and gauges is None:
        gauges = {name: (doc, lambda: 0) for name, doc in NODE_GAUGES.items()}
    return Metrics(kind, _version(), links=links if links is not None else (lambda: []), gauges=gauges,
                   stocks=stocks)


def _store_checks(store, committer) -> dict:
    from ..server.storehealth import store_check

    rep = getattr(store, "audit_at_start", None)
    return {
        "store": store_check(store, committer),
        "audit_chain": (rep is not None, "not checked" if rep is None else
                        f"checked at start: {rep.records} records"
                        + (f", {len(rep.problems)} problem(s) accepted" if rep.problems else " intact")),
    }


def attach_node(svc) -> tuple[Metrics, object, object]:
    """Hook metrics to a :class:`~.node.NodeService`; returns ``(metrics, health, ready)`` (the server's ``ops``)."""
    from .keystream import position
    from .layout import link_name

    def links():
        out = []
        for lk in svc.conf["links"]:
            name = link_name(*lk["link"])
            consumed = 8 * (position(svc.offsets.get((name, 0), 0)) + position(svc.offsets.get((name, 1), 0)))
            label = "-".join(str(x) for x in lk["link"])
            out.append((label, None, int(lk["pool_bits"]), consumed, None))
        return out

    def local_ok() -> bool:
        return all(ok for ok, _ in _store_checks(svc.store, svc.committer).values())

    gauges = {
        "qkdseg_keys_waiting": (NODE_GAUGES["qkdseg_keys_waiting"], lambda: len(svc.keys)),
        "qkdseg_relay_requests": (NODE_GAUGES["qkdseg_relay_requests"], lambda: len(svc.requests)),
        "qkdseg_ready": (NODE_GAUGES["qkdseg_ready"], lambda: 1.0 if local_ok() else 0.0),
    }
    m = metrics_for("node", links=links, gauges=gauges, stocks=None if svc.stock is None else svc.stock.snapshot)
    svc.committer.on_commit = m.observe_commit
    m.watch_store(svc.store.health)

    def on_relay(dst: str, outcomes: list[tuple[str, bool]]) -> None:
        c = m.relay_messages
        for kind, ok in outcomes:
            c.labels(neighbour=dst, outcome="sent").inc()
            c.labels(neighbour=dst, outcome="acknowledged" if ok else "failed").inc()
            if kind == "void":
                c.labels(neighbour=dst, outcome="voided").inc()

    svc.on_relay = on_relay

    def health():
        return health_body("node", m, node=str(svc.id), pid=os.getpid())

    async def ready():
        checks = _store_checks(svc.store, svc.committer)
        n = len(svc.links)
        pending = svc.seeds.pending() if svc.seeds is not None else []  # --link-seeds agree: not agreed yet
        checks["key_material"] = (n > len(pending), f"{n - len(pending)} link(s) with their key streams"
                                  + (f"; seeds not agreed yet: {', '.join(pending)}" if pending else ""))
        try:
            r = await svc._http().get(f"https://{svc.conf['controller']}/health", timeout=2.0)
            checks["controller"] = (r.status_code == 200, f"{svc.conf['controller']} answered {r.status_code}")
        except Exception as err:  # noqa: BLE001 -- unreachable: not ready (a certificate problem named, logged)
            from .tlsfail import report

            addr = svc.conf["controller"]
            checks["controller"] = (False, f"{addr} unreachable ({report(f'the controller ({addr})', err)})")
        return ready_body("node", checks)

    return m, health, ready


def attach_controller(ctl) -> tuple[Metrics, object, object]:
    """Hook metrics to a :class:`~.controller.Controller`; returns ``(metrics, health, ready)``."""
    from ..server.health import kms_ready, service_metrics

    def ready():
        if ctl.replica is None:
            return kms_ready(ctl.svc, "controller")
        # over etcd (docs/deploy.md, "Health"): the store has not failed, and it leads or knows who does
        rep, failed = ctl.replica.health(), ctl.svc.committer.failed
        return ready_body("controller", {
            "store": (failed is None, "etcd" if failed is None else f"failed ({type(failed).__name__}); restart"),
            "leader": (rep["leader"] or rep["leader_address"] is not None,
                       "leads" if rep["leader"] else f"stands by; the leader is {rep['leader_address'] or 'unknown'}"),
        })

    m = service_metrics(ctl.svc, "controller", ready=ready)
    # alone it leads while it runs; over etcd while it holds the lease (docs/deploy.md)
    m.leader.set_function(lambda: 1.0 if ctl.replica is None or ctl.replica.health()["leader"] else 0.0)
    plan = ctl.plan

    async def counted(*args, **kw):  # every plan asked of the controller, by outcome
        try:
            out = await plan(*args, **kw)
        except BaseException:
            m.plans.labels(outcome="refused").inc()
            raise
        m.plans.labels(outcome="ok").inc()
        return out

    ctl.plan = counted
    from prometheus_client import Counter, Gauge

    Gauge("qkdseg_suspect_nodes", "Nodes excluded from planning as suspect now (net/suspects.py).",
          registry=m.registry).set_function(lambda: float(len(ctl.suspects.until)))
    ctl.suspects.on_named = Counter("qkdseg_suspects_named", "Times a relay node was named suspect after "
                                    "--suspect-after failed runs.", registry=m.registry).inc

    def health():
        return health_body("controller", m, pid=os.getpid(), nodes_reported=len(ctl.reported))

    return m, health, ready
