"""Every column of a sweep's results has an oracle.

A small ``qkdseg reproduce`` runs once. For a seeded sample of its rows every
column is recomputed independently: the topology and the request from the
recorded seed as docs/experiments.md and spec.py document them, the routing
through the public API (``qkdseg.waxman``, ``qkdseg.route``), the security
columns by the independent checker (tests/reconstruction_checker.py) and the
key columns by its independent count of the paper scheme. A property test
ties the columns of random sweep points together, and the report's claim
rows are recomputed from the results file.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import qkdseg
from reconstruction_checker import Net, exact_security, independent_security, paper_key_count
from report_checker import check_report_claims
from qkdseg.cli import app
from qkdseg.experiments import FigureSpec, SweepSpec
from qkdseg.experiments.trials import run_chunk

POOL = 100_000  # bits per link (docs/model.md section 7)
LEVELS = {"key_bits_e50": 0.5, "key_bits_e70": 0.7, "key_bits_e90": 0.9}
ORACLE_ALGORITHMS = ("smr", "msp", "disjoint", "single", "smr-exact")  # reproduce runs them with default options


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    res = CliRunner().invoke(app, ["reproduce", "--trials", "2", "--seed", "5", "--out", str(out), "--quiet",
                                   "--workers", "1", "--sensitivity-trials", "0"])
    assert res.exit_code == 0, res.output
    return pd.read_parquet(out / "results.parquet"), (out / "report.md").read_text()


def trial_network(row) -> qkdseg.Network:
    """spec.py: the trial's topology is exactly waxman(nodes, trusted, p, seed)."""
    return qkdseg.waxman(int(row["nodes"]), trusted=int(row["n_trusted"]), p=float(row["p_untrusted"]), seed=int(row["seed"]))


def request_of(seed: int, nodes: int) -> tuple[int, int]:
    """spec.py: numpy.random.default_rng([seed, 1]).choice(nodes, 2, replace=False)."""
    s, d = np.random.default_rng([seed, 1]).choice(nodes, size=2, replace=False)
    return int(s), int(d)


def checker_net(net: qkdseg.Network) -> Net:
    g = net.graph
    return Net({v: {"p": float(g.nodes[v]["p"]), "trusted": bool(g.nodes[v]["trusted"])} for v in g.nodes},
               {frozenset(e) for e in g.edges})


def expected_columns(row) -> dict:
    """Every metric column of ``row``, recomputed."""
    net = trial_network(row)
    s, d = request_of(int(row["seed"]), int(row["nodes"]))
    opts = {"seed": int(row["seed"])} if row["algorithm"] == "msp" else {}
    r = qkdseg.route(net, s, d, algorithm=row["algorithm"], **opts).to_dict()
    cnet = checker_net(net)
    parts = [seg["paths"] for seg in r["segments"]]
    chain = r["segment_nodes"][1:-1]
    hops = sum(len(path) - 1 for part in parts for path in part)
    links = net.n_links
    out = {
        "source": s,
        "destination": d,
        "links": links,
        "mean_degree": 2 * links / net.n_nodes,
        "blocked": r["blocked"],
        "segments": len(parts),
        "paths": sum(len(part) for part in parts),
        "hops": hops,
        "security": exact_security(cnet, parts, chain) if not r["blocked"] else 0.0,
        "security_independent": independent_security(cnet, parts, chain) if not r["blocked"] else 0.0,
        "consumed_bits": hops * POOL,
        "key_consumption_rate": hops * POOL / (links * POOL),
    }
    for col, eps in LEVELS.items():
        out[col] = POOL * (paper_key_count(cnet, parts, chain, eps) if not r["blocked"] else 0)
    return out


def test_sampled_rows_recomputed(reproduced):
    df, _ = reproduced
    df = df[df["algorithm"].isin(ORACLE_ALGORITHMS)]
    rng = np.random.default_rng(2023)
    # a seeded sample, plus rows whose SMR route has segment nodes (by its own column;
    # the choice of rows does not bias what is checked on them)
    picks = set(rng.choice(len(df), size=20, replace=False).tolist())
    seg_rows = np.flatnonzero((df["segments"] > 1).to_numpy())
    picks |= set(rng.choice(seg_rows, size=min(4, len(seg_rows)), replace=False).tolist())
    sample = df.iloc[sorted(picks)]
    assert set(sample["algorithm"]) == set(df["algorithm"]) and set(sample["figure"]) == {"fig5", "fig6"}
    segmented = 0
    for _, row in sample.iterrows():
        exp = expected_columns(row)
        for col, val in exp.items():
            if isinstance(val, float):
                assert row[col] == pytest.approx(val, abs=1e-12), (col, row.to_dict())
            else:
                assert row[col] == val, (col, row.to_dict())
        segmented += exp["segments"] > 1
    assert segmented >= 1  # the sample holds SMR rows with segment nodes


def test_every_key_column_of_every_row(reproduced):
    """The key columns of all rows (not just a sample), by the independent count."""
    df, _ = reproduced
    df = df[df["algorithm"].isin(ORACLE_ALGORITHMS)]
    nets: dict = {}
    for _, row in df.iterrows():
        key = (int(row["seed"]), float(row["p_untrusted"]), int(row["n_trusted"]))
        if key not in nets:
            nets[key] = trial_network(row)
        net = nets[key]
        s, d = int(row["source"]), int(row["destination"])
        opts = {"seed": int(row["seed"])} if row["algorithm"] == "msp" else {}
        r = qkdseg.route(net, s, d, algorithm=row["algorithm"], **opts).to_dict()
        parts = [seg["paths"] for seg in r["segments"]]
        cnet = checker_net(net)
        for col, eps in LEVELS.items():
            n = 0 if r["blocked"] else paper_key_count(cnet, parts, r["segment_nodes"][1:-1], eps)
            assert row[col] == n * POOL, (col, row.to_dict())


# -- columns tied together -------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), p=st.sampled_from([0.5, 0.65, 0.8, 0.95]), n_trusted=st.integers(0, 30))
def test_columns_tie_together(seed, p, n_trusted):
    spec = SweepSpec(figures=(FigureSpec("f", "p_untrusted", ((p, n_trusted),)),), trials=1, seed=seed)
    rows = run_chunk(spec.to_dict(), [0])
    assert [r["algorithm"] for r in rows] == list(spec.algorithms)
    g = nx.Graph(trial_network(rows[0]).graph)
    s, d = rows[0]["source"], rows[0]["destination"]
    shortest = nx.shortest_path_length(g, s, d)
    for r in rows:
        bits = [r[c] for c in LEVELS]
        assert bits == sorted(bits, reverse=True), "key bits increase with epsilon"
        assert r["consumed_bits"] == r["hops"] * POOL
        assert r["key_consumption_rate"] == pytest.approx(r["consumed_bits"] / (r["links"] * POOL), rel=1e-15)
        if r["blocked"]:
            assert (r["segments"], r["paths"], r["hops"], r["security"], *bits) == (0, 0, 0, 0.0, 0, 0, 0)
            continue
        assert r["paths"] >= r["segments"] >= 1
        # every path has at least the hops of its segment; one path per segment chains s to d
        assert r["hops"] >= max(r["paths"], shortest)
        if r["segments"] == 1:
            assert r["hops"] >= r["paths"] * shortest
        # no key has more parts than a segment has pieces; keys need at least one piece per segment
        for c, eps in LEVELS.items():
            assert r[c] <= (r["paths"] // r["segments"]) * POOL
            # a key uses a subset of the pieces, so it is never more secure than the XOR of all:
            # a key at eps exists iff the end-to-end security meets eps
            assert (r[c] > 0) == (r["security"] >= eps - 1e-12), (c, r)
        assert 0.0 <= r["security"] <= 1.0
        if r["algorithm"] in ("smr", "disjoint", "single"):
            # no untrusted relay is shared and trusted relays have p = 1: the textbook formula is exact
            assert r["security_independent"] == pytest.approx(r["security"], abs=1e-12)
        if r["algorithm"] in ("disjoint", "single", "msp"):
            assert r["segments"] == 1
        if r["algorithm"] == "single":
            assert r["paths"] == 1


# -- the report's claim rows ---------------------------------------------------------
def test_report_claims_recomputed_from_the_results(reproduced):
    df, report = reproduced
    assert check_report_claims(df, report) >= 8  # four claims for each of the two figures
