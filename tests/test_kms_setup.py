"""The key service's set-up and files: ``kms init``, ``kms.toml``, the PKI, the audit chain (no server)."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kms_helpers import QKDSEG, kms_init, set_config
from qkdseg.errors import InvalidRequest
from qkdseg.server.config import load_config
from qkdseg.server.audit import AUDIT_NAME
from qkdseg.server.store import Batch, Store
from qkdseg.server.storagekey import load_storage_key, make_storage_key
from qkdseg.server.directory import verify_audit


def run(*args):
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=120)


def test_init_writes_config_pki_and_private_files(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("SAE_A=0", "SAE_B=7", "x.y~z-1=4"), "--security-level", "0.8")
    cfg = load_config(d)
    assert cfg.saes == {"SAE_A": "0", "SAE_B": "7", "x.y~z-1": "4"} and cfg.security_level == 0.8
    pk = d / "pki"
    for name in ("ca.key", "server.key", "SAE_A.key", "SAE_B.key", "x.y~z-1.key"):
        assert stat.S_IMODE((pk / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((d / "storage.key").stat().st_mode) == 0o600
    token = (d / "dashboard.token").read_text().strip()
    assert stat.S_IMODE((d / "dashboard.token").stat().st_mode) == 0o600 and len(token) >= 32
    ca = x509.load_pem_x509_certificate((pk / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pk / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    client = x509.load_pem_x509_certificate((pk / "SAE_A.crt").read_bytes())
    assert "CN=SAE_A" in client.subject.rfc4514_string().split(",")
    assert client.issuer == ca.subject
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    client.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sae", "A=0"], "at least two"),
        (["--sae", "A=0", "--sae", "B/x=7"], "[A-Za-z0-9._~-]"),
        (["--sae", "A=0", "--sae", "A=7"], "given twice"),
        (["--sae", "A=0", "--sae", "B"], "SAE_ID=NODE"),
        (["--sae", "A=0", "--sae", "B=99"], "99"),
        (["--sae", "A=0", "--sae", "B=7", "--security-level", "1.5"], "security_level"),
        (["--sae", "A=0", "--sae", "B=7", "--key-size", "100"], "multiple of 8"),
        (["--sae", "A=0", "--sae", "B=7", "--algorithm", "nope"], "algorithm"),
    ],
)
def test_init_rejects_bad_input_in_one_line(tmp_path, args, needle):
    r = run("kms", "init", str(tmp_path / "svc"), "--network", "example", *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error:") and needle in lines[0]
    assert not (tmp_path / "svc" / "kms.toml").exists()


def test_init_refuses_to_overwrite_and_serve_names_bad_config(tmp_path):
    d = kms_init(tmp_path / "svc")
    r = run("kms", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7")
    assert r.returncode == 2 and "already exists" in r.stderr
    set_config(d, durability="sometimes")
    r = run("kms", "serve", str(d), "--port", "0")
    assert r.returncode == 2 and "durability" in r.stderr and "Traceback" not in r.stderr
    r = run("kms", "serve", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "kms init" in r.stderr
    (d / "kms.toml").write_text("network = \n")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        load_config(d)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dashboard-port", "0", "--dashboard-host", "0.0.0.0"], "--dashboard-public"),
        (["--dashboard-port", "70000"], "--dashboard-port 70000"),
    ],
)
def test_serve_refuses_a_bad_dashboard_in_one_line(tmp_path, args, needle):
    d = kms_init(tmp_path / "svc")
    r = run("kms", "serve", str(d), "--port", "0", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_public_dashboard_needs_a_private_token(tmp_path):
    from qkdseg.server.tls import read_dashboard_token

    d = kms_init(tmp_path / "svc")
    cfg = load_config(d)
    assert read_dashboard_token(cfg) == (d / "dashboard.token").read_text().strip()
    (d / "dashboard.token").chmod(0o644)
    with pytest.raises(InvalidRequest, match="chmod 600"):
        read_dashboard_token(cfg)
    (d / "dashboard.token").write_text("short\n")
    (d / "dashboard.token").chmod(0o600)
    with pytest.raises(InvalidRequest, match="at least 32"):
        read_dashboard_token(cfg)
    (d / "dashboard.token").unlink()
    r = run("kms", "serve", str(d), "--port", "0", "--dashboard-port", "0", "--dashboard-host", "0.0.0.0",
            "--dashboard-public")
    assert r.returncode == 2 and "dashboard.token: no such file" in r.stderr and "Traceback" not in r.stderr


def test_storage_key_must_be_private(tmp_path):
    key = tmp_path / "k"
    assert len(make_storage_key(key)) == 32 and len(load_storage_key(key)) == 32
    key.chmod(0o644)
    with pytest.raises(InvalidRequest, match="chmod 600"):
        load_storage_key(key)


AUDIT_KEY = bytes(range(32))


def _open(d) -> Store:
    if not (d / "storage.key").exists():
        make_storage_key(d / "storage.key")
    return Store(d, load_storage_key(d / "storage.key"), AUDIT_KEY)


def _store_with_records(d, n):
    store = _open(d)
    for i in range(n):
        store.commit(Batch(audit=[{"event": "issue", "i": i}]))
    store.close()


def test_audit_chain_detects_edit_removal_and_truncation(tmp_path):
    _store_with_records(tmp_path, 6)
    n, problems = verify_audit(tmp_path, AUDIT_KEY)
    assert n == 6 and problems == []
    (tmp_path / "audit.key").write_bytes(AUDIT_KEY)
    (tmp_path / "audit.key").chmod(0o600)
    r = run("kms", "audit", str(tmp_path), "--verify")
    assert r.returncode == 0 and "intact: 6 records" in r.stdout, r.stdout + r.stderr
    path = tmp_path / AUDIT_NAME
    good = path.read_text()
    lines = good.splitlines()
    # an edited line
    edited = json.loads(lines[2])
    edited["i"] = 99
    path.write_text("\n".join(lines[:2] + [json.dumps(edited, sort_keys=True, separators=(",", ":"))] + lines[3:]) + "\n")
    assert verify_audit(tmp_path, AUDIT_KEY)[1]
    r = run("kms", "audit", str(tmp_path), "--verify")
    assert r.returncode == 1 and "BROKEN" in r.stdout
    # a removed line
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    assert verify_audit(tmp_path, AUDIT_KEY)[1]
    # a removed last line: caught by the head kept in the database
    path.write_text("\n".join(lines[:-1]) + "\n")
    assert any("chain head" in p for p in verify_audit(tmp_path, AUDIT_KEY)[1])
    path.write_text(good)
    assert verify_audit(tmp_path, AUDIT_KEY)[1] == []


def test_committed_audit_records_missing_from_the_file_are_appended_at_start(tmp_path):
    _store_with_records(tmp_path, 3)
    store = _open(tmp_path)
    store._synced_at = float("inf")  # nothing synced: the records stay in the table too
    store.commit(Batch(audit=[{"event": "deliver"}]))
    store.db.close()  # a crash: no close(), and the file loses its last line
    store._lock.release()  # (as the crash would)
    path = tmp_path / AUDIT_NAME
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    _open(tmp_path).close()
    n, problems = verify_audit(tmp_path, AUDIT_KEY)
    assert n == 4 and problems == []
