"""Helpers of tests/test_hosts_field_check.py (the independent check of issue 36): the namespaces and bridge, the
``qkdseg`` commands, ``net status``, the scan for secrets, CSRs and certificates made with ``cryptography``. Written
from the docs alone, like the check."""

from __future__ import annotations

import base64
import datetime
import gzip
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import scaled  # noqa: E402

QKDSEG = os.environ.get("QKDSEG") or str(Path(sys.executable).with_name("qkdseg"))
NODES = [str(i) for i in range(10)]  # the example network: ten nodes, ids 0..9 (docs: "ten nodes, one controller")
PORT = 8443
PID = os.getpid()


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def _q(*args: str, timeout: float = 120, ns: str | None = None) -> subprocess.CompletedProcess:
    """One ``qkdseg`` command (inside namespace ``ns`` when given)."""
    cmd = ([] if ns is None else ["ip", "netns", "exec", ns]) + [QKDSEG, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout))


def _ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"{p.args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p.stdout


NOTES: list[str] = []


def _refused(p: subprocess.CompletedProcess, *words: str) -> str:
    """A refusal as the docs describe it: exit 2, one line ``qkdseg: error: ...`` naming ``words``."""
    err = p.stderr.strip()
    assert p.returncode == 2, f"{p.args} -> {p.returncode} (want 2)\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert err.startswith("qkdseg: error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    NOTES.append(f"refused: {' '.join(str(a) for a in p.args[-6:])} -> {err}")
    return err


def _subnet() -> str:
    """A /24 in 10.0.0.0/8 that no interface or route of this machine uses, from the pid."""
    used = _sh("ip", "-o", "addr").stdout + _sh("ip", "route").stdout
    a, b = 100 + (PID >> 8) % 100, PID & 255
    for k in range(256):
        net = f"10.{a}.{(b + k) % 256}"
        if f" {net}." not in used and f"\n{net}." not in used and not used.startswith(f"{net}."):
            return net
    raise RuntimeError("no free 10.x.y.0/24")


class Fabric:
    """The bridge, one namespace per process and their veth pairs; ``close`` removes what was made."""

    def __init__(self) -> None:
        self.net = _subnet()
        self.bridge = f"qb{PID}"
        self.namespaces: list[str] = []
        self.bridge_made = False

    def make_bridge(self) -> None:
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        _sh("ip", "addr", "add", f"{self.net}.254/24", "dev", self.bridge)  # the admin machine's leg
        _sh("ip", "link", "set", self.bridge, "up")

    def add_host(self, k: int, name: str, last_octet: int) -> tuple[str, str]:
        ns = f"q36-{PID}-{name}"
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        host, peer = f"q{PID}h{k}", f"q{PID}n{k}"
        _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        _sh("ip", "link", "set", peer, "netns", ns)
        _sh("ip", "link", "set", host, "master", self.bridge, "up")
        ip = f"{self.net}.{last_octet}"
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", peer)
        _sh("ip", "-n", ns, "link", "set", peer, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns, ip

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its veth end, and so its pair
            _sh("ip", "netns", "del", ns, check=False)
        for k in range(len(self.namespaces) + 2):
            _sh("ip", "link", "del", f"q{PID}h{k}", check=False)
        if self.bridge_made:
            _sh("ip", "link", "del", self.bridge, check=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=scaled(15))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _status(admin: Path) -> list[dict]:
    p = _q("net", "status", str(admin), "--format", "json", timeout=60)
    data = json.loads(p.stdout) if p.stdout.strip() else None
    if isinstance(data, dict):
        for key in ("processes", "rows"):
            if isinstance(data.get(key), list):
                return data[key]
    assert isinstance(data, list), f"net status --format json: {p.returncode} {p.stdout!r} {p.stderr!r}"
    return data


def _forms(secret: bytes) -> set[bytes]:
    """``secret`` as it could be written: raw, hex (both cases), base64 (both alphabets, with and without '=')."""
    out = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for enc in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        out |= {enc, enc.rstrip(b"=")}
    return {f for f in out if len(f) >= 16}


def _key_secrets(path: Path) -> set[bytes]:
    """What identifies a key file: its bytes, and for a PEM private key its DER and its private scalar."""
    data = path.read_bytes()
    found = _forms(data) | _forms(data.strip())
    if b"PRIVATE KEY" in data:
        key = serialization.load_pem_private_key(data, password=None)
        found |= _forms(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        # each full line of the PEM body (a key re-wrapped or cut out of its file still shows whole lines)
        # (leaving out a line that holds only public-key bytes: a CSR or certificate may show the same line)
        pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        found |= {line.strip() for line in data.splitlines() if len(line.strip()) >= 40 and b"-----" not in line
                  and base64.b64decode(line.strip())[1:-1] not in pub}
        if isinstance(key, ec.EllipticCurvePrivateKey):
            found |= _forms(key.private_numbers().private_value.to_bytes(32, "big"))
    return found


def _blobs_of_tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _blobs_of_bundle(path: Path) -> dict[str, bytes]:
    """Every member of a tar.gz, and the uncompressed archive itself."""
    out = {f"{path} (uncompressed)": gzip.decompress(path.read_bytes())}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[f"{path}:{m.name}"] = tar.extractfile(m).read()
    return out


def _where(secrets: set[bytes], blobs: dict[str, bytes]) -> list[str]:
    return sorted({name for name, blob in blobs.items() for s in secrets if s in blob})


def _csr(key, cn: str, uri: str | None, ip: str | None) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                   "qkdseg")]))
    san = ([x509.UniformResourceIdentifier(uri)] if uri else []) + (
        [x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)



def _node_with_wrong_address_certificate(d: dict) -> subprocess.CompletedProcess:
    """Node 3's directory (a copy) with a certificate of node 3 for the spare host's address, started in node 3's
    namespace: the docs say it refuses to start, in one line naming the certificate, the addresses it is for and
    the address it would serve."""
    src = d["dirs"]["3"]
    copy = d["work"] / "wrong-address-node-3"
    shutil.copytree(src, copy)
    key = serialization.load_pem_private_key((copy / "node.key").read_bytes(), password=None)
    ca_key = serialization.load_pem_private_key(d["ca_key"].read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((d["admin"] / "pki/ca.crt").read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node 3")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:qkdseg:node:3"),
                                                        x509.IPAddress(ipaddress.ip_address(d["spare_ip"]))]),
                           critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (copy / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    try:
        p = _q("node", "serve", str(copy), ns=d["ns"]["3"], timeout=30)
    except subprocess.TimeoutExpired as e:  # it served: not what the docs say
        p = subprocess.CompletedProcess(e.cmd, -9, e.stdout or "", (e.stderr or b"").decode() if isinstance(
            e.stderr, bytes) else (e.stderr or "") + " (still serving after the timeout: killed)")
    shutil.rmtree(copy, ignore_errors=True)
    return p




def _pids_in(obj) -> list[int]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in ([v] if k == "pid" and isinstance(v, int) else _pids_in(v))]
    if isinstance(obj, list):
        return [x for v in obj for x in _pids_in(v)]
    return []
