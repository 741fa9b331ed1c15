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
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"{path}: {what} is damaged: not valid JSON ({err.msg} at line {err.lineno}, column "
                             f"{err.colno}); {advice}") from None
    except RecursionError:
        raise InvalidRequest(f"{path}: {what} is damaged: nested too deeply; {advice}") from None
    if not isinstance(value, shape):
        raise InvalidRequest(f"{path}: {what} is damaged: a JSON {type(value).__name__} where "
                             f"{'an object' if shape is dict else 'a ' + shape.__name__} belongs; {advice}")
    return value


def damaged(path: Path, what: str, err: BaseException, advice: str = REMAKE) -> InvalidRequest:
    """The one-line refusal of a JSON file of the right syntax but the wrong content (a field missing or of the
    wrong type: ``err`` is the KeyError, TypeError or ValueError its use raised)."""
    if isinstance(err, KeyError):
        fault = f"field {err.args[0]!r} is missing"
    else:
        fault = f"a field has the wrong type or value ({type(err).__name__})"
    return InvalidRequest(f"{path}: {what} is damaged: {fault}; {advice}")
