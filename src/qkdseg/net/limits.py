"""What another node can make a node (or the controller) hold: bounded bodies, batches and backlogs (issue 33).

docs/network.md, "Limits", says where each number comes from. In short:

- :data:`RELAY_MAX_BODY` (16 MiB; ``QKDSEG_RELAY_MAX_BODY``): the largest body of the relay and control APIs of a
  node; a larger one gets a JSON 413 before more than the limit is read. A node's sender splits its batches so
  that no POST it makes is larger (``benchmarks/relay_body.py`` measures the largest legitimate message).
- :data:`CONTROL_MAX_BODY` (4 MiB; ``QKDSEG_CONTROL_MAX_BODY``): the same at the controller's API.
- :data:`MAX_BATCH`: at most 1,024 messages, acks or plan parts in one POST (413 beyond).
- :data:`MAX_DEPTH`: arrays and objects nested at most 32 deep (400 beyond; the messages need 5).
- :class:`Early`: messages for a request this node has no part of yet (a ``global`` may beat the controller's
  part) are held at most :data:`EARLY_S` seconds (5; ``QKDSEG_EARLY_S``), at most :data:`EARLY_MESSAGES` messages
  and :data:`EARLY_BYTES` bytes per sending node; beyond, that node gets 429 (its backlog is full).
"""

from __future__ import annotations

from ..errors import env_number
from ..server.frontend import too_deep
from .wire import Problem

RELAY_MAX_BODY = env_number("QKDSEG_RELAY_MAX_BODY", 16 << 20, int)
CONTROL_MAX_BODY = env_number("QKDSEG_CONTROL_MAX_BODY", 4 << 20, int)
MAX_BATCH = 1024
MAX_DEPTH = 32
EARLY_S = env_number("QKDSEG_EARLY_S", 5.0)
EARLY_MESSAGES = 1024
EARLY_BYTES = 4 << 20


def too_large(what: str, limit: int, unit: str = "bytes") -> Problem:
    return Problem(413, "Content Too Large", f"{what} exceeds the limit of {limit:,d} {unit}")


async def read_body(request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes: a JSON 413 as soon as the declared length or the bytes read pass it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large("the request body", limit)
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large("the request body", limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise Problem(408, "Request Timeout", "the body did not arrive (the caller went away)") from None
    return b"".join(chunks)


def check_depth(body: bytes) -> None:
    if too_deep(body, MAX_DEPTH):
        raise Problem(400, "Bad Request", f"the body nests arrays and objects more than {MAX_DEPTH} deep")


def check_batch(items, what: str) -> list:
    if not isinstance(items, list):
        raise Problem(400, "Bad Request", f"{what} must be an array")
    if len(items) > MAX_BATCH:
        raise too_large(f"a batch of {len(items):,d} {what}", MAX_BATCH, what)
    return items


def weight(w: dict) -> int:
    """About the bytes a held message takes: its ciphertexts' lengths plus a fixed overhead."""
    n = 200
    for item in w.get("blocks") or w.get("items") or ():
        if isinstance(item, list) and item and isinstance(item[-1], str):
            n += len(item[-1])
    return n


class Early:
    """Per sending node: the messages held for requests this node has no part of yet (count, bytes)."""

    def __init__(self) -> None:
        self.held: dict[str, list[int]] = {}  # sender -> [messages, bytes]

    def charge(self, src: str, w: dict) -> None:
        """Count ``w`` against its sender's backlog, or refuse it with 429 (nothing is counted then)."""
        got = self.held.setdefault(src, [0, 0])
        size = weight(w)
        if got[0] + 1 > EARLY_MESSAGES or got[1] + size > EARLY_BYTES:
            raise Problem(429, "Too Many Requests",
                          f"node {src!r} has {got[0]} messages ({got[1]:,d} bytes) held here for requests this node "
                          f"has no part of yet (at most {EARLY_MESSAGES} and {EARLY_BYTES:,d} bytes per node, each "
                          f"for at most {EARLY_S:g} s); try again later", status_020="failed")
        got[0] += 1
        got[1] += size

    def release(self, src: str, w: dict) -> None:
        got = self.held.get(src)
        if got is None:
            return
        got[0] -= 1
        got[1] -= weight(w)
        if got[0] <= 0:
            del self.held[src]

    def total(self) -> int:
        return sum(n for n, _ in self.held.values())


async def read_json(request, limit: int = RELAY_MAX_BODY) -> dict:
    """The body as a JSON object: at most ``limit`` bytes (413), nested at most :data:`MAX_DEPTH` deep (400)."""
    import json

    body = await read_body(request, limit)
    check_depth(body)
    try:
        data = json.loads(body)
    except ValueError:
        raise Problem(400, "Bad Request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return data
