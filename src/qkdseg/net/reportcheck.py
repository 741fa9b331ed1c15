"""The controller's check of a node's link report (issue 33): every number, every link, every event.

:func:`check_report` turns a report body into the rows the controller applies, or raises
:class:`~.wire.Problem`: 400 for a number or a shape out of bounds (never an exception in the handler), 403 for a
report about another node, a link the reporter does not end (or a ``link_id`` that does not name the link its
ends give), or an event about an SAE not attached to the reporter, 413 for more events than a node sends.
The controller audits every refusal (``"event": "report refused"``).
"""

from __future__ import annotations

import math

from .wire import Problem

#: Bits of both directions of a link's key stream (2 x 2^38 bytes): no count of consumed bits or level is larger.
MAX_BITS = 1 << 42
MAX_EVENTS = 500  # a node sends at most 500 events per report (.reports)
STATUSES = ("ACTIVE", "DOWN", "SUSPECT")
KINDS = ("issue", "deliver", "deny", "expire")
_SHAPE = ("a link report is ETSI GS QKD 015's qkd_node with qkdn_id and qkd_links.qkd_link (link_id, link_status, "
          "qkdl_local, qkdl_remote, qkdseg_consumed_bits, qkdseg_level_bits)")
_TEXT = ("sae", "peer", "op", "outcome", "reason")
_ROUTE = {"algorithm": str, "segment_nodes": list, "paths": int, "hops": int, "security": float,
          "reconstruction": str, "keys_per_relay": int, "seed": int, "relays": int, "consumed_bits": int,
          "saved_bits": int, "local": bool, "spare": bool, "request_id": str, "sharing": str, "tolerate": int}


def _bad(what: str) -> Problem:
    return Problem(400, "Bad Request", what)


def _clip(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _int(v, what: str, lo: int = 0, hi: int = MAX_BITS) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(f"{what} must be an integer in [{lo}, {hi}], not {_clip(v)}")
    return v


def _num(v, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(f"{what} must be a finite number in [{lo}, {hi}], not {_clip(v)}")
    return float(v)


def _text(v, what: str, most: int = 512) -> str:
    if not isinstance(v, str) or len(v) > most:
        raise _bad(f"{what} must be a string of at most {most} characters")
    return v


def check_links(ctl, caller: str, w) -> list[tuple[int, str, int, int | None, str]]:
    """``(link index, the controller's name of the link, consumed bits, level bits or None, status)`` per link."""
    try:
        qn = w["qkd_node"]
        links = qn["qkd_links"]["qkd_link"]
        who = qn["qkdn_id"]
    except (KeyError, TypeError):
        raise _bad(_SHAPE) from None
    if str(who) != caller:
        raise Problem(403, "Forbidden", f"a report of node {_clip(who)} from node {caller!r}")
    if not isinstance(links, list) or len(links) > len(ctl.link_index):
        raise _bad(f"qkd_link must be an array of at most {len(ctl.link_index)} links")
    rows, seen = [], set()
    for lk in links:
        try:
            local, remote, link_id = lk["qkdl_local"]["qkdn_id"], str(lk["qkdl_remote"]["qkdn_id"]), lk["link_id"]
            consumed, level, status = lk["qkdseg_consumed_bits"], lk.get("qkdseg_level_bits"), lk.get("link_status")
        except (KeyError, TypeError, AttributeError):
            raise _bad(_SHAPE) from None
        if str(local) != caller:
            raise Problem(403, "Forbidden", f"link {_clip(link_id)}: node {caller!r} is not its end")
        k = ctl.link_index.get(frozenset((caller, remote)))
        if k is None:
            raise Problem(403, "Forbidden", f"link {_clip(link_id)}: node {caller!r} and node {_clip(remote)} share "
                                            "no link")
        name = ctl.link_names[k]
        if link_id not in (name, ctl.link_names_back[k]):  # the audit names the link changed, never what the report calls it
            raise Problem(403, "Forbidden", f"link_id {_clip(link_id)} does not name the link between node "
                                            f"{caller!r} and node {remote!r} ({name}): a node reports only its own links")
        if k in seen:
            raise _bad(f"link {name} is reported twice")
        seen.add(k)
        if status not in STATUSES:
            raise _bad(f"link {name}: link_status must be one of {', '.join(STATUSES)}, not {_clip(status)}")
        rows.append((k, name, _int(consumed, f"link {name}: qkdseg_consumed_bits"),
                     None if level is None else _int(level, f"link {name}: qkdseg_level_bits"), status))
    return rows


def _route(v) -> None:
    if v is None:
        return
    if not isinstance(v, dict) or len(v) > len(_ROUTE):
        raise _bad("an event's route must be an object of the route summary's fields")
    for key, value in v.items():
        want = _ROUTE.get(key)
        ok = want is not None and (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and math.isfinite(value) if want is float else
                                   type(value) is want)
        if not ok or (key == "segment_nodes" and (len(value) > 10_000 or not all(isinstance(x, str) for x in value))):
            raise _bad(f"an event's route field {_clip(key)} has the wrong type")


def _route_paths(v, nodes: int) -> list:
    """An issue's relays: node ids per segment, per path (a path of 2 to as many ids as the network has nodes)."""
    ok = isinstance(v, list) and len(v) <= nodes and all(
        isinstance(seg, list) and len(seg) <= 4096 and all(
            isinstance(p, list) and 2 <= len(p) <= nodes and all(isinstance(x, str) and len(x) <= 64 for x in p)
            for p in seg) for seg in v)
    if not ok:
        raise _bad("an event's route_paths must be node ids per segment, per path")
    return v


def check_events(ctl, caller: str, body) -> tuple[str, list[dict]] | None:
    """The report's ``qkdseg_events`` as ``(boot, events)``, each event cut to the fields a node sends; events of
    an SAE's keys (issue, deliver, expire) only for SAEs attached to ``caller`` (403 otherwise)."""
    if body is None:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise _bad("qkdseg_events is {boot, events: [{seq, event, ...}]}")
    boot, events = _text(body.get("boot"), "qkdseg_events.boot", 64), body["events"]
    if len(events) > MAX_EVENTS:
        raise Problem(413, "Content Too Large", f"{len(events)} events in one report: at most {MAX_EVENTS}")
    a = ctl.svc.arrays
    mine = {sae for sae, i in ctl.svc.sae_node.items() if str(a.node_ids[i]) == caller}
    out = []
    for e in events:
        if not isinstance(e, dict) or e.get("event") not in KINDS:
            raise _bad(f"an event must be an object with event one of {', '.join(KINDS)}")
        ev = {"seq": _int(e.get("seq"), "an event's seq", 1, 1 << 53), "event": e["event"]}
        for key in _TEXT:
            if e.get(key) is not None:
                ev[key] = _text(e[key], f"an event's {key}")
        if e.get("time") is not None:
            ev["time"] = _num(e["time"], "an event's time", 0.0)
        if e.get("size") is not None:
            ev["size"] = _int(e["size"], "an event's size", 0, 1 << 20)
        if e.get("level") is not None:
            ev["level"] = _num(e["level"], "an event's level", 0.0, 1.0)
        if e.get("status") is not None:
            ev["status"] = _int(e["status"], "an event's status", 100, 599)
        for key, most in (("securities", 4096), ("key_ids", 4096)):
            v = e.get(key)
            if v is None:
                continue
            if not isinstance(v, list) or len(v) > most:
                raise _bad(f"an event's {key} must be an array of at most {most}")
            ev[key] = ([_num(x, "a security", 0.0, 1.0) for x in v] if key == "securities"
                       else [_text(x, "a key id", 64) for x in v])
        _route(e.get("route"))
        if e.get("route") is not None:
            ev["route"] = e["route"]
        if e.get("route_paths") is not None:
            ev["route_paths"] = _route_paths(e["route_paths"], len(a.node_ids))
        if ev["event"] in ("issue", "deliver") and ev.get("sae") not in mine:
            raise Problem(403, "Forbidden", f"an {ev['event']} event of SAE {_clip(ev.get('sae'))}, which is not "
                                            f"attached to node {caller!r}: a node reports only its own SAEs' keys")
        if ev["event"] == "expire" and not mine:
            raise Problem(403, "Forbidden", f"an expire event from node {caller!r}, which has no SAE (and so no key "
                                            "to expire)")
        out.append(ev)
    return boot, out



def feed_events(ctl, caller_node: str, checked) -> None:
    """A report's ETSI 014 events (issue, deliver, deny, expire; no key, ids cut to 8 characters; checked by
    :func:`check_events`) feed the dashboard's observers, each once, each row naming the node that
    reported it: a node numbers them per start (``boot``, ``seq``)."""
    if checked is None:
        return
    boot, events = checked
    last_boot, last = ctl.event_seq.get(caller_node, (None, 0))
    if boot != last_boot:
        last = 0
    for e in events:
        if e["seq"] > last:
            ctl.svc._notify({**e, "node": caller_node})
        last = max(last, e["seq"])
    ctl.event_seq[caller_node] = (boot, last)


#: A stock's counters a node reports (the dashboard's, qkdseg.server.monitor.STOCK_FIELDS), each a count.
STOCK_COUNTS = ("keys", "target", "low", "high", "hits", "misses", "refill_runs", "refill_failures", "expired_unused",
                "dropped_one_end")


def check_stock(ctl, caller: str, body) -> dict | None:
    """The report's ``qkdseg_stock`` (the node's key stocks for the dashboard): only stocks the controller's
    ``[stock]`` names whose master or slave SAE is attached to ``caller`` (403 otherwise), each count an integer."""
    if body is None:
        return None
    if not isinstance(body, dict) or ctl.stock is None:
        raise _bad("qkdseg_stock is {MASTER:SLAVE: {keys, target, ...}} of the network's stocked pairs")
    a = ctl.svc.arrays
    mine = {sae for sae, i in ctl.svc.sae_node.items() if str(a.node_ids[i]) == caller}
    names = {f"{m}:{s}" for m, s in ctl.stock.pairs if m in mine or s in mine}
    out = {}
    for name, s in body.items():
        if name not in names:
            raise Problem(403, "Forbidden", f"stock {_clip(name)} is not a stocked pair of node {caller!r}'s SAEs")
        if not isinstance(s, dict):
            raise _bad(f"stock {name} must be an object")
        out[name] = {k: _int(s.get(k), f"stock {name}'s {k}", 0, 1 << 53) for k in STOCK_COUNTS}
        out[name]["refilled_here"] = s.get("refilled_here") is True
    return out
