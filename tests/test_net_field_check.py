"""Independent field check of issue 19's "Done when" (the network of KME processes).

Written only from issue 19's text, docs/network.md, docs/kms.md (the ETSI 014 tables it
points to), README.md and ``qkdseg net ... --help``; it does not read the implementation
or its tests.  It drives the installed ``qkdseg`` command (``QKDSEG`` env var, default the
one next to this interpreter) as a user would:

- ``qkdseg net init`` on a hand-made 10-node network (below) with SAEs at three different
  nodes (and a fourth SAE sharing the slave's node, for the "third SAE" 401);
- ``qkdseg net up --detach`` / ``qkdseg net down`` (teardown, also on failure; every pid
  seen is killed if still alive after ``net down``);
- ``qkdseg net status --format json`` for pids and ETSI 014 URLs;
- deliveries with the real ``etsi-qkd-014-client`` (library and CLI) and status codes with
  ``requests`` and the SAE certificates under ``DIR/pki/``;
- a grep of every file under ``DIR/controller/`` and ``DIR/logs/controller.log`` for every
  delivered key (raw, base64, urlsafe base64, hex);
- ``kill -9`` of an untrusted relay on the route while 8 clients request keys (then its
  restart: deliveries resume, offsets at both ends only grew), and of the trusted segment node;
- extras from the issue's Deliver list and the docs: PKI roles and modes, the relay/control
  APIs' caller checks, CLI errors, foreground ``net up`` and signals, a self-contained DIR/.

The network: three SAE nodes, each two hops from the one trusted node T through a
"diamond" of two untrusted relays (p = 0.8), so every route between SAE nodes is 4 hops and
passes through two untrusted relays on each side of T::

    site-a -- {ua1, ua2} -- T -- {ub1, ub2} -- site-b
                            |
                       {uc1, uc2}
                            |
                         site/c      (an id that is not a file name: mapped by nodes.json)

At level 0.8 the only route that meets it uses both relays of each diamond
(0.96 ** 2 = 0.9216; one relay per side gives at most 0.8 * 0.96 = 0.768), so killing
``ua1`` must make every request from or to site-a fail cleanly (the docs: no re-planning yet).

Run: ``python -m pytest tests/test_net_field_check.py -v -p no:cacheprovider`` with the
interpreter of the venv whose ``qkdseg`` is under test (about 2.5 minutes).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from etsi_qkd_014_client import QKD014Client

QKDSEG = os.environ.get("QKDSEG", str(Path(sys.executable).with_name("qkdseg")))
QKD014_CLI = str(Path(QKDSEG).with_name("qkd014-client"))

# D shares the slave's node (site-b) with B: the "third SAE" at that node. "ua2" is an SAE whose
# id equals a relay node's id (docs: its certificate is never taken for that node's).
SAE_NODES = {"A": "site-a", "B": "site-b", "C": "site/c", "D": "site-b", "ua2": "site/c"}
PAIRS = [("A", "B"), ("B", "C"), ("C", "A")]  # master, slave: all three pairs of nodes
POOL = 2_000_000
LEVEL = 0.8
KILLED = "ua1"

NETWORK = {
    "directed": False,
    "multigraph": False,
    "graph": {"name": "chk19"},
    "nodes": [
        {"id": "site-a", "p": 0.8},
        {"id": "site-b", "p": 0.8},
        {"id": "site/c", "p": 0.8},
        *({"id": f"u{s}{i}", "p": 0.8} for s in "abc" for i in (1, 2)),
        {"id": "T", "trusted": True},
    ],
    "links": [
        *(
            {"source": end, "target": f"u{s}{i}", "pool_bits": POOL}
            for s, end in (("a", "site-a"), ("b", "site-b"), ("c", "site/c"))
            for i in (1, 2)
        ),
        *({"source": f"u{s}{i}", "target": "T", "pool_bits": POOL} for s in "abc" for i in (1, 2)),
    ],
}
ALL_NODES = {n["id"] for n in NETWORK["nodes"]}

# every key any test saw delivered (bytes): grepped for under the controller
DELIVERED: list[bytes] = []


def run(args, timeout, **kw):
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    """A port free on 127.0.0.1 .. 127.0.0.11 (the controller and the 10 nodes)."""
    rng = random.Random()
    for _ in range(50):
        port = rng.randrange(20000, 45000)
        ok = True
        for i in range(1, 12):
            with socket.socket() as s:
                try:
                    s.bind((f"127.0.0.{i}", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def status_json(d: Path) -> list[dict]:
    r = run(["net", "status", str(d), "--format", "json"], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class Net:
    def __init__(self, d: Path, port: int):
        self.dir = d
        self.port = port
        self.status = status_json(d)
        self.by_node = {p["node"]: p for p in self.status if p["role"] == "node"}
        self.controller = [p for p in self.status if p["role"] == "controller"]
        self.ca = str(d / "pki" / "ca.crt")
        self.extra_pids: list[int] = []  # processes this check started itself

    def host(self, sae: str) -> str:
        url = self.by_node[SAE_NODES[sae]]["etsi014_url"]
        assert url and url.startswith("https://"), url
        return url[len("https://"):]

    def cert(self, sae: str) -> tuple[str, str]:
        return (str(self.dir / "pki" / f"{sae}.crt"), str(self.dir / "pki" / f"{sae}.key"))

    def client(self, sae: str, at: str | None = None) -> QKD014Client:
        """The real ETSI 014 client of SAE ``sae`` talking to the KME of ``at``'s node."""
        c, k = self.cert(sae)
        return QKD014Client(self.host(at or sae), c, k, self.ca)

    def post(self, sae: str, at_host: str, path: str, body: dict, timeout=60, cert=None):
        return requests.post(
            f"https://{at_host}{path}", json=body, cert=cert or self.cert(sae),
            verify=self.ca, timeout=timeout,
        )


@pytest.fixture(scope="module")
def net():
    base = Path(tempfile.mkdtemp(prefix="chk19-"))
    d = base / "deploy"
    netfile = base / "chk19-net.json"
    netfile.write_text(json.dumps(NETWORK, indent=1))
    port = free_port()
    seen_pids: set[int] = set()
    obj = None
    try:
        saes = [a for s, n in SAE_NODES.items() for a in ("--sae", f"{s}={n}")]
        r = run(["net", "init", str(d), "--network", str(netfile), *saes,
                 "--security-level", str(LEVEL), "--port", str(port)], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(["net", "up", str(d), "--detach", "--timeout", "150"], timeout=200)
        assert r.returncode == 0, r.stdout + r.stderr
        obj = Net(d, port)
        seen_pids |= {p["pid"] for p in obj.status if p["pid"]}
        yield obj
    finally:
        try:
            r = run(["net", "down", str(d)], timeout=90)
            print("net down:", r.returncode, r.stdout, r.stderr)
        except subprocess.TimeoutExpired:
            print("net down timed out")
        pidfile = d / "run" / "pids.json"
        if pidfile.exists():
            try:
                seen_pids |= set(_pids_in(json.loads(pidfile.read_text())))
            except ValueError:
                pass
        if obj is not None:
            seen_pids |= set(obj.extra_pids)
        left = [p for p in seen_pids if alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.environ.get("CHK19_KEEP"):
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes still alive after net down: {left}"


def _pids_in(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "pid" and isinstance(v, int):
                yield v
            else:
                yield from _pids_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _pids_in(v)
    elif isinstance(obj, int) and not isinstance(obj, bool):
        yield obj


def deliver(net: Net, master: str, slave: str, number=None, size=None):
    """enc_keys at the master's node, dec_keys at the slave's node, both with the real
    etsi-qkd-014-client. Returns [(key_ID, bytes)] and the container extension."""
    code, cont = net.client(master).get_key(slave, number=number, size=size)
    assert code == 200, (code, vars(cont))
    keys = [(k.key_id, base64.b64decode(k.key, validate=True)) for k in cont.keys]
    want_n = number or 1
    want_bits = size or 256  # net init's default key size (--key-size, default 256)
    assert len(keys) == want_n
    assert all(len(b) * 8 == want_bits for _, b in keys), [len(b) for _, b in keys]
    assert len({i for i, _ in keys}) == want_n
    code, cont2 = net.client(slave).get_key_with_key_IDs(master, [i for i, _ in keys])
    assert code == 200, (code, vars(cont2))
    got = {k.key_id: base64.b64decode(k.key) for k in cont2.keys}
    assert got == dict(keys), "slave's keys differ from the master's"
    DELIVERED.extend(b for _, b in keys)
    return keys, cont.key_container_extension


# ---------------------------------------------------------------- a process per node

def test_a_live_process_per_node_and_one_controller(net):
    st = net.status
    assert isinstance(st, list)
    for p in st:
        assert {"role", "node", "pid", "address", "etsi014_url", "healthy"} <= set(p), p
    assert len(net.controller) == 1
    c = net.controller[0]
    assert c["node"] is None and c["etsi014_url"] is None
    assert c["address"] == f"127.0.0.1:{net.port}"
    nodes = [p for p in st if p["role"] == "node"]
    assert len(nodes) == len(st) - 1
    assert sorted(p["node"] for p in nodes) == sorted(ALL_NODES)
    pids = [p["pid"] for p in st]
    assert all(isinstance(x, int) for x in pids)
    assert len(set(pids)) == len(pids), "pids not distinct"
    assert all(p["healthy"] is True for p in st), [p for p in st if not p["healthy"]]
    for p in st:
        assert alive(p["pid"]), p
        cmd = Path(f"/proc/{p['pid']}/cmdline").read_bytes().split(b"\0")
        want = [b"node", b"serve"] if p["role"] == "node" else [b"controller", b"serve"]
        assert any(cmd[i:i + 2] == want for i in range(len(cmd))), (p, cmd)
    addrs = [p["address"] for p in st]
    assert len(set(a.split(":")[0] for a in addrs)) == len(addrs), "each process its own IP"
    sae_nodes = set(SAE_NODES.values())
    for p in nodes:
        if p["node"] in sae_nodes:
            assert p["etsi014_url"] == f"https://{p['address']}", p
        else:
            assert p["etsi014_url"] is None, p
    # nodes.json maps the id that is not a file name
    mapping = json.loads((net.dir / "nodes.json").read_text())
    assert set(mapping) == ALL_NODES
    assert "/" not in mapping["site/c"] and (net.dir / "nodes" / mapping["site/c"]).is_dir()


# ---------------------------------------------------------------- identical keys

@pytest.mark.parametrize("master,slave", PAIRS)
def test_identical_keys_between_saes_at_different_nodes(net, master, slave):
    assert SAE_NODES[master] != SAE_NODES[slave]
    keys, ext = deliver(net, master, slave)  # the bare GET form (defaults)
    route = (ext or {}).get("qkdseg_route") or {}
    assert route.get("segment_nodes", [None])[0] == SAE_NODES[master], route
    assert route.get("segment_nodes", [None])[-1] == SAE_NODES[slave], route
    assert "T" in route["segment_nodes"], route
    assert route.get("hops", 0) >= 4, route
    keys2, _ = deliver(net, master, slave, number=3, size=512)  # the POST form
    assert len({b for _, b in keys + keys2}) == 4


def test_readme_cli_example_master_and_slave_at_different_nodes(net):
    """README/docs form: qkd014-client -H host -c -k -r get_key B; get_key_with_id ID A."""
    c, k = net.cert("A")
    r = subprocess.run([QKD014_CLI, "-H", net.host("A"), "-c", c, "-k", k, "-r", net.ca,
                        "get_key", "B"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Response code : 200" in r.stdout, r.stdout + r.stderr
    kid = r.stdout.split("Key id : ")[1].split()[0]
    key = r.stdout.split("Key : ")[1].split()[0]
    c, k = net.cert("B")
    r = subprocess.run([QKD014_CLI, "-H", net.host("B"), "-c", c, "-k", k, "-r", net.ca,
                        "get_key_with_id", kid, "A"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Response code : 200" in r.stdout, r.stdout + r.stderr
    assert r.stdout.split("Key id : ")[1].split()[0] == kid
    assert r.stdout.split("Key : ")[1].split()[0] == key
    DELIVERED.append(base64.b64decode(key))


# ---------------------------------------------------------------- 400 / 401

def _json_message(r):
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str), body
    return body


@pytest.mark.parametrize("master,slave", PAIRS)
def test_400_on_reuse_of_a_key_id(net, master, slave):
    keys, _ = deliver(net, master, slave)
    kid = keys[0][0]
    code, err = net.client(slave).get_key_with_key_IDs(master, [kid])
    assert code == 400, (code, vars(err))
    r = net.post(slave, net.host(slave), f"/api/v1/keys/{master}/dec_keys", {"key_IDs": [{"key_ID": kid}]})
    assert r.status_code == 400, r.text
    _json_message(r)


@pytest.mark.parametrize("master,slave", PAIRS)
def test_401_for_saes_not_attached_and_for_a_third_sae(net, master, slave):
    third = next(s for s in "ABC" if s not in (master, slave))
    mh, sh = net.host(master), net.host(slave)
    # enc_keys by the master at the slave's node (not attached there)
    r = net.post(master, sh, f"/api/v1/keys/{slave}/enc_keys", {"number": 1})
    assert r.status_code == 401, r.text
    _json_message(r)
    code, _ = net.client(master, at=slave).get_key(slave)
    assert code == 401
    # a key issued for the pair
    code, cont = net.client(master).get_key(slave)
    assert code == 200
    kid, key = cont.keys[0].key_id, base64.b64decode(cont.keys[0].key)
    body = {"key_IDs": [{"key_ID": kid}]}
    # the slave at the master's node (not attached there)
    r = net.post(slave, mh, f"/api/v1/keys/{master}/dec_keys", body)
    assert r.status_code == 401, r.text
    _json_message(r)
    # the third SAE at the slave's node (it is attached elsewhere)
    r = net.post(third, sh, f"/api/v1/keys/{master}/dec_keys", body)
    assert r.status_code == 401, r.text
    _json_message(r)
    # the third SAE at its own node
    r = net.post(third, net.host(third), f"/api/v1/keys/{master}/dec_keys", body)
    assert r.status_code in (400, 401), r.text
    _json_message(r)
    # the third SAE claiming to be the master at the master's node: enc_keys for the slave is
    # its own request, but dec_keys of this key there is not its key
    r = net.post(third, mh, f"/api/v1/keys/{master}/dec_keys", body)
    assert r.status_code == 401, r.text
    # the slave with another master in the path: answered exactly as an unknown key (issue 33 changed it from 401,
    # which told the caller the key exists)
    r = net.post(slave, sh, f"/api/v1/keys/{third}/dec_keys", body)
    assert r.status_code == 400, r.text
    _json_message(r)
    # none of the refusals consumed it: the slave still gets the same bytes, once
    code, cont2 = net.client(slave).get_key_with_key_IDs(master, [kid])
    assert code == 200, vars(cont2)
    assert base64.b64decode(cont2.keys[0].key) == key
    DELIVERED.append(key)


def test_401_for_a_third_sae_attached_to_the_slaves_node(net):
    """D is attached to site-b like B, but is not the slave of an A -> B key."""
    code, cont = net.client("A").get_key("B")
    assert code == 200
    kid, key = cont.keys[0].key_id, base64.b64decode(cont.keys[0].key)
    r = net.post("D", net.host("D"), "/api/v1/keys/A/dec_keys", {"key_IDs": [{"key_ID": kid}]})
    assert r.status_code == 401, r.text
    _json_message(r)
    code, _ = net.client("D").get_key_with_key_IDs("A", [kid])
    assert code == 401
    code, cont2 = net.client("B").get_key_with_key_IDs("A", [kid])
    assert code == 200 and base64.b64decode(cont2.keys[0].key) == key
    DELIVERED.append(key)


def test_401_for_node_and_controller_certificates_at_etsi_014(net):
    """docs/network.md: "A node's or the controller's certificate gets 401 there"."""
    sb = net.dir / "nodes" / json.loads((net.dir / "nodes.json").read_text())["site-b"]
    ctrl = net.dir / "controller"
    for cert in ((str(sb / "node.crt"), str(sb / "node.key")),
                 (str(ctrl / "controller.crt"), str(ctrl / "controller.key"))):
        r = requests.get(f"https://{net.host('B')}/api/v1/keys/A/status", cert=cert,
                         verify=net.ca, timeout=30)
        assert r.status_code == 401, (cert, r.status_code, r.text)
        _json_message(r)


# ---------------------------------------------------------------- extras: PKI, roles, API callers

def test_pki_roles_modes_and_each_node_holds_only_its_own_links_seeds(net):
    from urllib.parse import unquote

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    def load(f):
        c = x509.load_pem_x509_certificate(Path(f).read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return c, san.get_values_for_type(x509.UniformResourceIdentifier), [
            str(a) for a in san.get_values_for_type(x509.IPAddress)]

    for sae in SAE_NODES:
        c, uris, _ = load(net.dir / "pki" / f"{sae}.crt")
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == sae
        assert uris == [f"urn:qkdseg:sae:{sae}"], uris
    mapping = json.loads((net.dir / "nodes.json").read_text())
    adj = {n: set() for n in ALL_NODES}
    for link in NETWORK["links"]:
        adj[link["source"]].add(frozenset((link["source"], link["target"])))
        adj[link["target"]].add(frozenset((link["source"], link["target"])))
    for node, sub in mapping.items():
        nd = net.dir / "nodes" / sub
        _, uris, ips = load(nd / "node.crt")
        assert [unquote(u) for u in uris] == [f"urn:qkdseg:node:{node}"], uris
        assert ips == [net.by_node[node]["address"].split(":")[0]], ips
        sealed = json.loads((nd / "links.sealed.json").read_text())
        assert {frozenset(json.loads(k)) for k in sealed} == adj[node], (node, list(sealed))
        for f in ("node.key", "storage.key", "links.sealed.json"):
            assert (nd / f).stat().st_mode & 0o777 == 0o600, (nd / f)
    _, uris, _ = load(net.dir / "controller" / "controller.crt")
    assert uris == ["urn:qkdseg:controller"], uris
    keys = [*(net.dir / "pki").glob("*.key"), net.dir / "controller" / "controller.key",
            net.dir / "controller" / "storage.key"]
    bad = [str(k) for k in keys if k.stat().st_mode & 0o777 != 0o600]
    assert not bad, bad
    assert not any(net.dir.joinpath("controller").glob("*seed*"))


def _problem(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type", "").startswith("application/problem+json"), r.headers
    body = r.json()
    assert body.get("status") == status and "title" in body, body


def test_relay_and_control_apis_check_the_callers_role(net):
    """docs/network.md, Messages: 403 otherwise, as RFC 9457 problem details."""
    mapping = json.loads((net.dir / "nodes.json").read_text())

    def ncert(n):
        d = net.dir / "nodes" / mapping[n]
        return (str(d / "node.crt"), str(d / "node.key"))

    a_host = net.by_node["site-a"]["address"]

    def pieces(src, dst):
        return {"kind": "pieces", "message_id": f"chk19-{random.getrandbits(64):x}",
                "request_id": "chk19-none", "src": src, "dst": dst, "blocks": [], "sent_at": time.time()}

    post = lambda host, path, body, cert: requests.post(  # noqa: E731
        f"https://{host}{path}", json=body, cert=cert, verify=net.ca, timeout=30)
    # an SAE's certificate at the relay API
    _problem(post(a_host, "/relay/v1/messages", pieces("site-a", "site-a"), net.cert("A")), 403)
    # a node that is not a neighbour of site-a (T) sending pieces to it
    _problem(post(a_host, "/relay/v1/messages", pieces("T", "site-a"), ncert("T")), 403)
    # the SAE whose id equals the neighbour node ua2's id, posing as that node
    _problem(post(a_host, "/relay/v1/messages", pieces("ua2", "site-a"), net.cert("ua2")), 403)
    # a neighbour claiming another src than its certificate
    _problem(post(a_host, "/relay/v1/messages", pieces("ua2", "site-a"), ncert("ua1")), 403)
    # control messages from a node or an SAE, not the controller
    _problem(post(a_host, "/control/v1/parts", {"parts": []}, ncert("ua1")), 403)
    _problem(post(a_host, "/control/v1/void", {}, net.cert("A")), 403)
    _problem(post(ctl_addr := net.controller[0]["address"], "/control/v1/plans",
                  {"master": "C", "slave": "A", "number": 1, "size": 256}, net.cert("ua2")), 403)
    # plans at the controller: nodes only
    _problem(post(ctl_addr, "/control/v1/plans", {"master": "A", "slave": "B", "number": 1, "size": 256},
                  net.cert("A")), 403)


@pytest.mark.parametrize("master,slave", PAIRS)
def test_get_status_with_the_real_client(net, master, slave):
    code, st = net.client(master).get_status(slave)
    assert code == 200, vars(st)
    assert st.master_sae_id == master and st.slave_sae_id == slave
    assert st.key_size == 256


# ---------------------------------------------------------------- no key bytes at the controller

def _forms(key: bytes) -> list[bytes]:
    b64 = base64.b64encode(key)
    u64 = base64.urlsafe_b64encode(key)
    return [key, b64, b64.rstrip(b"="), u64, u64.rstrip(b"="), key.hex().encode(), key.hex().upper().encode()]


def _find(paths: list[Path], keys: list[bytes]) -> list[tuple[str, int]]:
    hits = []
    for p in paths:
        data = p.read_bytes()
        for i, k in enumerate(keys):
            if any(f in data for f in _forms(k)):
                hits.append((str(p), i))
    return hits


def test_the_scan_finds_a_key_where_there_is_one(tmp_path):
    """Control: the scan below is able to fail."""
    k = os.urandom(32)
    for form in _forms(k):
        f = tmp_path / "x"
        f.write_bytes(b"...junk..." + form + b"...")
        assert _find([f], [k]) == [(str(f), 0)]


def test_no_key_bytes_under_the_controllers_directory(net):
    assert len(DELIVERED) >= 20, "the delivery tests above must run first"
    files = [p for p in (net.dir / "controller").rglob("*") if p.is_file()]
    log = net.dir / "logs" / "controller.log"
    assert log.is_file(), "docs: logs/ written by net up"
    files.append(log)
    assert any(p.name.startswith("kms.sqlite3") for p in files)
    assert any(p.name == "audit.jsonl" for p in files)
    hits = _find(files, DELIVERED)
    assert not hits, f"key bytes at the controller: {hits}"


def test_no_delivered_key_in_clear_in_any_node_file_or_log(net):
    """Issue 19's Tests: none in any node's log or audit; none at rest unencrypted."""
    files = [p for p in (net.dir / "nodes").rglob("*") if p.is_file()]
    files += [p for p in (net.dir / "logs").glob("*") if p.is_file()]
    hits = _find(files, DELIVERED)
    assert not hits, f"key bytes in clear at nodes: {hits}"


# ---------------------------------------------------------------- kill -9 of a relay on the route

def _traffic_with_a_kill(net: Net, victim: dict, pairs, ok_before=8, after_s=25.0):
    """``len(pairs)`` clients request keys in a loop (enc_keys at the master's node, then
    dec_keys at the slave's); after ``ok_before`` deliveries the victim gets SIGKILL; the clients
    go on for ``after_s`` (past the docs' relay timeout, QKDSEG_RELAY_TIMEOUT_S = 20 s)."""
    results: list[tuple] = []  # (t_start, t_end, kind, detail)
    lock = threading.Lock()
    stop = threading.Event()

    def worker(master, slave):
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = net.post(master, net.host(master), f"/api/v1/keys/{slave}/enc_keys",
                             {"number": 1}, timeout=60)
            except requests.RequestException as e:
                rec = ("transport-error", repr(e))
            else:
                if r.status_code == 200:
                    k = r.json()["keys"][0]
                    try:
                        r2 = net.post(slave, net.host(slave), f"/api/v1/keys/{master}/dec_keys",
                                      {"key_IDs": [{"key_ID": k["key_ID"]}]}, timeout=60)
                    except requests.RequestException as e:
                        rec = ("slave-transport-error", repr(e))
                    else:
                        if r2.status_code != 200:
                            rec = ("slave-failed", r2.status_code, r2.text[:200])
                        elif r2.json()["keys"][0]["key"] != k["key"]:
                            rec = ("MISMATCH", k["key_ID"])
                        else:
                            rec = ("ok", base64.b64decode(k["key"]))
                elif r.status_code == 503:
                    try:
                        body = r.json()
                        good = (r.headers.get("content-type", "").startswith("application/json")
                                and isinstance(body, dict) and isinstance(body.get("message"), str))
                    except ValueError:
                        good = False
                    rec = ("503", r.text[:200]) if good else ("503-not-json", r.text[:200])
                else:
                    rec = ("other-status", r.status_code, r.text[:200])
            with lock:
                results.append((t0, time.monotonic(), *rec))

    threads = [threading.Thread(target=worker, args=p, daemon=True) for p in pairs]
    t_begin = time.monotonic()
    for t in threads:
        t.start()
    try:
        deadline = t_begin + 60
        while time.monotonic() < deadline:
            with lock:
                n_ok = sum(1 for r in results if r[2] == "ok")
            if n_ok >= ok_before:
                break
            time.sleep(0.05)
        os.kill(victim["pid"], signal.SIGKILL)
        k = time.monotonic()
        time.sleep(after_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=75)
    hung = [t for t in threads if t.is_alive()]
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r[2]] = kinds.get(r[2], 0) + 1
    in_flight = [r for r in results if r[0] < k < r[1]]
    lat_503 = sorted(round(r[1] - r[0], 2) for r in results if r[2] == "503")
    print(f"\nkill -9 {victim['node']}: outcomes {kinds}; in flight at the kill "
          f"{[r[2] for r in in_flight]}; slowest 503s {lat_503[-3:]} s")
    DELIVERED.extend(r[3] for r in results if r[2] == "ok")
    assert not hung, "a client never returned"
    assert kinds.get("MISMATCH", 0) == 0, "a mismatched key was delivered"
    bad = [r for r in results if r[2] not in ("ok", "503")]
    assert not bad, f"requests neither ok nor JSON 503: {bad[:5]}"
    assert kinds.get("ok", 0) >= ok_before, kinds
    assert in_flight, "no request was in flight when the relay was killed"
    return results, k


def _offsets(net: Net, link: list[str]) -> dict[str, dict[str, int]]:
    """GET /relay/v1/links?link=[u,v] at both ends (docs: this node's offsets on that link),
    asked with a neighbour's (node) certificate."""
    mapping = json.loads((net.dir / "nodes.json").read_text())
    out = {}
    for end in link:
        other = link[1] if end == link[0] else link[0]
        d = net.dir / "nodes" / mapping[other]
        r = requests.get(f"https://{net.by_node[end]['address']}/relay/v1/links",
                         params={"link": json.dumps(link, separators=(",", ":"))},
                         cert=(str(d / "node.crt"), str(d / "node.key")), verify=net.ca, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body, dict) and all(isinstance(v, int) for v in body.values()), body
        out[end] = body
    return out


UA1_LINKS = [["site-a", "ua1"], ["ua1", "T"]]
OFFSETS_AFTER_KILL: dict[str, dict] = {}


def test_kill_9_untrusted_relay_on_route_fails_cleanly(net):
    victim = net.by_node[KILLED]
    assert victim["etsi014_url"] is None and alive(victim["pid"])
    pairs = [("A", "B"), ("B", "A"), ("A", "C"), ("C", "A")] * 2  # 8 clients, all via ua1
    results, k = _traffic_with_a_kill(net, victim, pairs)
    assert not alive(victim["pid"])
    after = [r for r in results if r[0] > k + 1]
    assert after and all(r[2] == "503" for r in after), (
        "with ua1 dead no route meets the level: every later request is a 503",
        [r[2:] for r in after][:5])
    # the live ends of ua1's links, for the restart check
    for link in UA1_LINKS:
        live = [e for e in link if e != KILLED][0]
        OFFSETS_AFTER_KILL[json.dumps(link)] = _offsets_one(net, link, live)
    # a pair whose route does not use the dead relay still gets identical keys
    deliver(net, "B", "C")


def _offsets_one(net, link, end):
    mapping = json.loads((net.dir / "nodes.json").read_text())
    d = net.dir / "nodes" / mapping[end]
    r = requests.get(f"https://{net.by_node[end]['address']}/relay/v1/links",
                     params={"link": json.dumps(link, separators=(",", ":"))},
                     cert=(str(d / "node.crt"), str(d / "node.key")), verify=net.ca, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_net_status_lists_the_killed_relay_as_not_running(net):
    """docs/network.md: healthy false; `pid` (`null` when it is not running)."""
    st = {p["node"]: p for p in status_json(net.dir) if p["role"] == "node"}
    assert st[KILLED]["healthy"] is False, st[KILLED]
    assert all(p["healthy"] for n, p in st.items() if n != KILLED)
    assert st[KILLED]["pid"] is None, f"docs: pid null when not running; got {st[KILLED]}"


def test_after_the_relays_restart_deliveries_resume_and_offsets_only_grow(net):
    """Issue 19 item 7 / docs: after its restart deliveries resume; offsets at both ends of each
    of its links only grew (bits skipped, never reused)."""
    mapping = json.loads((net.dir / "nodes.json").read_text())
    ndir = net.dir / "nodes" / mapping[KILLED]
    log = open(net.dir / "logs" / "chk19-restart-ua1.log", "ab")
    p = subprocess.Popen([QKDSEG, "node", "serve", str(ndir)], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    net.extra_pids.append(p.pid)
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and p.poll() is None:
            st = {q["node"]: q for q in status_json(net.dir) if q["role"] == "node"}
            if st[KILLED]["healthy"]:
                healthy = True
                break
            time.sleep(1)
        assert healthy, f"restarted {KILLED} never healthy (rc {p.poll()})"
        net.by_node[KILLED] = st[KILLED]
        deadline = time.monotonic() + 45
        last = None
        while time.monotonic() < deadline:
            code, cont = net.client("A").get_key("B")
            last = (code, vars(cont))
            if code == 200:
                break
            assert code == 503, last
            time.sleep(2)
        assert last[0] == 200, f"deliveries did not resume: {last}"
        code, cont2 = net.client("B").get_key_with_key_IDs("A", [cont.keys[0].key_id])
        assert code == 200 and cont2.keys[0].key == cont.keys[0].key
        DELIVERED.append(base64.b64decode(cont.keys[0].key))
        deliver(net, "A", "B", number=2)
        deliver(net, "C", "A")  # the other direction of both of ua1's links
        time.sleep(1.0)  # acks go every 0.1 s
        for link in UA1_LINKS:
            now = _offsets(net, link)
            before = OFFSETS_AFTER_KILL[json.dumps(link)]
            print(f"offsets {link}: after the kill (live end) {before}; after restart {now}")
            for end, offs in now.items():
                for direction, v in before.items():
                    assert offs.get(direction, -1) > v, (link, end, direction, before, now)
            # quiescent: both ends name the same position in each direction
            assert now[link[0]] == now[link[1]], (link, now)
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        log.close()


def test_kill_9_trusted_segment_node_fails_cleanly(net):
    """T is the segment node of every route (global keys and confirmations pass through it)."""
    pairs = [("B", "C"), ("C", "B"), ("A", "B"), ("C", "A")] * 2
    victim = net.by_node["T"]
    assert alive(victim["pid"])
    results, k = _traffic_with_a_kill(net, victim, pairs, ok_before=8, after_s=22.0)
    after = [r for r in results if r[0] > k + 1]
    assert after and all(r[2] == "503" for r in after), [r[2:] for r in after][:5]


def test_still_no_key_bytes_at_the_controller_after_the_failures(net):
    assert len(DELIVERED) >= 40
    files = [p for p in (net.dir / "controller").rglob("*") if p.is_file()]
    files.append(net.dir / "logs" / "controller.log")
    hits = _find(files, DELIVERED)
    assert not hits, f"key bytes at the controller: {hits}"


# ---------------------------------------------------------------- extras without the shared network

def _one_error_line(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qkdseg: error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_cli_bad_input_is_one_error_line_exit_2(tmp_path):
    netfile = tmp_path / "n.json"
    netfile.write_text(json.dumps(NETWORK))
    d = tmp_path / "d"
    base = ["net", "init", str(d), "--network", str(netfile)]
    for args in ([*base, "--sae", "A=nowhere", "--sae", "B=site-b"],
                 [*base, "--sae", "A=site-a"],
                 [*base, "--sae", "A", "--sae", "B=site-b"],
                 [*base, "--sae", "A=site-a", "--sae", "A=site-b"],
                 ["net", "init", str(d), "--network", str(tmp_path / "missing.json"),
                  "--sae", "A=site-a", "--sae", "B=site-b"],
                 ["net", "status", str(tmp_path / "nothing")],
                 ["net", "up", str(tmp_path / "nothing")],
                 ["net", "down", str(tmp_path / "nothing")],
                 ["net", "status", str(tmp_path), "--format", "yaml"]):
        _one_error_line(run(args, timeout=60))
        assert not d.exists(), f"a failed init left {d}: {args}"
    r = run([*base, "--sae", "A=site-a", "--sae", "B=site-b"], timeout=60)
    assert r.returncode == 0, r.stderr
    _one_error_line(run([*base, "--sae", "A=site-a", "--sae", "B=site-b"], timeout=60))


SMALL = {"directed": False, "multigraph": False, "graph": {},
         "nodes": [{"id": "x", "p": 0.9}, {"id": "m", "p": 0.9}, {"id": "y", "p": 0.9}],
         "links": [{"source": "x", "target": "m"}, {"source": "m", "target": "y"}]}


def _wait_healthy(d, n, timeout, proc=None):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"net up exited {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        r = run(["net", "status", str(d), "--format", "json"], timeout=60)
        if r.returncode == 0:
            st = json.loads(r.stdout)
            if len(st) == n and all(p["healthy"] for p in st):
                return st
        time.sleep(1)
    raise AssertionError(f"not healthy in {timeout} s: {st}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_net_up_stops_everything_on_signal_exit_0(tmp_path, sig):
    """Issue 19 item 3: foreground, stops every process on SIGINT/SIGTERM, exit 0."""
    netfile = tmp_path / "small.json"
    netfile.write_text(json.dumps(SMALL))
    d = tmp_path / "d"
    port = free_port()
    r = run(["net", "init", str(d), "--network", str(netfile), "--sae", "P=x", "--sae", "Q=y",
             "--security-level", "0.5", "--port", str(port)], timeout=120)
    assert r.returncode == 0, r.stderr
    up = subprocess.Popen([QKDSEG, "net", "up", str(d)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
    pids: list[int] = []
    try:
        st = _wait_healthy(d, 4, 120, up)
        pids = [p["pid"] for p in st]
        assert all(alive(p) for p in pids)
        # one delivery, master and slave at different nodes
        ca = str(d / "pki" / "ca.crt")
        url = {p["node"]: p["etsi014_url"] for p in st}
        cp = QKD014Client(url["x"][8:], str(d / "pki" / "P.crt"), str(d / "pki" / "P.key"), ca)
        cq = QKD014Client(url["y"][8:], str(d / "pki" / "Q.crt"), str(d / "pki" / "Q.key"), ca)
        code, cont = cp.get_key("Q")
        assert code == 200, vars(cont)
        code, cont2 = cq.get_key_with_key_IDs("P", [cont.keys[0].key_id])
        assert code == 200 and cont2.keys[0].key == cont.keys[0].key
        up.send_signal(sig)
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, (up.returncode, out.decode()[-2000:])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        assert not [p for p in pids if alive(p)], "processes left after net up stopped"
        st2 = json.loads(run(["net", "status", str(d), "--format", "json"], timeout=60).stdout)
        assert len(st2) == 4 and not any(p["healthy"] for p in st2), st2
        assert all(p["pid"] is None for p in st2), f"docs: pid null when not running: {st2}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=20)
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_the_deployment_directory_is_self_contained(tmp_path):
    """docs/network.md: "What net init writes" is DIR/ (controller/kms.toml holds "network"),
    and "Deploying one node per host" copies DIR/nodes/<dir>/ and the controller's directory to
    their hosts. So the network file net init was given must not be needed once DIR/ exists."""
    netfile = tmp_path / "small.json"
    netfile.write_text(json.dumps(SMALL))
    d = tmp_path / "d"
    r = run(["net", "init", str(d), "--network", str(netfile), "--sae", "P=x", "--sae", "Q=y",
             "--security-level", "0.5", "--port", str(free_port())], timeout=120)
    assert r.returncode == 0, r.stderr
    netfile.unlink()
    try:
        r = run(["net", "up", str(d), "--detach", "--timeout", "90"], timeout=150)
        logs = {p.name: p.read_text()[-300:] for p in (d / "logs").glob("*.log")}
        assert r.returncode == 0, (r.stdout, r.stderr, logs)
    finally:
        run(["net", "down", str(d)], timeout=90)
