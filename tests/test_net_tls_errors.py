"""Issue 36, item 5: a TLS failure between the network's processes is logged at the failing side and reported
(``/readyz``, ``net status``, the SAE's 503) naming the certificate problem: expired, wrong name or address, wrong
role, unknown CA (net/tlsfail.py).

A real node process (node 0 of a line network) calls the controller's address, where the test serves TLS with
real certificates made wrong one after the other (another CA, a wrong IP address, expired, a node's certificate);
then the test calls the node with client certificates made wrong (another CA, expired), which the node refuses
and logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from test_net import _free_port, _run
from test_net_linkseeds import _line, _wait_exit
from timing import scaled


class _Answer(BaseHTTPRequestHandler):
    def _ok(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _ok

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serving(address: str, cert: Path, key: Path, ca: Path):
    """TLS on ``address`` with ``cert`` (a client certificate of ``ca`` asked for), in a thread, until the end."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    srv = ThreadingHTTPServer((host, int(port)), _Answer)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def _write(d: Path, name: str, key, cert) -> tuple[Path, Path]:
    from qkdseg.server.pki import write_cert, write_key

    write_key(d / f"{name}.key", key)
    write_cert(d / f"{name}.crt", cert)
    return d / f"{name}.crt", d / f"{name}.key"


def test_tls_failures_are_named_logged_and_reported(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from etsi_qkd_014_client import QKD014Client

    from qkdseg.net.layout import issue_role, role_uri
    from qkdseg.net.tlsfail import tls_problem
    from qkdseg.server.pki import make_ca

    d = tmp_path / "line"
    assert _run("net", "init", str(d), "--network", str(_line(tmp_path)), "--sae", "A=0", "--sae", "B=2",
                "--port", str(_free_port())).returncode == 0
    pk, bad = d / "pki", tmp_path / "bad"
    bad.mkdir()
    ca_key = serialization.load_pem_private_key((pk / "ca.key").read_bytes(), None)
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((pk / "ca.crt").read_bytes())
    other_key, other = make_ca("another CA")
    ctl = json.loads((d / "controller" / "net.json").read_text())["address"]
    host = ctl.rsplit(":", 1)[0]
    ctl_uri = role_uri("controller")
    cases = [  # the certificate at the controller's address -> the words that name its problem
        (issue_role(other_key, other, "controller", ctl_uri, hosts=(host,)), "unknown CA"),
        (issue_role(ca_key, ca, "controller", ctl_uri, hosts=("127.0.0.99",)), "wrong name or address"),
        (issue_role(ca_key, ca, "controller", ctl_uri, hosts=(host,), days=0), "expired"),
        (issue_role(ca_key, ca, "node 2", role_uri("node", 2), hosts=(host,)), "wrong role"),
    ]
    mport = _free_port()
    env = dict(os.environ)
    from qkdseg.net.procs import start_one

    conf = json.loads((d / "nodes" / "0" / "node.json").read_text())
    node = start_one(d, {"role": "node", "dir": str(d / "nodes" / "0"), "name": "node-0",
                         "address": conf["address"]}, ("--metrics-port", str(mport)), env=env)
    try:
        deadline = time.monotonic() + scaled(60)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{mport}/healthz", timeout=2.0).status_code == 200:
                    break
            assert node.poll() is None and time.monotonic() < deadline, "node 0 did not start"
            time.sleep(0.2)
        sae = QKD014Client(conf["address"], str(pk / "A.crt"), str(pk / "A.key"), str(pk / "ca.crt"))
        for i, ((key, cert), words) in enumerate(cases):
            crt, k = _write(bad, f"case{i}", key, cert)
            with _serving(ctl, crt, k, pk / "ca.crt"):
                ready = httpx.get(f"http://127.0.0.1:{mport}/readyz", timeout=10.0).json()
                detail = ready["checks"]["controller"]["detail"]
                assert not ready["ready"] and words in detail, detail
                code, err = sae.get_key("B")  # the SAE's 503 names it
                assert code == 503 and words in err.message, (code, getattr(err, "message", err))
                if words == "wrong role":  # net status (with the controller's certificate) too
                    r = _run("net", "status", str(d), "--format", "json")
                    row = next(x for x in json.loads(r.stdout) if x["role"] == "controller")
                    assert not row["healthy"] and words in row.get("problem", ""), row
        # the node calls: refused client certificates, logged by the node with the problem named
        calls = [(issue_role(other_key, other, "A", role_uri("sae", "A")), "unknown CA"),
                 (issue_role(ca_key, ca, "A", role_uri("sae", "A"), days=0), "expired")]
        for i, ((key, cert), words) in enumerate(calls):
            crt, k = _write(bad, f"client{i}", key, cert)
            ctx = ssl.create_default_context(cafile=str(pk / "ca.crt"))
            ctx.load_cert_chain(str(crt), str(k))
            try:
                httpx.get(f"https://{conf['address']}/health", verify=ctx, timeout=5.0)
            except httpx.HTTPError as exc:  # the client is told too: the node's alert
                problem = tls_problem(exc) or ""
                assert "refused this process's certificate" in problem, (problem, repr(exc))
            else:
                raise AssertionError("a certificate the node must refuse was taken")
        time.sleep(0.5)
        log = (d / "logs" / "node-0.log").read_text()
        for _, words in cases:  # the failing side, the node as a client, logged each problem
            assert any("TLS with the controller" in x and words in x for x in log.splitlines()), (words, log[-3000:])
        for _, words in calls:  # and as a server, with the client's address
            assert any("TLS with the client at 127.0.0." in x and words in x for x in log.splitlines()), (
                words, log[-3000:])
    finally:
        node.terminate()
        with contextlib.suppress(AssertionError):
            _wait_exit(node, 30)
