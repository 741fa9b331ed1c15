"""A rotated audit log: ``audit.jsonl`` and the files it was rotated into, checked as one chain (issue 31).

When ``audit.jsonl`` passes the rotation size (``audit_max_mb``: ``kms.toml``,
a node's ``node.json``; default 64 MB), the store renames it to
``audit-<first seq>.jsonl`` beside it (:meth:`qkdseg.server.store.Store._rotate`)
and starts a new one. The keyed chain goes on across files: the first line
of each file carries the MAC of the previous file's last line as ``prev``.
The database keeps where the live file starts (``meta.audit_live_start`` =
``seq:mac`` of the last line rotated), so the check at start covers the live
file alone, and a cut head of it is seen.

A rotated file may be gzipped in place (``audit-<seq>.jsonl.gz``) or moved to
an archive directory: :func:`check_series` reads the files of the directory
and of ``archive``, in order of their first seq, and names the file and line
of each problem.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

from .audit import AUDIT_NAME, GENESIS, AuditReport, check_lines
from .files import fsync_dir

_ROTATED = re.compile(r"^audit-(\d+)\.jsonl(\.gz)?$")


def rotated_name(first_seq: int) -> str:
    return f"audit-{first_seq}.jsonl"


def open_lines(path: Path) -> list[str]:
    """The lines of one audit file, plain or gzipped (without newlines)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as fh:
        return [raw.rstrip("\n") for raw in fh]


def first_seq(path: Path) -> int:
    """The ``seq`` of the first record of a plain audit file (0 for none or no file)."""
    try:
        with open(path, "rb") as fh:
            return int(json.loads(fh.readline())["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def series(directory: Path, archive: Path | None = None) -> list[Path]:
    """The rotated files in ``directory`` and ``archive`` (plain or gzipped) in order of their first seq, then
    the live ``audit.jsonl`` (when it exists). A file found twice (plain and gzipped, or in both places) is
    listed once, its plain copy in ``directory`` first."""
    found: dict[int, Path] = {}
    for d in [Path(directory)] + ([Path(archive)] if archive is not None else []):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir(), key=lambda p: p.name.endswith(".gz")):
            m = _ROTATED.match(p.name)
            if m and int(m.group(1)) not in found:
                found[int(m.group(1))] = p
    out = [found[k] for k in sorted(found)]
    live = Path(directory) / AUDIT_NAME
    return out + ([live] if live.exists() else [])


def check_series(key: bytes | None, files: list[Path], start: tuple[int, str] = (0, GENESIS)) -> AuditReport:
    """Check the chain through ``files`` in order: each file's first line follows the previous file's last.
    Each problem names its file (and the line in it); problems before an authentic acceptance record
    (``audit_broken_accepted``) are moved to ``accepted``."""
    total = AuditReport(macs_checked=key is not None, last_seq=start[0], last_mac=start[1])
    for path in files:
        try:
            lines = open_lines(path)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            total.problems.append(f"{path}: cannot be read ({err})")
            continue
        rep = check_lines(key, lines, start=(total.last_seq, total.last_mac))
        first = _first_seq_of(lines)
        if first is not None and first != total.last_seq + 1:
            rep.problems.insert(0, f"line 1: the file starts at seq {first}, the file before ends at seq "
                                   f"{total.last_seq} (a rotated file is missing: gzipped or moved elsewhere? name "
                                   "its folder with --archive)")
        named = [f"{path}: {p}" for p in rep.problems]
        if rep.accepted_at:
            total.accepted += total.problems + [f"{path}: {p}" for p in rep.accepted]
            total.problems = []
            total.accepted_at += rep.accepted_at
        total.problems += named
        total.records += rep.records
        total.last_seq, total.last_mac = rep.last_seq, rep.last_mac
    return total


def _first_seq_of(lines: list[str]) -> int | None:
    try:
        seq = json.loads(lines[0]).get("seq") if lines else None
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def live_start(value: str | None) -> tuple[int, str]:
    """``meta.audit_live_start`` as ``(seq, mac)`` (``(0, GENESIS)``: the live file is the first)."""
    if not value:
        return 0, GENESIS
    seq, m = value.split(":")
    return int(seq), m


def rename_rotated(path: Path, first: int) -> Path:
    """Rename the live file to ``audit-<first>.jsonl`` beside it (refused if that name is taken), durably."""
    target = path.with_name(rotated_name(first))
    if target.exists() or target.with_name(target.name + ".gz").exists():
        raise FileExistsError(f"{target} exists already")
    os.rename(path, target)
    fsync_dir(path.parent)
    return target
