"""The ports the tests listen on: unique to this run among all runs of the suite on this machine.

Each test process (a pytest, or each of its xdist workers) claims one block of :data:`BLOCK` ports for its lifetime:
an exclusive ``flock`` on ``/tmp/qkdseg-test-ports/<first port>.lock``, kept open until the process exits, so the OS
frees the block when the run ends or is killed. A second clone running the suite at the same time claims other
blocks. Ports are handed out from the block in turn, each checked bindable on the loopback addresses the servers use
(a process outside the suite, or a network a killed run left, may hold one). Blocks lie below the kernel's
ephemeral range (``ip_local_port_range``), whose ports every outgoing connection and every ``port 0`` listener takes,
so no client's connection sits on a port a test counts on.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path

LOCKS = Path("/tmp/qkdseg-test-ports")
LOW = 20000
BLOCK = 500
#: where servers of the tests listen: the controller (127.0.0.1) and nodes (127.0.0.2 on)
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.9")

_lock = threading.Lock()
_block: tuple[int, int] | None = None  # (first port, next port to hand out)
_held = None  # the open lock file: the claim lasts as long as it is open


def _top() -> int:
    """The first port of the kernel's ephemeral range (the blocks stay below it)."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return first if first - LOW >= 4 * BLOCK else 60000  # an odd machine: the old range, still one block per run


def _claim() -> tuple[int, int]:
    global _block, _held
    if _block is None:
        LOCKS.mkdir(mode=0o777, exist_ok=True)
        starts = list(range(LOW, _top() - BLOCK + 1, BLOCK))
        first = os.getpid() % len(starts)  # spread the runs' first tries
        for start in starts[first:] + starts[:first]:
            f = open(LOCKS / f"{start}.lock", "a")  # noqa: SIM115 -- held open for the process's life
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            _held, _block = f, (start, start)
            break
        else:
            raise RuntimeError(f"every block of test ports under {LOCKS} is held by another run")
    return _block


def _bindable(port: int, hosts=HOSTS) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def ports(n: int = 1, hosts=HOSTS) -> int:
    """The first of ``n`` consecutive ports of this run's block, each bindable now on ``hosts``."""
    global _block
    if not 1 <= n <= BLOCK // 2:
        raise ValueError(f"n={n}: at most {BLOCK // 2} ports at once")
    with _lock:
        start, nxt = _claim()
        for _ in range(2 * BLOCK):
            if nxt + n > start + BLOCK:  # wrap: ports handed out long ago are free again unless still bound
                nxt = start
            base, nxt = nxt, nxt + n
            if all(_bindable(p, hosts) for p in range(base, base + n)):
                _block = (start, nxt)
                return base
        raise RuntimeError(f"no {n} free consecutive ports in this run's block {start}-{start + BLOCK - 1}")


def port(hosts=HOSTS) -> int:
    """One port of this run's block, bindable now on ``hosts``."""
    return ports(1, hosts)


def block_index() -> int:
    """This run's block's number (0, 1, ...): unique among the runs of the suite on this machine right now."""
    with _lock:
        return (_claim()[0] - LOW) // BLOCK


def port_range(n: int = 200) -> str:
    """``LO-HI``: ``n`` ports of this run's block for ``net up --port-range`` (the ports net up picks itself)."""
    lo = ports(n, ())
    return f"{lo}-{lo + n - 1}"
