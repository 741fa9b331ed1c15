"""TEST ONLY: the controller's capture of every body it receives (``controller serve --capture FILE``).

It is refused unless ``QKDSEG_ALLOW_CAPTURE=1`` (:mod:`.controller`, docs/network.md): a test reads the file to
look for key material where none may be.
"""

from __future__ import annotations

import json
from pathlib import Path


class Capture:
    """TEST ONLY: append what the controller receives to a file, each record a JSON header line (direction,
    method, path, query, length) followed by the body's bytes as received and a newline."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "ab")

    def write(self, head: dict, body: bytes) -> None:
        self.fh.write(json.dumps({**head, "length": len(body)}).encode() + b"\n" + body + b"\n")
        self.fh.flush()

    def middleware(self, app):
        """A pure ASGI wrapper: it reads each request's whole body first, records it with the query, then replays
        it to the app (so that a request the app refuses unread is recorded too)."""

        async def wrapped(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            chunks: list[bytes] = []
            while True:
                msg = await receive()
                if msg["type"] != "http.request":  # the client left before sending everything
                    break
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    break
            body = b"".join(chunks)
            self.write({"dir": "request", "method": scope["method"], "path": scope["path"],
                        "query": scope.get("query_string", b"").decode("latin-1")}, body)
            replayed = False

            async def recv():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await app(scope, recv, send)

        return wrapped

    async def on_response(self, response) -> None:
        await response.aread()
        self.write({"dir": "response", "method": response.request.method, "path": response.request.url.path,
                    "status": response.status_code}, response.content)

    def close(self) -> None:
        self.fh.close()
