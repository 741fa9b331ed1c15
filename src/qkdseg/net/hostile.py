"""TEST ONLY: the hostile-node harness: the real node code with hooks to lie (docs/network.md, "Threat model").

A node started with ``QKDSEG_HOSTILE_FILE=PATH`` (refused unless ``QKDSEG_ALLOW_HOSTILE=1``, like the tap's
``QKDSEG_ALLOW_TAP``) reads ``PATH``, a JSON object, each time a hook runs, so that a test can change what the
node does while it runs (a missing or empty file: it behaves). Keys:

- ``"offsets": {"0": N, "1": M}``: its answer to ``GET /relay/v1/links`` (what a neighbour syncing or probing
  adopts) claims these offsets for every link, instead of its own;
- ``"drop": [kinds]``: relay messages of these kinds are not sent (their senders see them as sent);
- ``"corrupt": [kinds]``: one byte of each ciphertext of these kinds is flipped before sending;
- ``"report": {"events": [...], "links": [...]}``: its link reports to the controller carry these ETSI 014
  events (numbered after its own) and these ``qkd_link`` entries in place of its own.

Attacks at the HTTP level (another node's name, a body of any size, a made-up ack) need no hook: a test sends
them with the node's certificate (tests/test_net_hostile.py).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from ..errors import InvalidRequest

HOSTILE_ENV = "QKDSEG_ALLOW_HOSTILE"
FILE_ENV = "QKDSEG_HOSTILE_FILE"


class Hostile:
    """The hooks :class:`qkdseg.net.node.NodeService` calls when the harness is on (``svc.hostile``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def from_env(cls) -> Hostile | None:
        path = os.environ.get(FILE_ENV)
        if not path:
            return None
        if os.environ.get(HOSTILE_ENV) != "1":
            raise InvalidRequest(f"{FILE_ENV} makes this node lie to the others (the hostile-node harness, for "
                                 f"tests only); it is refused unless {HOSTILE_ENV}=1")
        return cls(Path(path))

    def conf(self) -> dict:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def offsets(self, link: str, answer: dict) -> dict:
        lie = self.conf().get("offsets")
        return dict(lie) if isinstance(lie, dict) else answer

    def outgoing(self, batch: list) -> list:
        """``[(message, future)]`` about to be sent: without the dropped ones, with the corrupted ones changed."""
        c = self.conf()
        drop, corrupt = set(c.get("drop") or ()), set(c.get("corrupt") or ())
        out = []
        for w, fut in batch:
            if w["kind"] in drop:
                if not fut.done():
                    fut.set_result(None)
                continue
            if w["kind"] in corrupt:
                w = {**w}
                for key in ("blocks", "items"):
                    if key in w:
                        w[key] = [[*x[:-1], _flip(x[-1])] for x in w[key]]
            out.append((w, fut))
        return out

    def report(self, body: dict) -> dict:
        forged = self.conf().get("report")
        if not isinstance(forged, dict):
            return body
        body = json.loads(json.dumps(body))
        if "links" in forged:
            body["qkd_node"]["qkd_links"]["qkd_link"] = forged["links"]
        if "events" in forged:
            ev = body["qkdseg_events"]["events"]
            seq = max([e["seq"] for e in ev], default=0)
            ev += [{**e, "seq": seq + 1 + i} for i, e in enumerate(forged["events"])]
        return body


def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    if raw:
        raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()
