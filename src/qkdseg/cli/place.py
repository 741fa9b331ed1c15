"""``qkdseg place``: choose the nodes to make trusted."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest
from .common import NET_HELP, OUT_PATH, Fmt, _check_out_dir, _check_seed, _console, _dump, _load, _txt, staged_output
from .errors import user_errors


class PlaceObjective(str, Enum):
    security = "security"
    worst = "worst"
    keys = "keys"


class PlaceMethod(str, Enum):
    greedy = "greedy"
    swap = "swap"
    exact = "exact"
    random = "random"
    degree = "degree"
    betweenness = "betweenness"
    closeness = "closeness"
    k_center = "k-center"


class Lazy(str, Enum):
    celf = "celf"
    bound = "bound"
    none = "none"


@user_errors
def place(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    budget: Annotated[int, typer.Option("--budget", "-k", help="Nodes to make trusted.")],
    objective: Annotated[PlaceObjective, typer.Option("--objective", help="security (weighted mean), worst (minimum) or keys (mean key bits at --epsilon).")] = PlaceObjective.security,
    method: Annotated[PlaceMethod, typer.Option("--method", "-m", help="Placement method.")] = PlaceMethod.greedy,
    demands: Annotated[str, typer.Option("--demands", help="all, sample:N, gravity, or a file of source,destination[,weight] lines.")] = "all",
    seed: Annotated[int, typer.Option("--seed", help="Seed of sample:N and of the random method.")] = 0,
    epsilon: Annotated[float, typer.Option("--epsilon", "-e", help="Security level of the keys objective.")] = 0.9,
    lazy: Annotated[Lazy, typer.Option("--lazy", help="Greedy's lazy evaluation: celf, bound (always plain greedy's choice) or none.")] = Lazy.celf,
    max_passes: Annotated[int, typer.Option("--max-passes", help="Swap: passes at most.")] = 5,
    max_placements: Annotated[int, typer.Option("--max-placements", help="Exact: refuse more subsets than this.")] = 200_000,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write placement.json and network.json (the network with the nodes trusted) here.", **OUT_PATH)] = None,
    curve: Annotated[Optional[str], typer.Option("--curve", help="A..B: also draw the objective against k for every method (needs --out).")] = None,
    curve_methods: Annotated[str, typer.Option("--curve-methods", help="Comma-separated methods of --curve (swap and exact run once per k).")] = "greedy,random,degree,betweenness,closeness,k-center",
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Choose BUDGET nodes to make trusted so that SMR's keys are as secure as possible (docs/placement.md)."""
    from ..placement import METHODS, place as do_place, place_curve

    _check_seed(seed)
    ks = None
    methods = []
    if curve is not None:
        from ..experiments.placement import parse_range

        if out is None:
            raise InvalidRequest("--curve needs --out DIR (where the figure goes)")
        ks = parse_range(curve)
        methods = [m.strip() for m in curve_methods.split(",") if m.strip()]
        for m in methods:
            if m not in METHODS:
                raise InvalidRequest(f"--curve-methods: unknown method {m!r} (use {', '.join(METHODS)})")
    if out is not None:
        _check_out_dir(out)
    network = _load(net, default_p)
    n_cand = network.n_nodes - len(network.trusted_nodes)
    if n_cand == 0 and budget > 0:
        raise InvalidRequest(f"--budget {budget}: every node of {network.name} is trusted already (no node is left to harden)")
    if not 0 <= budget <= n_cand:
        raise InvalidRequest(f"--budget {budget}: must lie in [0, {n_cand}] (the untrusted nodes of {network.name})")
    if ks is not None and ks[-1] > n_cand:
        raise InvalidRequest(f"--curve {curve}: k={ks[-1]} exceeds the {n_cand} untrusted nodes of {network.name}")
    r = do_place(network, budget, objective=objective.value, method=method.value, demands=demands, seed=seed,
                 epsilon=epsilon, lazy=lazy.value, max_passes=max_passes, max_placements=max_placements, progress=not quiet)
    doc = {"network": network.name, **r.to_dict()}
    written = []
    if out is not None:
        from ..topology import write_network

        with staged_output(out, last=("placement.json",)) as stage:
            written.append(write_network(r.apply(network), stage.dir / "network.json"))
            if ks is not None:
                from ..experiments.placement import plot_curve

                kw = {"objective": objective.value, "demands": demands, "seed": seed, "epsilon": epsilon, "lazy": lazy.value,
                      "max_passes": max_passes, "max_placements": max_placements}
                values = place_curve(network, ks, methods, progress=not quiet, **kw)
                doc["curve"] = {"k": ks, "values": values}
                unit = "mean key bits" if objective is PlaceObjective.keys else ("worst security" if objective is PlaceObjective.worst else "mean security")
                written += plot_curve(values, ks, stage.dir, ylabel=f"{unit} over the demands",
                                      title=f"{network.name}: {objective.value} against k, demands {demands}, seed {seed}")
            path = stage.dir / "placement.json"
            path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            written.insert(0, path)
            written = [stage.final(p) for p in written]
    if fmt is Fmt.json:
        _dump(doc)
        return
    con = _console()
    unit = "bits" if objective is PlaceObjective.keys else "probability"
    con.print(f"place {r.method} on {_txt(network.name)}: k={r.budget}, objective {r.objective} ({unit}), "
              f"demands {_txt(demands)} ({r.demands['count']}), seed {seed}")
    table = Table()
    for col in ("step", "node", "objective", "gain"):
        table.add_column(col, justify="left" if col == "node" else "right")
    table.add_row("0", "-", f"{r.initial:.6f}", "")
    prev = r.initial
    for i, (v, val) in enumerate(zip(r.nodes, r.trace), 1):
        table.add_row(str(i), _txt(v), f"{val:.6f}", f"{val - prev:+.6f}")
        prev = val
    con.print(table)
    con.print(f"objective            {r.value:.6f} (from {r.initial:.6f})")
    con.print(f"routings             {r.routings} demand routings")
    if written:
        con.print("wrote                " + ", ".join(_txt(p) for p in written))
