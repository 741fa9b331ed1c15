"""Quotas (issue 38, item 2): max_key_count, sae_max_waiting and sae_rate in the shared core (qkdseg.server.quota),
``kms serve``'s enc_keys refusing before anything is issued, and ``kms init``'s flags. The network's nodes:
tests/test_net_suspect.py."""

from __future__ import annotations

import asyncio
import tomllib
from types import SimpleNamespace

import pytest

from qkdseg.kms.server import open_service
from qkdseg.server.config import KmsConfig, write_config
from qkdseg.server.etsi import Caller, KmsError
from qkdseg.server.quota import Quotas, refusal
from qkdseg.server.storagekey import init_keys


def test_token_bucket_refuses_past_the_rate_and_refills_per_sae():
    t = [0.0]
    q = Quotas(SimpleNamespace(max_key_count=10, sae_max_waiting=0, sae_rate=2.0), clock=lambda: t[0])
    q.admit("A"), q.admit("A")  # the burst: max(1, rate) = 2
    with pytest.raises(KmsError) as e:
        q.admit("A")
    assert e.value.status == 503 and e.value.reason == "sae_rate" and "sae_rate=2" in e.value.message
    q.admit("B")  # another SAE has its own bucket
    t[0] = 0.5  # one request's worth refilled
    q.admit("A")
    with pytest.raises(KmsError):
        q.admit("A")
    assert refusal("sae_max_waiting=4 keys of A are waiting").reason == "sae_max_waiting"
    assert refusal("max_key_count=6 keys are waiting").reason == "max_key_count"


def test_room_held_counts_until_released_or_expired():
    t = [0.0]
    q = Quotas(SimpleNamespace(max_key_count=5, sae_max_waiting=3, sae_rate=0), clock=lambda: t[0])
    rows = [SimpleNamespace(master="A", slave="B")]
    h = q.reserve(rows, ("A", "B"), 2)  # 1 waiting + 2 held
    with pytest.raises(KmsError) as e:
        q.reserve(rows, ("A", "B"), 1)
    assert e.value.reason == "sae_max_waiting"
    q.reserve(rows, ("A", "C"), 2)  # 5 in all
    with pytest.raises(KmsError) as e:
        q.check(rows, ("A", "C"), 1)
    assert e.value.reason == "max_key_count"
    q.release(("A", "B"), h)
    q.check(rows, ("A", "B"), 2)
    t[0] = 100.0  # holds expire (a relay that never stored its keys)
    q.check(rows, ("A", "C"), 3)


def _service(tmp, **quota):
    tmp.mkdir(parents=True)
    cfg = KmsConfig(network="example", saes={"A": "0", "B": "7", "C": "4"}, security_level=0.5,
                    default_rate_bps=1000, _dir=tmp, **quota).check()
    write_config(tmp, cfg)
    init_keys(cfg)
    return open_service(tmp, clock=lambda: 1_000_000.0)


def test_kms_serve_refuses_past_max_key_count_and_sae_max_waiting_before_anything_is_issued(tmp_path):
    svc = _service(tmp_path / "svc", max_key_count=5, sae_max_waiting=3)
    try:
        async def enc(slave, n):
            return await svc.enc_keys(Caller("A", "a"), slave, svc.parse_key_request(n, 256, None, None, None))

        async def go():
            got = await enc("B", 3)
            before = (int(svc.levels.consumed.sum()), len(svc.keys), svc.store.audit_seq)
            with pytest.raises(KmsError) as e:
                await enc("B", 1)  # A:B has 3 waiting
            assert e.value.status == 503 and e.value.reason == "sae_max_waiting" and "sae_max_waiting=3" in \
                e.value.message
            assert (int(svc.levels.consumed.sum()), len(svc.keys), svc.store.audit_seq) == before
            await enc("C", 2)  # another pair keeps its keys: 5 in all
            before = (int(svc.levels.consumed.sum()), len(svc.keys), svc.store.audit_seq)
            with pytest.raises(KmsError) as e:
                await enc("C", 1)
            assert e.value.reason == "max_key_count" and "max_key_count=5" in e.value.message
            assert (int(svc.levels.consumed.sum()), len(svc.keys), svc.store.audit_seq) == before
            await svc.dec_keys(Caller("B", "b"), "A", [k["key_ID"] for k in got["keys"]])  # fetched: room again
            await enc("B", 3)

        asyncio.run(go())
    finally:
        svc.close()


def test_kms_init_writes_the_quotas_and_names_a_bad_flag(tmp_path):
    from typer.testing import CliRunner

    from qkdseg.cli.app import app

    r = CliRunner().invoke(app, ["kms", "init", str(tmp_path / "k"), "--network", "example", "--sae", "A=0", "--sae",
                                 "B=7", "--no-pki", "--max-key-count", "50", "--sae-max-waiting", "8", "--sae-rate",
                                 "2.5"])
    assert r.exit_code == 0, r.output
    toml = tomllib.loads((tmp_path / "k" / "kms.toml").read_text())
    assert (toml["max_key_count"], toml["sae_max_waiting"], toml["sae_rate"]) == (50, 8, 2.5)
    from qkdseg.cli.kms import INIT_FLAGS
    from qkdseg.errors import InvalidRequest

    for name, value in (("sae_rate", -1.0), ("sae_max_waiting", -2)):  # what kms init's check answers (exit 2)
        with pytest.raises(InvalidRequest) as e:
            KmsConfig(network="example", saes={"A": "0", "B": "7"}, **{name: value}).check(flags=INIT_FLAGS)
        assert str(e.value).startswith(INIT_FLAGS[name])
