"""Deploying across hosts (issue 36): the inventory, enrolment by CSR, bundles, nothing where it must not be, and the
example network deployed across network namespaces (one per node and one for the controller, on a bridge) from
its bundles, with real ETSI 014 deliveries between SAEs at different hosts.

The namespaces, veth pairs and bridge are made by the test as root with names and a 10.200.X.0/24 subnet unique to
the run, and removed at the end, also on failure; the test is skipped, saying why, where ``ip netns`` cannot be used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import portblock

from timing import scaled

from test_net import QKDSEG, _run

SAES = ("A=0", "B=7", "C=4")


def _inventory(path: Path, ctrl: str, nodes: dict, extra: str = "") -> Path:
    path.write_text(f'[controller]\n{ctrl}\n{extra}[nodes]\n' + "".join(f'"{k}" = "{v}"\n' for k, v in nodes.items()))
    return path


# -- the inventory ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ctrl, nodes, extra, needle", [
    ('address = "10.1.0.1:8443"', {str(i): f"10.1.0.{10 + i}:8443" for i in range(9)}, "", 'node "9" is missing'),
    ('address = "10.1.0.1:8443"', {**{str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "3": "bad host!:1"}, "",
     '[nodes] "3"'),
    ('address = "10.1.0.1:8443"', {**{str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "4": "10.1.0.14"}, "",
     '[nodes] "4"'),
    ('address = "10.1.0.1:8443"', {**{str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "x": "10.1.0.99:1"}, "",
     '[nodes] "x": not a node'),
    ('address = "10.1.0.10:8443"', {str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "", 'also the address'),
    ('', {str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "", "[controller]"),
    ('addresses = ["h1:8443", "h2:8443"]', {str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "",
     "add [etcd] members"),
    ('address = "10.1.0.1:8443"', {str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}, "[etcd]\nmembers = [\"a:1\", "
     "\"b:1\"]\n", "[etcd] members"),
])
def test_inventory_errors_name_the_node_or_field(tmp_path, ctrl, nodes, extra, needle):
    from qkdseg.errors import InvalidRequest
    from qkdseg.net.inventory import load_inventory

    path = _inventory(tmp_path / "hosts.toml", ctrl, nodes, extra)
    with pytest.raises(InvalidRequest) as err:
        load_inventory(path, list(range(10)))
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_init_with_an_inventory_writes_every_address(tmp_path):
    """Node configs, the controllers' net.json, certificates (IP or DNS SAN, role, key usages) from the inventory;
    replicated controllers each get their own directory and certificate."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from qkdseg.net.layout import init_network

    nodes = {str(i): f"10.1.0.{10 + i}:{9000 + i}" for i in range(10)}
    nodes["3"] = "node3.example.net:8443"
    inv = _inventory(tmp_path / "hosts.toml", 'addresses = ["10.1.0.1:8443", "ctl2.example.net:8443"]', nodes,
                     '[etcd]\nmembers = ["10.1.0.1:2379"]\n')
    d = tmp_path / "net"
    init_network(d, "example", {"A": "0", "B": "7"}, inventory=inv)
    net = json.loads((d / "controller" / "net.json").read_text())
    assert net["address"] == "10.1.0.1:8443" and net["controllers"] == ["10.1.0.1:8443", "ctl2.example.net:8443"]
    assert {str(n["id"]): n["address"] for n in net["nodes"]} == nodes and net["etcd"] == ["10.1.0.1:2379"]
    assert json.loads((d / "controller-1" / "net.json").read_text())["address"] == "ctl2.example.net:8443"
    names = json.loads((d / "nodes.json").read_text())
    for v, name in names.items():
        conf = json.loads((d / "nodes" / name / "node.json").read_text())
        assert conf["address"] == nodes[v] and conf["controller"] == "10.1.0.1:8443"
        assert conf["controllers"] == net["controllers"] and conf["addresses"] == nodes
        assert all(lk["address"] == nodes[str(lk["neighbour"])] for lk in conf["links"])
        cert = x509.load_pem_x509_certificate((d / "nodes" / name / "node.crt").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        host = nodes[v].rsplit(":", 1)[0]
        assert (host in san.get_values_for_type(x509.DNSName) if v == "3"
                else host in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])
        assert f"urn:qkdseg:node:{v}" in san.get_values_for_type(x509.UniformResourceIdentifier)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ctl2 = x509.load_pem_x509_certificate((d / "controller-1" / "controller.crt").read_bytes())
    san = ctl2.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ctl2.example.net" in san.get_values_for_type(x509.DNSName)
    for f in ("audit.key", "storage.key"):  # one audit chain in etcd: the replicated controllers share its key
        assert (d / "controller-1" / f).read_bytes() == (d / "controller" / f).read_bytes()
    assert (d / "controller-1" / "controller.key").read_bytes() != (d / "controller" / "controller.key").read_bytes()
    from qkdseg.net.procs import processes

    procs = processes(d)
    assert [p["address"] for p in procs if p["role"] == "controller"] == net["controllers"]
    assert all(p["args"][:2] == ("--store", "etcd://10.1.0.1:2379") for p in procs if p["role"] == "controller")
    assert not any(p["local"] for p in procs)  # none of these hosts is this machine: net up starts nothing


# -- enrolment: private keys never leave their host -----------------------------------------------------------------
def _enrolled(tmp_path: Path, inv: Path, ns_of: dict | None = None) -> dict:
    """``net init --enroll`` then, per host, its bundle unpacked into its own directory, keygen there, its CSR signed
    by the admin: ``{"dir", "ca_key", "bundles", "hosts": {name: its directory}}``. ``ns_of`` (host name -> network
    namespace): by the documented commands, each host's keygen run in its namespace; else in this process."""
    from qkdseg.net.bundle import bundle_all
    from qkdseg.net.enroll import controller_keygen, node_keygen, sign
    from qkdseg.net.layout import init_network

    admin = tmp_path / "admin"
    d, ca_key = admin / "net", admin / "ca.key"
    admin.mkdir()
    if ns_of is None:
        init_network(d, "example", dict(s.split("=") for s in SAES), security_level=0.5, inventory=inv, enroll=True,
                     ca_key_out=ca_key)
        bundles = bundle_all(d, admin / "bundles")
    else:
        r = _run("net", "init", str(d), "--network", "example", *[a for s in SAES for a in ("--sae", s)],
                 "--security-level", "0.5", "--inventory", str(inv), "--enroll", "--ca-key-out", str(ca_key))
        assert r.returncode == 0, r.stderr
        r = _run("net", "bundle", str(d), "--all", "-o", str(admin / "bundles"))
        assert r.returncode == 0, r.stderr
        bundles = sorted((admin / "bundles").glob("*.tar.gz"))
    hosts, keygens = {}, {}
    for b in bundles:
        name = b.name.removesuffix(".tar.gz")
        host = tmp_path / "hosts" / name
        host.mkdir(parents=True)
        with tarfile.open(b) as tar:
            tar.extractall(host, filter="data")
        kind = "controller" if name.startswith("controller") else "node"
        hosts[name] = host / kind
        if ns_of is None:
            sign(d, (controller_keygen if kind == "controller" else node_keygen)(host / kind), ca_key)
        else:  # on the host (all at once, as their operators would)
            keygens[name] = subprocess.Popen(["ip", "netns", "exec", ns_of[name], QKDSEG, kind, "keygen",
                                              str(host / kind)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if ns_of is not None:
        for name, p in keygens.items():
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, (name, err)
            kind = hosts[name].name
            shutil.copy(hosts[name] / f"{kind}.csr", admin / f"{name}.csr")  # the CSR to the admin machine
        r = _run("net", "sign", str(d), *[str(admin / f"{n}.csr") for n in hosts], "--ca-key", str(ca_key))
        assert r.returncode == 0, r.stderr
        for name, host in hosts.items():  # each certificate back to its host
            shutil.copy(admin / f"{name}.crt", host / f"{host.name}.crt")
    return {"dir": d, "ca_key": ca_key, "bundles": bundles, "hosts": hosts}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _bundle_files(b: Path) -> dict[str, bytes]:
    with tarfile.open(b) as tar:
        return {f"{b.name}:{m.name}": tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _key_needles(path: Path) -> set[bytes]:
    """What a private key, storage key or audit key file gives away, in the forms a file could hold it."""
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    if data.startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, None)
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        body = b"".join(data.splitlines()[1:-1])
        return {raw, raw.hex().encode(), body[48:96]}  # the ASN.1 header before it is every key's
    return {data, data.hex().encode(), base64.b64encode(data)[:40]}


def _nothing_where_it_must_not_be(e: dict) -> None:
    """Each host's keys only on that host; each link's seed only at its two ends' hosts (agreed there: not in DIR,
    not in a bundle); the CA key nowhere in DIR, a bundle or a host."""
    from qkdseg.net.layout import unseal

    d = e["dir"]
    places = {"DIR": _files(d)}
    for b in e["bundles"]:
        places[b.name] = _bundle_files(b)
    for name, host in e["hosts"].items():
        places[f"host:{name}"] = _files(host)
    needles: dict[bytes, tuple] = {}  # needle -> (what, where it may be: (place, file) -> bool)
    for n in _key_needles(e["ca_key"]):
        needles[n] = ("the CA key", lambda place, f: False)
    names = json.loads((d / "nodes.json").read_text())
    for name, host in e["hosts"].items():
        kind = "controller" if name.startswith("controller") else "node"
        for f in (f"{kind}.key", "storage.key", "audit.key"):
            for n in _key_needles(host / f):
                needles[n] = (f"{name}'s {f}", lambda place, fname, name=name: place == f"host:{name}")
        assert not (host / "links.seeds.json").exists()
        if kind == "node":  # its links' seeds, from its own sealed file
            skey = (host / "storage.key").read_bytes()
            for link, blob in json.loads((host / "links.sealed.json").read_text()).items():
                seed = unseal(skey, link, blob)
                ends = [names[str(x)] for x in json.loads(link)]

                def at_an_end(place, fname, ends=ends):  # agreed by the two ends (--enroll): on their hosts only
                    return any(place == f"host:node-{n}" for n in ends)

                needles[seed] = needles[seed.hex().encode()] = (f"link {link}'s seed", at_an_end)
    assert len(needles) >= 90  # 3 per private, storage and audit key of 11 hosts, and the CA key
    for place, files in places.items():
        for fname, data in files.items():
            for hit in [n for n in needles if n in data]:  # small files: a plain search
                what, allowed = needles[hit]
                assert allowed(place, fname), f"{what} found in {place} {fname}"
    for f in ("node.key", "storage.key", "audit.key", "controller.key", "ca.key", "dashboard.token"):
        assert not list(d.rglob(f)), f"{f} in DIR"


def test_enrolment_leaves_nothing_where_it_must_not_be(tmp_path):
    nodes = {str(i): f"127.0.0.{2 + i}:8443" for i in range(10)}
    inv = _inventory(tmp_path / "hosts.toml", 'address = "127.0.0.1:8443"', nodes)
    e = _enrolled(tmp_path, inv)
    _nothing_where_it_must_not_be(e)
    with tarfile.open(e["bundles"][1]) as tar:  # a node's bundle: its directory and the README, no state
        names = sorted(m.name for m in tar.getmembers())
        readme = tar.extractfile("README.txt").read().decode()
    assert "README.txt" in names and "node/node.json" in names and "node/links.seeds.json" not in names  # agreed
    assert "qkdseg node keygen" in readme and "qkdseg node serve" in readme and "qkdseg-node@" in readme
    # the host's certificate is for its own address, role and name
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((e["hosts"]["node-7"] / "node.crt").read_bytes())
    assert "127.0.0.9" in str(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _csr(path: Path, cn: str, uri: str, host: str | None = None, key_out: Path | None = None) -> Path:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.UniformResourceIdentifier(uri)] + ([x509.IPAddress(ipaddress.ip_address(host))] if host else [])
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .sign(key, hashes.SHA256()))
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    if key_out is not None:
        from qkdseg.server.pki import write_key

        write_key(key_out, key)
    return path


def test_net_sign_refuses_a_csr_that_does_not_match_the_inventory(tmp_path):
    from qkdseg.errors import InvalidRequest
    from qkdseg.net.enroll import sign
    from qkdseg.net.layout import init_network

    nodes = {str(i): f"10.1.0.{10 + i}:8443" for i in range(10)}
    inv = _inventory(tmp_path / "hosts.toml", 'address = "10.1.0.1:8443"', nodes)
    d, ca_key = tmp_path / "net", tmp_path / "ca.key"
    init_network(d, "example", {"A": "0", "B": "7"}, inventory=inv, enroll=True, ca_key_out=ca_key)
    # the admin's own: net status (operator), changes of membership (admin)
    assert sorted(p.name for p in d.rglob("*.key")) == ["admin.key", "operator.key"]
    good = _csr(tmp_path / "good.csr", "node 3", "urn:qkdseg:node:3", "10.1.0.13")
    bad = {"name": _csr(tmp_path / "name.csr", "node 4", "urn:qkdseg:node:3", "10.1.0.13"),
           "role": _csr(tmp_path / "role.csr", "A", "urn:qkdseg:sae:A", "10.1.0.13"),
           "address": _csr(tmp_path / "addr.csr", "node 3", "urn:qkdseg:node:3", "10.1.0.14"),
           "no node": _csr(tmp_path / "nonode.csr", "node 12", "urn:qkdseg:node:12", "10.1.0.13")}
    needles = {"name": "name (CN) is 'node 4'", "role": "urn:qkdseg:sae:A", "no node": "not a node of the network",
               "address": "asks for address 10.1.0.14; node 3 is at 10.1.0.13"}
    r = _run("net", "sign", str(d), str(bad["address"]), str(good), "--ca-key", str(ca_key))  # the command's line
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needles["address"] in lines[0], r.stderr
    for what in ("name", "role", "no node"):
        with pytest.raises(InvalidRequest) as err:
            sign(d, bad[what], ca_key)
        assert needles[what] in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.crt"))  # nothing written for a refused CSR
    assert sign(d, good, ca_key)[0] == tmp_path / "good.crt"  # beside the CSR


def test_enrolment_refusals_are_one_line(tmp_path):
    """--enroll needs the CA key elsewhere; keygen runs once; an SAE not in the registry, a CSR of another SAE, a
    bundle of no node: one line each, nothing written."""
    from qkdseg.errors import InvalidRequest
    from qkdseg.net.bundle import bundle
    from qkdseg.net.enroll import node_keygen, sae_cert
    from qkdseg.net.layout import init_network

    d, ca_key = tmp_path / "net", tmp_path / "ca.key"
    cases = [(lambda: init_network(d, "example", {"A": "0", "B": "7"}, enroll=True), "--ca-key-out"),
             (lambda: init_network(d, "example", {"A": "0", "B": "7"}, ca_key_out=d / "ca.key"), "inside")]
    for call, needle in cases:
        with pytest.raises(InvalidRequest, match=needle):
            call()
    assert not (d / "nodes.json").exists()
    init_network(d, "example", {"A": "0", "B": "7"}, enroll=True, ca_key_out=ca_key)
    node_keygen(d / "nodes" / "3")
    csr = _csr(tmp_path / "a.csr", "A", "urn:qkdseg:sae:A")
    for call, needle in [(lambda: node_keygen(d / "nodes" / "3"), "exists already"),
                         (lambda: sae_cert(d, "Z", ca_key), "'Z' is not in the network's registry"),
                         (lambda: sae_cert(d, "B", ca_key, csr), "not SAE 'B'"),
                         (lambda: bundle(d, tmp_path / "x.tar.gz", node="42"), "--node 42"),
                         (lambda: bundle(d, d / "nodes" / "3" / "x.tar.gz", node="3"), "inside")]:
        with pytest.raises(InvalidRequest, match=needle) as err:
            call()
        assert "\n" not in str(err.value)
    assert not (d / "pki" / "Z.crt").exists() and not (d / "pki" / "B.crt").exists()
    assert sae_cert(d, "A", ca_key, csr) == d / "pki" / "A.crt" and not (d / "pki" / "A.key").exists()


def test_a_node_certificate_for_another_address_is_named_at_start(tmp_path):
    from qkdseg.net.layout import init_network

    d = tmp_path / "net"
    init_network(d, "example", {"A": "0", "B": "7"}, port=portblock.port())
    conf_path = d / "nodes" / "0" / "node.json"
    conf = json.loads(conf_path.read_text())
    conf["address"] = "127.0.0.99:" + conf["address"].rsplit(":", 1)[1]
    conf["addresses"]["0"] = conf["address"]
    conf_path.write_text(json.dumps(conf))
    r = _run("node", "serve", str(d / "nodes" / "0"), timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "node.crt: the certificate is for" in lines[-1] and "127.0.0.99" in lines[-1], r.stderr


# -- across hosts: network namespaces on a bridge --------------------------------------------------------------------
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@contextlib.contextmanager
def _hosts(count: int):
    """``count`` namespaces (one host each) on a bridge, addresses 10.200.X.2.. and 10.200.X.1 on this (the admin)
    machine's side: ``(the namespaces' names, their addresses)``; everything removed at the end."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2's ip to make network namespaces")
    run = f"{os.getpid() % 4096:03x}{random.randrange(16 ** 3):03x}"
    probe = _ip("netns", "add", f"qk{run}p", check=False)
    if probe.returncode != 0:
        pytest.skip(f"ip netns is not available here: {probe.stderr.strip()}")
    _ip("netns", "del", f"qk{run}p", check=False)
    used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
    mine = 1 + portblock.block_index()  # a subnet no other run of the suite picks first (tests/portblock.py)
    subnet = next(f"10.200.{x}" for x in [mine, *random.sample(range(1, 255), 254)] if f"10.200.{x}." not in used)
    bridge, names = f"qkb{run}", [f"qk{run}h{i}" for i in range(count)]
    try:
        batch = {None: [f"link add {bridge} type bridge", f"addr add {subnet}.1/24 dev {bridge}",
                        f"link set {bridge} up"]}
        for i, ns in enumerate(names):
            batch[None] += [f"netns add {ns}", f"link add qv{run}{i} type veth peer name eth0 netns {ns}",
                            f"link set qv{run}{i} master {bridge}", f"link set qv{run}{i} up"]
            batch[ns] = [f"addr add {subnet}.{2 + i}/24 dev eth0", "link set eth0 up", "link set lo up"]
        for ns, lines in batch.items():
            done = subprocess.run(["ip", *(("-n", ns) if ns else ()), "-batch", "-"], input="\n".join(lines) + "\n",
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        yield names, [f"{subnet}.{2 + i}" for i in range(count)]
    finally:
        for ns in names:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", bridge, check=False)


def test_the_example_network_across_hosts(tmp_path):
    """The documented sequence: inventory, net init --enroll, bundles, keygen on each host, net sign, net sae cert,
    each process started from its own bundle in its own namespace; keys delivered between hosts; net status and
    net up from the admin machine see every process as remote and healthy; net init --force is refused."""
    from etsi_qkd_014_client import QKD014Client

    with _hosts(11) as (spaces, ips):
        ns_of = {"controller": spaces[0], **{f"node-{i}": spaces[1 + i] for i in range(10)}}
        addr = {"controller": f"{ips[0]}:8443", **{str(i): f"{ips[1 + i]}:8443" for i in range(10)}}
        inv = _inventory(tmp_path / "hosts.toml", f'address = "{addr["controller"]}"',
                         {str(i): addr[str(i)] for i in range(10)})
        e = _enrolled(tmp_path, inv, ns_of)
        d = e["dir"]
        _nothing_where_it_must_not_be(e)
        pki = tmp_path / "sae"
        pki.mkdir()
        r = _run("net", "sae", "cert", str(d), "A", "--ca-key", str(e["ca_key"]))
        assert r.returncode == 0, r.stderr
        b_csr = _csr(pki / "B.csr", "B", "urn:qkdseg:sae:B", key_out=pki / "B.key")  # B's key stays with B
        from qkdseg.net.enroll import sae_cert
        from qkdseg.net.procs import status, up

        sae_cert(d, "B", e["ca_key"], b_csr)
        assert not (d / "pki" / "B.key").exists()
        procs = {}
        try:
            for name, host in e["hosts"].items():
                cmd = [sys.executable, "-m", "qkdseg", "controller" if name == "controller" else "node", "serve",
                       str(host)]
                log = open(tmp_path / f"{name}.log", "wb")
                procs[name] = subprocess.Popen(["ip", "netns", "exec", ns_of[name], *cmd], stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + scaled(120)
            while True:
                rows = status(d)  # net status: each process over mutual TLS, from the admin machine
                if all(row["healthy"] for row in rows):
                    break
                dead = [n for n, p in procs.items() if p.poll() is not None]
                assert not dead and time.monotonic() < deadline, (dead, [
                    (tmp_path / f"{n}.log").read_text()[-500:] for n in dead[:2]])
                time.sleep(0.5)
            assert all(row.get("remote") and row["pid"] is None for row in rows) and len(rows) == 11
            a = QKD014Client(addr["0"], str(d / "pki" / "A.crt"), str(d / "pki" / "A.key"), str(d / "pki" / "ca.crt"))
            b = QKD014Client(addr["7"], str(d / "pki" / "B.crt"), str(pki / "B.key"), str(d / "pki" / "ca.crt"))
            for _ in range(3):
                code, got = a.get_key("B", number=2, size=256)
                assert code == 200, getattr(got, "message", got)
                code2, back = b.get_key_with_key_IDs("A", [k.key_id for k in got.keys])
                assert code2 == 200, getattr(back, "message", back)
                assert {k.key_id: k.key for k in back.keys} == {k.key_id: k.key for k in got.keys}
            _nothing_where_it_must_not_be(e)  # the seeds the running nodes agreed: at their two ends' hosts only
            rows = up(d)  # net up: nothing here to start; every process listed remote (and healthy)
            assert all(row.get("remote") and row["healthy"] for row in rows) and not (d / "run" / "pids.json").exists()
            r = _run("net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7", "--inventory",
                     str(inv), "--force", timeout=60)
            assert r.returncode == 2 and "the network is running (11 process(es)" in r.stderr, r.stderr
        finally:
            for p in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=scaled(20))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
