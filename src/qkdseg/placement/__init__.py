"""Trusted-relay placement: which nodes to harden (docs/placement.md).

Given a network, a budget ``k`` and a set of demands, choose ``k`` untrusted
nodes to make trusted (``p = 1``) so that an objective of SMR's routes over
the demands is as large as possible. :func:`place` runs one method and
returns a :class:`PlacementResult`; :func:`place_curve` gives the objective
against ``k`` for several methods.

>>> import qkdseg
>>> r = qkdseg.place(qkdseg.example_network(), 2, method="greedy")
>>> r.nodes, [round(x, 4) for x in r.trace], round(r.initial, 4)
((5, 8), [0.9876, 0.9938], 0.9737)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..network import Network, check_count, check_probability
from .demands import Demands, make_demands
from .engine import OBJECTIVES, Engine
from .methods import BASELINES, LAZY_MODES, exact, greedy, ranked, swap

#: Every method :func:`place` knows: the optimisers, then the baselines.
METHODS = ("greedy", "swap", "exact", *BASELINES)
#: Methods whose choice for budget k is the first k of their choice for any
#: larger budget (one run gives the whole curve).
NESTED = ("greedy", *BASELINES)


@dataclass(frozen=True)
class PlacementResult:
    """The result of :func:`place`; immutable.

    Attributes
    ----------
    method, objective : str
    budget : int
    nodes : tuple
        The chosen node ids, in the order they were added.
    trace : tuple of float
        The objective after each addition (``trace[-1]`` is the final value).
    initial : float
        The objective with no node added.
    demands : dict
        ``spec``, ``count`` and ``total_weight`` of the demand set.
    seed : int
        The seed of every random choice (demand sampling, ``random``).
    options : dict
        ``epsilon`` (the ``keys`` level), ``lazy``, ``max_passes``, ...
    routings : int
        Demand routings the method spent (a machine-independent cost).
    """

    method: str
    objective: str
    budget: int
    nodes: tuple
    trace: tuple
    initial: float
    demands: dict
    seed: int
    options: dict = field(default_factory=dict)
    routings: int = 0

    @property
    def value(self) -> float:
        """The objective of the whole placement."""
        return self.trace[-1] if self.trace else self.initial

    def apply(self, network: Network) -> Network:
        """``network`` with the chosen nodes trusted (``p = 1``), ready for ``route``."""
        return network.with_nodes({v: {"trusted": True, "p": 1.0} for v in self.nodes})

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective,
            "budget": self.budget,
            "nodes": list(self.nodes),
            "trace": list(self.trace),
            "initial": self.initial,
            "value": self.value,
            "demands": dict(self.demands),
            "seed": self.seed,
            "options": dict(self.options),
            "routings": self.routings,
        }


def _check(network: Network, budget: Any, objective: str, method: str, epsilon: Any, lazy: str) -> int:
    if not isinstance(network, Network):
        raise InvalidRequest(f"place: expected a Network, got {type(network).__name__}")
    if objective not in OBJECTIVES:
        raise InvalidRequest(f"unknown objective {objective!r} (use {', '.join(OBJECTIVES)})")
    if method not in METHODS:
        raise InvalidRequest(f"unknown placement method {method!r} (use {', '.join(METHODS)})")
    if lazy not in LAZY_MODES:
        raise InvalidRequest(f"lazy={lazy!r}: use {', '.join(LAZY_MODES)}")
    check_probability(epsilon, "epsilon", InvalidRequest)
    n_cand = network.n_nodes - len(network.trusted_nodes)
    if n_cand == 0 and not isinstance(budget, bool) and isinstance(budget, int) and budget > 0:
        raise InvalidRequest(f"budget={budget}: every node of {network.name} is trusted already (no node is left to harden)")
    return check_count(budget, "budget", minimum=0, maximum=n_cand, error=InvalidRequest)


def _bar(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)


def place(
    network: Network,
    budget: int,
    *,
    objective: str = "security",
    method: str = "greedy",
    demands: str | Demands = "all",
    seed: int = 0,
    epsilon: float = 0.9,
    lazy: str = "celf",
    max_passes: int = 5,
    max_placements: int = 200_000,
    progress: bool = False,
) -> PlacementResult:
    """Choose ``budget`` nodes to make trusted (docs/placement.md).

    Parameters
    ----------
    network : Network
        Its trusted relays stay trusted; every other node keeps its ``p``
        unless chosen. The candidates are its untrusted nodes.
    budget : int
        Number of nodes to add, ``0 <= budget <= untrusted nodes``.
    objective : {"security", "worst", "keys"}
        ``security``: the weighted mean exact end-to-end security of SMR
        over the demands (probability); ``worst``: its minimum; ``keys``:
        the weighted mean key length at level ``epsilon`` under the paper's
        reconstruction (bits).
    method : str
        One of :data:`METHODS`: ``greedy`` (lazy, see ``lazy``), ``swap``
        (greedy then swap local search), ``exact`` (enumeration), or a
        baseline ``random``, ``degree``, ``betweenness``, ``closeness``,
        ``k-center``.
    demands : str or Demands
        ``all``, ``sample:N``, ``gravity`` or a file (:func:`make_demands`).
    seed : int
        Seeds ``sample:N`` and ``random``; recorded in the result.
    epsilon : float
        Level of the ``keys`` objective (probability).
    lazy : {"celf", "bound", "none"}
        Greedy's lazy evaluation (:data:`~qkdseg.placement.methods.LAZY_MODES`).
    max_passes : int
        Swap passes at most.
    max_placements : int
        ``exact`` refuses instances with more subsets than this.
    progress : bool
        Show a progress bar on standard error.

    Returns
    -------
    PlacementResult

    Examples
    --------
    >>> import qkdseg
    >>> net = qkdseg.example_network()
    >>> r = qkdseg.place(net, 1, method="degree")
    >>> r.method, r.nodes, round(r.value, 4)
    ('degree', (0,), 0.9737)
    """
    budget = _check(network, budget, objective, method, epsilon, lazy)
    seed = check_count(seed, "seed", minimum=0, maximum=2**63 - 1, error=InvalidRequest)
    max_passes = check_count(max_passes, "max_passes", minimum=0, error=InvalidRequest)
    if method == "exact":
        n_cand = network.n_nodes - len(network.trusted_nodes)
        if math.comb(n_cand, budget) > max_placements:
            raise InvalidRequest(
                f"exact: C({n_cand}, {budget}) = {math.comb(n_cand, budget)} placements, more than max_placements={max_placements}"
            )
    dem = demands if isinstance(demands, Demands) else make_demands(network, demands, seed=seed)
    engine = Engine(network, dem, objective, epsilon)
    initial = engine.value
    trace: list[float] = []

    with _bar(progress, budget if method != "exact" else math.comb(len(engine.candidates), budget), f"place {method}") as bar:
        def step(n: int = 1) -> None:
            bar.update(n)
            if method in NESTED and n:
                trace.append(engine.value)

        if method == "greedy":
            chosen = greedy(engine, budget, lazy=lazy, progress=step)
        elif method == "swap":
            chosen = swap(engine, budget, lazy=lazy, max_passes=max_passes, progress=step)
        elif method == "exact":
            chosen = exact(engine, budget, max_placements=max_placements, progress=step)
        else:
            chosen = ranked(engine, budget, BASELINES[method](engine, seed), progress=step)
    if method not in NESTED:
        trace = _trace_of(network, dem, objective, epsilon, chosen)
    routings = engine.routings
    ids = network.arrays.node_ids
    options: dict[str, Any] = {"epsilon": float(epsilon)} if objective == "keys" else {}
    if method in ("greedy", "swap"):
        options["lazy"] = lazy
    if method == "swap":
        options["max_passes"] = max_passes
    return PlacementResult(
        method=method,
        objective=objective,
        budget=budget,
        nodes=tuple(ids[v] for v in chosen),
        trace=tuple(trace),
        initial=initial,
        demands=dem.to_dict(),
        seed=seed,
        options=options,
        routings=routings,
    )


def _trace_of(network, demands, objective, epsilon, order: Sequence[int]) -> list[float]:
    engine = Engine(network, demands, objective, epsilon)
    out = []
    for v in order:
        engine.add(v)
        out.append(engine.value)
    return out


def evaluate_placement(
    network: Network,
    nodes: Sequence[Hashable],
    *,
    objective: str = "security",
    demands: str | Demands = "all",
    seed: int = 0,
    epsilon: float = 0.9,
) -> float:
    """The objective with ``nodes`` made trusted, every demand routed afresh.

    >>> import qkdseg
    >>> round(evaluate_placement(qkdseg.example_network(), [5, 8]), 4)
    0.9938
    """
    dem = demands if isinstance(demands, Demands) else make_demands(network, demands, seed=seed)
    net = network.with_nodes({v: {"trusted": True, "p": 1.0} for v in nodes})
    return Engine(net, dem, objective, epsilon).fresh_score()[0]


def place_curve(
    network: Network,
    ks: Sequence[int],
    methods: Sequence[str] = NESTED,
    *,
    progress: bool = False,
    **kwargs: Any,
) -> dict[str, list[float | None]]:
    """The objective at every budget in ``ks`` for every method.

    Nested methods (greedy, the baselines) run once at the largest budget;
    ``swap`` and ``exact`` run once per budget (``exact`` gives ``None``
    where it has more than ``max_placements`` subsets). Keyword arguments
    go to :func:`place`.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        raise InvalidRequest("place_curve: no budget")
    out: dict[str, list[float | None]] = {}
    for m in methods:
        if m not in METHODS:
            raise InvalidRequest(f"unknown placement method {m!r} (use {', '.join(METHODS)})")
        if m in NESTED:
            r = place(network, ks[-1], method=m, progress=progress, **kwargs)
            full = [r.initial, *r.trace]
            out[m] = [full[k] for k in ks]
        else:
            vals: list[float | None] = []
            for k in ks:
                try:
                    vals.append(place(network, k, method=m, progress=progress, **kwargs).value)
                except InvalidRequest:
                    if m != "exact":
                        raise
                    vals.append(None)
            out[m] = vals
    return out


__all__ = [
    "METHODS",
    "NESTED",
    "OBJECTIVES",
    "Demands",
    "PlacementResult",
    "evaluate_placement",
    "make_demands",
    "place",
    "place_curve",
]
