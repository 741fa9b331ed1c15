"""Prometheus metrics, ``/healthz`` and ``/readyz`` of the servers (docs/deploy.md, "Metrics" and "Health").

One :class:`Metrics` per running service, each with its own
:class:`prometheus_client.CollectorRegistry` (never the global one, so
several services in one process do not clash). The key service's counters
are kept from the same audited events as the audit log (the service's
``observers`` hook, called after each commit), so a scrape and the audit log
agree. Values that are read at scrape time (link levels, the database's
size) come from a collector with callables the server gives.

No label holds key material or a key id: labels are reason codes, endpoint
names, link names ``"u-v"`` (node ids), neighbour node ids, pool states and
stocked SAE pairs ``"MASTER:SLAVE"`` (configured SAE ids).

This module imports only ``prometheus_client`` and Starlette (a network node
imports it; it must stay light).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: The endpoint label of a request (ETSI 014's three, the network's relay and control APIs, the rest).
ENDPOINTS = ("status", "enc_keys", "dec_keys", "relay", "control", "other")
#: The pool states a link can be in (qkdseg.keys.levels.STATES).
POOL_STATES = ("READY", "WARNING", "CHARGING", "EMPTY")
#: Per stocked pair (:meth:`qkdseg.server.stock.Stock.snapshot`'s fields): (metric, help, counter or gauge).
STOCK_METRICS = (
    ("keys", "qkdseg_stock_keys", "Keys in the pair's stock now (at a slave's node: the copies it holds).", False),
    ("target", "qkdseg_stock_target_keys", "What the pair's stock is refilled up to.", False),
    ("hits", "qkdseg_stock_hits", "Requests served from the stock whole.", True),
    ("misses", "qkdseg_stock_misses", "Requests of the stock's size and level it could not cover whole.", True),
    ("keys_served", "qkdseg_stock_keys_served", "Keys issued from the stock.", True),
    ("refill_runs", "qkdseg_stock_refill_runs", "Refill runs that added keys.", True),
    ("refill_failures", "qkdseg_stock_refill_failures", "Refill runs that failed or added none.", True),
    ("keys_refilled", "qkdseg_stock_keys_refilled", "Keys added by refill runs.", True),
    ("expired_unused", "qkdseg_stock_keys_expired_unused", "Stocked keys deleted after key_ttl_s, never issued.",
     True),
    ("dropped_one_end", "qkdseg_stock_keys_dropped_one_end",
     "Spare keys of the pair dropped because the other end does not hold them (after a crash).", True),
)
#: Relay message outcomes counted per neighbour.
RELAY_OUTCOMES = ("sent", "acknowledged", "failed", "voided")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def endpoint_of(path: str) -> str:
    """The ``endpoint`` label of a request path (a bounded set: no path text goes into a label).

    >>> endpoint_of("/api/v1/keys/B/enc_keys"), endpoint_of("/relay/v1/ack"), endpoint_of("/x/../dec_keys")
    ('enc_keys', 'relay', 'other')
    """
    if path.startswith("/api/v1/keys/"):
        last = path.rsplit("/", 1)[-1]
        if last in ("status", "enc_keys", "dec_keys") and path.count("/") == 5:
            return last
        return "other"
    if path.startswith("/relay/"):
        return "relay"
    if path.startswith("/control/"):
        return "control"
    return "other"


class _Scraped(Collector):
    """Families computed at scrape time from the server's callables."""

    def __init__(self, links: Callable[[], Iterable[tuple]] | None, gauges: dict[str, tuple[str, Callable]],
                 stocks: Callable[[], dict] | None = None) -> None:
        self.links = links
        self.gauges = gauges
        self.stocks = stocks

    def describe(self):
        return []  # computed at collect time only (no duplicate-name check against the static metrics is needed)

    def collect(self):
        for name, (doc, func) in self.gauges.items():
            value = func()
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
        if self.stocks is not None:
            yield from self._stock_families(self.stocks())
        if self.links is None:
            return
        level = GaugeMetricFamily("qkdseg_link_level_bits", "Key bits in the link's pool now.", labels=["link"])
        cap = GaugeMetricFamily("qkdseg_link_capacity_bits", "The link pool's capacity, bits.", labels=["link"])
        used = CounterMetricFamily("qkdseg_link_consumed_bits", "Pad bits ever taken from the link "
                                   "(the consumed offset; it only grows, across restarts too).", labels=["link"])
        state = GaugeMetricFamily("qkdseg_link_state", "1 for the link's pool state now, 0 for the others.",
                                  labels=["link", "state"])
        for name, lv, capacity, consumed, st in self.links():  # None: not known here (a node knows no level)
            if lv is not None:
                level.add_metric([name], float(lv))
            if capacity is not None:
                cap.add_metric([name], float(capacity))
            used.add_metric([name], float(consumed))
            if st is not None:
                for s in POOL_STATES:
                    state.add_metric([name, s], 1.0 if s == st else 0.0)
        yield from (level, cap, used, state)


    @staticmethod
    def _stock_families(stocks: dict):
        for field, name, doc, counter in STOCK_METRICS:
            fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["pair"])
            for pair, s in stocks.items():
                fam.add_metric([pair], float(s[field]))
            yield fam


class Metrics:
    """The metrics of one server (``service``: ``kms``, ``node`` or ``controller``).

    ``links`` (a callable giving ``(link, level_bits, capacity_bits,
    consumed_bits, state)`` tuples), ``gauges`` (``{name: (help,
    callable)}``) and ``stocks`` (the key stocks' snapshot, :data:`STOCK_METRICS`) are read at every scrape.
    """

    def __init__(self, service: str, version: str = "", *, links: Callable | None = None,
                 gauges: dict[str, tuple[str, Callable]] | None = None, stocks: Callable[[], dict] | None = None
                 ) -> None:
        r = self.registry = CollectorRegistry()
        self.service = service
        self.started = time.time()
        info = Gauge("qkdseg_build_info", "Always 1; the labels name the qkdseg version and the server kind.",
                     ["version", "service"], registry=r)
        info.labels(version=version, service=service).set(1)
        self.requests = Histogram("qkdseg_request_duration_seconds", "Time from a request's arrival to the end of "
                                  "its answer, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.deliveries = Counter("qkdseg_deliveries", "Successful enc_keys answers (audit 'issue' records).",
                                  registry=r)
        self.keys_issued = Counter("qkdseg_keys_issued", "Keys issued to masters by enc_keys.", registry=r)
        self.bits_issued = Counter("qkdseg_key_bits_issued", "Key bits issued to masters by enc_keys.", registry=r)
        self.fetches = Counter("qkdseg_fetches", "Successful dec_keys answers (audit 'deliver' records).", registry=r)
        self.keys_fetched = Counter("qkdseg_keys_fetched", "Keys fetched by slaves with dec_keys.", registry=r)
        self.bits_fetched = Counter("qkdseg_key_bits_fetched", "Key bits fetched by slaves with dec_keys.", registry=r)
        self.refusals = Counter("qkdseg_refusals", "Refused requests (audit 'deny' records), by reason code.",
                                ["reason"], registry=r)
        self.expiries = Counter("qkdseg_expiries", "Expiry passes that deleted keys (audit 'expire' records).",
                                registry=r)
        self.keys_expired = Counter("qkdseg_keys_expired", "Keys deleted after key_ttl_s, by kind (issued, spare).",
                                    ["kind"], registry=r)
        self.commit_seconds = Histogram("qkdseg_store_commit_duration_seconds", "Time of one store transaction "
                                        "(a group commit).", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("qkdseg_store_commit_batch_size", "Requests' change sets merged into one "
                                    "transaction (group commit).", buckets=BATCH_BUCKETS, registry=r)
        self.audit_records = Counter("qkdseg_audit_records", "Audit records committed by this process.", registry=r)
        self.relay_messages = self.plans = self.leader = None
        if service == "node":
            self.relay_messages = Counter("qkdseg_relay_messages", "Relay messages to a neighbour node, by outcome: "
                                          "sent, acknowledged, failed, voided.", ["neighbour", "outcome"], registry=r)
        if service == "controller":
            self.plans = Counter("qkdseg_plans", "Relay plans the controller made, by outcome (ok, refused).",
                                 ["outcome"], registry=r)
            self.leader = Gauge("qkdseg_controller_leader", "1 while this controller is the leader, else 0.",
                                registry=r)
        self.store_failures = Counter("qkdseg_store_write_failures", "Writes of the store that failed, by step: "
                                      "transaction (rolled back), audit_file (the copy to audit.jsonl after a "
                                      "commit), relay_db (a node's relay store).", ["step"], registry=r)
        for step in ("transaction", "audit_file", "relay_db"):
            self.store_failures.labels(step=step)
        self.store_ok = Gauge("qkdseg_store_ok", "1 while every write step of the store works, 0 while one fails "
                              "(the server exits after --exit-after-unready seconds of 0).", registry=r)
        self.store_ok.set(1)
        all_gauges = {"qkdseg_uptime_seconds": ("Seconds since this server started.",
                                                lambda: time.time() - self.started)}
        all_gauges.update(gauges or {})
        r.register(_Scraped(links, all_gauges, stocks))

    def watch_store(self, health) -> None:
        """Count ``health``'s write failures (:class:`.storehealth.StoreHealth`) and show whether it writes now."""
        def seen(step: str, failed: bool) -> None:
            if failed:
                self.store_failures.labels(step=step).inc()

        health.listeners.append(seen)
        self.store_ok.set_function(lambda: 1.0 if health.ok else 0.0)

    # -- the key service's audited events ---------------------------------------------
    def observe(self, event: dict) -> None:
        """Count one committed audit record (:meth:`observe_commit` calls it)."""
        kind = event.get("event")
        if kind == "issue":
            n = len(event.get("key_ids", ()))
            self.deliveries.inc()
            self.keys_issued.inc(n)
            self.bits_issued.inc(n * int(event.get("size") or 0))
        elif kind == "deliver":
            n = len(event.get("key_ids", ()))
            self.fetches.inc()
            self.keys_fetched.inc(n)
            self.bits_fetched.inc(n * int(event.get("size") or 0))
        elif kind == "deny":
            self.refusals.labels(reason=str(event.get("reason", "refused"))).inc()
        elif kind == "expire":
            self.expiries.inc()
            self.keys_expired.labels(kind="issued").inc(len(event.get("key_ids", ())))
            self.keys_expired.labels(kind="spare").inc(int(event.get("spare_keys", 0)))

    def observe_commit(self, seconds: float, batches: int, records: list[dict]) -> None:
        """:class:`~.store.GroupCommit`'s hook: one transaction of ``batches`` change sets with these audit records.

        Every counter of deliveries, fetches, refusals and expiries is counted here, from the records just
        committed to the audit chain: the metrics count what the audit log holds.
        """
        self.commit_seconds.observe(seconds)
        self.batch_size.observe(batches)
        if records:
            self.audit_records.inc(len(records))
            for rec in records:
                self.observe(rec)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def instrument(app, metrics: Metrics | None, logger_name: str = "qkdseg.request"):
    """``app`` (ASGI) with a request id and a timing for every HTTP request.

    The id (:func:`.logs.new_request_id`) is set in :data:`.logs.REQUEST_ID` while the request is answered (the
    audit records and log lines it writes carry it) and sent back in the ``X-Request-ID`` header; the time from
    arrival to the end of the answer goes into ``metrics`` by endpoint, and one INFO line is logged per request
    (method, path without the query, status, milliseconds).
    """
    import logging

    from .logs import REQUEST_ID, new_request_id

    log = logging.getLogger(logger_name)

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = new_request_id()
        token = REQUEST_ID.set(rid)
        status = [500]
        header = (b"x-request-id", rid.encode())

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            dt = time.perf_counter() - t0
            path = str(scope.get("path", ""))[:200]
            endpoint = endpoint_of(path)
            if metrics is not None:
                metrics.requests.labels(endpoint=endpoint).observe(dt)
            if log.isEnabledFor(logging.INFO):
                method = str(scope.get("method", ""))[:16]
                log.info("%s %s -> %d in %.1f ms", method, path, status[0], dt * 1000,
                         extra={"method": method, "path": path, "status": status[0], "endpoint": endpoint,
                                "duration_ms": round(dt * 1000, 3)})
            REQUEST_ID.reset(token)

    return wrapped


# -- /metrics, /healthz, /readyz --------------------------------------------------------
def ops_routes(metrics: Metrics, health: Callable[[], dict], ready: Callable[[], dict]) -> list:
    """Starlette routes ``/metrics`` (text exposition), ``/healthz`` and ``/readyz`` (JSON; 503 when not ready)."""
    from starlette.responses import Response
    from starlette.routing import Route

    def _json(obj: dict, status: int = 200) -> Response:
        return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False), status_code=status,
                        media_type="application/json", headers={"cache-control": "no-store"})

    async def metrics_page(request):
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})

    async def healthz(request):
        return _json(health())

    async def readyz(request):
        body = ready()
        if inspect.isawaitable(body):  # a node asks its controller
            body = await body
        return _json(body, 200 if body.get("ready") else 503)

    return [Route("/metrics", metrics_page, methods=["GET"]), Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"])]


def ops_app(metrics: Metrics, health: Callable[[], dict], ready: Callable[[], dict]):
    """A plain Starlette application serving only :func:`ops_routes` (``--metrics-port``)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    async def on_http_error(request, exc):
        return Response(json.dumps({"message": str(exc.detail)}), status_code=exc.status_code,
                        media_type="application/json")

    return Starlette(routes=ops_routes(metrics, health, ready), exception_handlers={HTTPException: on_http_error})


def health_body(service: str, metrics: Metrics, **extra) -> dict:
    """``/healthz``'s body: the process answers (it is alive)."""
    return {"alive": True, "service": service, "uptime_s": round(time.time() - metrics.started, 3), **extra}


def ready_body(service: str, checks: dict[str, tuple[bool, str]]) -> dict:
    """``/readyz``'s body from ``{check: (ok, detail)}``: ready when every check is ok."""
    out = {name: {"ok": bool(ok), "detail": detail} for name, (ok, detail) in checks.items()}
    return {"ready": all(c["ok"] for c in out.values()), "service": service, "checks": out}
