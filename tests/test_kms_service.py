"""KeyService without HTTP: accounting invariants under random request sequences, every routing algorithm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkdseg
from qkdseg.server.config import KmsConfig, write_config
from qkdseg.kms.server import open_service
from qkdseg.server.etsi import Caller, KmsError
from qkdseg.server.storagekey import init_keys
from qkdseg.server.directory import verify_audit


def _service(tmp: Path, network: str, algorithm: str = "smr", level: float = 0.5, clock=lambda: 1_000_000.0):
    """A service directory without PKI (no server here) and its KeyService; the default clock is frozen: no refill."""
    tmp.mkdir(parents=True)
    cfg = KmsConfig(network=network, saes={"A": "0", "B": "7", "C": "4"}, security_level=level,
                    algorithm=algorithm, default_rate_bps=1000, _dir=tmp).check()
    write_config(tmp, cfg)
    init_keys(cfg)
    return open_service(tmp, clock=clock)


def _small_pools(tmp: Path, pool_bits: int) -> str:
    g = qkdseg.example_network().graph.copy()
    g = nx.Graph(g)
    for u, v in g.edges:
        g.edges[u, v]["pool_bits"] = pool_bits
    path = tmp / "net.json"
    qkdseg.write_network(qkdseg.Network(g, name="small"), path)
    return str(path)


@pytest.mark.parametrize("algorithm", sorted(qkdseg.ALGORITHMS))
def test_every_algorithm_delivers_identical_keys_and_pays_what_it_relays(tmp_path, algorithm):
    svc = _service(tmp_path / "svc", "example", algorithm)
    try:
        async def go():
            req = svc.parse_key_request(5, 256, None, None, None)
            out = await svc.enc_keys(Caller("A", "a"), "B", req)
            back = await svc.dec_keys(Caller("B", "b"), "A", [k["key_ID"] for k in out["keys"]])
            return out, back

        consumed0 = int(svc.levels.consumed.sum())
        out, back = asyncio.run(go())
        assert [k["key"] for k in back["keys"]] == [k["key"] for k in out["keys"]]
        route = out["key_container_extension"]["qkdseg_route"]
        assert int(svc.levels.consumed.sum()) - consumed0 == route["consumed_bits"]
        assert route["consumed_bits"] == route["relays"] * route["hops"] * 256
        assert route["relays"] * route["keys_per_relay"] >= 5
        assert all(k["key_extension"]["qkdseg_security"] >= 0.5 for k in out["keys"])
    finally:
        svc.close()


requests_st = st.lists(
    st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(["A", "B", "C"]), st.integers(1, 6),
              st.sampled_from([None, 0.3, 0.6, 0.8, 0.95]), st.booleans()),
    min_size=1, max_size=25,
)


@settings(max_examples=15, deadline=None)
@given(requests_st)
def test_random_request_sequences_keep_the_books(tmp_path_factory, reqs):
    """Pools never go negative, offsets only grow and equal what was relayed, keys are delivered once, refusals debit nothing."""
    tmp = tmp_path_factory.mktemp("svc")
    svc = _service(tmp / "svc", _small_pools(tmp, 4096))
    try:
        issued: dict[str, tuple[str, str, str]] = {}
        relayed = 0

        async def go():
            nonlocal relayed
            for master, slave, number, level, fetch in reqs:
                before = svc.levels.consumed.copy()
                ext = None if level is None else [{"qkdseg_security_level": level}]
                try:
                    req = svc.parse_key_request(number, 256, ext, None, None)
                    out = await svc.enc_keys(Caller(master, "m"), slave, req)
                except KmsError as err:
                    assert err.status in (400, 503), err
                    assert np.array_equal(svc.levels.consumed, before)  # a refusal debits nothing
                    continue
                assert len(out["keys"]) == number
                route = out["key_container_extension"]["qkdseg_route"]
                relayed += route["consumed_bits"] if route and not route.get("local") else 0
                for k in out["keys"]:
                    assert k["key_ID"] not in issued
                    assert k["key_extension"]["qkdseg_security"] >= (0.5 if level is None else level)
                    issued[k["key_ID"]] = (master, slave, k["key"])
                assert np.all(svc.levels.consumed >= before) and np.all(svc.levels.level >= 0)
                if fetch:
                    back = await svc.dec_keys(Caller(slave, "s"), master, [k["key_ID"] for k in out["keys"]])
                    assert [k["key"] for k in back["keys"]] == [k["key"] for k in out["keys"]]
                    with pytest.raises(KmsError) as again:
                        await svc.dec_keys(Caller(slave, "s"), master, [out["keys"][0]["key_ID"]])
                    assert again.value.status == 400

        asyncio.run(go())
        assert int(svc.levels.consumed.sum()) == relayed
        assert np.all(svc.levels.level + svc.levels.consumed == svc.levels.capacity)  # frozen clock: no refill
    finally:
        svc.close()
    n, problems = verify_audit(tmp / "svc")
    assert not problems


def test_refill_follows_the_rate_and_stops_at_the_pool(tmp_path):
    t = [1000.0]
    svc = _service(tmp_path / "svc", _small_pools(tmp_path, 8192), clock=lambda: t[0])  # 1,000 bit/s per link
    try:
        out = asyncio.run(svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(20, 256, None, None, None)))
        assert out["key_container_extension"]["qkdseg_route"]["relays"] >= 1
        used = np.flatnonzero(svc.levels.consumed)
        low = svc.levels.level[used].copy()
        assert np.all(low == 8192 - svc.levels.consumed[used])
        t[0] += 1.5  # 1,500 bits per link
        svc.refill(t[0])
        assert np.all(svc.levels.level[used] == np.minimum(8192, low + 1500))
        t[0] += 100.0
        svc.refill(t[0])
        assert np.all(svc.levels.level == 8192)
    finally:
        svc.close()


def test_a_restart_refills_each_link_for_its_own_downtime_and_checks_the_network(tmp_path):
    t = [1000.0]
    d = tmp_path / "svc"
    svc = _service(d, _small_pools(tmp_path, 8192), clock=lambda: t[0])
    try:
        asyncio.run(svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(4, 256, None, None, None)))
        t[0] += 2.0
        asyncio.run(svc.enc_keys(Caller("A", "a"), "C", svc.parse_key_request(4, 256, None, None, None)))
        levels, consumed = svc.levels.level.copy(), svc.levels.consumed.copy()
    finally:
        svc.close()
    t[0] += 3.0  # 3,000 bits for every link since the last request; more for links only the first one used
    from qkdseg.kms.server import open_service as reopen

    again = reopen(d, clock=lambda: t[0])
    try:
        assert np.array_equal(again.levels.consumed, consumed)
        assert np.all(again.levels.level == np.minimum(8192, levels + 3000))
    finally:
        again.close()
    # the same database under another network is refused, naming the link
    g = nx.Graph(qkdseg.example_network().graph)
    g.remove_edge(*next(iter(g.edges)))
    qkdseg.write_network(qkdseg.Network(g), tmp_path / "net.json")
    with pytest.raises(Exception, match="network changed"):
        reopen(d, clock=lambda: t[0])


def test_smr_level_routes_each_request_to_its_own_level(tmp_path):
    """``algorithm = "smr-level"`` in kms.toml: a request at the default level 0.5 and one at 0.8
    (mandatory extension) route to their own levels; the 0.5 one pays half the full route's bits,
    the extension reports the exact security, the consumed and the saved bits."""
    from qkdseg.server.config import load_config

    svc = _service(tmp_path / "svc", "example", "smr-level")
    assert load_config(tmp_path / "svc").algorithm == "smr-level"
    assert 'algorithm = "smr-level"' in (tmp_path / "svc" / "kms.toml").read_text()
    try:
        async def go(ext):
            req = svc.parse_key_request(1, 256, ext, None, None)
            return await svc.enc_keys(Caller("A", "a"), "B", req)

        c0 = int(svc.levels.consumed.sum())
        low = asyncio.run(go(None))["key_container_extension"]["qkdseg_route"]
        c1 = int(svc.levels.consumed.sum())
        high_out = asyncio.run(go([{"qkdseg_security_level": 0.8}]))
        high = high_out["key_container_extension"]["qkdseg_route"]
        c2 = int(svc.levels.consumed.sum())
    finally:
        svc.close()
    assert low["algorithm"] == "smr-level" and low["consumed_bits"] == c1 - c0 == 6 * 256
    assert low["saved_bits"] == 6 * 256 and low["security"] == pytest.approx(0.512)
    assert high["consumed_bits"] == c2 - c1 == 12 * 256 and high["saved_bits"] == 0
    assert high["security"] == pytest.approx(0.884736)
    assert all(k["key_extension"]["qkdseg_security"] >= 0.8 for k in high_out["keys"])
