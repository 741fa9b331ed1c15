"""Topologies: file formats, generators, real networks and the built-in example.

One module per file format (:mod:`.nodelink`, :mod:`.graphml`, :mod:`.gml`,
registered in :mod:`.formats`; :mod:`.files` reads and writes them) and per
source (:mod:`.waxman`, :mod:`.waxman_large`, :mod:`.topohub`,
:mod:`.example`; :mod:`.generate` picks one by size); :mod:`.spec` parses a CLI argument, :mod:`.layout` places
nodes for drawing.

- :func:`read_network` / :func:`write_network`: networkx node-link JSON (both
  the ``links`` and the ``edges`` key are accepted), GraphML and GML.
- :func:`waxman`: the Waxman-Salama generator of docs/model.md section 7, seeded and
  resampled until connected.
- :func:`waxman_large`: the same model for 10^4-10^6 nodes (KD-tree, degree
  kept constant; docs/performance.md).
- :func:`load_topohub`: the real topologies shipped by the ``topohub`` package
  (Internet Topology Zoo, SNDlib, ...), with a seeded trusted-relay rule.
- :func:`example_network`: a tiny network for the docs and doctests.
- :func:`load`: one entry point for a CLI argument (a path, ``example``, or
  ``topohub:GROUP/NAME[?trusted=K&p=P&seed=S&placement=random|degree]``).
"""

from __future__ import annotations

from .example import example_network
from .files import read_network, write_network
from .formats import FORMATS, FileFormat, register_format
from .generate import GENERATORS, generate, generate_waxman
from .layout import file_positions, node_positions
from .spec import BUILTIN, load
from .topohub import load_topohub, topohub_names
from .waxman import WAXMAN_MEAN_DEGREE, waxman, waxman_draw
from .waxman_large import waxman_large

__all__ = [
    "BUILTIN",
    "FORMATS",
    "FileFormat",
    "GENERATORS",
    "WAXMAN_MEAN_DEGREE",
    "example_network",
    "generate",
    "generate_waxman",
    "load",
    "load_topohub",
    "file_positions",
    "node_positions",
    "read_network",
    "register_format",
    "topohub_names",
    "waxman",
    "waxman_draw",
    "waxman_large",
    "write_network",
]
