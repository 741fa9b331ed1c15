"""Refusals an operator can trust (issue 20, items 3-7): HEAD and other methods, bodies too deep or too big,
malformed HTTP, caller strings cut short, strict numbers and levels, slow and idle clients.

One ``qkdseg kms serve`` runs for the whole module, with short timeouts and a small connection limit
(``kms.toml``), and is stopped by the fixture; requests go through ``requests`` and raw TLS sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time

import pytest

from kms_helpers import Server, consumed_offsets, kms_init, set_config
from timing import scaled

LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keep_alive_s": 2.0, "max_connections": 12}


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    d = kms_init(tmp_path_factory.mktemp("refusals") / "svc", "example", ("A=0", "B=7", "C=4"),
                 "--security-level", "0.5")
    set_config(d, **LIMITS)
    server = Server(d).start()
    try:
        yield server
    finally:
        server.stop()


def audit_lines(kms) -> list[str]:
    time.sleep(0.05)
    return (kms.directory / "audit.jsonl").read_text().splitlines()


def tls(kms, sae="A", timeout=10.0) -> ssl.SSLSocket:
    pk = kms.directory / "pki"
    ctx = ssl.create_default_context(cafile=str(pk / "ca.crt"))
    ctx.load_cert_chain(str(pk / f"{sae}.crt"), str(pk / f"{sae}.key"))
    raw = socket.create_connection(("127.0.0.1", kms.port), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    s.do_handshake()
    return s


def read_all(s: ssl.SSLSocket, limit: float = 10.0) -> bytes:
    s.settimeout(limit)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (TimeoutError, socket.timeout, ssl.SSLError, ConnectionError):
        pass
    return out


def closed_within(s: ssl.SSLSocket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (without the client sending anything more)."""
    s.settimeout(seconds)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except (TimeoutError, socket.timeout):
        return False
    except (ssl.SSLError, ConnectionError, OSError):
        return True


# -- 3. HEAD and other methods ------------------------------------------------------------------------
def test_head_issues_no_key_and_other_methods_get_405_json(kms):
    a = kms.client("A")
    assert a.post("B/enc_keys", {}).status_code == 200  # a route exists: the offsets table is filled
    before, n = consumed_offsets(kms.directory), len(audit_lines(kms))
    r = a.session.head(f"{kms.url}/B/enc_keys", params={"number": 5}, verify=a.ca, timeout=30)
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/json")
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        r = a.session.request(method, f"{kms.url}/B/enc_keys", verify=a.ca, timeout=30)
        assert r.status_code == 405 and "message" in r.json(), method
    r = a.session.head(f"{kms.url}/B/status", verify=a.ca, timeout=30)
    assert r.status_code == 405
    assert consumed_offsets(kms.directory) == before
    new = [json.loads(x) for x in audit_lines(kms)[n:]]
    assert [x["event"] for x in new] == ["deny"] * 6 and {x["status"] for x in new} == {405}
    assert not any(x["event"] == "issue" for x in new)


# -- 4. every refusal JSON, 4xx and audited -------------------------------------------------------------
def test_a_deeply_nested_body_is_a_400(kms):
    r = kms.client("A").post("B/enc_keys", b"[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "deep" in r.json()["message"]
    body = {"extension_optional": [{"vendor_x": json.loads("[" * 40 + "]" * 40)}]}
    r = kms.client("A").post("B/enc_keys", body)
    assert r.status_code == 400 and "deep" in r.json()["message"]


def test_a_body_over_the_limit_is_a_json_413_and_audited(kms):
    n = len(audit_lines(kms))
    r = kms.client("A").post("B/enc_keys", b" " * (10 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["message"]
    rec = json.loads(audit_lines(kms)[n])
    assert rec["event"] == "deny" and rec["status"] == 413


@pytest.mark.parametrize("raw", [
    b"GET /api/v1/keys/B/status\r\n\r\n",  # HTTP/0.9
    b"GET /api/v1/keys/B/status?" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a 100 KB request line
    b"GET /api/v1/keys/B/status HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n",  # 10,000 headers
    b"GET /api/v1/keys/B/status HTTP/1.1\r\n\r\n",  # no Host
], ids=["http-0.9", "100KB-line", "10000-headers", "no-host"])
def test_malformed_http_gets_a_json_400(kms, raw):
    s = tls(kms)
    try:
        s.sendall(raw)
        out = read_all(s)
    finally:
        s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), out[:200]
    assert b"application/json" in head.lower() and "message" in json.loads(body)


def test_an_internal_error_is_audited(tmp_path):
    """An unexpected exception in a route: 503 "key data access error" (JSON), and a deny record in the audit log."""
    from qkdseg.server.frontend import create_app
    from qkdseg.kms.server import open_service

    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    svc = open_service(d)
    try:
        def boom(caller, slave):
            raise RuntimeError("boom")

        svc.status = boom
        app = create_app(svc, expiry=False)
        from qkdseg.server.http import STATE_KEY
        from qkdseg.server.etsi import Caller

        sent = []

        async def go():
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "https", "path": "/api/v1/keys/B/status", "raw_path": b"/api/v1/keys/B/status",
                     "query_string": b"", "headers": [(b"host", b"x")], "client": ("127.0.0.1", 1),
                     "server": ("127.0.0.1", 2), "root_path": "", "state": {STATE_KEY: Caller("A", "fp")}}

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(msg):
                sent.append(msg)

            try:
                await app(scope, receive, send)
            except RuntimeError:  # Starlette re-raises to the server after answering (uvicorn logs it)
                pass

        asyncio.run(go())
    finally:
        svc.close()
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["message"].startswith("key data access error")
    rec = json.loads((d / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["event"] == "deny" and rec["status"] == 503 and rec["reason"] == "internal_error"


# -- 5. caller strings are cut short ------------------------------------------------------------------
def test_a_900kb_field_name_is_cut_in_the_answer_and_the_audit(kms):
    n = len(audit_lines(kms))
    name = "f" * 900_000
    set_body = json.dumps({name: 1, "number": 1})
    r = kms.client("A").post("B/enc_keys", set_body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413)
    assert len(r.content) < 1000, len(r.content)
    small = json.dumps({"g" * 60_000: 1})  # refused as an unknown field, cut to a short bound
    r = kms.client("A").post("B/enc_keys", small, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "unknown field" in r.json()["message"] and len(r.content) < 1000
    r = kms.client("A").get("Q" * 10_000 + "/status")
    assert r.status_code == 400 and len(r.content) < 1000
    r = kms.client("A").post("B/enc_keys", {"extension_mandatory": [{f"x{i}" * 50: 1 for i in range(500)}]})
    assert r.status_code == 400 and len(r.content) < 4000
    for line in audit_lines(kms)[n:]:
        assert len(line) < 4000, len(line)


# -- 6. conflicting levels, strict numbers ----------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"extension_mandatory": [{"qkdseg_security_level": 0.99}, {"qkdseg_security_level": 0.5}]},
    {"extension_optional": [{"qkdseg_security_level": 0.6}, {"qkdseg_security_level": 0.6}]},
    '{"extension_mandatory": [{"qkdseg_security_level": 0.99, "qkdseg_security_level": 0.5}]}',
    '{"number": 1, "number": 2}',
], ids=["two-objects", "two-optional", "duplicate-key", "duplicate-number"])
def test_two_values_for_one_parameter_are_a_400(kms, body):
    before = consumed_offsets(kms.directory)
    r = kms.client("A").post("B/enc_keys", body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "twice" in r.json()["message"] or "duplicate" in r.json()["message"]
    assert consumed_offsets(kms.directory) == before


@pytest.mark.parametrize("query", ["number=%D9%A3", "number=%2B2", "number=%202%20", "number=2&number=3",
                                   "size=2_56", "number=1e1"])
def test_query_numbers_are_parsed_strictly(kms, query):
    r = kms.client("A").get(f"B/enc_keys?{query}")
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")


# -- 7. slow and idle clients ----------------------------------------------------------------------------
def test_idle_and_slow_clients_are_cut_while_a_real_client_is_served(kms):
    idle = [tls(kms) for _ in range(4)]  # handshaken, never send a byte
    slow = tls(kms)
    slow.sendall(b"POST /api/v1/keys/B/enc_keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{}")  # 2 bytes of the 100 announced
    try:
        t = time.monotonic()
        assert kms.client("A").get("B/status").status_code == 200  # served meanwhile
        assert all(closed_within(s, 5.0) for s in idle)
        assert closed_within(slow, 5.0)
        took = time.monotonic() - t
        assert took < 8.0, took
    finally:
        for s in idle + [slow]:
            s.close()


def test_the_connection_limit_refuses_more_and_frees_up(kms):
    held = []
    try:
        for _ in range(LIMITS["max_connections"] + 3):
            try:
                held.append(tls(kms, timeout=5.0))
            except (ssl.SSLError, ConnectionError, OSError):
                held.append(None)
        open_ = [s for s in held if s is not None and not closed_within(s, 0.2)]
        assert len(open_) <= LIMITS["max_connections"], len(open_)
    finally:
        for s in held:
            if s is not None:
                s.close()
    deadline = time.monotonic() + scaled(10)
    while True:  # the server has seen the closes: a client is served again
        try:
            if kms.client("A").get("B/status").status_code == 200:
                break
        except Exception:  # noqa: BLE001
            pass
        assert time.monotonic() < deadline, "not served after the held connections were closed"
        time.sleep(0.2)
