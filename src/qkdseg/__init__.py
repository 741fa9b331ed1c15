"""qkdseg: segment-based multipath key distribution in partially-trusted relay
QKD networks (Wang et al., IEEE Communications Magazine 61(12), 2023).

>>> import qkdseg
>>> net = qkdseg.example_network()
>>> r = qkdseg.route(net, 0, 7, algorithm="smr")
>>> r.segment_nodes, round(r.security, 4)
((0, 3, 4, 7), 0.8847)
"""

from .api import Route, Segment, exdijkstra, route
from .errors import (
    InvalidRequest,
    KeyMaterialShort,
    NetworkError,
    NodeNotFound,
    NoPath,
    QkdsegError,
    SecurityError,
    TopologyFileError,
    UnknownAlgorithm,
)
from .network import DEFAULT_POOL_BITS, Network, NetworkArrays
from .placement import PlacementResult, place
from .routing import ALGORITHMS
from .security import SecurityEstimate, exact_security, independent_security, montecarlo_security
from .sim import Simulation, SimulationResult, simulate
from .topology import example_network, load, load_topohub, read_network, topohub_names, waxman, write_network

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "DEFAULT_POOL_BITS",
    "InvalidRequest",
    "KeyMaterialShort",
    "Network",
    "NetworkArrays",
    "NetworkError",
    "NoPath",
    "NodeNotFound",
    "PlacementResult",
    "QkdsegError",
    "Route",
    "Segment",
    "SecurityError",
    "SecurityEstimate",
    "Simulation",
    "SimulationResult",
    "TopologyFileError",
    "UnknownAlgorithm",
    "example_network",
    "exact_security",
    "exdijkstra",
    "independent_security",
    "load",
    "load_topohub",
    "montecarlo_security",
    "place",
    "read_network",
    "route",
    "simulate",
    "topohub_names",
    "waxman",
    "write_network",
]
