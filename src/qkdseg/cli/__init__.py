"""The ``qkdseg`` command: a thin adapter over the Python API.

One module per command group (``route``, ``topology``, ``demo``,
``emulate``, ``experiments``, ``simulate``, ``place``, ``kms``), the error
policy at the bottom (:mod:`qkdseg.cli.errors`: one ``qkdseg: error: ...``
line and exit status 2 for every user error), the shared options above it
(:mod:`qkdseg.cli.common`) and the assembler at the top
(:mod:`qkdseg.cli.app`). ``qkdseg.cli:main`` is the console script.
"""

from .app import app, main

__all__ = ["app", "main"]
