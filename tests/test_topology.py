"""Topologies: file round trips, Waxman, topohub, the example."""

import json

import networkx as nx
import pytest

import qkdseg
from qkdseg import NetworkError, TopologyFileError, load, load_topohub, read_network, waxman, write_network


def _same(a, b):
    assert list(a.graph.nodes) == list(b.graph.nodes)
    for v in a.graph:
        assert a.graph.nodes[v]["trusted"] == b.graph.nodes[v]["trusted"]
        assert a.graph.nodes[v]["p"] == b.graph.nodes[v]["p"]
    assert {frozenset(e) for e in a.graph.edges} == {frozenset(e) for e in b.graph.edges}
    for u, v, d in a.graph.edges(data=True):
        assert b.graph.edges[u, v]["pool_bits"] == d["pool_bits"]


@pytest.mark.parametrize("suffix", [".json", ".graphml", ".gml"])
def test_round_trip(tmp_path, suffix):
    net = waxman(25, trusted=4, p=0.85, alpha=0.4, seed=3)
    path = write_network(net, tmp_path / f"net{suffix}")
    back = read_network(path)
    if suffix == ".graphml":  # GraphML ids are strings by definition
        mapping = {v: int(v) for v in back.graph}
        back = qkdseg.Network(nx.relabel_nodes(nx.Graph(back.graph), mapping))
    _same(net, back)


def test_json_is_canonical_and_keeps_int_ids(tmp_path):
    net = waxman(20, trusted=2, alpha=0.4, seed=1)
    a = write_network(net, tmp_path / "a.json").read_bytes()
    b = write_network(read_network(tmp_path / "a.json"), tmp_path / "b.json").read_bytes()
    assert a == b
    data = json.loads(a)
    assert all(isinstance(n["id"], int) for n in data["nodes"])


def test_edges_key_accepted(tmp_path):
    data = {"nodes": [{"id": "a", "p": 0.5}, {"id": "b", "p": 0.5}], "edges": [{"source": "a", "target": "b"}]}
    (tmp_path / "e.json").write_text(json.dumps(data))
    net = read_network(tmp_path / "e.json")
    assert net.n_links == 1 and net.graph.edges["a", "b"]["pool_bits"] == 100_000


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "malformed JSON"),
        ('{"nodes": []}', "links"),
        ('{"nodes": [{"id": 1, "p": 0.5}, {"id": 1, "p": 0.5}], "links": []}', "node 1: duplicate id"),
        ('{"nodes": [{"id": 1, "p": 0.5}], "links": [{"source": 1, "target": 1}]}', "self-loop"),
        ('{"nodes": [{"id": 1, "p": 2}], "links": []}', r"node 1: p=2.0 is outside"),
        ('{"nodes": [{"id": 1, "p": 0.5}, {"id": 2, "p": 0.5}], "links": [{"source": 1, "target": 2, "pool_bits": -1}]}', "negative pool"),
        ('{"nodes": [{"id": 1, "p": 0.5}], "links": [{"source": 1, "target": 3}]}', "node 3 is not declared"),
        ('[1, 2]', "node-link JSON object"),
    ],
)
def test_bad_files_name_the_file_and_culprit(tmp_path, content, match):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises((TopologyFileError, NetworkError), match=match) as info:
        read_network(f)
    assert "bad.json" in str(info.value)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(TopologyFileError, match="no such file"):
        read_network(tmp_path / "nope.json")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TopologyFileError, match="suffix"):
        read_network(tmp_path / "x.txt")
    (tmp_path / "bad.graphml").write_text("<graphml><oops")
    with pytest.raises(TopologyFileError, match="malformed graphml"):
        read_network(tmp_path / "bad.graphml")


def test_waxman_seeded_connected_and_calibrated():
    a, b = waxman(100, trusted=10, seed=7), waxman(100, trusted=10, seed=7)
    assert nx.utils.graphs_equal(nx.Graph(a.graph), nx.Graph(b.graph))
    assert a.summary()["connected"] and len(a.trusted_nodes) == 10
    degs = [waxman(100, trusted=10, seed=s).summary()["mean_degree"] for s in range(20)]
    assert 5.5 < sum(degs) / len(degs) < 7.5  # docs/model.md: about 6.6
    assert waxman(100, seed=8).trusted_nodes != a.trusted_nodes
    for v in a.graph:
        assert a.graph.nodes[v]["p"] == (1.0 if a.graph.nodes[v]["trusted"] else 0.8)


def test_waxman_rejects_bad_parameters():
    with pytest.raises(NetworkError, match="p=1.5"):
        waxman(10, p=1.5)
    with pytest.raises(NetworkError, match="trusted=20"):
        waxman(10, trusted=20, alpha=0.5)


def test_topohub_rule_is_seeded_and_documented():
    a = load_topohub("topozoo/Abilene", trusted=3, seed=1)
    b = load_topohub("topozoo/Abilene", trusted=3, seed=1)
    assert a.trusted_nodes == b.trusted_nodes and len(a.trusted_nodes) == 3
    frac = load_topohub("sndlib/polska", trusted=0.25)
    assert len(frac.trusted_nodes) == round(0.25 * frac.n_nodes + 1e-9)
    deg = load_topohub("topozoo/Abilene", trusted=2, placement="degree")
    g = deg.graph
    top = sorted(g, key=lambda v: (-g.degree(v), list(g).index(v)))[:2]
    assert sorted(deg.trusted_nodes) == sorted(top)
    assert all(isinstance(v, int) for v in a.graph)
    assert all(d.get("length_km") for *_, d in a.graph.edges(data=True))


def test_load_specs():
    assert load("example").name == "example"
    net = load("topohub:topozoo/Abilene?trusted=2&p=0.9&seed=4")
    assert len(net.trusted_nodes) == 2 and min(net.p(v) for v in net.graph) == 0.9
    with pytest.raises(TopologyFileError, match="no such topology"):
        load("topohub:topozoo/Nowhere")
    with pytest.raises(TopologyFileError, match="unknown parameter 'bogus'"):
        load("topohub:topozoo/Abilene?bogus=1")
    names = qkdseg.topohub_names("topozoo")
    assert "topozoo/Abilene" in names and len(names) > 100
