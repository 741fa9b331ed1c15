"""``read_network`` on random junk, in every format: it loads the file or
raises the project's own error (a ``QkdsegError``), never anything else.

Three kinds of junk per format: arbitrary bytes; text built from the
format's own tokens (so that parsers get past the first character); and,
for node-link JSON, well-formed JSON objects with random nodes, links and
attribute values (types, NaN, huge numbers, missing fields), which exercise
both the fast array path and the general path. A file that loads must also
give the same network on the general path (the fast path is an optimisation).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdseg import Network, QkdsegError, read_network
from qkdseg.topology import FORMATS
from qkdseg.topology.nodelink import _graph_from_node_link

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TOKENS = {
    "json": ['{', '}', '[', ']', ',', ':', '"nodes"', '"links"', '"edges"', '"id"', '"source"', '"target"', '"p"',
             '"trusted"', '"pool_bits"', '"directed"', 'true', 'false', 'null', '0', '1', '-1', '0.5', '1e400', 'NaN',
             '"x"', ' '],
    "graphml": ['<graphml>', '</graphml>', '<graph edgedefault="undirected">', '<graph edgedefault="directed">',
                '</graph>', '<node id="a"/>', '<node id="b"/>', '<edge source="a" target="b"/>',
                '<edge source="a" target="a"/>', '<key id="p" for="node" attr.name="p" attr.type="double"/>',
                '<data key="p">', '</data>', '0.5', 'nan', '<', '>', '"', ' '],
    "gml": ['graph [', ']', 'node [', 'edge [', 'id', 'source', 'target', 'p', 'trusted', 'pool_bits', 'directed',
            'multigraph', '0', '1', '2', '-1', '0.5', '"x"', 'NAN', 'INF', '1e400', ' ', '\n'],
}


def _write(tmp: str, suffix: str, data: bytes) -> Path:
    path = Path(tmp) / f"net.{suffix}"
    path.write_bytes(data)
    return path


def _loads_or_project_error(path: Path, **kw) -> Network | None:
    try:
        return read_network(path, **kw)
    except QkdsegError:
        return None


@SETTINGS
@given(fmt=st.sampled_from(sorted(FORMATS)), data=st.binary(max_size=400))
def test_random_bytes(fmt, data):
    with tempfile.TemporaryDirectory() as tmp:
        _loads_or_project_error(_write(tmp, fmt, data))


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(sorted(FORMATS)))
def test_format_tokens(data, fmt):
    text = "".join(data.draw(st.lists(st.sampled_from(TOKENS[fmt]), max_size=60)))
    with tempfile.TemporaryDirectory() as tmp:
        _loads_or_project_error(_write(tmp, fmt, text.encode()), default_p=data.draw(st.sampled_from([None, 0.7])))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.integers(min_value=2**62), st.floats(allow_nan=True),
    st.sampled_from([0.5, 1.0, 1e40, -0.0, math.inf]), st.text(max_size=3), st.lists(st.integers(0, 2), max_size=2),
)
ids = st.one_of(st.integers(0, 6), st.sampled_from(["a", "b", "0"]), st.none(), st.floats(0, 3), st.booleans())


@st.composite
def node_link(draw):
    nodes = []
    for _ in range(draw(st.integers(0, 6))):
        node = {"id": draw(ids)} if draw(st.integers(0, 9)) else {}
        for field in ("p", "trusted", "name"):
            if draw(st.booleans()):
                node[field] = draw(scalars | st.floats(0, 1))
        nodes.append(node)
    links = []
    for _ in range(draw(st.integers(0, 8))):
        link = {"source": draw(ids), "target": draw(ids)}
        for field in ("pool_bits", "length_km", "rate_bps", "key"):
            if draw(st.booleans()):
                link[field] = draw(scalars | st.integers(0, 10**6))
        if not draw(st.integers(0, 15)):
            del link["target"]
        links.append(link)
    top = {"nodes": nodes, draw(st.sampled_from(["links", "edges"])): links}
    if draw(st.booleans()):
        top["directed"] = draw(st.booleans())
    if draw(st.booleans()):
        top["graph"] = draw(st.one_of(st.just({"name": "n"}), st.dictionaries(st.text(max_size=2), scalars, max_size=2)))
    return top


@SETTINGS
@given(doc=node_link(), default_p=st.sampled_from([None, 0.5, 1.0]))
def test_node_link_documents(doc, default_p):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "json", json.dumps(doc, allow_nan=True).encode())
        net = _loads_or_project_error(path, default_p=default_p)
        if net is None:
            return
        # The fast path and the general path agree on every file that loads.
        g = _graph_from_node_link(json.loads(path.read_text()), str(path))
        ref = Network(g, default_p=default_p, name=str(g.graph.get("name") or path.stem))
        a, b = net.arrays, ref.arrays
        assert a.node_ids == b.node_ids
        for field in ("indptr", "indices", "edge_of", "edge_u", "edge_v", "p", "trusted", "pool_bits"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
        assert np.array_equal(a.length_km, b.length_km, equal_nan=True)
        assert list(net.graph.edges(data=True)) == list(ref.graph.edges(data=True))
        assert list(net.graph.nodes(data=True)) == list(ref.graph.nodes(data=True))
        assert net.summary() == ref.summary()
