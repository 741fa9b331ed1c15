"""Network model: validation, defaults, the frozen array form."""

import networkx as nx
import numpy as np
import pytest

from qkdseg import Network, NetworkError, NodeNotFound, example_network


def _g(**node_attrs):
    g = nx.path_graph(3)
    for v in g:
        g.nodes[v].update(node_attrs)
    return g


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", float("nan")])
def test_bad_p_names_node(bad):
    g = _g(p=0.5)
    g.nodes[1]["p"] = bad
    with pytest.raises(NetworkError, match="node 1"):
        Network(g)


def test_negative_pool_names_link():
    g = _g(p=0.5)
    g.edges[1, 2]["pool_bits"] = -5
    with pytest.raises(NetworkError, match=r"link \(1, 2\).*negative"):
        Network(g)


def test_self_loop_names_link():
    g = _g(p=0.5)
    g.add_edge(2, 2)
    with pytest.raises(NetworkError, match=r"link \(2, 2\): self-loop"):
        Network(g)


def test_missing_p_needs_default():
    g = nx.path_graph(3)
    with pytest.raises(NetworkError, match="node 0: missing field 'p'"):
        Network(g)
    net = Network(g, default_p=0.7)
    assert net.p(1) == 0.7 and not net.is_trusted(1)


def test_trusted_defaults_to_p_one_and_parses_strings():
    g = nx.path_graph(3)
    g.nodes[0]["trusted"] = "true"
    g.nodes[2]["trusted"] = 0
    net = Network(g, default_p=0.5)
    assert net.is_trusted(0) and net.p(0) == 1.0
    assert not net.is_trusted(2) and net.p(2) == 0.5
    with pytest.raises(NetworkError, match="node 1: field 'trusted'"):
        Network(nx.path_graph(2), default_p=0.5).with_nodes({1: {"trusted": "maybe"}})


def test_directed_and_multigraph_rejected():
    with pytest.raises(NetworkError, match="undirected"):
        Network(nx.DiGraph([(0, 1)]), default_p=0.5)
    mg = nx.MultiGraph([(0, 1), (0, 1)])
    with pytest.raises(NetworkError, match="duplicate link"):
        Network(mg, default_p=0.5)


def test_network_is_immutable_and_input_untouched():
    g = _g(p=0.5)
    net = Network(g)
    with pytest.raises(nx.NetworkXError):
        net.graph.add_node(9)
    assert "pool_bits" not in g.edges[0, 1]  # the input was copied, not filled in


def test_arrays_cached_and_read_only():
    net = example_network()
    a = net.arrays
    assert net.arrays is a
    with pytest.raises(ValueError):
        a.p[0] = 0.1
    # CSR agrees with the graph, neighbours sorted, link ids consistent
    for i, v in enumerate(a.node_ids):
        nbrs = a.indices[a.indptr[i] : a.indptr[i + 1]]
        assert list(nbrs) == sorted(nbrs)
        assert {a.node_ids[j] for j in nbrs} == set(net.graph[v])
        for k in range(a.indptr[i], a.indptr[i + 1]):
            e = a.edge_of[k]
            assert {a.edge_u[e], a.edge_v[e]} == {i, a.indices[k]}
    assert np.isinf(Network(_g(p=0.0)).arrays.cost).all()


def test_cost_sums_are_exact():
    """Quantised costs: equal products tie exactly whatever the order."""
    g = nx.path_graph(3)
    net = Network(g, default_p=0.8)
    c = net.arrays.cost[0]
    net2 = Network(g, default_p=0.9)
    d = net2.arrays.cost[0]
    assert (c + d) + c == (c + c) + d


def test_resolve_matches_either_type():
    g = nx.Graph()
    g.add_edge(5, "a")
    net = Network(g, default_p=0.5)
    assert net.resolve("5") == 5 and net.resolve("a") == "a"
    with pytest.raises(NodeNotFound, match="'6'"):
        net.resolve("6")
    g.add_node("5")
    with pytest.raises(NodeNotFound, match="ambiguous"):
        Network(g, default_p=0.5).resolve("5")


def test_summary():
    s = example_network().summary()
    assert s["nodes"] == 10 and s["links"] == 12 and s["trusted"] == 2
    assert s["mean_degree"] == pytest.approx(2.4) and s["connected"]
    assert s["total_pool_bits"] == 1_200_000
