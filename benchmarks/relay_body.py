"""``python -m benchmarks.relay_body``: the largest legitimate relay message (on ``example``, node 0 to node 7).

Issue 33 bounds the bodies of the relay and control APIs; the limit must fit
the largest legitimate batch, 1,024 messages of the largest plan. This
measures it: on the network's controller planner (full pools, as ``net
init`` leaves them), every request ``(number, size, level)`` of the grid that
plans, run through the nodes' own relay steps in one process
(:func:`qkdseg.keys.steps.run_local` over the emulated link streams), each
message encoded exactly as a node puts it on the wire
(:meth:`qkdseg.net.messaging.Messaging._encode`, in a ``{"messages": [...]}``
batch), with the destination's ``confirm``, and each node's plan part as the
controller sends it. Prints the
largest message of each kind, the request it came from, and 1,024 of the
largest (the batch the limit must hold).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
import uuid
from pathlib import Path


def _run_relay(parts: dict, a) -> tuple[list[dict], dict]:
    """Every message of one request, run through the nodes' own relay steps over emulated link streams; and the
    keys the destination holds (for its ``confirm``)."""
    from qkdseg.keys.steps import RelayNode, run_local
    from qkdseg.net.keystream import LinkStream
    from qkdseg.net.relaystore import NetLinkEnd

    offsets: dict = {}
    nodes = {}
    for v, part in parts.items():
        links = {}
        for k in range(len(a.edge_u)):
            eu, ev = a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]
            if v in (eu, ev):
                links[ev if v == eu else eu] = NetLinkEnd(v, (eu, ev), LinkStream(bytes(32)), offsets, {})
        nodes[v] = RelayNode(part, links)
    sent: list[dict] = []

    def recording(node):
        inner = node.on_message

        def on_message(msg):
            sent.append(msg)
            return inner(msg)
        return on_message

    for node in nodes.values():
        node.on_message = recording(node)
    run_local(nodes)
    dest = next(n for n in nodes.values() if n.part.position == len(n.part.segment_nodes) - 1)
    return sent, dest


def _confirm(dest, rid: str, mac: int) -> dict:
    """The destination's ``confirm`` of ``dest``'s keys, as :meth:`RelayRequests._store_and_confirm` builds it (the
    last ``mac`` keys: the one-time MAC key, issue 38)."""
    import base64

    from qkdseg.net.relayrequests import _confirmation

    held, tag = _confirmation(rid, {"mac_keys": mac}, dest.keys())
    return {"kind": "confirm", "dst": dest.part.segment_nodes[0], "tag": base64.b64encode(tag).decode(),
            "key_ids": [[list(kid), str(uuid.uuid4())] for kid, _ in held]}


def measure(network: str = "example", levels=(0.5, 0.9), numbers=(1, 8, 32, 128),
            sizes=(256, 1024, 4096)) -> dict:
    """``{"plans": how many planned, "largest": {kind or (kind, key size): (bytes, the request)}}``."""
    from qkdseg.keys.confirm import mac_keys
    from qkdseg.keys.relay import Plan
    from qkdseg.keys.steps import node_parts
    from qkdseg.net.layout import init_network
    from qkdseg.net.messaging import Messaging
    from qkdseg.server.core import open_state
    from qkdseg.server.etsi import KeyRequest, KmsError

    best: dict = {}
    plans = 0

    def note(kind: str, size: int, nbytes: int, where: tuple) -> None:
        for key in (kind, (kind, size)):
            if nbytes > best.get(key, (0,))[0]:
                best[key] = (nbytes, where)

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "net"
        init_network(d, network, {"A": "0", "B": "7"}, security_level=0.5)
        svc = open_state(d / "controller")
        try:
            a = svc.arrays
            ids = [str(x) for x in a.node_ids]
            s, dd = 0, ids.index("7")
            sender = type("Sender", (), {})()
            for level, number, size in itertools.product(levels, numbers, sizes):
                req = KeyRequest(number, size, level, "extension_mandatory", True)
                mac = mac_keys(size)  # the confirmation's MAC key, planned with the keys (as the controller does)
                try:
                    r, rec, relays, _bits = svc.planner.plan_relays(s, dd, req, number + mac)
                except KmsError:
                    continue
                plans += 1
                parts = node_parts(r, [Plan.from_any(rec, r)], copies=relays)
                sent, dest = _run_relay(parts, a)
                rid = str(uuid.uuid4())
                where = (ids[s], ids[dd], level, number, size, relays)
                for msg in sent + [{**_confirm(dest, rid, mac), "src": dest.part.node}]:
                    sender.id = msg["src"]
                    w = Messaging._encode(sender, msg, rid)
                    note(msg["kind"], size, len(json.dumps({"messages": [w]}, separators=(",", ":"))), where)
                body = {"request_id": rid, "master": "A", "slave": "B", "number": number,
                        "securities": [0.5] * (relays * len(rec.global_keys)), "mac_keys": mac}
                for part in parts.values():
                    note("part", size, len(json.dumps({"parts": [{**body, "part": part.to_dict()}]},
                                                      separators=(",", ":"))), where)
        finally:
            svc.close()
    return {"plans": plans, "largest": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    t = time.perf_counter()
    out = measure()
    print(f"{out['plans']} requests planned on example, A at node 0, B at node 7 (full pools) "
          f"in {time.perf_counter() - t:.1f} s")
    largest = out["largest"]
    for key, (nbytes, (s, d, level, number, size, relays)) in sorted(largest.items(), key=str):
        what = key if isinstance(key, str) else f"{key[0]}, {key[1]}-bit keys"
        print(f"largest {what:22s} message: {nbytes:8,d} bytes  (node {s} -> node {d}, level {level}, "
              f"{number} keys of {size} bits, {relays} relays)")
    for size in sorted({k[1] for k in largest if isinstance(k, tuple)}):
        top = max(nbytes for k, (nbytes, _) in largest.items() if isinstance(k, tuple) and k[1] == size)
        print(f"1,024 of the largest with {size}-bit keys: {1024 * top:,d} bytes ({1024 * top / 2 ** 20:.2f} MiB)")
    top = max(nbytes for k, (nbytes, _) in largest.items() if isinstance(k, str))
    print(f"1,024 of the largest of all: {1024 * top:,d} bytes ({1024 * top / 2 ** 20:.2f} MiB)")


if __name__ == "__main__":
    main()
