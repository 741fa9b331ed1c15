"""Reading and writing topology files, in any registered format (:mod:`.formats`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NetworkError, TopologyFileError
from ..network import DEFAULT_POOL_BITS, Network, check_probability
# Registration side effects, in the order error messages list the formats.
from . import nodelink  # noqa: F401, I001
from . import graphml  # noqa: F401
from . import gml  # noqa: F401
from .formats import format_of


def read_network(
    path: str | Path,
    *,
    fmt: str | None = None,
    default_p: float | None = None,
    default_pool_bits: int = DEFAULT_POOL_BITS,
) -> Network:
    """Read a network from node-link JSON, GraphML or GML.

    Node ids are kept exactly as in the file (integers stay integers in JSON;
    GraphML ids are strings by that format's definition; GML uses the integer
    ``id`` field).

    Parameters
    ----------
    path : str or Path
        The file. The format follows the suffix unless ``fmt`` is given.
    fmt : {"json", "graphml", "gml"}, optional
    default_p : float, optional
        ``p`` for untrusted nodes that have none (else such nodes are an error).
    default_pool_bits : int
        Pool of links without ``pool_bits``, bits.

    Raises
    ------
    TopologyFileError
        The file is missing, unreadable or malformed (the message names it).
    NetworkError
        The network violates the model (the message names file and culprit).
    """
    if not isinstance(path, (str, Path)):
        raise TopologyFileError(f"read_network: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if default_p is not None:
        default_p = check_probability(default_p, "default_p")
    if path.is_dir():
        raise TopologyFileError(f"{path}: is a directory, not a topology file")
    form = format_of(path, fmt)
    if not path.is_file():
        raise TopologyFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    where = str(path)
    try:
        g = form.read(path, where, default_p=default_p, default_pool_bits=default_pool_bits)
        if isinstance(g, Network):  # a reader's fast path, already validated
            return g
    except (TopologyFileError, NetworkError):
        raise
    except json.JSONDecodeError as err:
        raise TopologyFileError(f"{where}: malformed JSON at line {err.lineno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TopologyFileError(f"{where}: cannot read: {err}") from None
    except Exception as err:  # networkx parsers raise many kinds on bad input
        raise TopologyFileError(f"{where}: malformed {form.name}: {err}") from None
    name = g.graph.get("name") or path.stem
    try:
        return Network(g, default_p=default_p, default_pool_bits=default_pool_bits, name=str(name))
    except NetworkError as err:
        raise NetworkError(f"{where}: {err}") from None


def write_network(network: Network, path: str | Path, *, fmt: str | None = None) -> Path:
    """Write ``network`` as node-link JSON (key ``links``), GraphML or GML.

    Returns the path written. JSON output is canonical: the same network gives
    byte-identical files.
    """
    if not isinstance(network, Network):
        raise TopologyFileError(f"write_network: expected a qkdseg.Network, got {type(network).__name__}")
    if not isinstance(path, (str, Path)):
        raise TopologyFileError(f"write_network: expected a file path, got {type(path).__name__}")
    path = Path(path)
    form = format_of(path, fmt)
    try:
        form.write(network, path)
    except OSError as err:
        raise TopologyFileError(f"{path}: cannot write: {err}") from None
    return path
