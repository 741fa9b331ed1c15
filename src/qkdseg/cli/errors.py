"""The ``qkdseg`` command's one error policy, the bottom of the CLI package.

User errors (a bad file, an unknown node, a bad value, a bad or missing
option, an output location that cannot be written) print one line,
``qkdseg: error: ...``, on standard error and exit with status 2; no
traceback. A closed standard output (``qkdseg ... | head``) stops quietly.
Every command group imports :func:`user_errors` from here; nothing here
imports a command group or the assembler (:mod:`qkdseg.cli.app`).
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import re
import sys

import typer
from typer.core import TyperGroup

from ..errors import QkdsegError


def _click_classes(name: str) -> tuple[type, ...]:
    """Click's exception class ``name`` from typer's bundled copy and from
    click itself (typer releases differ in which one they raise)."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_CLICK_ERROR = _click_classes("ClickException")
_USAGE_ERROR = _click_classes("UsageError")
_NO_ARGS = _click_classes("NoArgsIsHelpError")
_ABORT = _click_classes("Abort")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    """Control characters (newlines, terminal escapes) as visible escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def _fail(message: str) -> None:
    typer.echo(f"qkdseg: error: {_one_line(message)}", err=True)


def _quiet_broken_pipe() -> None:
    """The reader closed our stdout (``qkdseg ... | head``): stop quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a descriptor
        pass


class _OneLineGroup(TyperGroup):
    """The top-level command group: every usage error (a missing or unknown
    option, a bad value for a typed option) of every command and sub-app as
    one ``qkdseg: error: ...`` line with status 2, instead of Click's panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as err:  # the help was printed
            rv = err.exit_code
        except _CLICK_ERROR as err:
            ctx = getattr(err, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            hint = f" (see '{ctx.command_path} --help')" if isinstance(err, _USAGE_ERROR) and ctx is not None else ""
            _fail(f"{where}{err.format_message().replace('Value error, ', '')}{hint}")
            rv = 2
        except _ABORT:
            _fail("aborted")
            rv = 1
        except QkdsegError as err:  # raised by a command without its own handler
            _fail(str(err))
            rv = 2
        except BrokenPipeError:
            _quiet_broken_pipe()
            rv = 0
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            _quiet_broken_pipe()
            rv = 0
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def user_errors(func):
    """Turn a :class:`QkdsegError`, or an operating-system error on a file the
    user named, into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QkdsegError as err:
            _fail(str(err))
            raise typer.Exit(2) from None
        except BrokenPipeError:
            raise
        except OSError as err:
            if err.errno == errno.EPIPE:
                raise
            target = f"{err.filename}: " if err.filename else ""
            _fail(f"{target}{err.strerror or err}")
            raise typer.Exit(2) from None
        except MemoryError:
            _fail("out of memory (try a smaller network or fewer trials)")
            raise typer.Exit(2) from None

    return wrapper
