"""How a node finds the leading controller among several (docs/network.md, "The replicated controller").

A node is given every controller's address (``controllers`` in its
``node.json``, or ``QKDSEG_CONTROLLERS=ADDR,ADDR,...``, which ``net up
--controllers N`` passes on; else the one ``controller``). It asks the one
that answered last; a controller that is not the leader answers 503 with
``reason: "not_leader"`` and the leader's address as far as it knows
(``leader``), and one that cannot be connected to is skipped: the node then
asks the hinted one, then the others, each once per call. A request that
reached a controller and timed out is not sent to another (the first may
have planned it); the next call starts at another controller.
"""

from __future__ import annotations

import os


class Controllers:
    def __init__(self, conf: dict) -> None:
        env = os.environ.get("QKDSEG_CONTROLLERS", "").strip()
        addrs = [a.strip() for a in env.split(",") if a.strip()] if env else list(conf.get("controllers") or [])
        self.addrs = addrs or [conf["controller"]]
        self.current = self.addrs[0]

    async def request(self, http, method: str, path: str, **kw):
        """The leader's answer (or the last not-leader 503); raises the transport error when none answered."""
        import httpx

        todo = [self.current] + [a for a in self.addrs if a != self.current]
        tried: set[str] = set()
        answer, error = None, None
        while todo:
            addr = todo.pop(0)
            if addr in tried:
                continue
            tried.add(addr)
            try:
                r = await http.request(method, f"https://{addr}{path}", **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:  # never reached it: ask another
                error = err
                if len(self.addrs) == 1:
                    raise
                continue
            except httpx.HTTPError:  # reached, then no answer (it stopped, or was cut off): not again, but the
                if len(self.addrs) > 1 and addr == self.current:  # next call starts at another one
                    self.current = self.addrs[(self.addrs.index(addr) + 1) % len(self.addrs)]
                raise
            if r.status_code == 503 and len(self.addrs) > 1:
                try:
                    body = r.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("reason") == "not_leader":
                    answer = r
                    hint = body.get("leader")
                    if hint in self.addrs and hint not in tried:
                        todo.insert(0, hint)
                    continue
            self.current = addr
            return r
        if answer is not None:
            return answer
        raise error  # type: ignore[misc]


def peer_addresses(neighbours) -> dict[str, str]:
    """``QKDSEG_PEER_ADDRESSES`` (a JSON object, neighbour id -> HOST:PORT; ``net up --faults`` sets it): the
    address of each neighbour's end of the link's fault proxy (net/faults.py), for this node's neighbours only."""
    import json

    raw = os.environ.get("QKDSEG_PEER_ADDRESSES", "").strip()
    if not raw:
        return {}
    table = json.loads(raw)
    return {str(k): str(v) for k, v in table.items() if str(k) in neighbours}
