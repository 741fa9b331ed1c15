"""``qkdseg demo``: every algorithm on the example and on a seeded Waxman network."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import MAX_REQUESTS, Fmt, _check_range, _check_seed, _console, _dump
from .errors import user_errors


@user_errors
def demo(
    requests: Annotated[int, typer.Option("--requests", help="Random requests on the Waxman network.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Waxman network and the request pairs.")] = 7,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
) -> None:
    """Every algorithm on the built-in example and on a seeded 100-node Waxman network."""
    from ..demo import demo_rows

    _check_range(requests, "--requests", 1, MAX_REQUESTS)
    _check_seed(seed)
    rows = demo_rows(requests=requests, seed=seed)
    if fmt is Fmt.json:
        _dump(rows)
        return
    table = Table(
        title=f"qkdseg demo, means per request: example 0->7; waxman n=100 trusted=10 p=0.8 seed={seed}, {requests} random pairs",
        title_justify="left",
    )
    cols = {
        "network": "network", "algorithm": "algorithm", "requests": "requests", "security": "security",
        "security_independent": "sec. indep.", "segments": "segments", "paths": "paths", "hops": "hops",
        "consumed_bits": "consumed bits", "key_consumption_rate": "consumption rate", "blocked": "blocked",
    }
    for c, label in cols.items():
        table.add_column(label, justify="left" if c in ("network", "algorithm") else "right", no_wrap=True)
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            if c in ("security", "security_independent"):
                cells.append(f"{v:.4f}")
            elif c == "key_consumption_rate":
                cells.append(f"{v:.4f}")
            elif c == "consumed_bits":
                cells.append(f"{v:,.0f}")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    _console().print(table)
