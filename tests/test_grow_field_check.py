"""Independent field check of issue 37 ("Grow and shrink a running network").

Written from docs/network.md ("Growing and shrinking a running network" and the sections it points to: "Three
commands to a running network", "What `net init` writes", the dashboard's ``route_paths`` of "Threat model"),
docs/kms.md ("Dashboard", the ETSI 014 routes) and ``qkdseg net ... --help`` alone; it does not read the
implementation or its tests. On loopback, one running ``example`` network (``net init`` as the quick start, ``net up
--detach --dashboard-port``), changed in the order an operator would:

1. every process's pid recorded (``net status --format json``);
2. ``net add-node --id 10 --link 0 --link 7``, ``net sae add F=10``, ``net up`` (starting only node 10); keys
   delivered over ETSI GS QKD 014 (httpx, the SAEs' certificates of ``DIR/pki``) A -> F and F -> B, master's and
   slave's keys identical, the dashboard's ``issue`` rows showing routes over the new links 0-10 and 10-7;
3. ``net add-link 0 7``; A -> B delivered over it (``route_paths`` has a path with the hop 0-7);
4. ``net remove-link 0 7`` while five clients request keys (1 to 32 per request, about 10 requests a second each):
   every key a master got is fetched identical by its slave, every failed request is a refusal (400/503) with no key
   in it, the dashboard's ``issue`` rows count exactly the keys the masters got; some of them were routed over 0-7
   before the command (a live route), none issued after it returned; the next requests are routed around 0-7;
   both ends' ``node.json`` and ``links.sealed.json``
   no longer hold the link, and each end's ``audit.jsonl`` has ``"event": "link removed"`` for it;
5. every process but node 10 has its old pid, all healthy, one ``topology_version`` everywhere (the last
   command's);
6. ``DIR/pki/admin.crt`` of the role ``urn:qkdseg:admin``, client authentication only;
   ``POST /control/v1/membership`` with a node's, the controller's or an SAE's certificate: 403, problem detail
   naming the admin role, audited ``membership refused``.

The network is stopped with ``net down`` by the module fixture, also on failure. Timings are printed (``-s``).
Run: ``python -m pytest tests/test_grow_field_check.py -v -s -p no:cacheprovider`` (about a minute).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portblock import port  # noqa: E402
from timing import scaled  # noqa: E402

_exe = Path(sys.executable).parent / "qkdseg"
QKDSEG = str(_exe) if _exe.exists() else (shutil.which("qkdseg") or "qkdseg")
NEW_HOST = "127.0.0.20"
TIMES: dict[str, float] = {}


def _q(*args, check=True, timeout=300):
    t0 = time.monotonic()
    p = subprocess.run([QKDSEG, *map(str, args)], capture_output=True, text=True, timeout=scaled(timeout))
    name = " ".join(map(str, args[:2]))
    TIMES[name if name not in TIMES else f"{name} ({sum(k.startswith(name) for k in TIMES) + 1})"] = round(
        time.monotonic() - t0, 2)
    if check and p.returncode != 0:
        raise AssertionError(f"qkdseg {' '.join(map(str, args))}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _status(d):
    return {(r["node"] if r["node"] is not None else "controller"): r
            for r in json.loads(_q("net", "status", d, "--format", "json").stdout)}


def _ctx(d, stem):
    c = ssl.create_default_context(cafile=str(d / "pki" / "ca.crt"))
    c.load_cert_chain(f"{stem}.crt", f"{stem}.key")
    return c


class Net:
    def __init__(self, d: Path, p: int, dash: int):
        self.d, self.p, self.dash = d, p, dash
        self.clients: dict[str, httpx.Client] = {}

    def sae(self, name) -> httpx.Client:
        if name not in self.clients:
            self.clients[name] = httpx.Client(verify=_ctx(self.d, self.d / "pki" / name), timeout=scaled(60))
        return self.clients[name]

    def enc(self, master, mnode_addr, slave, number=1, client=None):
        c = client or self.sae(master)
        return c.post(f"https://{mnode_addr}/api/v1/keys/{slave}/enc_keys", json={"number": number})

    def dec(self, slave, snode_addr, master, ids, client=None):
        c = client or self.sae(slave)
        return c.post(f"https://{snode_addr}/api/v1/keys/{master}/dec_keys",
                      json={"key_IDs": [{"key_ID": i} for i in ids]})

    def deliver(self, master, maddr, slave, saddr, number=2):
        r = self.enc(master, maddr, slave, number)
        assert r.status_code == 200, f"enc_keys {master}->{slave} at {maddr}: {r.status_code} {r.text}"
        keys = r.json()["keys"]
        r2 = self.dec(slave, saddr, master, [k["key_ID"] for k in keys])
        assert r2.status_code == 200, f"dec_keys {slave}<-{master} at {saddr}: {r2.status_code} {r2.text}"
        assert r2.json()["keys"] == keys, "the slave's keys differ from the master's"
        return keys

    def rows(self, after=0):
        r = httpx.get(f"http://127.0.0.1:{self.dash}/dashboard/api/deliveries", params={"limit": 1000, "after": after})
        r.raise_for_status()
        return r.json()

    def issue_row(self, keys):
        """The dashboard's ``issue`` row of these keys (it arrives with the master's node's next report)."""
        short = [k["key_ID"][:8] for k in keys]
        deadline = time.monotonic() + scaled(15)
        while time.monotonic() < deadline:
            for row in self.rows()["rows"]:
                if row["kind"] == "issue" and row["key_ids"] == short:
                    return row
            time.sleep(0.3)
        raise AssertionError(f"no dashboard issue row for keys {short}")


def _hops(row):
    """Every hop (unordered pair of node ids) of every path of an issue row's route."""
    out = set()
    for segment in row["route_paths"]:
        for path in segment:
            out |= {frozenset(h) for h in zip(path, path[1:])}
    return out


@pytest.fixture(scope="module")
def net():
    work = Path(tempfile.mkdtemp(prefix="q37chk-"))
    d = work / "net"
    hosts = tuple(f"127.0.0.{i}" for i in range(1, 12)) + (NEW_HOST,)
    p, dash = port(hosts), port(("127.0.0.1",))
    n = Net(d, p, dash)
    _q("net", "init", d, "--network", "example", "--sae", "A=0", "--sae", "B=7", "--sae", "C=4",
       "--security-level", "0.5", "--port", p)
    try:
        _q("net", "up", d, "--detach", "--dashboard-port", dash)
        n.before = _status(d)
        yield n
    finally:
        for c in n.clients.values():
            c.close()
        p_down = _q("net", "down", d, check=False)
        print("\ntimings (s):", json.dumps(TIMES))
        if p_down.returncode != 0:
            print("net down:", p_down.stdout, p_down.stderr)
        shutil.rmtree(work, ignore_errors=True)


def _addr(n, node):
    return f"127.0.0.{2 + int(node)}:{n.p}" if node != "10" else f"{NEW_HOST}:{n.p}"


def _membership(n, cmd, *rest):
    """One documented membership command with ``--format json``: its answer."""
    p = _q("net", cmd, n.d, *rest, "--format", "json")
    return json.loads(p.stdout)


def test_add_node_with_sae_delivers_through_new_links(net):
    n = net
    assert all(r["healthy"] and r["pid"] for r in n.before.values()), n.before
    v0 = n.before["controller"]["topology_version"]
    out = _membership(n, "add-node", "--id", "10", "--address", f"{NEW_HOST}:{n.p}", "--link", "0", "--link", "7")
    assert out["topology_version"] == v0 + 1, out
    assert set(out["applied"]) == set(n.before), out  # every running process took it
    out = json.loads(_q("net", "sae", "add", n.d, "F=10", "--format", "json").stdout)
    assert out["topology_version"] == v0 + 2, out
    assert (n.d / "pki" / "F.crt").exists() and (n.d / "pki" / "F.key").exists()
    _q("net", "up", n.d, "--detach")
    st = _status(n.d)
    assert st["10"]["healthy"] and st["10"]["pid"], st["10"]
    for name, r in n.before.items():
        assert st[name]["pid"] == r["pid"], f"{name}: pid {r['pid']} -> {st[name]['pid']} after net up"
    # the controller plans through node 10 once its first link report says it is ready (docs): allow a few reports
    deadline = time.monotonic() + scaled(30)
    while True:
        r = n.enc("A", _addr(n, "0"), "F", 2)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200, f"A->F: {r.status_code} {r.text}"
    keys = r.json()["keys"]
    r2 = n.dec("F", _addr(n, "10"), "A", [k["key_ID"] for k in keys])
    assert r2.status_code == 200 and r2.json()["keys"] == keys, r2.text
    row = n.issue_row(keys)
    assert frozenset(("0", "10")) in _hops(row), row["route_paths"]
    keys = n.deliver("F", _addr(n, "10"), "B", _addr(n, "7"))
    row = n.issue_row(keys)
    assert frozenset(("10", "7")) in _hops(row), row["route_paths"]


def test_add_link_delivers_through_it(net):
    n = net
    out = _membership(n, "add-link", "0", "7")
    assert not out["not_applied"], out
    for _ in range(3):  # SMR spreads a key over several paths: one of them over the new direct link
        keys = n.deliver("A", _addr(n, "0"), "B", _addr(n, "7"))
        if frozenset(("0", "7")) in _hops(n.issue_row(keys)):
            return
    raise AssertionError(f"no route over the new link 0-7: {n.issue_row(keys)['route_paths']}")


def test_remove_link_under_traffic_loses_no_key(net):
    n = net
    # (master, its node, slave, its node, keys per request): the big requests relay longest, so some are more
    # likely to be planned over 0-7 before the removal and read its key after it
    pairs = [("A", "0", "B", "7", 1), ("A", "0", "B", "7", 32), ("B", "7", "A", "0", 8), ("C", "4", "B", "7", 1),
             ("A", "0", "C", "4", 1)]
    seq0 = n.rows()["last_seq"]
    got: list = []  # (master, slave, keys)
    refused: list = []  # (master, slave, status, body)
    errors: list = []
    stop = threading.Event()
    removed_at: list = []

    def client(m, mn, s, sn, number):
        with httpx.Client(verify=_ctx(n.d, n.d / "pki" / m), timeout=scaled(60)) as c:
            while not stop.is_set():
                try:
                    r = n.enc(m, _addr(n, mn), s, number, client=c)
                except httpx.HTTPError as e:  # a transport error is not a clean refusal
                    errors.append(f"{m}->{s}: {e!r}")
                    continue
                if r.status_code == 200:
                    got.append((m, s, sn, r.json()["keys"]))
                else:
                    refused.append((m, s, r.status_code, r.text))
                stop.wait(0.1)  # about 10 requests a second per client: the dashboard's rows stay under its 1000

    threads = [threading.Thread(target=client, args=pr) for pr in pairs]
    for t in threads:
        t.start()
    try:
        time.sleep(scaled(2))
        t0 = time.monotonic()
        out = _membership(n, "remove-link", "0", "7")
        removed_at.append(time.monotonic() - t0)
        removed_wall = time.time()
        time.sleep(scaled(2))
    finally:
        stop.set()
        for t in threads:
            t.join(scaled(120))
    assert not out["not_applied"], out
    assert not errors, errors[:5]
    assert got, "no key was delivered under traffic"
    # nothing issued beyond what the masters got: the issue rows since seq0 count exactly the keys handed out
    handed = {}
    for m, s, _sn, keys in got:
        handed[(m, s)] = handed.get((m, s), 0) + len(keys)
    deadline = time.monotonic() + scaled(15)
    while True:
        issued = {}
        rows = n.rows(seq0)["rows"]
        assert len(rows) < 1000, "more rows than one page of the dashboard: cannot count them all"
        for row in rows:
            if row["kind"] == "issue":
                issued[(row["master"], row["slave"])] = issued.get((row["master"], row["slave"]), 0) + row["keys"]
        if issued == handed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert issued == handed, f"issued (dashboard) {issued} != handed to masters {handed}"
    # the link was on live routes before the command, and no key issued after it returned went over it
    before = [r for r in rows if r["kind"] == "issue" and frozenset(("0", "7")) in _hops(r)]
    assert before, "no request under traffic was routed over 0-7: the removal was not of a live route"
    after = [r for r in before if r["time"] > removed_wall]
    assert not after, f"{len(after)} keys issued over 0-7 after remove-link returned: {after[0]}"
    for m, s, sn, keys in got:  # no key lost: every key a master got, its slave fetches identical
        r = n.dec(s, _addr(n, sn), m, [k["key_ID"] for k in keys])
        assert r.status_code == 200 and r.json()["keys"] == keys, f"{m}->{s}: {r.status_code} {r.text}"
    for m, s, status, body in refused:  # a clean refusal: an error status with a JSON message, no key
        assert status in (400, 503), (m, s, status, body)
        doc = json.loads(body)
        assert "keys" not in doc and doc.get("message"), body
    # later requests are planned around the removed link
    for _ in range(3):
        keys = n.deliver("A", _addr(n, "0"), "B", _addr(n, "7"))
        assert frozenset(("0", "7")) not in _hops(n.issue_row(keys))
    # its remaining key destroyed at both ends, audited
    dirs = json.loads((n.d / "nodes.json").read_text())
    for end in ("0", "7"):
        nd = n.d / "nodes" / dirs[end]
        links = json.loads((nd / "node.json").read_text())["links"]
        assert [0, 7] not in [sorted(x["link"]) for x in links], links
        assert "[0,7]" not in json.loads((nd / "links.sealed.json").read_text())
        events = [json.loads(line) for line in (nd / "audit.jsonl").read_text().splitlines() if line.strip()]
        assert any(e.get("event") == "link removed" and e.get("link") == "[0,7]" for e in events), end
    print(f"\nremove-link under traffic: {len(got)} requests answered ({sum(map(len, (g[3] for g in got)))} keys, "
          f"each fetched identical), {len(refused)} refused "
          f"({sorted({r[2] for r in refused})}), command {removed_at[0]:.2f} s from the shell, the change "
          f"{out['seconds']} s (telling the processes {out['processes_s']} s)")


def test_every_other_process_kept_its_pid_and_one_topology_version(net):
    n = net
    st = _status(n.d)
    assert set(st) == set(n.before) | {"10"}
    for name, r in n.before.items():
        assert st[name]["pid"] == r["pid"], f"{name}: pid {r['pid']} -> {st[name]['pid']}"
    assert all(r["healthy"] for r in st.values()), st
    versions = {name: r["topology_version"] for name, r in st.items()}
    assert len(set(versions.values())) == 1, versions
    # init, add-node, sae add, add-link, remove-link: four changes
    assert set(versions.values()) == {n.before["controller"]["topology_version"] + 4}, versions


@pytest.mark.parametrize("who", ["node", "controller", "sae"])
def test_membership_change_without_admin_role_is_403(net, who):
    n = net
    stem = {"node": n.d / "nodes" / json.loads((n.d / "nodes.json").read_text())["3"] / "node",
            "controller": n.d / "controller" / "controller", "sae": n.d / "pki" / "A"}[who]
    targets = {"controller": f"127.0.0.1:{n.p}", "0": _addr(n, "0")}
    for where, addr in targets.items():
        r = httpx.post(f"https://{addr}/control/v1/membership", json={}, verify=_ctx(n.d, stem),
                       timeout=scaled(30))
        assert r.status_code == 403, (where, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), r.headers
        assert "admin role" in r.json()["detail"], r.text
        audit = n.d / ("controller" if where == "controller" else f"nodes/{where}") / "audit.jsonl"
        deadline = time.monotonic() + scaled(10)
        while not any(json.loads(x).get("event") == "membership refused" and who in json.loads(x).get("outcome", "")
                      for x in audit.read_text().splitlines() if x.strip()):
            assert time.monotonic() < deadline, f"no 'membership refused' audit record at {where} for {who}"
            time.sleep(0.3)


def test_admin_certificate_is_as_documented(net):
    """``DIR/pki/admin.crt``: role ``urn:qkdseg:admin`` (a SAN URI), client authentication only."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = x509.load_pem_x509_certificate((net.d / "pki" / "admin.crt").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert "urn:qkdseg:admin" in uris, uris
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH], eku
    assert (net.d / "pki" / "admin.key").stat().st_mode & 0o077 == 0
