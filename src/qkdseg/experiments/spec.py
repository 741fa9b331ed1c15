"""Sweep specifications: what a sweep runs, as plain frozen data.

A :class:`SweepSpec` names a topology source (a Waxman generator with its
parameters, or a list of real topologies), a parameter grid per figure,
trials per point and a master seed, and the algorithms, reconstruction
scheme and epsilons. :func:`paper_spec` is the paper's evaluation (section
IV; docs/model.md section 7).

Seeds. Trial ``t`` of a sweep with master seed ``S`` has the seed
``trial_seed(S, t)`` (a 32-bit integer from ``numpy.random.SeedSequence([S, t])``),
recorded in every row. The trial's topology is exactly
``qkdseg.waxman(nodes, trusted=n_trusted, p=p_untrusted, seed=seed)`` and its
request pair ``numpy.random.default_rng([seed, 1]).choice(nodes, 2,
replace=False)``. All points and figures share the trial seeds (common
random numbers): at one seed, every point sees the same node positions and
links, and points with the same number of trusted relays the same trusted
placement and pair. Within a trial every algorithm sees the same topology,
pair and placement. MSP's walk is seeded with the trial seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequest

#: The algorithms the paper's figures compare, in plotting order.
PAPER_ALGORITHMS = ("smr", "msp", "disjoint", "single")
#: What ``qkdseg reproduce`` and ``qkdseg study`` run: the paper's four and ``smr-exact``.
REPRODUCE_ALGORITHMS = ("smr", "smr-exact", "msp", "disjoint", "single")
#: Security levels of the key-length panels (Fig. 5b/6b).
PAPER_EPSILONS = (0.5, 0.7, 0.9)


def trial_seed(master: int, trial: int) -> int:
    """The recorded seed of trial ``trial`` of a sweep with seed ``master``."""
    return int(np.random.SeedSequence([int(master), int(trial)]).generate_state(1, dtype=np.uint32)[0])


def eps_column(eps: float) -> str:
    """Column name of the key length at level ``eps``: 0.5 -> ``key_bits_e50``."""
    return f"key_bits_e{round(eps * 100):02d}"


@dataclass(frozen=True)
class FigureSpec:
    """One figure: a name, the swept column, and its points.

    ``points`` are ``(p_untrusted, n_trusted)`` pairs, in plotting order.
    """

    name: str
    x: str
    points: tuple[tuple[float, int], ...]

    def __post_init__(self) -> None:
        if self.x not in ("p_untrusted", "n_trusted"):
            raise InvalidRequest(f"figure {self.name}: x={self.x!r} must be p_untrusted or n_trusted")
        for p, t in self.points:
            if not 0.0 <= p <= 1.0:
                raise InvalidRequest(f"figure {self.name}: p_untrusted={p} is outside [0, 1]")
            if t < 0:
                raise InvalidRequest(f"figure {self.name}: n_trusted={t} is negative")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep computes; rows are a pure function of it.

    Attributes
    ----------
    figures : tuple of FigureSpec
    trials : int
        Trials per point.
    seed : int
        Master seed.
    algorithms : tuple of str
        Registry names.
    epsilons : tuple of float
        Levels for the key-length columns.
    reconstruction : str
        Scheme for the key lengths (``paper`` unless stated, docs/model.md 6).
    nodes, alpha, beta, pool_bits
        Waxman generator parameters (docs/model.md section 7).
    """

    figures: tuple[FigureSpec, ...]
    trials: int = 1000
    seed: int = 0
    algorithms: tuple[str, ...] = PAPER_ALGORITHMS
    epsilons: tuple[float, ...] = PAPER_EPSILONS
    reconstruction: str = "paper"
    nodes: int = 100
    alpha: float = 0.15
    beta: float = 0.5
    pool_bits: int = 100_000
    algorithm_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..reconstruction import SCHEMES
        from ..routing import get_algorithm

        if self.trials < 1:
            raise InvalidRequest(f"trials={self.trials} must be at least 1")
        if self.seed < 0:
            raise InvalidRequest(f"seed={self.seed} must be non-negative")
        for a in self.algorithms:
            get_algorithm(a)
        if self.reconstruction not in SCHEMES:
            raise InvalidRequest(f"unknown reconstruction {self.reconstruction!r} (known: {', '.join(SCHEMES)})")
        for e in self.epsilons:
            if not 0.0 <= e <= 1.0:
                raise InvalidRequest(f"epsilon={e} is outside [0, 1]")
        for f in self.figures:
            for _, t in f.points:
                if t > self.nodes:
                    raise InvalidRequest(f"figure {f.name}: n_trusted={t} exceeds nodes={self.nodes}")

    @property
    def n_units(self) -> int:
        return self.trials * sum(len(f.points) for f in self.figures)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["figures"] = [{"name": f.name, "x": f.x, "points": [list(p) for p in f.points]} for f in self.figures]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        """Build a spec from a dict (a JSON spec file), naming bad fields."""
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise InvalidRequest(f"sweep spec: unknown field {key!r} (fields: {', '.join(sorted(known))})")
        try:
            figs = tuple(
                FigureSpec(f["name"], f["x"], tuple((float(p), int(t)) for p, t in f["points"]))
                for f in data.pop("figures")
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidRequest(f"sweep spec: malformed 'figures': {err}") from None
        for key in ("algorithms", "epsilons"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(figures=figs, **data)

    @classmethod
    def from_file(cls, path: str | Path) -> "SweepSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except OSError as err:
            raise InvalidRequest(f"{path}: cannot read: {err}") from None
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None


def paper_spec(trials: int = 1000, seed: int = 0, **overrides: Any) -> SweepSpec:
    """The paper's evaluation: Fig. 5 (p 0.50..0.95 step 0.05, 10 trusted
    relays) and Fig. 6 (0, 5, ..., 30 trusted relays, p = 0.8), 100-node
    Waxman networks, all four algorithms, ``paper`` reconstruction at 0.5,
    0.7 and 0.9."""
    fig5 = FigureSpec("fig5", "p_untrusted", tuple((round(0.5 + 0.05 * i, 2), 10) for i in range(10)))
    fig6 = FigureSpec("fig6", "n_trusted", tuple((0.8, t) for t in range(0, 31, 5)))
    return SweepSpec(figures=(fig5, fig6), trials=trials, seed=seed, **overrides)
