"""An independent check of issue 20's field test, written from docs/kms.md's point of view.

It drives only what an operator and a client have: the ``qkdseg`` command, the files of ``DIR``, the
real ``etsi-qkd-014-client``, ``requests`` and raw TLS sockets; it imports nothing of ``qkdseg``, so it
runs unchanged against an older tree (``PYTHONPATH=<old>/src``) and reproduces each failure there:
two servers on one DIR, a missing storage key, HEAD, deep JSON, a 900 KB field name, conflicting
mandatory levels, an idle handshaken connection, ``init --force``, an edited audit chain at start.
Default ``kms.toml`` values only (the older tree knows no limits fields).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import pytest

from kms_helpers import QKDSEG, Server, kms_init

MANDATORY = "not all extension_mandatory request options could be met"


def qkdseg(*args, timeout=60):
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout)


def refused_in_one_line(r, needle: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("qkdseg: error:"), (r.returncode, r.stderr)
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    d = kms_init(tmp_path_factory.mktemp("field") / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    server = Server(d).start()
    try:
        yield server
    finally:
        server.stop()


def _client(kms, sae):
    from etsi_qkd_014_client import QKD014Client

    pk = kms.directory / "pki"
    return QKD014Client(kms.host, str(pk / f"{sae}.crt"), str(pk / f"{sae}.key"), str(pk / "ca.crt"))


def _audit(kms) -> list[str]:
    time.sleep(0.05)
    path = kms.directory / "audit.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def _issued(kms) -> int:
    return sum(json.loads(x)["event"] == "issue" for x in _audit(kms))


def test_head_issues_nothing(kms):
    a = kms.client("A")
    before = _issued(kms)
    r = a.session.head(f"{kms.url}/B/enc_keys", params={"number": 5}, verify=a.ca, timeout=30)
    assert r.status_code == 405
    assert _issued(kms) == before


def test_deep_json_is_a_400(kms):
    r = kms.client("A").post("B/enc_keys", b"[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"]


def test_a_900kb_field_name_is_not_echoed(kms):
    n = len(_audit(kms))
    body = json.dumps({"f" * 900_000: 1})
    r = kms.client("A").post("B/enc_keys", body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and len(r.content) < 2000, (r.status_code, len(r.content))
    assert all(len(x) < 4000 for x in _audit(kms)[n:])


def test_conflicting_mandatory_levels_are_refused(kms):
    code, err = _client(kms, "A").get_key(
        "B", number=1, extension_mandatory=[{"qkdseg_security_level": 0.99}, {"qkdseg_security_level": 0.5}])
    assert code == 400, err
    code, ok = _client(kms, "A").get_key("B", number=1, extension_mandatory=[{"qkdseg_security_level": 0.99}])
    assert code == 400 and ok.message == MANDATORY  # one value: the standard's message (0.99 is out of reach)


def test_an_idle_handshaken_connection_is_closed(kms):
    pk = kms.directory / "pki"
    ctx = ssl.create_default_context(cafile=str(pk / "ca.crt"))
    ctx.load_cert_chain(str(pk / "A.crt"), str(pk / "A.key"))
    with socket.create_connection(("127.0.0.1", kms.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            t = time.monotonic()
            s.settimeout(30)  # the default header timeout is 10 s (docs/kms.md, "Limits")
            try:
                closed = s.recv(1) == b""
            except (ssl.SSLError, ConnectionError, OSError):
                closed = True
            took = time.monotonic() - t
    assert closed and took < 25, took


def test_two_servers_on_one_directory(kms):
    """Last of the shared server's tests: on an older tree the second server disturbs the first."""
    r = qkdseg("kms", "serve", str(kms.directory), "--port", "0")
    refused_in_one_line(r, f"pid {kms.proc.pid}")


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """A service directory that has served (sealed keys, audit records), stopped; tests work on copies."""
    d = kms_init(tmp_path_factory.mktemp("used") / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    server = Server(d).start()
    try:
        assert server.client("A").post("B/enc_keys", {"number": 2}).status_code == 200  # sealed rows
    finally:
        server.stop()
    (d / "server.log").unlink()
    return d


def _copy(used, tmp_path):
    import shutil

    d = tmp_path / "svc"
    shutil.copytree(used, d)
    return d


def test_a_missing_storage_key_refuses_to_start(used, tmp_path):
    d = _copy(used, tmp_path)
    (d / "storage.key").unlink()
    refused_in_one_line(qkdseg("kms", "serve", str(d), "--port", "0"), "storage")
    assert not (d / "storage.key").exists()


def test_init_force_keeps_the_deployed_pki_and_token(used, tmp_path):
    d = _copy(used, tmp_path)
    kept = {name: (d / name).read_bytes() for name in ("pki/ca.crt", "pki/A.crt", "pki/server.crt", "dashboard.token",
                                                        "storage.key")}
    r = qkdseg("kms", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
               "--security-level", "0.5", "--force")
    assert r.returncode == 0, r.stderr
    assert {name: (d / name).read_bytes() for name in kept} == kept


def test_an_edited_audit_chain_refuses_to_start(used, tmp_path):
    d = _copy(used, tmp_path)
    path = d / "audit.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["sae"] = "B"
    path.write_text("\n".join([json.dumps(rec, sort_keys=True, separators=(",", ":"))] + lines[1:]) + "\n")
    refused_in_one_line(qkdseg("kms", "serve", str(d), "--port", "0"), "audit")
    r = qkdseg("kms", "audit", str(d))
    assert r.returncode == 1 and "line 1" in r.stdout, r.stdout
