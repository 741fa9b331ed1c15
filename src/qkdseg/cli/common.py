"""What the command groups share: option types, range checks, output helpers.

Text output escapes control characters in ids and names read from files.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import InvalidRequest
from .errors import _one_line

NET_HELP = "A network: a .json/.graphml/.gml file, 'example', or 'topohub:GROUP/NAME[?trusted=K&p=P&seed=S]'."


def _txt(value: Any) -> str:
    """A value from a file (an id, a name) for text output: control characters
    escaped, no Rich markup."""
    return escape(_one_line(str(value)))


#: Bounds of the sweep commands' counts: far above any real run, low enough
#: that a typo fails at once instead of running for days or exhausting memory.
MAX_TRIALS = 10_000_000
MAX_REQUESTS = 1_000_000
MAX_WORKERS = 1024


def _check_range(value: Optional[int], option: str, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidRequest(f"{option} {value}: must lie in [{lo}, {hi}]")


def _check_seed(seed: Optional[int], option: str = "--seed") -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise InvalidRequest(f"{option} {seed}: must be a whole number in [0, 2**63)")


def _check_out_dir(out: Path, option: str = "--out") -> None:
    """Fail before any work when ``out`` cannot be a writable directory."""
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{option} {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidRequest(f"{option} {out}: cannot create the directory: {err.strerror or err}") from None
    probe = out / f".qkdseg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InvalidRequest(f"{option} {out}: cannot write there: {err.strerror or err}") from None


class Fmt(str, Enum):
    text = "text"
    json = "json"


class Scheme(str, Enum):
    paper = "paper"
    optimal = "optimal"
    reuse = "reuse"
    xor_all = "xor-all"


class Backend(str, Enum):
    processes = "processes"
    serial = "serial"


def _console() -> Console:
    return Console(width=160 if not sys.stdout.isatty() else None, highlight=False)


def _dump(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, allow_nan=False))


def _load(net: str, default_p: Optional[float]):
    from ..topology import load

    return load(net, default_p=default_p)


def _need_server_extra() -> None:
    """The servers' commands (kms, net, node, controller) need the 'kms' extra."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InvalidRequest("the key service needs the 'kms' extra: pip install 'qkdseg[kms]'") from None
