"""The ``qkdseg`` command's one error policy, the bottom of the CLI package.

User errors (a bad file, an unknown node, a bad value, a bad or missing
option, an output location that cannot be written) print one line,
``qkdseg: error: ...``, on standard error and exit with status 2; no
traceback. A closed standard output (``qkdseg ... | head``) stops quietly.
Ctrl-C (SIGINT) stops a batch command with one line, ``qkdseg: error:
interrupted``, and exit status 130, wherever it lands: in Python, inside a
compiled kernel (numba may then surface it as another exception, which is
reported the same way) or while process-pool workers run (they ignore
SIGINT and are stopped by the parent). A second Ctrl-C during the clean-up
stops at once, with the same one line. The servers install their own
handlers while they serve and stop cleanly with exit 0.
Every command group imports :func:`user_errors` from here; nothing here
imports a command group or the assembler (:mod:`qkdseg.cli.app`).
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import re
import signal
import sys
import threading

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


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
_INTERRUPTED_LINE = "interrupted"


class _Interrupts:
    """The SIGINT handler of one ``qkdseg`` invocation.

    Where qkdseg's own code (which calls compiled kernels) or numba's runs,
    the handler does not raise by itself: Python may run it from inside a C
    function (numba's dispatcher calls ``PyErr_CheckSignals``), which then
    returns with an exception set (a ``SystemError``) or crashes. Instead it
    turns on a trace function, which raises :class:`KeyboardInterrupt` at the
    next line of Python code outside numba: a point where raising is always
    safe, at once in Python code and as soon as a compiled kernel (or
    numba's compiler) returns. Anywhere else (a wait for workers in the
    standard library, pandas, matplotlib) it raises at once, as Python's
    default handler does. A second Ctrl-C, while the first one's
    clean-up runs, writes the line and exits at once. In a forked child (a
    worker process before its initializer ran) it does nothing.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.hit = False
        self.reported = False

    def __call__(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            return
        if self.hit:
            self.report(now=True)
            os._exit(EXIT_INTERRUPTED)
        self.hit = True
        if frame is not None and not _may_call_numba(frame):
            raise KeyboardInterrupt  # a wait in the standard library, a library's Python code: Python's own behaviour
        self.rearm(frame)

    def _trace(self, frame, event, arg):
        if _COMPILER.search(frame.f_code.co_filename):  # numba's and llvmlite's own Python code (compiler, callbacks)
            return None
        if event in ("line", "return", "exception"):
            sys.settrace(None)
            raise KeyboardInterrupt
        return self._trace

    def rearm(self, frame) -> None:
        sys.settrace(self._trace)
        while frame is not None:
            frame.f_trace = self._trace
            frame = frame.f_back

    def report(self, now: bool = False) -> None:
        """The one line, once. ``now``: from the handler itself, straight to
        the descriptor (what sys.stderr holds may be half written)."""
        if self.reported:
            return
        self.reported = True
        if not now:
            _fail(_INTERRUPTED_LINE)
            return
        try:
            os.write(2, f"qkdseg: error: {_INTERRUPTED_LINE}\n".encode())
        except OSError:  # pragma: no cover - stderr closed
            pass


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _may_call_numba(frame) -> bool:
    """Whether ``frame`` runs qkdseg's own code or numba's (the code that calls compiled kernels)."""
    name = frame.f_code.co_filename
    return name.startswith(_PACKAGE) or _COMPILER.search(name) is not None


#: numba's and llvmlite's Python code: llvmlite runs some of it as ctypes callbacks from C, where an exception
#: cannot propagate (ctypes prints it as "Exception ignored" with a traceback).
_COMPILER = re.compile(r"[/\\](numba|llvmlite)[/\\]")


def _unraisable(handler: "_Interrupts", default):
    """``sys.unraisablehook`` while a command runs: the interrupt raised where it could not propagate (a callback
    from C) is not printed; the trace is armed again, so it is raised at the next line where it can."""

    def hook(unraisable) -> None:
        if handler.hit and unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            handler.rearm(sys._getframe(1))
            return
        default(unraisable)

    return hook


#: The handler of the invocation running now (None outside ``main``).
_ACTIVE: "_Interrupts | None" = None


def interrupted() -> bool:
    """Whether Ctrl-C stopped the command now running."""
    return _ACTIVE is not None and _ACTIVE.hit


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
        global _ACTIVE
        handler = _Interrupts()
        previous, outer = None, _ACTIVE
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, handler)
        _ACTIVE = handler
        unraisable = sys.unraisablehook
        sys.unraisablehook = _unraisable(handler, unraisable)
        try:
            rv = self._main(args, prog_name, complete_var, handler, **extra)
        finally:
            _ACTIVE = outer
            sys.unraisablehook = unraisable
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def _main(self, args, prog_name, complete_var, handler: _Interrupts, **extra):
        try:
            try:
                rv = self._run(args, prog_name, complete_var, **extra)
            except KeyboardInterrupt:
                raise
            except BaseException:
                if handler.hit:  # the interrupt, surfaced as another exception (numba: SystemError)
                    raise KeyboardInterrupt from None
                raise
            if not handler.hit:  # typer turns KeyboardInterrupt into exit status 130, silently
                return rv
        except KeyboardInterrupt:
            handler.hit = True
        handler.report()
        return EXIT_INTERRUPTED

    def _run(self, args, prog_name, complete_var, **extra):
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
        except _ABORT:  # click's form of KeyboardInterrupt (and of end of input at a prompt)
            raise KeyboardInterrupt from None
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
        return rv


def _current_context():
    """Click's context of the command running now (typer's bundled click or click itself), or None."""
    for module in ("typer._click.globals", "click.globals"):  # newer typer releases bundle their own click
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            return ctx
    return None


_ASSIGNED_KEYWORD = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)]+)")
_COMPARED_KEYWORD = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)(?= ?(?:>=|<=|>|<) ?-?\d)")


def _typed(ctx, name: str, text: str) -> bool:
    """Whether ``text`` (``max_paths=-1``'s ``-1``) is the value of the command's option ``name``: the user's flag,
    not a field of a file the command read (``trace.csv: row 3: key_bits=0``)."""
    value = ctx.params.get(name)
    if value is None or isinstance(value, (list, tuple, dict)):
        return False
    value = getattr(value, "value", value)  # an Enum choice
    text = text.strip("'\"")
    if str(value) == text:
        return True
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return False


def flags_named(message: str) -> str:
    """The library's errors name its keyword arguments (``max_paths=0 must be ...``, ``needs tolerate >= 1``); on
    the command line they name the flag the user typed instead (``--max-paths 0 must be ...``, ``needs --tolerate
    >= 1``): each keyword that is an option of the running command (with the value given to it, where it has one).

    >>> flags_named("max_paths=0 must be a positive integer")  # no command running: as it was
    'max_paths=0 must be a positive integer'
    """
    ctx = _current_context()
    if ctx is None:
        return message
    flags = {p.name: next((o for o in p.opts if o.startswith("--")), None) for p in ctx.command.params
             if getattr(p, "param_type_name", "") == "option"}
    flags = {k: v for k, v in flags.items() if v}

    def assigned(k: re.Match) -> str:
        name, text = k.groups()
        return f"{flags[name]} {text}" if name in flags and _typed(ctx, name, text) else k.group()

    message = _ASSIGNED_KEYWORD.sub(assigned, message)
    return _COMPARED_KEYWORD.sub(lambda k: flags.get(k.group(1), k.group(1)), message)


def user_errors(func):
    """Turn a :class:`QkdsegError`, or an operating-system error on a file the
    user named, into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:
            if interrupted():  # not a user error: the interrupt on its way out
                raise KeyboardInterrupt from None
            raise

    return _report(wrapper)


def _report(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QkdsegError as err:
            _fail(flags_named(str(err)))
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
