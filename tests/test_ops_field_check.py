"""Independent operations check of ``qkdseg kms serve`` (metrics, health, logs, systemd).

Written from docs/deploy.md and docs/kms.md ALONE (no look at src/ or at the
project's other tests).  It starts a real ``qkdseg kms serve`` on loopback with
``--metrics-port 0`` and ``--dashboard-port 0`` and JSON logs, drives it with
its own ETSI GS QKD 014 client (plain ``requests`` and raw ``ssl`` sockets with
the SAE certificates of ``DIR/pki``), then scrapes ``/metrics`` and parses it
with ``prometheus_client.parser.text_string_to_metric_families``, and checks
that the documented counters changed by exactly what the client did.

Doc ambiguities (tested at their most reasonable reading, see comments):

* A1: the refusal ``reason`` of a 404 (unknown path), 405 (other method) and
  413 (body too large) is not named by the docs ("by status where nothing more
  specific applies: bad_request (400), unauthorized (401)"); for those the
  expected reason is taken from the ``deny`` record of ``audit.jsonl`` (the
  docs say the counter equals the audit log), and only that it is *some*
  reason is checked (the service was seen to write ``not_found``,
  ``method_not_allowed`` and ``too_large``, none of them in kms.md's list of
  refusal reasons).
* A2: the ``endpoint`` label of a 405 or 413 on an ``enc_keys`` path is not
  spelled out; read as "by path" (``enc_keys``); an unknown path is
  ``other``.
* A3: the status and reason of ``enc_keys`` naming an unregistered slave SAE
  in the path are not in the docs' tables; only "some refusal" is asserted.
* A4: deploy.md says "every HTTP answer carries X-Request-ID" but also that a
  refusal of malformed HTTP happens "before any request exists"; the header
  is checked only on answers of the application.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
prom_parser = pytest.importorskip("prometheus_client.parser")
x509 = pytest.importorskip("cryptography.x509")

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
RID_RE = re.compile(r"^[0-9a-f]{16}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DOC_LABELS = {"reason", "endpoint", "link", "state", "neighbour", "outcome", "kind", "service", "version", "step"}
ENDPOINTS = {"status", "enc_keys", "dec_keys", "relay", "control", "other"}
SAES = {"SAE_A": "0", "SAE_B": "7", "SAE_C": "4"}
TIMEOUT = 20


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(var, None)
    return env


def qkdseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdseg", *args],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def families(text: str) -> dict:
    """name -> list of (sample name, labels, value), via the Prometheus text parser."""
    out: dict = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        out.setdefault(fam.name, {"type": fam.type, "samples": []})
        out[fam.name]["samples"].extend((s.name, dict(s.labels), s.value) for s in fam.samples)
    return out


def sample(fams: dict, name: str, default: float | None = 0.0, **labels) -> float | None:
    """The value of the sample ``name`` with exactly these labels (``le`` aside), from any family."""
    for fam in fams.values():
        for sname, slabels, value in fam["samples"]:
            if sname == name and slabels == labels:
                return value
    return default


def samples(fams: dict, name: str) -> list:
    return [(lab, val) for fam in fams.values() for (sname, lab, val) in fam["samples"] if sname == name]


def mint_cert(pki: Path, cn: str, out: Path) -> tuple[str, str]:
    """A client certificate for ``cn`` from the test CA (an SAE the service does not know)."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    crt, kpath = out / f"{cn}.crt", out / f"{cn}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(kpath, 0o600)
    return str(crt), str(kpath)


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "kms"
        self.out = root / "stdout.log"
        self.err = root / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        r = qkdseg(
            "kms",
            "init",
            str(self.dir),
            "--network",
            "example",
            *[a for s, n in SAES.items() for a in ("--sae", f"{s}={n}")],
            "--security-level",
            "0.5",
        )
        assert r.returncode == 0, r.stdout + r.stderr
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qkdseg",
                    "kms",
                    "serve",
                    str(self.dir),
                    "--port",
                    "0",
                    "--dashboard-port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--log-format",
                    "json",
                    "--log-level",
                    "info",
                ],
                stdout=out,
                stderr=err,
                env=_env(),
            )
        deadline = time.monotonic() + 90
        self.etsi = self.dash = self.metrics = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            for line in self.out.read_text(errors="replace").splitlines():
                try:
                    msg = json.loads(line).get("message", "")
                except ValueError:
                    msg = line
                if m := re.search(r"ETSI GS QKD 014 on (https://127\.0\.0\.1:\d+)/api/v1/keys/", msg):
                    self.etsi = m.group(1)
                if m := re.search(r"dashboard on (http://127\.0\.0\.1:\d+)/dashboard/", msg):
                    self.dash = m.group(1)
                if m := re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics \(and /healthz, /readyz\)", msg):
                    self.metrics = m.group(1)
            if self.etsi and self.dash and self.metrics:
                break
            time.sleep(0.2)
        assert self.etsi and self.dash and self.metrics, self.out.read_text() + self.err.read_text()[-3000:]

    def stop(self) -> int:
        if self.proc is not None and self.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.returncode = -9
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Client:
    """A plain ETSI 014 client: requests with the SAE's own certificate."""

    def __init__(self, srv: Server, crt: str, key: str):
        self.srv = srv
        self.s = requests.Session()
        self.s.cert = (crt, key)
        self.s.trust_env = False
        self.ca = str(srv.dir / "pki" / "ca.crt")

    def req(self, method: str, path: str, **kw) -> requests.Response:
        return self.s.request(method, self.srv.etsi + path, verify=self.ca, timeout=TIMEOUT, **kw)


def raw_https(srv: Server, crt: str, key: str, data: bytes, read_timeout: float = 12.0) -> bytes:
    """Send raw bytes over mutual TLS and read the answer (head and a JSON body)."""
    ctx = ssl.create_default_context(cafile=str(srv.dir / "pki" / "ca.crt"))
    ctx.load_cert_chain(crt, key)
    host, port = srv.etsi.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=read_timeout) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(data)
        buf = b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < read_timeout:
            try:
                chunk = tls.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
        return buf


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert m, raw[:300]
    return int(m.group(1))


def read_audit(srv: Server) -> list[dict]:
    path = srv.dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("opsfield"))
    try:
        s.start()
        yield s
    finally:
        try:
            s.stop()
        finally:
            s.kill()


@pytest.fixture(scope="module")
def run(srv):
    """Does the traffic once; returns everything the client saw and expects."""
    pki = srv.dir / "pki"
    cl = {sae: Client(srv, str(pki / f"{sae}.crt"), str(pki / f"{sae}.key")) for sae in SAES}
    x_crt, x_key = mint_cert(pki, "SAE_X", srv.root)
    unknown = Client(srv, x_crt, x_key)

    before = families(requests.get(srv.metrics + "/metrics", timeout=TIMEOUT).text)
    rec = {
        "before": before,
        "keys": [],
        "key_ids": set(),
        "answers": [],
        "deliveries": 0,
        "keys_issued": 0,
        "bits_issued": 0,
        "fetches": 0,
        "keys_fetched": 0,
        "bits_fetched": 0,
        "consumed_bits": 0,
        "refusals": [],
        "endpoint": Counter(),
        "waiting": 0,
    }

    def note(resp, endpoint, audited):
        rec["endpoint"][endpoint] += 1
        rec["answers"].append(
            {
                "status": resp.status_code,
                "rid": resp.headers.get("X-Request-ID"),
                "endpoint": endpoint,
                "audited": audited,
                "path": resp.request.path_url,
            }
        )

    def enc(master, slave, how, **kw):
        r = cl[master].req(how, f"/api/v1/keys/{slave}/enc_keys", **kw)
        note(r, "enc_keys", True)
        assert r.status_code == 200, r.text
        body = r.json()
        keys = body["keys"]
        size = len(base64.b64decode(keys[0]["key"])) * 8
        rec["deliveries"] += 1
        rec["keys_issued"] += len(keys)
        rec["bits_issued"] += len(keys) * size
        route = body.get("key_container_extension", {}).get("qkdseg_route")
        if route and "consumed_bits" in route:
            rec["consumed_bits"] += route["consumed_bits"]
        for k in keys:
            rec["keys"].append(base64.b64decode(k["key"]))
            rec["key_ids"].add(k["key_ID"])
        return keys, size

    def dec(slave, master, ids, how, size):
        if how == "GET":
            assert len(ids) == 1
            r = cl[slave].req("GET", f"/api/v1/keys/{master}/dec_keys", params={"key_ID": ids[0]})
        else:
            r = cl[slave].req("POST", f"/api/v1/keys/{master}/dec_keys", json={"key_IDs": [{"key_ID": i} for i in ids]})
        note(r, "dec_keys", True)
        assert r.status_code == 200, r.text
        got = r.json()["keys"]
        assert sorted(k["key_ID"] for k in got) == sorted(ids)
        rec["fetches"] += 1
        rec["keys_fetched"] += len(got)
        rec["bits_fetched"] += len(got) * size
        return got

    def refuse(client, method, path, status, reason, endpoint, **kw):
        r = client.req(method, path, **kw)
        note(r, endpoint, True)
        if isinstance(status, int):
            assert r.status_code == status, (path, r.status_code, r.text)
        else:
            assert r.status_code in status, (path, r.status_code, r.text)
        if method != "HEAD":
            assert isinstance(r.json().get("message"), str), r.text  # every non-200 has a JSON body
        rec["refusals"].append(
            {
                "rid": r.headers.get("X-Request-ID"),
                "status": r.status_code,
                "reason": reason,
                "what": f"{method} {path}",
                "text": r.text,
            }
        )
        return r

    # -- status (no audit record)
    for _ in range(2):
        r = cl["SAE_A"].req("GET", "/api/v1/keys/SAE_B/status")
        note(r, "status", False)
        assert r.status_code == 200, r.text
        assert r.json()["master_SAE_ID"] == "SAE_A" and r.json()["slave_SAE_ID"] == "SAE_B"

    # -- deliveries (enc_keys then dec_keys; varied number and size, GET and POST)
    # D1: bare GET; the client's own X-Request-ID must not be taken (deploy.md)
    k1, s1 = enc("SAE_A", "SAE_B", "GET", headers={"X-Request-ID": "0123456789abcdef"})
    assert rec["answers"][-1]["rid"] != "0123456789abcdef"
    assert len(k1) == 1 and s1 == 256
    rec["immediate"] = {
        "deliveries": sample(
            families(requests.get(srv.metrics + "/metrics", timeout=TIMEOUT).text), "qkdseg_deliveries_total"
        )
    }
    dec("SAE_B", "SAE_A", [k1[0]["key_ID"]], "GET", s1)
    # D2: POST 3 x 512
    k2, s2 = enc("SAE_A", "SAE_B", "POST", json={"number": 3, "size": 512})
    assert len(k2) == 3 and s2 == 512
    dec("SAE_B", "SAE_A", [k["key_ID"] for k in k2], "POST", s2)
    # D3: GET ?number=2&size=128 to another node
    k3, s3 = enc("SAE_A", "SAE_C", "GET", params={"number": 2, "size": 128})
    assert len(k3) == 2 and s3 == 128
    dec("SAE_C", "SAE_A", [k["key_ID"] for k in k3], "POST", s3)
    # D4: C -> B, 1 x 1024
    k4, s4 = enc("SAE_C", "SAE_B", "POST", json={"number": 1, "size": 1024})
    assert len(k4) == 1 and s4 == 1024
    dec("SAE_B", "SAE_C", [k4[0]["key_ID"]], "GET", s4)
    # D5: B -> A, an empty POST body (defaults)
    k5, s5 = enc("SAE_B", "SAE_A", "POST", data=b"")
    assert len(k5) == 1 and s5 == 256
    dec("SAE_A", "SAE_B", [k5[0]["key_ID"]], "POST", s5)
    # D6: A -> B, 4 x 256; 2 fetched, 2 left waiting
    k6, s6 = enc("SAE_A", "SAE_B", "POST", json={"number": 4, "size": 256})
    assert len(k6) == 4
    dec("SAE_B", "SAE_A", [k["key_ID"] for k in k6[:2]], "POST", s6)
    rec["waiting"] = 2

    # -- refusals of the kinds the docs list, each with its documented status
    A, B, C = cl["SAE_A"], cl["SAE_B"], cl["SAE_C"]
    # key id already delivered: 400, key_not_found
    r = refuse(
        B, "GET", "/api/v1/keys/SAE_A/dec_keys", 400, "key_not_found", "dec_keys", params={"key_ID": k1[0]["key_ID"]}
    )
    assert "one or more keys specified are not found on KME" in r.json()["message"]
    rec["immediate"]["key_not_found"] = sample(
        families(requests.get(srv.metrics + "/metrics", timeout=TIMEOUT).text),
        "qkdseg_refusals_total",
        reason="key_not_found",
    )
    # unknown key id: 400, key_not_found
    refuse(
        B,
        "POST",
        "/api/v1/keys/SAE_A/dec_keys",
        400,
        "key_not_found",
        "dec_keys",
        json={"key_IDs": [{"key_ID": str(uuid.uuid4())}]},
    )
    # dec_keys by an SAE that is not the key's slave (§5.4): 401 ("unauthorized": by status)
    refuse(C, "GET", "/api/v1/keys/SAE_A/dec_keys", 401, "unauthorized", "dec_keys", params={"key_ID": k6[2]["key_ID"]})
    # a certificate whose CN is not a registered SAE: 401, unauthorized
    refuse(unknown, "GET", "/api/v1/keys/SAE_B/status", 401, "unauthorized", "status")
    # size too large (> max_key_size 4096): 400, bad_request
    refuse(A, "GET", "/api/v1/keys/SAE_B/enc_keys", 400, "bad_request", "enc_keys", params={"number": 1, "size": 8192})
    # size not a multiple of 8: 400 with the spec's message
    r = refuse(
        A, "POST", "/api/v1/keys/SAE_B/enc_keys", 400, "bad_request", "enc_keys", json={"number": 1, "size": 100}
    )
    assert "size shall be a multiple of 8" in r.json()["message"]
    # number over max_key_per_request: 400
    refuse(A, "POST", "/api/v1/keys/SAE_B/enc_keys", 400, "bad_request", "enc_keys", json={"number": 129, "size": 256})
    # an unknown field: 400 naming it
    r = refuse(
        A, "POST", "/api/v1/keys/SAE_B/enc_keys", 400, "bad_request", "enc_keys", json={"number": 1, "bogus_field": 2}
    )
    assert "bogus_field" in r.text
    # a body that is not a JSON object: 400
    refuse(A, "POST", "/api/v1/keys/SAE_B/enc_keys", 400, "bad_request", "enc_keys", json=[1, 2])
    # a duplicate key in a JSON object: 400
    refuse(
        A,
        "POST",
        "/api/v1/keys/SAE_B/enc_keys",
        400,
        "bad_request",
        "enc_keys",
        data=b'{"number": 1, "number": 2}',
        headers={"Content-Type": "application/json"},
    )
    # a mandatory level that cannot be met: 400, level_unmet
    r = refuse(
        A,
        "POST",
        "/api/v1/keys/SAE_B/enc_keys",
        400,
        "level_unmet",
        "enc_keys",
        json={"number": 1, "extension_mandatory": [{"qkdseg_security_level": 0.99}]},
    )
    assert "not all extension_mandatory request options could be met" in r.json()["message"]
    # an unknown slave SAE in the path (A3: status and reason not documented)
    refuse(A, "GET", "/api/v1/keys/SAE_NOBODY/enc_keys", (400, 401, 404), None, "enc_keys")
    # an unknown path: 404 (A1: reason undocumented); endpoint "other"
    refuse(A, "GET", "/api/v1/nothing/here", 404, None, "other")
    # a method other than GET and POST: 405 (A1, A2)
    refuse(A, "PUT", "/api/v1/keys/SAE_B/enc_keys", 405, None, "enc_keys", json={"number": 1})

    # a body over max_body_bytes (1 MiB): 413, JSON, audited; "nothing more is read".
    # Sent raw: the head announces 2 MiB, only a few bytes follow.
    crt_a, key_a = str(pki / "SAE_A.crt"), str(pki / "SAE_A.key")
    raw = raw_https(
        srv,
        crt_a,
        key_a,
        b"POST /api/v1/keys/SAE_B/enc_keys HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n{"number": 1',
    )
    assert status_of(raw) == 413, raw[:500]
    rid = re.search(rb"(?im)^x-request-id:\s*([0-9a-f]+)", raw)
    rec["endpoint"]["enc_keys"] += 1  # A2
    rec["answers"].append(
        {
            "status": 413,
            "rid": rid.group(1).decode() if rid else None,
            "endpoint": "enc_keys",
            "audited": True,
            "path": "/api/v1/keys/SAE_B/enc_keys",
        }
    )
    rec["refusals"].append(
        {
            "rid": rid.group(1).decode() if rid else None,
            "status": 413,
            "reason": None,
            "what": "POST 413",
            "text": raw.decode(errors="replace"),
        }
    )
    json.loads(raw.partition(b"\r\n\r\n")[2])  # a JSON body

    # malformed HTTP (a request without Host): 400 JSON from the HTTP layer, a deny record,
    # counted in refusals but NOT in the latency histogram (deploy.md)
    raw = raw_https(srv, crt_a, key_a, b"GET /api/v1/keys/SAE_B/status HTTP/1.1\r\n\r\n")
    assert status_of(raw) == 400, raw[:500]
    json.loads(raw.partition(b"\r\n\r\n")[2])
    rec["refusals"].append(
        {
            "rid": None,
            "status": 400,
            "reason": None,
            "what": "no Host",
            "http_layer": True,
            "text": raw.decode(errors="replace"),
        }
    )

    # the audit file is written right after the commit, synced at most once a second
    time.sleep(1.2)
    after = families(requests.get(srv.metrics + "/metrics", timeout=TIMEOUT).text)
    deadline = time.monotonic() + 6
    audit = read_audit(srv)
    while time.monotonic() < deadline and len(audit) < sample(after, "qkdseg_audit_records_total"):
        time.sleep(0.3)
        audit = read_audit(srv)
    rec["after"] = after
    rec["audit"] = audit
    rec["metrics_text"] = requests.get(srv.metrics + "/metrics", timeout=TIMEOUT).text
    rec["dash_metrics"] = requests.get(srv.dash + "/metrics", timeout=TIMEOUT)
    rec["metrics_resp"] = requests.get(srv.metrics + "/metrics", timeout=TIMEOUT)
    rec["network"] = requests.get(srv.dash + "/dashboard/api/network", timeout=TIMEOUT).json()
    return rec


def delta(rec, name, **labels):
    return sample(rec["after"], name, **labels) - sample(rec["before"], name, **labels)


# --------------------------------------------------------------------------- metrics


def test_metrics_served_on_both_ports_as_prometheus_text(srv, run):
    for resp in (run["metrics_resp"], run["dash_metrics"]):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        fams = families(resp.text)
        assert "qkdseg_deliveries" in fams or any(n.startswith("qkdseg_deliveries") for n in fams)
        # no process_* or python_* series: each server has its own registry
        assert not [n for n in fams if n.startswith(("process_", "python_"))]
    a, b = families(run["metrics_resp"].text), families(run["dash_metrics"].text)
    for name in ("qkdseg_deliveries_total", "qkdseg_fetches_total", "qkdseg_audit_records_total"):
        assert sample(a, name) == sample(b, name), name  # one registry behind both ports


def test_metrics_content_type_is_the_documented_one(run):
    # deploy.md: "with that library's `CONTENT_TYPE_LATEST` (`text/plain; version=1.0.0; charset=utf-8` with
    # prometheus_client 0.26; `text/plain; version=0.0.4` with older releases)". (The first version of this check
    # expected 0.0.4 from the docs as they were; the docs were wrong for the installed library.)
    from prometheus_client import CONTENT_TYPE_LATEST

    for resp in (run["metrics_resp"], run["dash_metrics"]):
        ct = resp.headers["content-type"]
        assert ct == CONTENT_TYPE_LATEST and ct.startswith("text/plain; version="), ct


def test_counted_before_the_answer_is_sent(run):
    # deploy.md: "a client that has its answer can scrape and find its refusal counted";
    # an issue is committed (and counted by the commit hook) before it is answered.
    assert run["immediate"]["deliveries"] == 1
    assert run["immediate"]["key_not_found"] == 1


def test_counters_start_at_zero(run):
    b = run["before"]
    for name in (
        "qkdseg_deliveries_total",
        "qkdseg_keys_issued_total",
        "qkdseg_key_bits_issued_total",
        "qkdseg_fetches_total",
        "qkdseg_keys_fetched_total",
        "qkdseg_key_bits_fetched_total",
        "qkdseg_expiries_total",
        "qkdseg_audit_records_total",
    ):
        assert sample(b, name, default=None) == 0.0, name
    assert sum(v for _, v in samples(b, "qkdseg_refusals_total")) == 0


def test_delivery_counters_equal_what_the_client_did(run):
    assert delta(run, "qkdseg_deliveries_total") == run["deliveries"] == 6
    assert delta(run, "qkdseg_keys_issued_total") == run["keys_issued"] == 12
    assert delta(run, "qkdseg_key_bits_issued_total") == run["bits_issued"]
    assert run["bits_issued"] == 256 + 3 * 512 + 2 * 128 + 1024 + 256 + 4 * 256
    assert delta(run, "qkdseg_fetches_total") == run["fetches"] == 6
    assert delta(run, "qkdseg_keys_fetched_total") == run["keys_fetched"] == 10
    assert delta(run, "qkdseg_key_bits_fetched_total") == run["bits_fetched"]
    assert delta(run, "qkdseg_expiries_total") == 0
    assert sample(run["after"], "qkdseg_keys_waiting", default=None) == run["waiting"]


def test_refusal_counters_by_reason_equal_what_the_client_did(run):
    after, before = run["after"], run["before"]
    got = Counter()
    for lab, v in samples(after, "qkdseg_refusals_total"):
        assert set(lab) == {"reason"}, lab
        got[lab["reason"]] += v
    for lab, v in samples(before, "qkdseg_refusals_total"):
        got[lab["reason"]] -= v
    got = +got
    assert sum(got.values()) == len(run["refusals"]), (got, len(run["refusals"]))
    # each refusal, joined to its deny record by the request id, has its status and the documented
    # reason; where the docs name no reason (A1, A3) the record's own reason is expected
    deny = [r for r in run["audit"] if r.get("event") == "deny"]
    by_rid = {r.get("http_request_id"): r for r in deny if r.get("http_request_id")}
    no_rid = [r for r in deny if not r.get("http_request_id")]
    expected = Counter()
    for ref in run["refusals"]:
        if ref.get("http_layer"):
            assert len(no_rid) == 1, no_rid
            rec = no_rid[0]
        else:
            assert ref["rid"] in by_rid, ("no deny record for", ref["what"], ref["rid"])
            rec = by_rid[ref["rid"]]
        assert rec.get("status") == ref["status"], (ref["what"], rec)
        assert isinstance(rec.get("reason"), str) and rec["reason"], rec
        if ref["reason"] is not None:
            assert rec["reason"] == ref["reason"], (ref["what"], rec)
        expected[ref["reason"] or rec["reason"]] += 1
    assert got == expected, (got, expected)
    # and the counter by reason equals the deny records by reason (deploy.md "Counted from the audit log")
    assert got == Counter(r["reason"] for r in deny)


def test_counters_equal_the_audit_log(run):
    audit, after = run["audit"], run["after"]
    assert sample(after, "qkdseg_audit_records_total") == len(audit)
    issue = [r for r in audit if r.get("event") == "issue"]
    deliver = [r for r in audit if r.get("event") == "deliver"]
    assert sample(after, "qkdseg_deliveries_total") == len(issue)
    assert sample(after, "qkdseg_keys_issued_total") == sum(len(r["key_ids"]) for r in issue)
    assert sample(after, "qkdseg_key_bits_issued_total") == sum(len(r["key_ids"]) * r["size"] for r in issue)
    assert sample(after, "qkdseg_fetches_total") == len(deliver)
    assert sample(after, "qkdseg_keys_fetched_total") == sum(len(r["key_ids"]) for r in deliver)
    assert sample(after, "qkdseg_key_bits_fetched_total") == sum(len(r["key_ids"]) * r["size"] for r in deliver)
    assert sample(after, "qkdseg_audit_head_seq", default=None) == audit[-1]["seq"]
    # no audit record for status answers: records = issues + delivers + denies here
    assert len(audit) == run["deliveries"] + run["fetches"] + len(run["refusals"])


def test_latency_histogram_has_observations_per_endpoint(run):
    after, before = run["after"], run["before"]
    got = {}
    for lab, v in samples(after, "qkdseg_request_duration_seconds_count"):
        assert set(lab) == {"endpoint"} and lab["endpoint"] in ENDPOINTS, lab
        got[lab["endpoint"]] = v - (sample(before, "qkdseg_request_duration_seconds_count", **lab) or 0)
    want = dict(run["endpoint"])
    assert {k: v for k, v in got.items() if v} == want, (got, want)  # the no-Host 400 is not counted
    for ep in want:
        buckets = [
            (float(lab["le"]), v)
            for lab, v in samples(after, "qkdseg_request_duration_seconds_bucket")
            if lab.get("endpoint") == ep
        ]
        les = sorted(le for le, _ in buckets)
        assert les[0] == pytest.approx(0.001) and les[-2] == pytest.approx(10.0) and les[-1] == float("inf"), les
        assert dict(buckets)[float("inf")] == sample(after, "qkdseg_request_duration_seconds_count", endpoint=ep)
        assert sample(after, "qkdseg_request_duration_seconds_sum", endpoint=ep) > 0


def test_store_and_process_gauges(srv, run):
    after = run["after"]
    assert sample(after, "qkdseg_ready", default=None) == 1
    assert sample(after, "qkdseg_uptime_seconds", default=None) > 0
    info = samples(after, "qkdseg_build_info")
    assert len(info) == 1 and info[0][1] == 1 and info[0][0]["service"] == "kms" and info[0][0]["version"]
    assert sample(after, "qkdseg_store_database_bytes", default=None) > 0
    assert sample(after, "qkdseg_spare_keys", default=None) is not None
    assert sample(after, "qkdseg_store_commit_duration_seconds_count", default=0) >= 1
    assert sample(after, "qkdseg_store_commit_batch_size_count", default=0) >= 1
    les = sorted(float(lab["le"]) for lab, _ in samples(after, "qkdseg_store_commit_batch_size_bucket"))
    assert les[0] == 1 and les[-2] == 256, les


def test_link_metrics_for_every_link_of_the_example_network(run):
    links = run["network"]["links"]
    assert len(links) == 12  # "12 of 12 links" (deploy.md) on the example network
    after, before = run["after"], run["before"]
    names = {f"{l['u']}-{l['v']}" for l in links}
    for metric in ("qkdseg_link_level_bits", "qkdseg_link_capacity_bits", "qkdseg_link_consumed_bits_total"):
        have = {lab["link"] for lab, _ in samples(after, metric)}
        assert have == names, (metric, have ^ names)
    for l in links:
        name = f"{l['u']}-{l['v']}"
        assert sample(after, "qkdseg_link_capacity_bits", link=name) == l["capacity_bits"]
        level = sample(after, "qkdseg_link_level_bits", link=name)
        assert 0 <= level <= l["capacity_bits"]
        states = {lab["state"]: v for lab, v in samples(after, "qkdseg_link_state") if lab["link"] == name}
        assert set(states) == {"READY", "WARNING", "CHARGING", "EMPTY"}, states
        assert sorted(states.values()) == [0, 0, 0, 1], states
    consumed = sum(
        sample(after, "qkdseg_link_consumed_bits_total", link=n)
        - sample(before, "qkdseg_link_consumed_bits_total", link=n)
        for n in names
    )
    # kms.md: consumed_bits is what the request took from the link pools
    assert consumed == run["consumed_bits"] > 0


def test_no_label_holds_a_key_id_or_key_bytes(run):
    text = run["metrics_text"]
    secrets_ = set()
    for k in run["keys"]:
        secrets_ |= {base64.b64encode(k).decode(), k.hex(), k.hex().upper()}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            for name, value in s.labels.items():
                assert name in DOC_LABELS | {"le", "quantile"}, (s.name, name)
                assert not UUID_RE.search(value), (s.name, name, value)
                assert value not in run["key_ids"]
                assert all(kid[:8] not in value for kid in run["key_ids"]) or name in ("le", "version"), value
    for sec in secrets_:
        assert sec not in text
    assert not UUID_RE.search(text)


# --------------------------------------------------------------------------- health


def test_healthz_and_readyz_and_kms_status_agree(srv, run):
    for base in (srv.metrics, srv.dash):
        h = requests.get(base + "/healthz", timeout=TIMEOUT)
        assert h.status_code == 200
        hb = h.json()
        assert hb["alive"] is True and hb["service"] == "kms" and hb["kme_id"] == "KME_qkdseg"
        assert hb["pid"] == srv.proc.pid
        assert isinstance(hb["uptime_s"], (int, float)) and hb["uptime_s"] > 0
    r = requests.get(srv.metrics + "/readyz", timeout=TIMEOUT)
    assert r.status_code == 200
    rb = r.json()
    r2 = requests.get(srv.dash + "/readyz", timeout=TIMEOUT)
    assert r2.status_code == 200 and r2.json()["ready"] is True and set(r2.json()["checks"]) == set(rb["checks"])
    assert rb["service"] == "kms" and rb["ready"] is True
    assert set(rb["checks"]) == {"store", "audit_chain", "key_material"}
    for name, chk in rb["checks"].items():
        assert isinstance(chk["ok"], bool) and isinstance(chk["detail"], str) and "\n" not in chk["detail"]
    assert rb["ready"] == all(c["ok"] for c in rb["checks"].values())
    assert re.search(r"\d+ of 12 links hold at least key_size=256 bits", rb["checks"]["key_material"]["detail"])

    st = qkdseg("kms", "status", str(srv.dir))
    assert st.returncode == 0, st.stdout + st.stderr
    lines = st.stdout.splitlines()
    assert lines[0] == f"{srv.dir}: ready (served now)", lines
    for name in ("store", "audit_chain", "key_material"):
        assert any(re.match(rf"\s+{name}: ok: ", ln) for ln in lines), (name, lines)
    assert any(re.match(r"\s+store: ok: schema version 2; storage key matches$", ln) for ln in lines), lines
    sj = qkdseg("kms", "status", str(srv.dir), "--json")
    assert sj.returncode == 0, sj.stdout + sj.stderr
    body = json.loads(sj.stdout)
    assert body["serving"] is True
    assert body["ready"] == rb["ready"] and body["service"] == "kms"
    assert {k: v["ok"] for k, v in body["checks"].items()} == {k: v["ok"] for k, v in rb["checks"].items()}
    n = len(read_audit(srv))
    assert f"{n} records intact" in body["checks"]["audit_chain"]["detail"], body["checks"]["audit_chain"]
    assert sample(run["after"], "qkdseg_ready") == (1 if rb["ready"] else 0)


# --------------------------------------------------------------------------- logs (stop the server first)


@pytest.fixture(scope="module")
def stopped(srv, run):
    rc = srv.stop()
    out = srv.out.read_text(errors="replace").splitlines()
    err = srv.err.read_text(errors="replace").splitlines()
    return rc, out, err


def test_sigterm_is_a_clean_stop(stopped):
    rc, out, err = stopped
    assert rc == 0, (rc, err[-10:])
    notices = [json.loads(ln) for ln in out + err if ln.strip()]
    assert any(n.get("level") == "notice" and "stopped" in n.get("message", "") for n in notices), out[-5:]


def test_every_log_line_is_json_with_the_documented_fields(stopped):
    _, out, err = stopped
    assert out and err
    for line in out + err:
        rec = json.loads(line)  # every line, stdout and stderr
        assert isinstance(rec, dict)
        assert TIME_RE.match(rec["time"]), rec
        assert rec["level"] in {"debug", "info", "warning", "error", "critical", "notice"}, rec
        assert isinstance(rec["logger"], str) and isinstance(rec["message"], str)
        if "http_request_id" in rec:
            assert RID_RE.match(rec["http_request_id"]), rec


def test_request_ids_join_answers_log_lines_and_audit_records(stopped, run):
    _, out, err = stopped
    logs = [json.loads(ln) for ln in out + err]
    req = [r for r in logs if r["logger"] == "qkdseg.kms.request"]
    by_rid = {}
    for r in req:
        for f in ("method", "path", "status", "endpoint", "duration_ms", "http_request_id"):
            assert f in r, (f, r)
        assert "?" not in r["path"], r
        assert r["endpoint"] in ENDPOINTS
        by_rid[r["http_request_id"]] = r
    audit_rids = {r.get("http_request_id"): r for r in run["audit"] if r.get("event") in ("issue", "deliver", "deny")}
    for ans in run["answers"]:
        assert ans["rid"] and RID_RE.match(ans["rid"]), ans
        assert ans["rid"] in by_rid, ("no request log line", ans)
        line = by_rid[ans["rid"]]
        assert line["status"] == ans["status"] and line["endpoint"] == ans["endpoint"], (line, ans)
        if ans["audited"]:
            assert ans["rid"] in audit_rids, ("no audit record", ans)
    assert len({a["rid"] for a in run["answers"]}) == len(run["answers"])  # fresh per answer
    # records not written by an HTTP request (the no-Host refusal) have no such field
    http_deny = [r for r in run["audit"] if r.get("event") == "deny" and not r.get("http_request_id")]
    assert len(http_deny) == 1, http_deny
    # one request line per answered request, by endpoint, as the histogram counts them
    c = Counter(r["endpoint"] for r in req)
    assert dict(c) == dict(run["endpoint"]), (c, run["endpoint"])


def test_no_key_bytes_in_the_logs(stopped, run):
    _, out, err = stopped
    text = "\n".join(out + err)
    assert run["keys"]
    for k in run["keys"]:
        for enc in (
            base64.b64encode(k).decode(),
            base64.b64encode(k).decode().rstrip("="),
            base64.urlsafe_b64encode(k).decode().rstrip("="),
            k.hex(),
            k.hex().upper(),
        ):
            assert enc not in text


# --------------------------------------------------------------------------- systemd


def test_systemd_units_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze is not installed: systemd units not verified")
    qk = shutil.which("qkdseg") or str(Path(sys.executable).with_name("qkdseg"))
    if not Path(qk).exists():
        qk = "/bin/true"
    names = {
        "qkdseg-kms.service": "qkdseg-kms.service",
        "qkdseg-node@.service": "qkdseg-node@n1.service",
        "qkdseg-controller.service": "qkdseg-controller.service",
    }
    files = []
    for src, dst in names.items():
        text = (REPO / "deploy" / "systemd" / src).read_text()
        assert "ExecStart=/usr/local/bin/qkdseg " in text, src
        (tmp_path / dst).write_text(text.replace("/usr/local/bin/qkdseg", qk))
        files.append(str(tmp_path / dst))
    # the template is verified as its instance qkdseg-node@n1 (verify needs an instance name)
    r = subprocess.run(
        [exe, "verify", *files],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    text = r.stdout + r.stderr
    about = [ln for ln in text.splitlines() if "qkdseg" in ln]
    assert not about, text
