"""Which running processes belong to a network's directory (``net down`` stops them even without its pid file).

A process belongs to ``DIR`` when ``net up`` starts its kind (qkdseg's servers, the fault proxy, etcd) and one of
its arguments is a path inside ``DIR``; never a shell or a pager that merely names it.
"""

from __future__ import annotations

import os
from pathlib import Path


def started_by_net_up(argv: list[str]) -> bool:
    """Whether ``argv`` is a process ``net up`` starts: ``qkdseg ...``, ``python [-X ...] -m qkdseg[.net.faults] ...``
    or ``etcd ...``."""
    if not argv:
        return False
    name = Path(argv[0]).name
    if name in ("qkdseg", "etcd"):
        return True
    if name.startswith("python"):
        rest = argv[1:]
        if "-m" in rest and rest.index("-m") + 1 < len(rest):
            return rest[rest.index("-m") + 1].split(".")[0] == "qkdseg"
        return bool(rest) and Path(rest[0]).name == "qkdseg"
    return False


def naming(directory: Path) -> dict[int, str]:
    """Running processes that ``net up`` starts (qkdseg's, etcd), not this one, with an argument that is a path inside
    ``directory``: pid -> command."""
    root = directory.resolve()
    me = {os.getpid(), os.getppid()}
    out: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in me:
            continue
        try:
            argv = [a for a in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if not started_by_net_up(argv):
            continue  # only what net up starts (qkdseg's servers, the fault proxy, etcd): never a shell or a pager
        for arg in argv[1:]:
            for part in arg.split("=", 1)[-1].split(","):  # --data-dir=..., lists
                if "/" not in part and part not in (str(directory), directory.name):
                    continue
                try:
                    target = (cwd / part).resolve()
                except (OSError, ValueError):
                    continue
                if target == root or root in target.parents:
                    out[int(proc.name)] = " ".join(argv)[:120]
    return out
