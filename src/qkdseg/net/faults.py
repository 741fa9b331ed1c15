"""Network faults between neighbours: a per-link TCP proxy (``net up --faults``) and ``net fault`` (docs/network.md).

This machine's kernel has no netem and no iptables/nft, so the faults come
from a proxy in the path of every link: ``python -m qkdseg.net.faults DIR``
(started by ``net up --faults``) listens, per link ``U-V`` and direction, at
the receiving node's IP on its own port (``DIR/cluster.json``) and forwards
the bytes to the node. The nodes call their neighbours there (TLS is end to
end: the proxy sees ciphertext only).

The faults of each link are in ``DIR/run/faults.json`` (``net fault`` writes
it atomically; the proxy reads it every 0.1 s), both directions alike:

- ``delay_ms``: every chunk of bytes is held that long (in order) before it
  is forwarded;
- ``loss``: each chunk is lost with this probability; TCP cannot lose a chunk
  and go on, so a loss **resets the connection** (the HTTPS request on it
  fails, and the relay sender retries it with the same message id);
- ``cut``: the link's open connections are closed and new ones refused until
  ``--heal``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from ..errors import InvalidRequest
from .layout import load_cluster

STATE = "faults.json"
READY = "faults.ready"
CHUNK = 65536


def state_path(directory: Path) -> Path:
    return Path(directory) / "run" / STATE


def ready(directory: Path) -> bool:
    """The proxy is listening (its pid in ``DIR/run/faults.ready`` is alive)."""
    try:
        pid = int((Path(directory) / "run" / READY).read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def parse_delay(text: str) -> float:
    """``50ms``, ``0.2s`` or ``200`` (ms) -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*", text or "")
    if not m:
        raise InvalidRequest(f"--delay {text!r}: expected a duration such as 50ms or 0.2s")
    v = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
    if v > 60_000:
        raise InvalidRequest(f"--delay {text!r}: at most 60 s")
    return v


def parse_loss(text: str) -> float:
    """``5%`` or ``0.05`` -> 0.05."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%)?\s*", text or "")
    if not m:
        raise InvalidRequest(f"--loss {text!r}: expected a share such as 5% or 0.05")
    v = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not 0 <= v <= 1:
        raise InvalidRequest(f"--loss {text!r}: between 0 and 100%")
    return v


def _layout(directory: Path) -> dict | None:
    return load_cluster(directory)  # written by net up (net/cluster.py)


def _links(directory: Path) -> dict[frozenset, str]:
    layout = _layout(directory)
    if not layout or not layout.get("proxies"):
        raise InvalidRequest(f"{directory}: no fault proxies (start the network with 'qkdseg net up {directory} "
                             "--faults')")
    return {frozenset(p["ends"]): p["link"] for p in layout["proxies"]}


def link_of(directory: Path, text: str) -> str:
    """``U-V`` (either orientation) -> the link's name in ``cluster.json``."""
    links = _links(directory)
    parts = text.split("-")
    for i in range(1, len(parts)):
        ends = frozenset(("-".join(parts[:i]), "-".join(parts[i:])))
        if ends in links:
            return links[ends]
    raise InvalidRequest(f"--link {text!r} is not a link of this network (U-V, e.g. {next(iter(links.values()))})")


def read_state(directory: Path) -> dict:
    try:
        return json.loads(state_path(directory).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_state(directory: Path, state: dict) -> None:
    from .layout import write_private

    p = state_path(directory)
    p.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(p, json.dumps(state, sort_keys=True) + "\n")


def set_fault(directory: Path, link: str, *, delay_ms: float | None = None, loss: float | None = None,
              cut: bool = False, heal: bool = False) -> dict:
    """Change one link's faults; returns the link's new faults. ``heal`` clears all of them."""
    if heal and (cut or delay_ms is not None or loss is not None):
        raise InvalidRequest("--heal clears every fault of the link; give it alone")
    if not (heal or cut or delay_ms is not None or loss is not None):
        raise InvalidRequest("give --delay, --loss, --cut or --heal")
    name = link_of(directory, link)
    state = read_state(directory)
    cur = dict(state.get(name, {"delay_ms": 0.0, "loss": 0.0, "cut": False}))
    if heal:
        cur = {"delay_ms": 0.0, "loss": 0.0, "cut": False}
    if delay_ms is not None:
        cur["delay_ms"] = delay_ms
    if loss is not None:
        cur["loss"] = loss
    if cut:
        cur["cut"] = True
    state[name] = cur
    write_state(directory, state)
    return {"link": name, **cur}


# -- the proxy process ----------------------------------------------------------------------------
class Proxy:
    def __init__(self, directory: Path, seed: int = 0) -> None:
        self.dir = Path(directory)
        self.layout = _layout(self.dir)
        self.state: dict = {}
        self.mtime = None
        self.conns: dict[str, set] = {}
        self.rng = random.Random(seed)
        self.stats = {"connections": 0, "refused": 0, "reset_by_loss": 0, "closed_by_cut": 0}

    def faults(self, link: str) -> dict:
        return self.state.get(link, {})

    async def watch(self) -> None:
        p = state_path(self.dir)
        while True:
            try:
                m = p.stat().st_mtime_ns
            except FileNotFoundError:
                m = None
            if m != self.mtime:
                self.mtime = m
                self.state = read_state(self.dir)
                for link, f in self.state.items():
                    if f.get("cut"):
                        for w in list(self.conns.get(link, ())):
                            self.stats["closed_by_cut"] += 1
                            w.transport.abort()
            await asyncio.sleep(0.1)

    async def handle(self, link: str, target: str, reader, writer) -> None:
        if self.faults(link).get("cut"):
            self.stats["refused"] += 1
            writer.transport.abort()
            return
        host, port = target.rsplit(":", 1)
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()
            return
        self.stats["connections"] += 1
        group = self.conns.setdefault(link, set())
        group.update((writer, uw))
        try:
            await asyncio.gather(self.pump(link, reader, uw, writer), self.pump(link, ur, writer, uw))
        finally:
            group.discard(writer)
            group.discard(uw)
            for w in (writer, uw):
                w.transport.abort()

    async def pump(self, link: str, reader, writer, other) -> None:
        """Forward ``reader`` to ``writer`` with the link's delay and loss, in order."""
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                f = self.faults(link)
                if f.get("cut") or (f.get("loss") and self.rng.random() < float(f["loss"])):
                    if not f.get("cut"):
                        self.stats["reset_by_loss"] += 1
                    writer.transport.abort()
                    other.transport.abort()
                    break
                queue.put_nowait((time.monotonic() + float(f.get("delay_ms", 0)) / 1000.0, data))
                if sender.done():
                    break
            queue.put_nowait((0.0, None))
            await sender
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, asyncio.CancelledError):
            writer.transport.abort()
            other.transport.abort()
        finally:
            if not sender.done():
                sender.cancel()

    async def main(self) -> None:
        servers = []
        for p in self.layout["proxies"]:
            for direction, listen in p["listen"].items():
                host, port = listen.rsplit(":", 1)
                target = p["target"][direction]

                def factory(link=p["link"], target=target):
                    return lambda r, w: self.handle(link, target, r, w)

                servers.append(await asyncio.start_server(factory(), host, int(port), reuse_address=True))
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "run" / READY).write_text(f"{os.getpid()}\n")
        print(f"qkdseg faults: {len(servers)} listeners on {len(self.layout['proxies'])} links", flush=True)
        await self.watch()


def main(argv: list[str]) -> int:
    import signal

    if len(argv) != 1:
        print("usage: python -m qkdseg.net.faults DIR", file=sys.stderr)
        return 2
    proxy = Proxy(Path(argv[0]), int(os.environ.get("QKDSEG_FAULT_SEED", "0")))
    loop = asyncio.new_event_loop()
    task = loop.create_task(proxy.main())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        (Path(argv[0]) / "run" / READY).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
