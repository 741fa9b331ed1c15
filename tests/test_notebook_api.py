"""The Python API takes what a notebook user passes (issue 26, item 3)."""

from __future__ import annotations

import subprocess
import sys

import networkx as nx
import pytest

import qkdseg


def test_simulate_takes_a_networkx_graph_and_one_algorithm_name():
    net = qkdseg.example_network()
    graph = net.graph
    assert isinstance(graph, nx.Graph)
    a = qkdseg.simulate(graph, rate=5.0, duration=10.0, algorithms="smr", seed=1)
    b = qkdseg.simulate(net, rate=5.0, duration=10.0, algorithms=("smr",), seed=1)
    assert set(a.requests["algorithm"]) == {"smr"}
    assert a.requests.equals(b.requests)


@pytest.mark.parametrize("algorithms, needle", [(("smr", "smr"), "smr given more than once"), ((), "no algorithm"),
                                                ((1,), "not an algorithm name")])
def test_simulate_refuses_bad_algorithm_lists(algorithms, needle):
    with pytest.raises(qkdseg.InvalidRequest, match=needle):
        qkdseg.simulate(qkdseg.example_network(), rate=5.0, duration=10.0, algorithms=algorithms)


def test_simulation_refuses_what_is_not_a_trace():
    with pytest.raises(qkdseg.InvalidRequest, match="Requests trace"):
        qkdseg.Simulation(qkdseg.example_network(), None)
    with pytest.raises(qkdseg.InvalidRequest, match="networkx graph"):
        qkdseg.Simulation("example", None)


def test_a_string_id_on_integer_ids_gets_the_hint():
    with pytest.raises(qkdseg.NodeNotFound, match=r"its ids are int: did you mean 0\?"):
        qkdseg.route(qkdseg.example_network(), "0", "7")


def test_version():
    res = subprocess.run([sys.executable, "-m", "qkdseg", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"qkdseg {qkdseg.__version__}" and not res.stderr


def test_route_paths_frame_matches_the_route():
    net = qkdseg.example_network()
    r = qkdseg.route(net, 0, 7)
    df = r.paths_frame(net)
    assert [tuple(n) for n in df["nodes"]] == [tuple(p) for p in r.paths]
    assert df["hops"].sum() == r.hops and (df["relays"] == df["hops"] - 1).all()
    for row in df.itertuples():
        expected = 1.0
        for v in row.nodes[1:-1]:
            expected *= net.p(v)
        assert row.psec == pytest.approx(expected)
    assert "psec" not in r.paths_frame().columns
