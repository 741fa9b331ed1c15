"""Independent field check of issue 33: a compromised node takes down no more than itself.

Written from docs/network.md ("The processes: what each one holds and sees", "Threat model: a compromised node
takes down no more than itself", "Messages", "Limits", "Link offsets and crashes"), docs/kms.md's ETSI 014 error
table and ``qkdseg net --help``, without reading the implementation nor its own hostile tests. Every attack is sent
by this file itself, with httpx and the certificates ``net init`` writes: "a compromised node" is a node directory
whose ``node.crt``/``node.key`` the test uses (the attacker holds its whole directory); "a compromised SAE" is
``pki/<SAE>.crt``. Where the attacker has to *be* a node (its answer to a neighbour's offset query), the test kills
the genuine process and serves that node's address with its own TLS server and that node's certificate.

One network for the module: the example network (10 nodes, segment nodes 0, 3, 4, 7 between A at node 0 and B at
node 7), ``net up --detach`` on loopback at a free port, ``net down`` at the end, also on failure. Each attack is
bounded in count and time; the whole file takes 70-80 s on the shared 2-core machine (load average about 8),
``net up`` included.

Tests that end in ``xfail(strict=True)`` are findings: the documentation promises what the network does not do.
(The two findings of its first run, a used-up key stream answered by the relay timeout and unaudited
refusals of report bodies of another shape, were fixed; their tests now pass.)
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.server
import json
import os
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))
SAES = ("A=0", "B=7", "C=4", "D=7")  # D: a third SAE at the slave's node
MIB = 1024 * 1024
RELAY_TIMEOUT_S = 6  # QKDSEG_RELAY_TIMEOUT_S for the network (default 8): a timeout is then 6 s, a clean refusal ~0 s


# -- the network -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    for _ in range(100):
        port = random.randint(20000, 60000)
        ok = True
        for i in range(1, 13):  # the controller (127.0.0.1) and the ten nodes (127.0.0.2 ... 127.0.0.11)
            with socket.socket() as s:
                try:
                    s.bind((f"127.0.0.{i}", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port")


def _run(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _ctx(d: Path, cert: Path, key: Path) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(d / "pki" / "ca.crt"))
    c.load_cert_chain(str(cert), str(key))
    return c


class Net:
    def __init__(self, d: Path, env: dict, dash: int):
        self.dir, self.env, self.dash = d, env, dash
        self.names = json.loads((d / "nodes.json").read_text())
        netj = json.loads((d / "controller" / "net.json").read_text())
        self.ctl_url = f"https://{netj['address']}"
        self.address = {str(n["id"]): n["address"] for n in netj["nodes"]}
        self.url = {k: f"https://{v}" for k, v in self.address.items()}
        self.children: list[subprocess.Popen] = []  # node processes this file restarted
        self.fakes: list[FakeNode] = []

    # certificates
    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / self.names[node]

    def as_node(self, node: str, timeout: float = 30.0) -> httpx.Client:
        nd = self.node_dir(node)
        return httpx.Client(verify=_ctx(self.dir, nd / "node.crt", nd / "node.key"), timeout=timeout)

    def as_sae(self, sae: str, timeout: float = 30.0) -> httpx.Client:
        pk = self.dir / "pki"
        return httpx.Client(verify=_ctx(self.dir, pk / f"{sae}.crt", pk / f"{sae}.key"), timeout=timeout)

    def as_controller(self, timeout: float = 30.0) -> httpx.Client:
        c = self.dir / "controller"
        return httpx.Client(verify=_ctx(self.dir, c / "controller.crt", c / "controller.key"), timeout=timeout)

    # what an operator can read
    def health(self) -> dict:
        with self.as_controller(timeout=10) as c:
            return c.get(f"{self.ctl_url}/health").json()

    def audit(self, node: str | None) -> list[dict]:
        p = self.dir / "controller" / "audit.jsonl" if node is None else self.node_dir(node) / "audit.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def offsets(self, node: str, link: str, asker: str) -> dict:
        """``GET /relay/v1/links`` at ``node`` with the certificate of ``asker`` (the link's other end)."""
        with self.as_node(asker, timeout=10) as c:
            r = c.get(f"{self.url[node]}/relay/v1/links", params={"link": link})
            assert r.status_code == 200, r.text
            return r.json()

    def pids(self) -> dict:
        return json.loads((self.dir / "run" / "pids.json").read_text())

    def rss_kib(self, name: str) -> int:
        pid = self.pids()[name]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def deliveries(self) -> list[dict]:
        r = httpx.get(f"http://127.0.0.1:{self.dash}/dashboard/api/deliveries", params={"limit": 1000}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["rows"]

    def wait_links(self, pred, timeout: float, what: str) -> tuple[dict, float]:
        t0 = time.monotonic()
        while True:
            h = self.health()
            if pred(h):
                return h, time.monotonic() - t0
            assert time.monotonic() - t0 < timeout, f"{what}: controller health {h}"
            time.sleep(0.2)

    def wait_quiet(self, timeout: float = 30.0) -> None:
        """No link down or suspect at the controller (earlier attacks healed)."""
        self.wait_links(lambda h: not h["links_down"] and not h["links_suspect"], timeout, "links not healed")

    # processes: the attacker stops a node and runs its own code with the node's directory
    def kill(self, node: str) -> None:
        pid = self.pids()[f"node-{self.names[node]}"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists():
            st = Path(f"/proc/{pid}/stat")
            with contextlib.suppress(OSError):
                if st.read_text().split(") ")[-1].startswith("Z"):
                    break  # a zombie of ours: its reaper thread takes it
            assert time.monotonic() < deadline, f"node {node} (pid {pid}) did not die"
            time.sleep(0.05)

    def start(self, node: str, timeout: float = 60.0) -> None:
        name = self.names[node]
        with open(self.dir / "logs" / f"node-{name}.log", "ab") as log:
            p = subprocess.Popen([QKDSEG, "node", "serve", str(self.node_dir(node))], stdout=log, stderr=log,
                                 env=self.env, start_new_session=True)
        self.children.append(p)
        threading.Thread(target=p.wait, daemon=True).start()  # reaped when net down (or we) stop it
        pids = self.pids()
        pids[f"node-{name}"] = p.pid
        (self.dir / "run" / "pids.json").write_text(json.dumps(pids))
        deadline = time.monotonic() + timeout
        with self.as_controller(timeout=2) as c:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(f"{self.url[node]}/health").status_code == 200:
                        return
                assert p.poll() is None, f"node {node} exited {p.returncode}"
                assert time.monotonic() < deadline, f"node {node} not healthy"
                time.sleep(0.2)

    def get_key(self, master: str, mnode: str, slave: str, size: int, number: int = 1):
        with self.as_sae(master) as a:
            t = time.monotonic()
            r = a.post(f"{self.url[mnode]}/api/v1/keys/{slave}/enc_keys", json={"number": number, "size": size})
            return r, time.monotonic() - t

    def fetch(self, slave: str, snode: str, master: str, ids: list[str]):
        with self.as_sae(slave) as b:
            return b.post(f"{self.url[snode]}/api/v1/keys/{master}/dec_keys",
                          json={"key_IDs": [{"key_ID": k} for k in ids]})


class FakeNode:
    """The attacker's own server at node ``H``'s address with ``H``'s certificate (mutual TLS 1.3 with the network's
    CA): answers ``GET /relay/v1/links`` with the lies in ``answers`` (one per call, the last repeated) and every
    other request with 503. Every answer closes its connection, so that nothing of it outlives :meth:`close`."""

    def __init__(self, net: Net, node: str, answers: list):
        self.answers, self.calls = list(answers), []
        nd = net.node_dir(node)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(str(nd / "node.crt"), str(nd / "node.key"))
        ctx.load_verify_locations(str(net.dir / "pki" / "ca.crt"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def end_headers(self):
                self.send_header("connection", "close")
                self.close_connection = True
                super().end_headers()

            def _send(self, code: int, body: bytes):
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urlparse(self.path)
                if u.path == "/relay/v1/links":
                    i = len(fake.calls)
                    fake.calls.append(parse_qs(u.query).get("link", [""])[0])
                    a = fake.answers[min(i, len(fake.answers) - 1)]
                    self._send(200, a.encode() if isinstance(a, str) else json.dumps(a).encode())
                else:
                    self._send(200, b'{"status":"ok"}')

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._send(503, b'{"title":"Service Unavailable","status":503}')

        host, port = net.address[node].rsplit(":", 1)
        self.srv = http.server.ThreadingHTTPServer((host, int(port)), Handler)
        self.srv.daemon_threads = True
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        net.fakes.append(self)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_field")
    d = base / "deploy"
    port = _free_port()
    r = _run("net", "init", str(d), "--network", "example", *[a for s in SAES for a in ("--sae", s)],
             "--security-level", "0.5", "--port", str(port))
    assert r.returncode == 0, r.stdout + r.stderr
    env = {**os.environ, "QKDSEG_RELAY_TIMEOUT_S": str(RELAY_TIMEOUT_S)}
    dash = _free_port()
    n = None
    try:
        r = _run("net", "up", str(d), "--detach", "--dashboard-port", str(dash), env=env, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        n = Net(d, env, dash)
        yield n
    finally:
        if n is not None:
            for f in n.fakes:
                with contextlib.suppress(Exception):
                    f.close()
        _run("net", "down", str(d), timeout=120)
        if n is not None:
            for p in n.children:  # net down stopped them through pids.json; make sure
                if p.poll() is None:
                    p.kill()
                    with contextlib.suppress(Exception):
                        p.wait(timeout=10)


# -- message builders ------------------------------------------------------------------------------------------
def _b64(n: int, byte: bytes = b"x") -> str:
    return base64.b64encode(byte * n).decode()


def _msg(kind: str, src: str, dst: str, request_id: str | None = None, **fields) -> dict:
    # sent_at: the sender's send time every relay message carries since issue 31's retention (docs/network.md)
    return {"kind": kind, "message_id": str(uuid.uuid4()), "request_id": request_id or str(uuid.uuid4()),
            "src": src, "dst": dst, "sent_at": time.time(), **fields}


def _global(src, dst, request_id=None, items=1, size=32, segment=0):
    return _msg("global", src, dst, request_id, segment=segment,
                items=[[[0, 0, i], _b64(size)] for i in range(items)])


def _pieces(src, dst, offset, request_id=None, size=32, where=(0, 0, 0)):
    return _msg("pieces", src, dst, request_id, blocks=[[list(where), offset, _b64(size, b"y")]])


def _report(me: str, links: list, events=(), boot: str | None = None) -> dict:
    return {"qkd_node": {"qkdn_id": me, "qkd_links": {"qkd_link": links}},
            "qkdseg_events": {"boot": boot or str(uuid.uuid4()), "events": list(events)}}


def _link(link_id: str, me: str, other: str, consumed: int = 0, status: str = "ACTIVE") -> dict:
    return {"link_id": link_id, "link_status": status, "qkdl_local": {"qkdn_id": me},
            "qkdl_remote": {"qkdn_id": other}, "qkdseg_pool_bits": 100000, "qkdseg_consumed_bits": consumed,
            "qkdseg_level_bits": None}


def _deny(node: str, n: int = 1, **kw) -> dict:
    return {"seq": n, "node": node, "event": "deny", "time": time.time(), "sae": "A", "peer": "B",
            "op": "enc_keys", "status": 401, "reason": "unauthorized", "outcome": "forged", **kw}


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body.get("title")
    return body


def _paths(r: httpx.Response) -> int:
    return r.json()["key_container_extension"]["qkdseg_route"]["paths"]


# -- item 5: what an SAE learns ---------------------------------------------------------------------------------
def test_health_gives_an_sae_only_the_status_and_details_to_nodes_and_the_controller(net):
    for sae in ("A", "C"):
        with net.as_sae(sae) as s:
            for url in (net.ctl_url, net.url["0"], net.url["7"], net.url["3"]):
                r = s.get(f"{url}/health")
                assert r.status_code == 200 and r.json() == {"status": "ok"}, (sae, url, r.text)
    with net.as_node("5") as n:
        h = n.get(f"{net.url['0']}/health").json()
        assert h["status"] == "ok" and h["role"] == "node" and "pid" in h, h
        h = n.get(f"{net.ctl_url}/health").json()
        assert h["role"] == "controller" and "links_down" in h and "links_suspect" in h and "reported" in h, h
    with net.as_controller() as c:
        assert c.get(f"{net.url['7']}/health").json()["role"] == "node"


def test_dec_keys_naming_the_wrong_master_answers_exactly_as_an_unknown_key(net):
    r, _ = net.get_key("A", "0", "B", 256)
    assert r.status_code == 200, r.text
    kid = r.json()["keys"][0]["key_ID"]
    unknown = str(uuid.uuid4())
    with net.as_sae("B") as b:
        wrong = b.post(f"{net.url['7']}/api/v1/keys/C/dec_keys", json={"key_IDs": [{"key_ID": kid}]})
        unk = b.post(f"{net.url['7']}/api/v1/keys/C/dec_keys", json={"key_IDs": [{"key_ID": unknown}]})
        unk_a = b.post(f"{net.url['7']}/api/v1/keys/A/dec_keys", json={"key_IDs": [{"key_ID": unknown}]})
        wrong_get = b.get(f"{net.url['7']}/api/v1/keys/C/dec_keys", params={"key_ID": kid})
        unk_get = b.get(f"{net.url['7']}/api/v1/keys/C/dec_keys", params={"key_ID": unknown})
    assert wrong.status_code == unk.status_code == unk_a.status_code == 400
    assert wrong.content == unk.content == unk_a.content, (wrong.text, unk.text)
    assert wrong.json() == {"message": "one or more keys specified are not found on KME"}
    assert wrong.headers["content-type"] == unk.headers["content-type"]
    assert (wrong_get.status_code, wrong_get.content) == (unk_get.status_code, unk_get.content)
    # a caller that is not the slave keeps 401, with the right master or a wrong one
    with net.as_sae("D") as dd:
        for master in ("A", "C"):
            r = dd.post(f"{net.url['7']}/api/v1/keys/{master}/dec_keys", json={"key_IDs": [{"key_ID": kid}]})
            assert r.status_code == 401, (master, r.text)
    # an SAE at a node it is not attached to: 401
    with net.as_sae("B") as b:
        r = b.post(f"{net.url['0']}/api/v1/keys/A/dec_keys", json={"key_IDs": [{"key_ID": kid}]})
        assert r.status_code == 401, r.text
    # nothing changed: the slave still fetches its key, once
    r = net.fetch("B", "7", "A", [kid])
    assert r.status_code == 200 and r.json()["keys"][0]["key_ID"] == kid, r.text
    assert net.fetch("B", "7", "A", [kid]).status_code == 400


# -- roles and names --------------------------------------------------------------------------------------------
def test_relay_and_control_apis_check_the_callers_role_and_name(net):
    with net.as_node("1") as h:
        # a message in another node's name
        _problem(h.post(f"{net.url['0']}/relay/v1/messages", json=_global("2", "0")), 403)
        _problem(h.post(f"{net.url['0']}/relay/v1/messages", json={"messages": [_global("1", "0"),
                                                                                 _global("2", "0")]}), 403)
        # pieces to a node it is not a neighbour of (1's neighbours: 0 and 3)
        _problem(h.post(f"{net.url['4']}/relay/v1/messages", json=_pieces("1", "4", 0)), 403)
        # the controller's APIs at a node; the controller's plans for an SAE of another node
        for path in ("/control/v1/parts", "/control/v1/void"):
            _problem(h.post(f"{net.url['0']}{path}", json={}), 403)
        _problem(h.post(f"{net.ctl_url}/control/v1/plans",
                        json={"master": "A", "slave": "B", "number": 1, "size": 256}), 403)
        _problem(h.get(f"{net.ctl_url}/control/v1/status", params={"master": "A", "slave": "B"}), 403)
        # another link's offsets: 403; a link the asked node does not end: 404
        _problem(h.get(f"{net.url['0']}/relay/v1/links", params={"link": "[0,2]"}), 403)
        _problem(h.get(f"{net.url['0']}/relay/v1/links", params={"link": "[1,3]"}), 404)
        # ETSI 014 with a node certificate: 401
        r = h.post(f"{net.url['0']}/api/v1/keys/B/enc_keys", json={"number": 1, "size": 256})
        assert r.status_code == 401, r.text
    with net.as_controller() as c:
        assert c.post(f"{net.url['0']}/api/v1/keys/B/enc_keys", json={}).status_code == 401
    # an SAE certificate on the relay and control APIs: 403
    with net.as_sae("A") as s:
        for url in (f"{net.url['0']}/relay/v1/messages", f"{net.url['0']}/relay/v1/ack",
                    f"{net.url['0']}/control/v1/parts", f"{net.url['0']}/control/v1/void",
                    f"{net.ctl_url}/control/v1/plans", f"{net.ctl_url}/control/v1/links"):
            assert s.post(url, json={}).status_code == 403, url
        assert s.get(f"{net.url['0']}/relay/v1/links", params={"link": "[0,1]"}).status_code == 403
        assert s.get(f"{net.ctl_url}/control/v1/status").status_code == 403


# -- item 2: bounded bodies, depths, batches ----------------------------------------------------------------------
def test_bodies_batches_and_depths_over_the_limits_get_413_and_400_and_nothing_is_held(net):
    held0 = {n: None for n in ("0",)}
    with net.as_controller() as c:
        held0["0"] = c.get(f"{net.url['0']}/health").json()["requests"]
    big = lambda n: b'{"messages":[],"pad":"' + b"x" * n + b'"}'
    deep = lambda n: ("[" * n + "]" * n).encode()
    hdr = {"content-type": "application/json"}
    with net.as_node("1", timeout=60) as h:
        t = time.monotonic()
        body = _problem(h.post(f"{net.url['0']}/relay/v1/messages", content=big(16 * MIB + 1), headers=hdr), 413)
        assert "16,777,216" in body["detail"] or "16777216" in body["detail"], body
        _problem(h.post(f"{net.url['0']}/relay/v1/ack", content=big(16 * MIB + 1), headers=hdr), 413)
        assert time.monotonic() - t < 30
        # the same connection still answers
        assert h.get(f"{net.url['0']}/health").status_code == 200
        # batches of 1,025
        _problem(h.post(f"{net.url['0']}/relay/v1/messages",
                        json={"messages": [_global("1", "0") for _ in range(1025)]}), 413)
        _problem(h.post(f"{net.url['0']}/relay/v1/ack",
                        json={"acks": [{"message_id": str(uuid.uuid4()), "status": "relayed"}
                                       for _ in range(1025)]}), 413)
        # 1,024 unknown acks are not over the limit: 404 (unknown ids), not 413
        _problem(h.post(f"{net.url['0']}/relay/v1/ack",
                        json={"acks": [{"message_id": str(uuid.uuid4()), "status": "relayed"}
                                       for _ in range(1024)]}), 404)
        # nesting over 32
        for url in (f"{net.url['0']}/relay/v1/messages", f"{net.url['0']}/relay/v1/ack",
                    f"{net.ctl_url}/control/v1/links", f"{net.ctl_url}/control/v1/plans"):
            _problem(h.post(url, content=deep(40), headers=hdr), 400)
        _problem(h.post(f"{net.url['0']}/relay/v1/messages",
                        content=b'{"messages":' + deep(33) + b"}", headers=hdr), 400)
        # the controller's bodies: 4 MiB
        for path in ("/control/v1/links", "/control/v1/plans"):
            body = _problem(h.post(f"{net.ctl_url}{path}", content=big(4 * MIB + 1), headers=hdr), 413)
        assert h.get(f"{net.ctl_url}/health").status_code == 200
    with net.as_controller(timeout=60) as c:  # the operator's certificate, for the controller-only API's limits
        _problem(c.post(f"{net.url['0']}/control/v1/parts", content=big(16 * MIB + 1), headers=hdr), 413)
        _problem(c.post(f"{net.url['0']}/control/v1/void", content=big(16 * MIB + 1), headers=hdr), 413)
        _problem(c.post(f"{net.url['0']}/control/v1/parts", json={"parts": [{} for _ in range(1025)]}), 413)
        _problem(c.post(f"{net.url['0']}/control/v1/parts", content=deep(40), headers=hdr), 400)
        assert c.get(f"{net.url['0']}/health").json()["requests"] == held0["0"]
    assert net.health()["status"] == "ok"


def test_saes_get_only_etsi_014_statuses_never_429(net):
    hdr = {"content-type": "application/json"}
    statuses = []
    with net.as_sae("A") as a:
        r = a.post(f"{net.url['0']}/api/v1/keys/B/enc_keys", content=b'{"pad":"' + b"x" * (MIB + 1) + b'"}',
                   headers=hdr)
        assert r.status_code == 413 and "message" in r.json(), r.text
        r = a.post(f"{net.url['0']}/api/v1/keys/B/enc_keys", content=("[" * 40 + "]" * 40).encode(), headers=hdr)
        assert r.status_code == 400 and "message" in r.json(), r.text
        r = a.post(f"{net.url['0']}/api/v1/keys/B/enc_keys", json={"number": 129, "size": 256})
        assert r.status_code == 400, r.text
        for _ in range(100):  # a quick flood of bad fetches
            statuses.append(a.get(f"{net.url['0']}/api/v1/keys/B/dec_keys",
                                  params={"key_ID": str(uuid.uuid4())}).status_code)
    assert set(statuses) <= {400, 401}, statuses

    def one(i):
        r, _ = net.get_key("A", "0", "B", 512)
        return r.status_code, r.headers.get("content-type", "")

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        got = list(ex.map(one, range(12)))
    assert {s for s, _ in got} <= {200, 503}, got
    assert all(ct.startswith("application/json") for _, ct in got), got
    assert any(s == 200 for s, _ in got), got


# -- item 3: state for unknown requests --------------------------------------------------------------------------
def test_an_unknown_request_flood_is_bounded_per_sender_forgotten_and_memory_flat(net):
    """Node 5 (not a neighbour of 0) floods node 0 with 1,024 messages for requests nobody planned, node 8 with
    4 MiB of them (then 9 and 3, then 1 and 4: neighbours or not); both get 429 beyond, node 6 is not held back,
    A still gets keys; 5 s later the state is gone (accepted again), and further floods do not grow node 0."""
    target = net.url["0"]
    compact = lambda m: json.dumps(m, separators=(",", ":")).encode()
    hdr = {"content-type": "application/json"}
    rss = []
    # one pair of flooding senders per round (a sender's probe after the expiry is held 5 s in its turn)
    for rnd, (cnt, byt) in enumerate((("5", "8"), ("9", "3"), ("1", "4"))):
        with net.as_node(cnt) as n5, net.as_node(byt) as n8, net.as_node("6") as n6:
            t_flood = time.monotonic()
            r = n5.post(f"{target}/relay/v1/messages", json={"messages": [_global(cnt, "0") for _ in range(1024)]})
            assert r.status_code == 202, r.text[:300]
            assert all(x["status"] == 202 for x in r.json()["results"])
            body = _problem(n5.post(f"{target}/relay/v1/messages", json=_global(cnt, "0")), 429)
            assert body.get("status_020") == "failed", body
            # a batch over the sender's backlog: the rest 429, the answer names each outcome
            r = n5.post(f"{target}/relay/v1/messages", json={"messages": [_global(cnt, "0") for _ in range(3)]})
            assert r.status_code == 429 and {x["status"] for x in r.json()["results"]} == {429}, r.text[:300]
            # 4 MiB per sender: messages of ~1.4 MB each
            sizes, codes = [], []
            for _ in range(5):
                m = compact(_global(byt, "0", items=2000, size=512))
                r = n8.post(f"{target}/relay/v1/messages", content=m, headers=hdr)
                sizes.append(len(m))
                codes.append(r.status_code)
            assert codes[0] == 202 and 429 in codes, codes
            accepted = sum(s for s, c in zip(sizes, codes) if c == 202)
            assert accepted <= 4 * MIB * 1.05 and accepted >= 4 * MIB - 2 * max(sizes), (codes, sizes)
            assert codes[codes.index(429):] == [429] * (len(codes) - codes.index(429)), codes
            # another sender is not held back
            assert n6.post(f"{target}/relay/v1/messages", json=_global("6", "0")).status_code == 202
            if rnd == 0:  # the SAEs of node 0 are served meanwhile
                r, _ = net.get_key("A", "0", "B", 576)
                assert r.status_code == 200, r.text
            rss.append(net.rss_kib("node-0"))
            # forgotten after QKDSEG_EARLY_S = 5 s
            time.sleep(max(0.0, 6.0 - (time.monotonic() - t_flood)))
            r = n5.post(f"{target}/relay/v1/messages", json=_global(cnt, "0"))
            assert r.status_code == 202, f"still held after 6 s: {r.text[:300]}"
            r = n8.post(f"{target}/relay/v1/messages", json=_global(byt, "0"))
            assert r.status_code == 202, f"still held after 6 s: {r.text[:300]}"
    # a second and third flood do not grow the process (the first may warm the allocator)
    assert max(rss[1:]) <= rss[0] + 3 * 1024, f"RSS (KiB) per flood: {rss}"


def test_stray_void_and_confirm_409_audited_never_as_done_and_unknown_acks_404(net):
    before = len(net.audit("0"))
    with net.as_node("1") as h:
        for kind, extra in (("void", {}), ("confirm", {"tags": [[[0, 0, 0], _b64(32)]],
                                                         "key_ids": [[[0, 0, 0], str(uuid.uuid4())]]})):
            m = _msg(kind, "1", "0", **extra)
            body = _problem(h.post(f"{net.url['0']}/relay/v1/messages", json=m), 409)
            assert body["results"][0]["status"] == 409
        # a node never voids what it never held, even from the request's would-be source
        with net.as_node("0") as n0:
            _problem(n0.post(f"{net.url['7']}/relay/v1/messages", json=_msg("void", "0", "7")), 409)
    new = net.audit("0")[before:]
    refused = [r for r in new if r["event"] == "relay refused"]
    assert {(r["kind"], r["src"], r["status"]) for r in refused} >= {("void", "1", 409), ("confirm", "1", 409)}, new
    assert not [r for r in new if "void" in r["event"] and r["event"] != "relay refused"], new
    assert not any("voided by the source" in json.dumps(r) for r in new), new

    # acks: every id must be one the node sent to the caller; else 404 naming the unknown ones, nothing recorded
    db = net.node_dir("0") / "relay.sqlite3"

    def outbox():
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return {m: (dst, st) for m, dst, st in c.execute("SELECT message_id, dst, status FROM outbox")}
        finally:
            c.close()

    ob = outbox()
    to1 = [m for m, (dst, _) in ob.items() if dst == "1"]
    to2 = [m for m, (dst, _) in ob.items() if dst == "2"]
    assert to1 and to2, "node 0 sent no relay message to 1 and 2 yet"
    unknown = str(uuid.uuid4())
    with net.as_node("1") as h:
        for acks, bad in (([to1[0], unknown], {unknown}), ([to1[0], to2[0]], {to2[0]}), ([to2[0]], {to2[0]})):
            body = _problem(h.post(f"{net.url['0']}/relay/v1/ack",
                                   json={"acks": [{"message_id": m, "status": "failed"} for m in acks]}), 404)
            assert set(body.get("unknown", [])) == bad, body
    after = outbox()
    assert after[to1[0]] == ob[to1[0]] and after[to2[0]] == ob[to2[0]], (ob[to1[0]], after[to1[0]])


# -- segment-level messages only from the node the plan names ------------------------------------------------------
def test_segment_messages_only_from_the_node_the_plan_names(net):
    """A request A -> B held in flight (relay 5 stopped with SIGSTOP); node 1 (compromised, not a segment node) and
    node 8 (a neighbour of segment node 4, but not one of its previous hops) send what only the plan's nodes may."""
    net.wait_quiet()
    pid5 = net.pids()["node-5"]
    plans0 = sum(1 for r in net.audit(None) if r["event"] == "plan")
    before = {n: len(net.audit(n)) for n in ("0", "4", "7")}
    out = {}

    def req():
        out["r"], out["t"] = net.get_key("A", "0", "B", 640)

    th = threading.Thread(target=req)
    os.kill(pid5, signal.SIGSTOP)
    try:
        th.start()
        t0 = time.monotonic()
        while True:
            plans = [r for r in net.audit(None) if r["event"] == "plan"]
            if len(plans) > plans0:
                break
            assert time.monotonic() - t0 < 15, "no plan"
            time.sleep(0.05)
        rid = plans[-1]["request_id"]
        assert plans[-1]["route"]["segment_nodes"] == ["0", "3", "4", "7"], plans[-1]
        with net.as_controller(timeout=5) as c:  # the parts reached 0, 4 and 7 (5's part waits: it is stopped)
            while not all(c.get(f"{net.url[n]}/health").json()["requests"] >= 1 for n in ("0", "4", "7")):
                assert time.monotonic() - t0 < 15, "the plan's parts did not arrive"
                time.sleep(0.05)
        codes = {}
        with net.as_node("1") as h, net.as_node("8") as n8:
            codes["global"] = h.post(f"{net.url['4']}/relay/v1/messages",
                                     json=_global("1", "4", rid, segment=1)).status_code
            codes["void"] = h.post(f"{net.url['7']}/relay/v1/messages",
                                   json=_msg("void", "1", "7", rid)).status_code
            codes["confirm"] = h.post(f"{net.url['0']}/relay/v1/messages",
                                      json=_msg("confirm", "1", "0", rid, tags=[[[0, 0, 0], _b64(32)]],
                                                key_ids=[[[0, 0, 0], str(uuid.uuid4())]])).status_code
            codes["pieces"] = n8.post(f"{net.url['4']}/relay/v1/messages",
                                      json=_pieces("8", "4", 10**3, rid, where=(0, 1, 0))).status_code
    finally:
        os.kill(pid5, signal.SIGCONT)
        th.join(60)
    assert codes == {"global": 403, "void": 403, "confirm": 403, "pieces": 403}, codes
    for node, kind, src in (("4", "global", "1"), ("7", "void", "1"), ("0", "confirm", "1"), ("4", "pieces", "8")):
        new = net.audit(node)[before[node]:]
        assert any(r["event"] == "relay refused" and r["kind"] == kind and r["src"] == src
                   and r.get("request_id") == rid and r.get("status") == 403 for r in new), (node, kind, new)
    # the genuine request is not voided by the forgeries: if it was served, the slave fetches it
    r = out["r"]
    assert r.status_code in (200, 503), r.text
    if r.status_code == 200:
        kid = r.json()["keys"][0]["key_ID"]
        got = net.fetch("B", "7", "A", [kid])
        assert got.status_code == 200 and got.json()["keys"][0]["key"] == r.json()["keys"][0]["key"], got.text
    net.wait_quiet()


def test_issue_of_spare_keys_only_from_the_masters_node(net):
    net.wait_quiet()
    r, _ = net.get_key("A", "0", "B", 704)
    assert r.status_code == 200, r.text
    got = r.json()["keys"][0]["key_ID"]
    stores = [x for x in net.audit("7") if x["event"] == "store" and got in x.get("key_ids", [])]
    assert stores, "no store record at the destination"
    spare = [k for k in stores[-1]["key_ids"] if k != got]
    assert spare, f"no spare key in {stores[-1]}"
    with net.as_node("1") as h, net.as_node("4") as n4:
        _problem(h.post(f"{net.url['7']}/relay/v1/messages",
                        json=_msg("issue", "1", "7", master="A", slave="B", key_ids=[spare[0]])), 403)
        _problem(n4.post(f"{net.url['7']}/relay/v1/messages",  # node of C, claiming C is the master
                         json=_msg("issue", "4", "7", master="C", slave="B", key_ids=[spare[0]])), 403)
    assert net.fetch("B", "7", "A", [spare[0]]).status_code == 400  # still not issued
    r, _ = net.get_key("A", "0", "B", 704)  # A's next request is served from that spare key, whole
    assert r.status_code == 200, r.text
    assert r.json()["keys"][0]["key_ID"] == spare[0]
    assert r.json()["key_container_extension"]["qkdseg_route"].get("spare") is True
    b = net.fetch("B", "7", "A", [spare[0]])
    assert b.status_code == 200 and b.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]


# -- item 1: offsets from a neighbour are bounded ------------------------------------------------------------------
def test_pieces_beyond_the_window_are_refused_suspect_planned_around_clean_503_and_the_link_heals(net):
    net.wait_quiet()
    window = 100000 // 8  # default: the link's pool size, 12,500 bytes on example
    before = len(net.audit("0"))
    marks = {lk: net.offsets("0", lk, asker) for lk, asker in (("[0,1]", "1"), ("[0,2]", "2"))}

    def refuse(nb: str) -> None:
        with net.as_node(nb) as hn:
            _problem(hn.post(f"{net.url['0']}/relay/v1/messages",
                             json=_pieces(nb, "0", marks[f"[0,{nb}]"].get("1", 0) + window + 64)), 409)

    with net.as_node("1") as h:
        body = _problem(h.post(f"{net.url['0']}/relay/v1/messages",
                               json=_pieces("1", "0", marks["[0,1]"].get("1", 0) + window + 64)), 409)
        assert body.get("status_020") == "failed", body
    assert net.offsets("0", "[0,1]", "1") == marks["[0,1]"]  # nothing stored
    new = net.audit("0")[before:]
    assert any(r["event"] == "offsets refused" and r.get("neighbour") == "1" and r.get("link") == "[0,1]"
               for r in new), new
    net.wait_links(lambda hh: "0-1" in hh["links_suspect"], 10, "0-1 not reported suspect")
    refuse("1")  # each refusal restarts QKDSEG_SUSPECT_S: the link stays suspect for the next request
    r, _ = net.get_key("A", "0", "B", 768)  # planned around: 5 paths instead of 6
    assert r.status_code == 200 and _paths(r) == 5, r.text
    assert net.offsets("0", "[0,1]", "1") == marks["[0,1]"]  # nothing sent over the suspect link
    marks["[0,2]"] = net.offsets("0", "[0,2]", "2")
    # both of node 0's links suspect: no route; a clean 503 at once, never a timeout
    refuse("2")
    net.wait_links(lambda hh: {"0-1", "0-2"} <= set(hh["links_suspect"]), 10, "0-2 not reported suspect")
    refuse("1")
    refuse("2")
    r, dt = net.get_key("A", "0", "B", 768)
    assert r.status_code == 503 and r.json().get("message"), r.text
    assert dt < 3, f"503 after {dt:.1f} s"
    assert net.offsets("0", "[0,1]", "1") == marks["[0,1]"] and net.offsets("0", "[0,2]", "2") == marks["[0,2]"]
    # the genuine neighbours answer the probes within the window: ACTIVE again, no hand-edit
    net.wait_links(lambda hh: not hh["links_suspect"], 20, "0-1/0-2 never healed")
    r, _ = net.get_key("A", "0", "B", 768)
    assert r.status_code == 200 and _paths(r) == 6, r.text


# -- item 4: link reports --------------------------------------------------------------------------------------
def test_forged_reports_are_refused_audited_and_every_dashboard_row_names_its_node(net):
    ctl_pid = net.pids()["controller"]
    n_before = len(net.audit(None))
    hdr = {"content-type": "application/json"}
    refused = 0
    base = _report("1", [_link("[0,1]", "1", "0", 0)])
    with net.as_node("1") as h:
        post = lambda body: h.post(f"{net.ctl_url}/control/v1/links", json=body)

        def raw(s: str):
            return h.post(f"{net.ctl_url}/control/v1/links", content=s.encode(), headers=hdr)

        # 403s: another node's name, a link it does not end, a link that is not its neighbour's, another link's name
        for body in (_report("2", []), _report("1", [_link("[2,3]", "2", "3")]),
                     _report("1", [_link("[1,5]", "1", "5")]), _report("1", [_link("[0,2]", "1", "3")]),
                     _report("1", [_link("[0,1]", "1", "3")])):
            _problem(post(body), 403)
            refused += 1
        # events of SAEs it does not host; expire from a node with no SAE; a forged deny in the same report
        for ev in ({"event": "issue", "sae": "A", "peer": "B", "op": "enc_keys", "size": 256, "level": 0.5,
                    "securities": [0.5], "route": {}, "key_ids": ["abcdef12"], "outcome": "ok"},
                   {"event": "deliver", "sae": "B", "peer": "A", "op": "dec_keys", "size": 256,
                    "securities": [0.5], "key_ids": ["abcdef12"], "outcome": "ok"},
                   {"event": "expire", "sae": "B", "peer": "A", "key_ids": ["abcdef12"], "outcome": "expired"}):
            e = {"seq": 2, "node": "1", "time": time.time(), **ev}
            _problem(post(_report("1", [], [_deny("1", 1, outcome="must not show: whole report refused"), e])), 403)
            refused += 1
        # 400s: every number checked, never an exception, never a broken connection
        text = json.dumps(base)
        for bad in ("1e400", "-1", '"12"', "true", "1.5", "4398046511105", "NaN", "Infinity",
                    "123456789012345678901234567890", "null", "[1]", "{}"):
            _problem(raw(text.replace('"qkdseg_consumed_bits": 0', f'"qkdseg_consumed_bits": {bad}')), 400)
            refused += 1
        for bad in ("1e400", "-1", '"5"', "1.5", "4398046511105"):
            _problem(raw(text.replace('"qkdseg_level_bits": null', f'"qkdseg_level_bits": {bad}')), 400)
            refused += 1
        for body in (_report("1", [_link("[0,1]", "1", "0", status="UP")]),
                     _report("1", [_link("[0,1]", "1", "0"), _link("[0,1]", "1", "0")]),
                     {"qkd_node": {"qkdn_id": "1"}}):
            _problem(post(body), 400)
            refused += 1
        for k, v in (("seq", 0), ("seq", 2**53 + 1), ("seq", 1.5), ("seq", "1"), ("time", "now"), ("time", -1),
                     ("status", "x"), ("sae", "A" * 5000), ("outcome", "x" * 100000), ("securities", [1.5]),
                     ("securities", "x"), ("size", -1), ("level", 2), ("key_ids", "abc")):
            _problem(post(_report("1", [], [_deny("1", 1, **{k: v})])), 400)
            refused += 1
        r = raw(json.dumps(_report("1", [], [_deny("1", 1)])).replace('"time": ', '"time": 1e400, "x": ', 1))
        _problem(r, 400)
        refused += 1
        # a report that lowers a level but carries a bad event: nothing applied (route/key_ids: node 0's issue)
        with net.as_node("0") as h0:
            for k, v in (("route", 5), ("route", {"paths": "x" * 100000}), ("key_ids", [5]), ("securities", [-0.1])):
                ev = {"seq": 1, "node": "0", "event": "issue", "time": time.time(), "sae": "A", "peer": "B",
                      "op": "enc_keys", "size": 256, "level": 0.5, "securities": [0.5], "route": {},
                      "key_ids": ["abcdef12"], "outcome": "must not show: bad field", k: v}
                _problem(h0.post(f"{net.ctl_url}/control/v1/links", json=_report("0", [], [ev])), 400)
                refused += 1
        _problem(post(_report("1", [_link("[1,3]", "1", "3", 10**6)], [_deny("1", 0)])), 400)
        refused += 1
        # 413: more than 500 events
        _problem(post(_report("1", [], [_deny("1", i + 1) for i in range(501)])), 413)
        refused += 1
        assert h.get(f"{net.ctl_url}/health").status_code == 200  # the same connection
        # accepted: a relay's deny events, the row named as reported by node 1 whatever the event says
        boot = str(uuid.uuid4())
        r = post(_report("1", [], [_deny("1", 1, outcome="deny-by-1"),
                                   _deny("7", 2, outcome="deny-claiming-7", sae="B", peer="A")], boot=boot))
        assert r.status_code == 200, r.text
        r = post(_report("1", [], [_deny("1", 1, outcome="deny-by-1")], boot=boot))  # the same event again
        assert r.status_code == 200, r.text
        # accepted: its own link, more consumed, named the other way round: the audit names the controller's link
        r = post(_report("1", [_link("[3,1]", "1", "3", 10**6)]))
        if r.status_code == 200:
            changed_name = "[1,3]"
        else:  # a reversed name is refused: then send the canonical name
            _problem(r, 403)
            refused += 1
            r = post(_report("1", [_link("[1,3]", "1", "3", 10**6)]))
            assert r.status_code == 200, r.text
            changed_name = "[1,3]"
    audit = net.audit(None)[n_before:]
    ref = [x for x in audit if x["event"] == "report refused"]
    assert len(ref) == refused, (len(ref), refused, [x.get("outcome") for x in ref])
    assert all(x.get("node") in ("0", "1") and x.get("status") in (400, 403, 413) for x in ref), ref
    levels = [x for x in audit if x["event"] == "levels reported" and x.get("node") == "1"]
    assert len(levels) == 1 and set(levels[0]["links"]) == {changed_name}, levels
    assert levels[0].get("node") == "1"
    # the dashboard: every row names the node that reported it; refused reports put nothing there
    deadline = time.monotonic() + 5
    while True:
        rows = net.deliveries()
        mine = [x for x in rows if x.get("message") in ("deny-by-1", "deny-claiming-7")]
        if len(mine) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(x["message"] for x in mine) == ["deny-by-1", "deny-claiming-7"], mine  # each once
    assert all(x["node"] == "1" for x in mine), mine
    assert all(x.get("node") in net.address for x in rows), [x for x in rows if x.get("node") not in net.address]
    assert not [x for x in rows if "must not show" in json.dumps(x)], "a refused report's event is on the dashboard"
    assert net.pids()["controller"] == ctl_pid and net.health()["status"] == "ok"
    assert "Traceback" not in (net.dir / "logs" / "controller.log").read_text()
    time.sleep(1.5)  # the level of [1,3] refills at the link's rate (100 kbit/s on example)


def test_a_report_body_of_another_shape_is_refused_and_audited(net):
    n_before = len(net.audit(None))
    with net.as_node("2") as h:
        for body in ("[1, 2]", '"report"', "42"):
            _problem(h.post(f"{net.ctl_url}/control/v1/links", content=body.encode(),
                            headers={"content-type": "application/json"}), 400)
    ref = [x for x in net.audit(None)[n_before:] if x["event"] == "report refused"]
    assert len(ref) == 3 and all(x.get("node") == "2" and x.get("status") == 400 for x in ref), ref


# -- item 1: poisoned offsets at a restart and at probes; the genuine node heals the link --------------------------
def test_poisoned_offsets_at_restart_and_at_probes_are_not_adopted_and_the_genuine_node_heals(net):
    net.wait_quiet()
    window = 100000 // 8
    mark0 = net.offsets("0", "[0,1]", "1")
    counter = mark0.get("0", 0)
    before = len(net.audit("0"))
    # the attacker: node 1's directory, its own code answering node 0's offset queries with lies
    net.kill("1")
    lies = [{"0": counter + window + 1}, {"0": 10**9, "1": 10**9}, {"0": -1}, {"0": "12"}, {"0": 1.5},
            {"0": 2**70}, {"0": None}, "not json", [1, 2], {"0": 10**9}]
    fake = FakeNode(net, "1", lies)
    try:
        net.kill("0")
        net.start("0")  # node 0 restarts and syncs with its neighbours: 2 is genuine, 1 lies
        net.wait_links(lambda hh: "0-1" in hh["links_suspect"], 10, "0-1 not suspect after the lie at restart")
        # probes every second: keep lying in every shape for a few probes
        t0 = time.monotonic()
        while len(fake.calls) < 6 and time.monotonic() - t0 < 12:
            time.sleep(0.2)
        assert len(fake.calls) >= 3, f"node 0 probed its suspect link {len(fake.calls)} times"
        assert set(fake.calls) == {"[0,1]"}, fake.calls
        assert "0-1" in net.health()["links_suspect"]
        with net.as_controller() as c:
            assert c.get(f"{net.url['0']}/health").status_code == 200  # node 0 survived every lie
        r, _dt = net.get_key("A", "0", "B", 832)  # planned around 0-1, at once
        assert r.status_code == 200 and _paths(r) == 5, r.text
    finally:
        fake.close()
    # nothing adopted: node 0's counter on 0 -> 1 is where it was (it asks the genuine node below)
    new = net.audit("0")[before:]
    refused = [x for x in new if x["event"] == "offsets refused"]
    assert refused and all(x.get("neighbour") == "1" and x.get("link") == "[0,1]" for x in refused), new
    assert any(x.get("claimed") == counter + window + 1 and x.get("window_bytes") == window for x in refused), refused
    # the genuine node back: ACTIVE again without a hand-edit, deliveries over the link
    net.start("1")
    net.wait_links(lambda hh: "0-1" not in hh["links_suspect"] and "0-1" not in hh["links_down"], 25,
                   "the genuine node did not heal 0-1")
    now = net.offsets("0", "[0,1]", "1")
    assert now.get("0", 0) <= counter + window and now.get("0", 0) >= counter, (mark0, now)
    r, _ = net.get_key("A", "0", "B", 832)
    assert r.status_code == 200 and _paths(r) == 6, r.text
    b = net.fetch("B", "7", "A", [r.json()["keys"][0]["key_ID"]])
    assert b.status_code == 200 and b.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]
    assert "Traceback" not in (net.dir / "logs" / "node-0.log").read_text()


# -- item 1: a key stream that would run out ---------------------------------------------------------------------
_RUNOUT: dict = {}


def _run_out(net) -> dict:
    """Node 7 (B's node) restarted with a window as large as a whole key stream (``max_skip_bits`` in its
    node.json, 2^41 bits = 2^38 bytes), while the attacker serves node 8 and claims its mark on 7 -> 8 is 8 bytes
    short of the stream's end: adopted (within the configured window), so B's next request as master needs more of
    7 -> 8 than is left."""
    if _RUNOUT:
        return _RUNOUT
    net.wait_quiet()
    end = 2**38
    cfg_path = net.node_dir("7") / "node.json"
    cfg = json.loads(cfg_path.read_text())
    assert "max_skip_bits" in cfg, sorted(cfg)
    cfg["max_skip_bits"] = 2**41
    cfg_path.write_text(json.dumps(cfg, indent=1))
    net.kill("8")
    fake = FakeNode(net, "8", [{"0": end - 8}])
    try:
        net.kill("7")
        net.start("7")
        t0 = time.monotonic()
        while not fake.calls and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        fake.close()
    net.start("8")
    net.wait_quiet()
    before = {lk: net.offsets("7", lk, asker) for lk, asker in (("[7,8]", "8"), ("[7,9]", "9"))}
    r, dt = net.get_key("B", "7", "A", 256)
    after = {lk: net.offsets("7", lk, asker) for lk, asker in (("[7,8]", "8"), ("[7,9]", "9"))}
    _RUNOUT.update(before=before, after=after, r=r, dt=dt, end=end)
    return _RUNOUT


def test_a_key_stream_that_would_run_out_takes_nothing_and_gets_a_json_503(net):
    ro = _run_out(net)
    assert ro["before"]["[7,8]"].get("0") == ro["end"] - 8, ro["before"]  # the set-up worked: the claim adopted
    r = ro["r"]
    assert r.status_code == 503 and r.json().get("message"), r.text
    assert ro["after"]["[7,8]"].get("0") == ro["before"]["[7,8]"].get("0"), ro  # nothing taken on 7 -> 8
    assert ro["after"]["[7,9]"].get("0", 0) == ro["before"]["[7,9]"].get("0", 0), ro  # nor on the other path


def test_a_key_stream_that_would_run_out_is_a_clean_refusal_not_a_timeout(net):
    ro = _run_out(net)
    r = ro["r"]
    assert r.status_code == 503, r.text
    assert ro["dt"] < RELAY_TIMEOUT_S / 2, f"503 after {ro['dt']:.1f} s: {r.text}"
    assert "key stream is used up" in r.json()["message"], r.text
