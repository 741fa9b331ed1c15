"""qkdseg: segment-based multipath key distribution in partially-trusted relay
QKD networks (Wang et al., IEEE Communications Magazine 61(12), 2023).

Entry points (each has its own help):

- networks: ``example_network()``, ``waxman(n, trusted=, p=, seed=)``,
  ``load(spec)`` / ``read_network(path)`` / ``write_network(net, path)``,
  ``load_topohub(key)``, ``Network`` (``route`` and ``simulate`` also take a
  networkx graph);
- one request: ``route(net, src, dst, algorithm="smr", epsilon=...,
  reconstruction=...)`` -> ``Route`` (``.paths_frame()``, ``.to_dict()``);
  ``ALGORITHMS`` lists the routing algorithms;
- security: ``exact_security``, ``independent_security``,
  ``montecarlo_security``;
- time-dynamic runs: ``simulate(net, rate=..., duration=..., algorithms=...)``
  -> ``SimulationResult``; ``Simulation`` for step-by-step control;
- trusted-relay placement: ``place(net, budget)`` -> ``PlacementResult``;
- the key service and the network of nodes: the ``qkdseg kms``, ``qkdseg
  net``, ``qkdseg node`` and ``qkdseg controller`` commands (docs/kms.md,
  docs/network.md); the command line: ``qkdseg --help``.

>>> import qkdseg
>>> net = qkdseg.example_network()
>>> r = qkdseg.route(net, 0, 7, algorithm="smr")
>>> r.segment_nodes, round(r.security, 4)
((0, 3, 4, 7), 0.8847)
"""

# The public names load on first use (PEP 562), so that a process that needs only a small part of the
# package (a network node, ``qkdseg node serve``, docs/network.md) does not import the routing kernels
# (numba, llvmlite) or scipy.
_LAZY = {
    "Route": "api", "Segment": "api", "exdijkstra": "api", "route": "api",
    "InvalidRequest": "errors", "KeyMaterialShort": "errors", "NetworkError": "errors", "NodeNotFound": "errors",
    "NoPath": "errors", "QkdsegError": "errors", "SecurityError": "errors", "TopologyFileError": "errors",
    "UnknownAlgorithm": "errors",
    "DEFAULT_POOL_BITS": "network", "Network": "network", "NetworkArrays": "network",
    "PlacementResult": "placement", "place": "placement",
    "ALGORITHMS": "routing",
    "SecurityEstimate": "security", "exact_security": "security", "independent_security": "security",
    "montecarlo_security": "security",
    "Simulation": "sim", "SimulationResult": "sim", "simulate": "sim",
    "example_network": "topology", "load": "topology", "load_topohub": "topology", "read_network": "topology",
    "topohub_names": "topology", "waxman": "topology", "write_network": "topology",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'qkdseg' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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
