"""The public entry points: :func:`route` and :func:`exdijkstra`.

The modules: ``result`` (:class:`Route` and its :class:`Segment` parts),
``request`` (:func:`route`, and :func:`route_indices` on node indices for
sweeps), ``paths`` (:func:`exdijkstra` on node ids) and ``checks`` (the
checks of a request and its options).
"""

from __future__ import annotations

from ..routing.paths import path_security
from .checks import MAX_PATHS  # noqa: F401  (public here too: the largest max_paths)
from .paths import exdijkstra
from .request import route, route_indices
from .result import Route, Segment

__all__ = ["Route", "Segment", "exdijkstra", "path_security", "route", "route_indices"]
