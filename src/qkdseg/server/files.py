"""A server's own files read back: one line naming the file and what is wrong with it, never a bare exception.

The servers and ``net up|down|status`` read JSON files they (or ``net init``)
wrote: ``node.json``, ``links.sealed.json``, ``net.json``, ``nodes.json``, the
run files. A file that is missing, unreadable, not UTF-8, not JSON, or JSON of
the wrong shape is an :class:`qkdseg.errors.InvalidRequest` whose text names
the file as given and the fault (the CLI prints it as one line, exit 2).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "node.json"
>>> _ = p.write_text("{bad")
>>> try:
...     load_json(p, "the node's configuration")
... except Exception as err:
...     print(str(err).replace(str(p), "node.json"))
node.json: the node's configuration is damaged: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2); restore it from a backup or run 'qkdseg net init' again
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest

#: What to do about a damaged file that ``net init`` wrote (the default advice).
REMAKE = "restore it from a backup or run 'qkdseg net init' again"


def load_json(path: Path, what: str, *, missing: str | None = None, shape: type = dict, advice: str = REMAKE) -> Any:
    """The JSON value in ``path`` (of type ``shape``); :class:`InvalidRequest` naming ``path`` and the fault.

    ``missing`` is the whole message for a file that does not exist (default:
    ``"PATH: no such file (WHAT)"``).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidRequest(missing or f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise InvalidRequest(f"{path}: is a directory, not {what}") from None
    except PermissionError:
        raise InvalidRequest(f"{path}: permission denied (reading {what})") from None
    except OSError as err:
        raise InvalidRequest(f"{path}: cannot read {what}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path}: {what} is damaged: not UTF-8 text; {advice}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as err:
        raise InvalidRequest(f"{path}: {what} is damaged: the key {err.args[0]!r} is given twice; {advice}") from None
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"{path}: {what} is damaged: not valid JSON ({err.msg} at line {err.lineno}, column "
                             f"{err.colno}); {advice}") from None
    except RecursionError:
        raise InvalidRequest(f"{path}: {what} is damaged: nested too deeply; {advice}") from None
    if not isinstance(value, shape):
        raise InvalidRequest(f"{path}: {what} is damaged: a JSON {type(value).__name__} where "
                             f"{'an object' if shape is dict else 'a ' + shape.__name__} belongs; {advice}")
    return value


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    """A JSON object whose keys are distinct (Python's json keeps the last of two quietly)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        raise _Duplicate(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def damaged(path: Path, what: str, err: BaseException, advice: str = REMAKE, field: str | None = None) -> InvalidRequest:
    """The one-line refusal of a JSON file of the right syntax but the wrong content (a field missing or of the
    wrong type: ``err`` is the KeyError, TypeError or ValueError its use raised; ``field``: the field then read)."""
    if isinstance(err, KeyError):
        fault = f"field {err.args[0]!r} is missing" + (f" (in {field!r})" if field and field != err.args[0] else "")
    elif field is not None:
        fault = f"field {field!r} has the wrong type or value"
    else:
        fault = f"a field has the wrong type or value ({type(err).__name__})"
    return InvalidRequest(f"{path}: {what} is damaged: {fault}; {advice}")


def check_fields(path: Path, what: str, checks, advice: str = REMAKE) -> None:
    """Run ``checks`` (pairs: a field's name, a callable that reads and checks it, raising KeyError, TypeError or
    ValueError when it is missing, of the wrong type or out of range); the first to fail is :func:`damaged`."""
    for name, check in checks:
        try:
            if check() is False:
                raise ValueError(name)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise damaged(path, what, err, advice, field=name) from None


def port_of(address) -> int:
    """The port of ``HOST:PORT`` (ValueError when there is none or it is not in 1..65535)."""
    host, port = str(address).rsplit(":", 1)
    if not host or not 1 <= int(port) <= 65535:
        raise ValueError(address)
    return int(port)


#: The file that marks each kind of directory a qkdseg command makes, the most specific first (a controller's
#: directory holds a kms.toml too), and what the directory then is.
MARKS = (("node.json", "a node's directory of a network of nodes (node.json)"),
         ("net.json", "the controller's directory of a network of nodes (net.json)"),
         ("nodes.json", "a network of nodes (nodes.json)"),
         ("device.toml", "a QKD device emulator's directory (device.toml)"),
         ("kms.toml", "a key service directory (kms.toml)"))


def made_as(directory: Path) -> str | None:
    """The mark (a file name of :data:`MARKS`) of the kind of directory ``directory`` is, or ``None``."""
    for name, _ in MARKS:
        if (Path(directory) / name).exists():
            return name
    return None


def refuse_other_kind(directory: Path, own: str, want: str) -> None:
    """:class:`InvalidRequest` when ``directory`` is a kind of directory other than the command's own (``own``: its
    mark in :data:`MARKS`; ``want``: what the command takes, e.g. "a kms serve directory")."""
    mark = made_as(directory)
    if mark is not None and mark != own:
        raise InvalidRequest(f"{directory}: {dict(MARKS)[mark]}, not {want}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (the directory's own entry, fsynced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """``text`` replaces ``path`` whole, mode 0600, on disk before the rename (a crash leaves the old or the new)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
