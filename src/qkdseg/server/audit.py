"""The audit log's keyed chain: HMAC-SHA256 per line, checked at start and by ``kms audit --verify``.

``DIR/audit.jsonl`` has one JSON object per line (canonical form: sorted
keys, no spaces, ASCII). Each carries ``seq`` (1, 2, ...), ``prev`` (the
previous line's ``mac``; 64 zeros for the first) and ``mac``, the
HMAC-SHA256 of the line without its ``mac`` under the **audit key**
(``DIR/audit.key``: 32 random bytes, mode 0600, made by ``kms init``; not
derived from the storage key, so rotating that key leaves the chain valid).

- An edited line fails its own MAC: it is reported at its own line number.
- A removed, inserted or reordered line breaks ``prev`` or ``seq``.
- A cut tail, or a rewritten last line, disagrees with the head the
  database keeps (``meta.audit_head`` = ``seq:mac``).
- Only the holder of the audit key can extend the chain: rewriting lines
  and the head without it (the unkeyed SHA-256 chain allowed that) fails
  every MAC from the first line changed.

A service that starts on a broken chain refuses, unless the operator passes
``--accept-broken-audit``; the service then appends an
``audit_broken_accepted`` record (listing the problems), and the problems
before an authentic such record are reported as accepted, not as broken.

>>> key = bytes(32)
>>> a, mac_a = chain_line(key, {"event": "x"}, 1, GENESIS)
>>> b, mac_b = chain_line(key, {"event": "y"}, 2, mac_a)
>>> check_lines(key, [a, b]).problems
[]
>>> check_lines(key, [a.replace('"x"', '"z"'), b]).problems[0][:6]
'line 1'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest
from .pki import write_secret

AUDIT_NAME = "audit.jsonl"
#: The size (MB) past which ``audit.jsonl`` is rotated (:mod:`.auditseries`) unless ``audit_max_mb`` says otherwise.
DEFAULT_AUDIT_MAX_MB = 64.0
GENESIS = "0" * 64
ACCEPT_EVENT = "audit_broken_accepted"
KEY_BYTES = 32


def canonical(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"))


def mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def chain_line(key: bytes, rec: dict, seq: int, prev: str) -> tuple[str, str]:
    """The line of record ``rec`` as number ``seq`` after a line whose MAC is ``prev``; returns ``(line, mac)``."""
    body = {"seq": seq, **rec, "prev": prev}
    body.pop("mac", None)
    m = mac(key, canonical(body))
    return canonical({**body, "mac": m}), m


def audit_max_bytes(mb) -> int | None:
    """``audit_max_mb`` in bytes (``None`` or 0: never rotated)."""
    return int(float(mb) * (1 << 20)) if mb else None


def make_audit_key(path: Path) -> bytes:
    """Write a new audit key (mode 0600); refuses to replace one (that would let its holder forge the chain)."""
    if path.exists():
        raise InvalidRequest(f"{path}: an audit key exists already; it is never replaced")
    import os

    key = os.urandom(KEY_BYTES)
    write_secret(path, key)
    return key


def load_audit_key(path: Path) -> bytes:
    """The audit key in ``path``; :class:`InvalidRequest` if missing, of the wrong size or readable by others."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such file (the audit chain's key; 'qkdseg kms init' makes it; a lost "
                             "audit key cannot be replaced by a new one: restore it from the backup)") from None
    except OSError as err:
        raise InvalidRequest(f"{path}: cannot read the audit key: {err.strerror}") from None
    if len(data) != KEY_BYTES:
        raise InvalidRequest(f"{path}: an audit key must be {KEY_BYTES} bytes, found {len(data)}")
    if path.stat().st_mode & 0o077:
        raise InvalidRequest(f"{path}: audit key is readable by group or others (chmod 600 it)")
    return data


@dataclass
class AuditReport:
    """What :func:`check_lines` found: records read, open problems, accepted problems, the last seq and MAC."""

    records: int = 0
    problems: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)  # seq of each authentic acceptance record
    last_seq: int = 0
    last_mac: str = GENESIS
    macs_checked: bool = True


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def check_lines(key: bytes | None, lines: Iterable[str], start: tuple[int, str] = (0, GENESIS)) -> AuditReport:
    """Check the chain of ``lines`` (without newlines); ``key=None`` checks the links only, not the MACs.
    ``start``: the ``(seq, mac)`` the first line follows (a rotated log's live file: :mod:`.auditseries`)."""
    rep = AuditReport(macs_checked=key is not None)
    seq, prev = start
    rep.last_seq, rep.last_mac = start
    for lineno, line in enumerate(lines, 1):
        try:
            rec = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError):
            rep.problems.append(f"line {lineno}: not a JSON record")
            prev = None
            seq += 1
            continue
        rep.records += 1
        if not isinstance(rec, dict) or not isinstance(rec.get("mac"), str):
            rep.problems.append(f"line {lineno}: no 'mac' (not written by this service)")
            prev, seq = None, seq + 1
            continue
        got = rec.pop("mac")
        authentic = False
        if canonical({**rec, "mac": got}) != line:
            rep.problems.append(f"line {lineno} (seq {rec.get('seq')}): not in canonical form (the line was edited)")
        elif key is not None and not hmac.compare_digest(got, mac(key, canonical(rec))):
            rep.problems.append(f"line {lineno} (seq {rec.get('seq')}): the MAC does not match (the line was edited, "
                                "or written without the audit key)")
        else:
            authentic = key is not None
        if prev is not None and rec.get("prev") != prev:
            rep.problems.append(f"line {lineno} (seq {rec.get('seq')}): 'prev' is not the previous line's MAC "
                                "(a line was removed, inserted or reordered)")
        if rec.get("seq") != seq + 1:
            rep.problems.append(f"line {lineno}: seq {rec.get('seq')} follows seq {seq}")
        seq = rec["seq"] if isinstance(rec.get("seq"), int) and not isinstance(rec.get("seq"), bool) else seq + 1
        prev = got
        if rec.get("event") == ACCEPT_EVENT and (authentic or key is None):
            rep.accepted += rep.problems
            rep.problems = []
            rep.accepted_at.append(seq)
    rep.last_seq, rep.last_mac = seq, prev if prev is not None else ""
    return rep


def read_lines(path: Path) -> list[str]:
    """The lines of the audit file (empty if it does not exist)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return [raw.rstrip("\n") for raw in fh]


def check_head(rep: AuditReport, head: tuple[int, str] | None, pending: tuple[int, int] | None = None) -> None:
    """Add to ``rep`` what the database's chain head says about the file's end.

    ``pending`` is the (lowest, highest) seq of the records committed to the
    database and not yet known to be synced to the file (a running service):
    a file that ends anywhere from just before them only lags behind.
    """
    if head is None:
        if rep.records:
            rep.problems.append("the database has no chain head, but the file has records (the database was replaced)")
        return
    head_seq, head_mac = head
    if rep.last_seq != head_seq:
        if not (pending and pending[0] - 1 <= rep.last_seq < head_seq <= pending[1]):
            rep.problems.append(f"the database's chain head is seq {head_seq}, the file ends at seq {rep.last_seq} "
                                "(lines were removed from the end, or added)")
    elif not hmac.compare_digest(head_mac, rep.last_mac):
        rep.problems.append(f"the last line (seq {head_seq}) is not the database's chain head (it was rewritten)")


def cut_torn_tail(path: Path) -> None:
    """Cut a last line that a crash (or a full disk) left without its newline (its record is appended again from
    the database's table)."""
    if not path.exists():
        return
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                pos = pos - step + i + 1
                break
            pos -= step
        fh.seek(pos)
        if not fh.read(2) == b'{"' or not _ends_with_record(fh, pos):
            return  # not a record cut short but a damaged file: left as it is for the chain check to report
        logging.getLogger("qkdseg.kms").warning("%s: cut a torn last line (%d bytes, a write cut by a crash or a "
                                                "full disk)", path, size - pos)
        fh.truncate(pos)


def _ends_with_record(fh, pos: int) -> bool:
    """Whether the file's bytes before ``pos`` (a line's start) are empty or end with a whole JSON record."""
    if pos == 0:
        return True
    fh.seek(max(0, pos - 65536))
    line = fh.read(pos - max(0, pos - 65536)).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def last_seq(path: Path) -> int:
    """The ``seq`` of the last whole record in the file (0 for none)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read().splitlines()
    for line in reversed(tail):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0
