"""What the key service checks before it serves (issue 20): one process per directory, the storage key,
the audit chain, the network, read-only and full disks, and the operator commands (init, sae, rotate).

Each test makes its own directory; servers are real ``qkdseg kms serve`` processes (kms_helpers.Server).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess

import pytest

from kms_helpers import QKDSEG, Server, kms_init
from qkdseg.errors import InvalidRequest
from qkdseg.server.audit import load_audit_key
from qkdseg.server.audit import AUDIT_NAME
from qkdseg.server.store import Batch, KeyRow, Store
from qkdseg.server.storagekey import load_storage_key, make_storage_key
from qkdseg.server.directory import verify_audit


def run(*args, timeout=120):
    return subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=timeout)


def run_in(*args):
    """``qkdseg ARGS`` in this process (no interpreter start): an object with returncode, stdout and stderr."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from qkdseg.cli import app

    r = CliRunner().invoke(app, list(args), prog_name="qkdseg")
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr, r.stdout)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error:"), r.stderr
    return lines[0]


def _store(d, key=None, **kw) -> Store:
    return Store(d, key if key is not None else load_storage_key(d / "storage.key"), load_audit_key(d / "audit.key"),
                 **kw)


def _with_sealed_row(d) -> None:
    store = _store(d)
    try:
        row = KeyRow("00000000-0000-4000-8000-000000000001", "issued", "A", "B", 256, 0.9, b"", 1.0, 9e9, "{}")
        store.seal(row, b"\x01" * 32)
        store.commit(Batch(put_keys=[row.values()], audit=[{"event": "issue", "key_ids": [row.key_id]}]))
    finally:
        store.close()


# -- 1. one server per directory ------------------------------------------------------------------
def test_a_second_server_on_one_directory_exits_2_naming_the_pid(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    server = Server(d).start()
    try:
        r = run("kms", "serve", str(d), "--port", "0")
        line = one_line_error(r)
        assert f"pid {server.proc.pid}" in line, line
        server.kill9()  # the lock dies with the process: no stale lock
        server.start()
    finally:
        server.stop()
    with pytest.raises(InvalidRequest, match="pid"):
        a = _store(d)
        try:
            _store(d)
        finally:
            a.close()


# -- 2. the storage key -------------------------------------------------------------------------------
def test_a_missing_storage_key_refuses_to_start_and_is_not_replaced(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    (d / "storage.key").unlink()
    line = one_line_error(run_in("kms", "serve", str(d), "--port", "0"))
    assert "storage.key" in line and "kms init" in line, line
    assert not (d / "storage.key").exists()


def test_a_wrong_storage_key_refuses_to_start(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    (d / "storage.key").unlink()
    make_storage_key(d / "storage.key")
    line = one_line_error(run_in("kms", "serve", str(d), "--port", "0"))
    assert "does not match" in line, line
    with pytest.raises(InvalidRequest, match="does not match"):
        _store(d)


def test_only_init_makes_a_storage_key(tmp_path):
    make_storage_key(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    with pytest.raises(InvalidRequest, match="exists"):
        make_storage_key(tmp_path / "k")
    with pytest.raises(InvalidRequest, match="no such file"):
        load_storage_key(tmp_path / "nope")


def test_rotate_storage_key_reseals_every_row_and_keeps_the_audit_chain(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _with_sealed_row(d)
    old = (d / "storage.key").read_bytes()
    r = run_in("kms", "rotate-storage-key", str(d))
    assert r.returncode == 0, r.stderr
    new = (d / "storage.key").read_bytes()
    assert new != old and len(new) == 32 and stat.S_IMODE((d / "storage.key").stat().st_mode) == 0o600
    store = _store(d)
    try:
        (row,) = store.load_keys()
        assert store.open(row) == b"\x01" * 32
    finally:
        store.close()
    with pytest.raises(InvalidRequest, match="does not match"):
        _store(d, old)
    n, problems = verify_audit(d)
    assert problems == [] and n >= 2  # the rotation is audited


# -- 10. the audit chain ----------------------------------------------------------------------------
def _records(d, n):
    store = _store(d)
    try:
        for i in range(n):
            store.commit(Batch(audit=[{"event": "issue", "i": i}]))
    finally:
        store.close()


def _rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_an_edit_on_line_1_is_reported_as_line_1(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 4)
    path = d / AUDIT_NAME
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["i"] = 42
    _rewrite(path, [json.dumps(rec, sort_keys=True, separators=(",", ":"))] + lines[1:])
    problems = verify_audit(d)[1]
    assert problems and problems[0].startswith(f"{d / 'audit.jsonl'}: line 1"), problems  # its file and line


def test_the_chain_is_keyed_a_recomputed_sha256_chain_is_a_forgery(tmp_path):
    """The attack of issue 20: rewrite a line, recompute every later hash and the database's head."""
    import hashlib

    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 4)
    path = d / AUDIT_NAME
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["i"] = 99
    prev, out = recs[0]["prev"], []
    for i, rec in enumerate(recs):
        if i:
            rec["prev"] = prev
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(line.encode()).hexdigest()
        out.append(line)
    _rewrite(path, out)
    db = sqlite3.connect(d / "kms.sqlite3")
    db.execute("UPDATE meta SET value=? WHERE name='audit_head'", (f"{recs[-1]['seq']}:{prev}",))
    db.commit()
    db.close()
    problems = verify_audit(d)[1]
    assert any(p.split(": ", 1)[1].startswith("line 2") for p in problems), problems
    r = run_in("kms", "audit", str(d), "--verify")
    assert r.returncode == 1 and "BROKEN" in r.stdout


def test_a_broken_chain_refuses_to_start_unless_accepted_which_is_audited(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    _records(d, 3)
    path = d / AUDIT_NAME
    lines = path.read_text().splitlines()
    _rewrite(path, lines[:1] + lines[2:])  # a removed line
    line = one_line_error(run_in("kms", "serve", str(d), "--port", "0"))
    assert "audit" in line and "--accept-broken-audit" in line, line
    server = Server(d, ("--accept-broken-audit",)).start()
    try:
        assert server.client("A").post("B/enc_keys", {}).status_code == 200
    finally:
        assert server.stop() == 0
    events = [json.loads(x)["event"] for x in path.read_text().splitlines()]
    assert "audit_broken_accepted" in events
    # accepted: the next start needs no flag, and audit --verify reports the accepted problem
    server = Server(d).start()
    server.stop()
    r = run_in("kms", "audit", str(d), "--verify")
    assert r.returncode == 0 and "accepted" in r.stdout, r.stdout


def test_a_torn_last_line_is_repaired_from_the_store(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    _records(d, 3)
    store = _store(d)
    store._synced_at = float("inf")  # nothing synced: the records stay in the table too
    store.commit(Batch(audit=[{"event": "deliver", "note": "x" * 50}]))
    store.db.close()  # a crash: no close()
    store._lock.release()  # (the crash would have released it)
    path = d / AUDIT_NAME
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last write was cut
    _store(d).close()
    n, problems = verify_audit(d)
    assert n == 4 and problems == [], problems


def test_audit_key_is_private_and_separate(tmp_path):
    d = kms_init(tmp_path / "svc", "example", ("A=0", "B=7"))
    for name in ("audit.key", "storage.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert (d / "audit.key").read_bytes() != (d / "storage.key").read_bytes()
    _records(d, 2)
    for name in (AUDIT_NAME, "kms.sqlite3"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name


# -- 11. read-only and full disks ---------------------------------------------------------------------------
def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (2 MiB) at tmp_path/fs, unmounted at the end; skipped where this process cannot mount."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)):
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_read_only_directory_gives_one_line_and_audit_still_reads_it(tmpfs):
    d = kms_init(tmpfs / "svc", "example", ("A=0", "B=7"))
    _records(d, 3)
    assert _mount("-o", "remount,ro", str(tmpfs))
    line = one_line_error(run_in("kms", "serve", str(d), "--port", "0"))
    assert "Read-only" in line or "read-only" in line, line
    r = run_in("kms", "audit", str(d))
    assert r.returncode == 0 and "intact: 3 records" in r.stdout, r.stdout + r.stderr


def test_a_full_disk_gives_the_same_503_and_a_clean_stop(tmpfs):
    d = kms_init(tmpfs / "svc", "example", ("A=0", "B=7"), "--security-level", "0.5")
    server = Server(d).start()
    try:
        a = server.client("A")
        assert a.post("B/enc_keys", {}).status_code == 200
        with open(tmpfs / "filler", "wb") as fh:  # fill the disk
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        answers = [a.post("B/enc_keys", {"number": 4}) for _ in range(3)]
    finally:
        rc = server.stop()
    log = server.log_path.read_text() if server.log_path.exists() else ""
    assert [r.status_code for r in answers] == [503, 503, 503], [r.text for r in answers]
    assert len({r.json()["message"] for r in answers}) == 1, [r.text for r in answers]
    assert rc == 0 and "stopped" in log and "cannot rollback" not in log and "Traceback" not in log, log[-3000:]


# -- in-process CLI (no interpreter start per call) ---------------------------------------------------------
def cli(*args):
    """``qkdseg ARGS`` in this process: (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from qkdseg.cli import app

    r = CliRunner().invoke(app, list(args), prog_name="qkdseg")
    return r.exit_code, r.stdout, r.stderr


def init(d, *extra, saes=("A=0", "B=7")):
    args = ["kms", "init", str(d), "--network", "example"]
    for s in saes:
        args += ["--sae", s]
    return cli(*args, *extra)


# -- 8. init --force keeps what is deployed -------------------------------------------------------------------
def test_init_force_rewrites_kms_toml_only_and_new_pki_is_explicit(tmp_path):
    d = tmp_path / "svc"
    assert init(d)[0] == 0
    kept = {p: p.read_bytes() for p in [d / "pki" / "ca.crt", d / "pki" / "A.crt", d / "pki" / "server.crt",
                                        d / "dashboard.token", d / "storage.key", d / "audit.key"]}
    code, out, err = init(d, "--force", "--security-level", "0.5")
    assert code == 0, err
    assert all(p.read_bytes() == v for p, v in kept.items())
    from qkdseg.server.config import load_config

    assert load_config(d).security_level == 0.5
    code, out, err = init(d, "--force", "--new-pki")
    assert code == 0, err
    assert (d / "pki" / "ca.crt").read_bytes() != kept[d / "pki" / "ca.crt"]
    assert (d / "dashboard.token").read_bytes() == kept[d / "dashboard.token"]
    assert (d / "storage.key").read_bytes() == kept[d / "storage.key"]


# -- 9. SAEs and certificates -----------------------------------------------------------------------------------
def test_sae_add_remove_cert_and_a_ca_key_kept_off_the_server(tmp_path):
    from cryptography import x509

    from qkdseg.server.config import load_config

    d, off = tmp_path / "svc", tmp_path / "offline" / "ca.key"
    off.parent.mkdir()
    assert init(d, "--ca-key-out", str(off))[0] == 0
    assert not (d / "pki" / "ca.key").exists() and stat.S_IMODE(off.stat().st_mode) == 0o600
    code, out, err = cli("kms", "sae", "add", str(d), "C=4")
    assert code == 2 and "--ca-key" in err and len(err.strip().splitlines()) == 1, err
    assert "C" not in load_config(d).saes  # nothing half-done
    code, out, err = cli("kms", "sae", "add", str(d), "C=4", "--ca-key", str(off))
    assert code == 0, err
    assert load_config(d).saes["C"] == "4"
    ca = x509.load_pem_x509_certificate((d / "pki" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "pki" / "C.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    old = (d / "pki" / "C.crt").read_bytes()
    code, out, err = cli("kms", "sae", "cert", str(d), "C", "--days", "30", "--ca-key", str(off))
    assert code == 0, err
    new = x509.load_pem_x509_certificate((d / "pki" / "C.crt").read_bytes())
    assert (d / "pki" / "C.crt").read_bytes() != old
    assert (new.not_valid_after_utc - new.not_valid_before_utc).days == 30
    assert cli("kms", "sae", "remove", str(d), "C")[0] == 0
    assert "C" not in load_config(d).saes
    code, out, err = cli("kms", "sae", "remove", str(d), "B")  # one SAE would be left
    assert code == 2 and "at least two" in err
    code, out, err = cli("kms", "sae", "add", str(d), "D=99", "--ca-key", str(off))
    assert code == 2 and "99" in err


# -- 12. a changed network ----------------------------------------------------------------------------------
def test_links_are_matched_by_their_ends_and_every_change_is_reported(tmp_path):
    import asyncio

    import networkx as nx

    import qkdseg
    from qkdseg.server.config import KmsConfig, write_config
    from qkdseg.kms.server import open_service
    from qkdseg.server.etsi import Caller
    from qkdseg.server.storagekey import init_keys

    g = nx.Graph(qkdseg.example_network().graph)
    net = tmp_path / "net.json"
    qkdseg.write_network(qkdseg.Network(g), net)
    d = tmp_path / "svc"
    d.mkdir()
    # SAEs at nodes 4 and 7: the route uses links (4,8), (4,9), (7,8), (7,9), the last ones of the file
    cfg = KmsConfig(network=str(net), saes={"A": "4", "B": "7"}, security_level=0.5, _dir=d).check()
    write_config(d, cfg)
    init_keys(cfg)
    svc = open_service(d)
    try:
        asyncio.run(svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(1, 256, None, None, None)))
        consumed = {frozenset((u, v)): c for u, v, c, _, _ in svc.store.load_links().values()}
    finally:
        svc.close()
    assert set(consumed) == {frozenset(e) for e in (("4", "8"), ("4", "9"), ("7", "8"), ("7", "9"))}
    g.remove_edge(0, 1)  # unused, and link 0: every used link's index shifts
    g.nodes[5]["p"] = 0.5
    qkdseg.write_network(qkdseg.Network(g), net)
    svc = open_service(d)
    try:
        text = "\n".join(svc.changes)
        assert "link (0, 1) removed" in text and "node 5: p 0.8 -> 0.5" in text, text
        again = {frozenset((u, w)): c for u, w, c, _, _ in svc.store.load_links().values()}
        assert again == consumed  # the offsets follow their links
        asyncio.run(svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(1, 256, None, None, None)))
    finally:
        svc.close()
    g.remove_edge(4, 8)  # a used link: its offset would be lost
    qkdseg.write_network(qkdseg.Network(g), net)
    with pytest.raises(Exception, match=r"link \(4, 8\) has consumed"):
        open_service(d)


# -- 13. small things --------------------------------------------------------------------------------------
def test_init_small_things(tmp_path):
    code, out, err = init(tmp_path / "a", "--kme-id", "A")
    assert code == 2 and "--kme-id" in err and "SAE id" in err, err
    code, out, err = init(tmp_path / "b", "--min-key-size", "12")
    assert code == 2 and "--min-key-size" in err and "kms.toml:" not in err, err
    code, out, err = init(tmp_path / "c", "--durability", "sometimes")
    assert code == 2 and "--durability" in err, err
    code, out, err = init(tmp_path / "d", "--max-key-per-request", "4", "--default-rate", "500",
                          "--max-key-size", "1024", "--durability", "normal")
    assert code == 0, err
    from qkdseg.server.config import load_config

    cfg = load_config(tmp_path / "d")
    assert (cfg.max_key_per_request, cfg.default_rate_bps, cfg.max_key_size, cfg.durability) == (4, 500, 1024, "normal")
    # the default level 0.9 can never be met between nodes 0 and 7 of the example (best route 0.884736)
    assert "0.884736" in err and "warning" in err, err
    code, out, err = cli("kms", "--help")
    assert code == 0 and "demo" in out.split("Commands")[0] + out
    code, out, err = cli("kms", "serve", "--help")
    assert "--log-level" in out


def test_a_level_that_can_never_be_met_says_so(tmp_path):
    import asyncio

    from qkdseg.kms.server import open_service
    from qkdseg.server.etsi import Caller, KmsError

    d = tmp_path / "svc"
    assert init(d)[0] == 0  # default level 0.9
    svc = open_service(d)
    try:
        with pytest.raises(KmsError, match="can never be met") as err:
            asyncio.run(svc.enc_keys(Caller("A", "a"), "B", svc.parse_key_request(1, 256, None, None, None)))
        assert err.value.status == 503 and "0.884736" in err.value.message
    finally:
        svc.close()
