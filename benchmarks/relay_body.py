"""``python -m benchmarks.relay_body [--network example] [--level 0.5 ...]``: the largest legitimate relay message.

Issue 33 bounds the bodies of the relay and control APIs; the limit must fit
the largest legitimate batch, 1,024 messages of the largest plan. This
measures it: on the network's controller planner (full pools, as ``net
init`` leaves them), every request ``(number, size, level)`` of the grid that
plans, run through the nodes' own relay steps in one process
(:func:`qkdseg.keys.steps.run_local` over the emulated link streams), each
message encoded exactly as a node puts it on the wire
(:meth:`qkdseg.net.messaging.Messaging._encode`, in a ``{"messages": [...]}``
batch), and each node's plan part as the controller sends it. Prints the
largest message of each kind, the request it came from, and 1,024 of the
largest (the batch the limit must hold).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path


def measure(network: str = "example", levels=(0.5, 0.9), numbers=(1, 8, 32, 128),
            sizes=(256, 1024, 4096)) -> dict:
    from qkdseg.errors import InvalidRequest  # noqa: F401
    from qkdseg.keys.relay import Plan
    from qkdseg.keys.steps import RelayNode, node_parts, run_local
    from qkdseg.net.keystream import LinkStream
    from qkdseg.net.layout import init_network
    from qkdseg.net.messaging import Messaging
    from qkdseg.net.relaystore import NetLinkEnd
    from qkdseg.server.core import open_state
    from qkdseg.server.etsi import KeyRequest, KmsError

    best: dict[str, tuple[int, tuple]] = {}
    plans = 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "net"
        init_network(d, network, {"A": "0", "B": "7"} if network == "example" else {}, security_level=0.5)
        svc = open_state(d / "controller")
        try:
            a = svc.arrays
            ids = [str(x) for x in a.node_ids]
            n = len(ids)
            pairs = [(0, ids.index("7"))] if network == "example" else [(0, n - 1)]
            enc = Messaging._encode
            fake = type("N", (), {})()
            for s, dd in pairs:
                for level in levels:
                    for number in numbers:
                        for size in sizes:
                            req = KeyRequest(number, size, level, "extension_mandatory", True)
                            try:
                                r, rec, relays, _bits = svc.planner.plan_relays(s, dd, req, number)
                            except KmsError:
                                continue
                            plans += 1
                            parts = node_parts(r, [Plan.from_any(rec, r)], copies=relays)
                            offsets: dict = {}
                            nodes = {}
                            for v, part in parts.items():
                                links = {}
                                for u2, v2 in ((x, y) for x, y in zip(a.edge_u, a.edge_v)):
                                    eu, ev = a.node_ids[u2], a.node_ids[v2]
                                    if v in (eu, ev):
                                        other = ev if v == eu else eu
                                        links[other] = NetLinkEnd(v, (eu, ev), LinkStream(bytes(32)), offsets, {})
                                nodes[v] = RelayNode(part, links)
                            sent: list[dict] = []
                            for node in nodes.values():
                                orig = node.on_message

                                def wrap(msg, _orig=orig):
                                    sent.append(msg)
                                    return _orig(msg)
                                node.on_message = wrap
                            run_local(nodes)
                            rid = str(uuid.uuid4())
                            where = (ids[s], ids[dd], level, number, size, relays)
                            for msg in sent:
                                fake.id = msg["src"]
                                w = enc(fake, msg, rid)
                                nbytes = len(json.dumps({"messages": [w]}, separators=(",", ":")))
                                for key in (msg["kind"], (msg["kind"], size)):
                                    if nbytes > best.get(key, (0,))[0]:
                                        best[key] = (nbytes, where)
                            body = {"request_id": rid, "master": "A", "slave": "B", "number": number,
                                    "securities": [0.5] * (relays * len(rec.global_keys))}
                            for v, part in parts.items():
                                nbytes = len(json.dumps({"parts": [{**body, "part": part.to_dict()}]},
                                                        separators=(",", ":")))
                                if nbytes > best.get("part", (0,))[0]:
                                    best["part"] = (nbytes, where)
        finally:
            svc.close()
    return {"plans": plans, "largest": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="example")
    args = ap.parse_args()
    t = time.perf_counter()
    out = measure(args.network)
    print(f"{out['plans']} requests planned on {args.network} (full pools) in {time.perf_counter() - t:.1f} s")
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
