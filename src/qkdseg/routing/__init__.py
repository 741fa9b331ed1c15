"""Routing algorithms. Importing this package registers all of them."""

from . import baselines, least_loaded, msp, smr, smr_exact, smr_level  # noqa: F401  (registration side effect)
from .paths import exdijkstra_indices, path_security
from .registry import ALGORITHMS, Algorithm, get_algorithm, register

__all__ = ["ALGORITHMS", "Algorithm", "exdijkstra_indices", "get_algorithm", "path_security", "register"]
