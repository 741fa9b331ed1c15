"""What the command groups share: option types, range checks, output helpers.

Text output escapes control characters in ids and names read from files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


def _check_number(value: Optional[float], option: str, *, lo: float = 0.0, hi: float = math.inf,
                  lo_open: bool = False, what: str = "") -> None:
    """A finite number in [lo, hi] (or (lo, hi] with ``lo_open``), named as the user typed it."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise InvalidRequest(f"{option} {value:g}: must be a finite number {bounds}{what}")


def _check_seed(seed: Optional[int], option: str = "--seed") -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise InvalidRequest(f"{option} {seed}: must be a whole number in [0, 2**63)")


def out_path(text: str) -> Path:
    """The parser of every output path option: an empty one is refused (it
    would silently mean the current directory)."""
    if not str(text).strip():
        raise typer.BadParameter("an empty path: name a directory or file (use . for the current directory)")
    return Path(text)


#: Keyword arguments of an output path option (``typer.Option("--out", **OUT_PATH)``).
OUT_PATH = {"parser": out_path, "metavar": "PATH"}


def _existing_anchor(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing ancestor."""
    anchor = path.absolute()
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    return anchor


def _check_out_dir(out: Path, option: str = "--out") -> None:
    """Fail before any work when ``out`` cannot become a writable directory.
    Creates nothing: the outputs are written by :func:`staged_output`."""
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{option} {out}: exists and is not a directory")
    anchor = _existing_anchor(out)
    if not anchor.is_dir():
        raise InvalidRequest(f"{option} {out}: cannot create the directory: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise InvalidRequest(f"{option} {out}: cannot write there: permission denied on {anchor}")


class Staged:
    """A run's outputs on their way to ``out``: written into :attr:`dir`, a
    hidden folder inside ``out`` (or beside it, in its nearest existing
    ancestor, when ``out`` does not exist yet), and moved into place by
    :meth:`commit`."""

    def __init__(self, out: Path, last: tuple[str, ...]) -> None:
        self.out = out
        self.last = last
        anchor = _existing_anchor(out)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".qkdseg-partial-{out.name or 'out'}-", dir=anchor))
        except OSError as err:  # a read-only place (root passes the access check): named as the user gave it
            raise InvalidRequest(f"{out}: cannot write there: {err.strerror or err}") from None

    def final(self, path) -> Path:
        """Where a file written into the staging folder ends up."""
        return self.out / Path(path).relative_to(self.dir)

    def commit(self) -> None:
        """Move every file into ``out``, the completion markers (``last``) last; an old
        marker goes first, so that a half-moved set never looks complete. Ctrl-C waits."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in self.dir.iterdir())
            markers = [n for n in self.last if n in names]
            for name in markers:
                (self.out / name).unlink(missing_ok=True)
            for name in [n for n in names if n not in markers] + markers:
                os.replace(self.dir / name, self.out / name)
            self.dir.rmdir()
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def staged_output(out: Path, *, last: tuple[str, ...] = ("report.md", "run.json")) -> Iterator[Staged]:
    """Write a command's outputs into a staging folder and move them into
    ``out`` only when the body succeeds: an interrupted or failed run leaves
    the previous output (or nothing), never a half-written folder. Files in
    ``out`` that the run does not write stay as they are."""
    stage = Staged(out, last)
    try:
        yield stage
        stage.commit()
    finally:
        stage.discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed onto it, with the mode a new file gets under
    the umask (as every other tool's output: ``mkstemp`` makes its file 0600)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.absolute().parent)
    except OSError as err:  # a missing folder, a read-only place: named as the user gave it, not the temporary file
        raise InvalidRequest(f"{path}: cannot write: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Fmt(str, Enum):
    text = "text"
    json = "json"


class Sharing(str, Enum):
    xor = "xor"
    threshold = "threshold"


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
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InvalidRequest("the key service needs the 'kms' extra: pip install 'qkdseg[kms]'") from None


def check_log_options(log_level: str, log_format: str) -> None:
    """``--log-level`` and ``--log-format`` of every server command."""
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level not in levels:
        raise InvalidRequest(f"--log-level {log_level!r} must be critical, error, warning, info or debug")
    if log_format not in ("text", "json"):
        raise InvalidRequest(f"--log-format {log_format!r} must be text or json")


def _parse_saes(items: list[str]) -> dict[str, str]:
    """``--sae SAE_ID=NODE`` (repeated) of ``kms init`` and ``net init``: SAE id -> node, each id checked once."""
    from ..server.config import check_sae_id

    saes: dict[str, str] = {}
    for item in items:
        name, sep, node = item.partition("=")
        if not sep or not node:
            raise InvalidRequest(f"--sae {item!r} must be SAE_ID=NODE")
        check_sae_id(name, "--sae: SAE id")
        if name in saes:
            raise InvalidRequest(f"--sae: SAE id {name!r} given twice")
        saes[name] = node
    return saes


#: ``--stock*`` of ``kms init`` and ``net init`` (docs/kms.md, "Key stocks")
STOCK_OPTION = typer.Option("--stock", metavar="MASTER:SLAVE", show_default=False,
                            help="Keep a key stock for this SAE pair (ETSI 014's direction; repeat).")
STOCK_KEYS_OPTION = typer.Option("--stock-keys", metavar="LOW:HIGH", show_default=False,
                                 help="A stock's watermarks in keys: refilled below LOW up to HIGH (default 16:64).")
STOCK_LEVEL_OPTION = typer.Option("--stock-level", show_default=False,
                                  help="The stocked keys' security level (default: --security-level).")
STOCK_SIZE_OPTION = typer.Option("--stock-size", metavar="BITS", show_default=False,
                                 help="The stocked keys' size, bits (default: --key-size).")
STOCK_POLICY_OPTION = typer.Option("--stock-policy", metavar="fixed|adaptive", show_default=False,
                                   help="What a stock is filled to: fixed (the watermarks; default) or adaptive "
                                        "(sized by the pair's demand and refill time, at most HIGH).")
STOCK_HIT_OPTION = typer.Option("--stock-hit", metavar="P", show_default=False,
                                help="adaptive: the share of requests that should find their keys in stock "
                                     "(default 0.99).")

#: The quotas of ``kms init`` and ``net init`` (docs/kms.md, "Quotas"; qkdseg.server.quota)
MAX_KEY_COUNT_OPTION = typer.Option("--max-key-count", help="Most keys issued and not yet fetched by their slaves "
                                    "(where they wait: the service; in a network, the slave's node).")
SAE_MAX_WAITING_OPTION = typer.Option("--sae-max-waiting", metavar="N",
                                      help="Most keys waiting for one master-slave pair (0: no limit).")
SAE_RATE_OPTION = typer.Option("--sae-rate", metavar="R",
                               help="Most ETSI 014 requests per second of one SAE, a token bucket (0: no limit).")

#: ``--sharing`` and ``--tolerate`` of ``kms init`` and ``net init`` (docs/kms.md, "Threshold sharing"; issue 40)
SHARING_OPTION = typer.Option("--sharing", metavar="xor|threshold", show_default=False,
                              help="How a segment's path pieces make its key: xor (every piece needed; the default) "
                                   "or threshold (shared k-of-m, k = m - T: a run survives T lost paths).")
TOLERATE_OPTION = typer.Option("--tolerate", metavar="T", show_default=False,
                               help="Threshold sharing: the lost paths a segment key survives (T >= 1; implies "
                                    "--sharing threshold and --reconstruction xor-all).")


def sharing_fields(sharing: str | None, tolerate: int | None, reconstruction: str | None) -> dict:
    """``sharing``, ``tolerate`` and ``reconstruction`` of a ``kms.toml`` from ``--sharing``, ``--tolerate`` and
    ``--reconstruction`` (None: not given), or one line naming the flag at fault."""
    if sharing is not None and sharing not in ("xor", "threshold"):
        raise InvalidRequest(f"--sharing {sharing!r} must be xor or threshold")
    if tolerate is not None and not 0 <= tolerate <= 254:
        raise InvalidRequest(f"--tolerate {tolerate} must be a whole number of lost paths in 0..254")
    if sharing is None:
        sharing = "threshold" if tolerate else "xor"
    if sharing == "xor" and tolerate:
        raise InvalidRequest(f"--tolerate {tolerate} needs --sharing threshold (XOR needs every piece: it tolerates "
                             "no lost path)")
    if sharing == "threshold" and not tolerate:
        raise InvalidRequest(f"--sharing threshold needs --tolerate T with T >= 1 (the lost paths a segment key "
                             f"survives), got {'none' if tolerate is None else tolerate}")
    if sharing == "threshold" and reconstruction not in (None, "xor-all"):
        raise InvalidRequest(f"--reconstruction {reconstruction} cannot share: threshold sharing (--tolerate) needs "
                             "--reconstruction xor-all (one part of all a segment's paths)")
    if reconstruction is None:
        reconstruction = "xor-all" if sharing == "threshold" else "paper"
    return {"sharing": sharing, "tolerate": int(tolerate or 0), "reconstruction": reconstruction}


def _parse_algorithm_options(items: list[str]) -> dict:
    """``--algorithm-option NAME=VALUE`` (repeated): ``true``/``false``, an integer, a number, else text."""
    out: dict = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name or not raw:
            raise InvalidRequest(f"--algorithm-option {item!r} must be NAME=VALUE")
        if name in out:
            raise InvalidRequest(f"--algorithm-option: {name!r} given twice")
        if raw.lower() in ("true", "false"):
            out[name] = raw.lower() == "true"
            continue
        for kind in (int, float):
            try:
                out[name] = kind(raw)
                break
            except ValueError:
                continue
        else:
            out[name] = raw
    return out
