"""The replicated controller on etcd, network faults and chaos (docs/network.md, "Faults survived").

One network for the module: the example network (10 nodes) started with
``net up --controllers 3 --etcd 3 --faults --detach`` (three etcd members on
their own loopback ports, three controllers, a fault proxy on every link),
stopped with ``net down`` also when a test fails. The tests skip, saying
why, only where etcd is not installed (``make test`` installs Debian's
``etcd-server``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import portblock

from test_net import Net, _free_port, _run
from timing import scaled

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd is not installed ('make etcd' installs Debian's etcd-server)")

SAES = ("A=0", "B=7", "C=4")
# each request another key size, so that no spare key of an earlier relay serves it: a plan (the controller)
# and a relay every time
_SIZES = itertools.cycle(range(264, 4096, 8))
TTL = 3  # QKDSEG_LEASE_TTL_S


class Cluster(Net):
    def rows(self) -> list[dict]:
        r = _run("net", "status", str(self.dir), "--format", "json", env=self.env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def procs(self) -> dict:
        from qkdseg.net.procs import processes

        return {p["name"]: p for p in processes(self.dir)}

    def health(self, name: str) -> dict | None:
        import httpx

        from qkdseg.net.wire import client_context

        c = self.dir / "controller"
        ctx = client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
        try:
            with httpx.Client(verify=ctx, timeout=1.0) as cl:
                return cl.get(f"https://{self.procs()[name]['address']}/health").json()
        except Exception:  # noqa: BLE001
            return None

    def deliver_retrying(self, *args, limit: float = 30.0):
        """``deliver``, again after a 503 (a node that asked a stopped controller asks the next one next time)."""
        deadline = time.monotonic() + limit
        while True:
            try:
                return self.deliver(*args)
            except (AssertionError, OSError):  # a 503, or the SAE's own read timeout (requests' are OSErrors)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def leader(self, role: str = "controller") -> dict:
        leaders = [r for r in self.rows() if r["role"] == role and r["leader"]]
        assert len(leaders) == 1, leaders
        return leaders[0]

    def wait_leader(self, exclude: str | None, limit: float) -> tuple[str, float]:
        """The controller that leads next (not ``exclude``) and when it said so (monotonic)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for name, p in self.procs().items():
                if p["role"] == "controller" and name != exclude:
                    h = self.health(name)
                    if h and h.get("leader"):
                        return name, time.monotonic()
            time.sleep(0.1)
        raise AssertionError(f"no controller led within {limit} s")

    def start(self, name: str) -> None:
        from qkdseg.net.procs import health, start_one

        p = self.procs()[name]
        proc = start_one(self.dir, p, env=self.env)
        pids = json.loads((self.dir / "run" / "pids.json").read_text())
        pids[name] = proc.pid
        (self.dir / "run" / "pids.json").write_text(json.dumps(pids))
        deadline = time.monotonic() + scaled(90)
        while not health(self.dir, [p], timeout=1.0)[name]:
            assert time.monotonic() < deadline and proc.poll() is None, f"{name} did not start"
            time.sleep(0.2)

    def etcd(self):
        from qkdseg.net.cluster import load, store_spec
        from qkdseg.net.replica import Etcd, parse_store

        return Etcd(parse_store(store_spec(load(self.dir))))

    def state(self) -> dict:
        from qkdseg.net.replica import deployment_prefix, read_state

        return read_state(self.etcd(), deployment_prefix(self.dir / "controller"))

    def audit(self) -> list[dict]:
        from qkdseg.server.audit import check_lines
        from qkdseg.net.replica import audit_lines, deployment_prefix

        lines = audit_lines(self.etcd(), deployment_prefix(self.dir / "controller"))
        rep = check_lines(self.dir.joinpath("controller", "audit.key").read_bytes(), lines)
        assert not rep.problems, rep.problems[:3]  # one chain across every leader
        return [json.loads(x) for x in lines]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("replica")
    d = base / "deploy"
    port = _free_port()
    r = _run("net", "init", str(d), "--network", "example", *[a for s in SAES for a in ("--sae", s)],
             "--security-level", "0.5", "--port", str(port))
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "QKDSEG_RELAY_TIMEOUT_S": "6", "QKDSEG_REPORT_S": "1", "QKDSEG_LEASE_TTL_S": str(TTL)}
    r = _run("net", "up", str(d), "--detach", "--controllers", "3", "--etcd", "3", "--faults",
             "--port-range", portblock.port_range(), env=env, timeout=240)  # its etcd's, controllers', proxies' ports
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield Cluster(d, base, env)
    finally:
        _run("net", "down", str(d), timeout=120)


def _load(cluster, stop: threading.Event, out: list, workers: int = 3) -> list:
    """``workers`` threads delivering A -> B until ``stop``: (start, end, code) per request; keys checked; every
    request a relay (no spare keys), so that a delivery after a kill shows the controller planning again."""

    def one():
        m, s = cluster.client("A", "0"), cluster.client("B", "7")
        while not stop.is_set():
            t0 = time.monotonic()
            size = next(_SIZES)
            try:
                code, c = m.get_key("B", size=size)
            except Exception:  # noqa: BLE001 -- the SAE's own timeout
                code = -1
            if code == 200:
                code2, back = s.get_key_with_key_IDs("A", [c.keys[0].key_id])
                assert code2 == 200 and back.keys[0].key == c.keys[0].key  # never a wrong key
                cluster.issued.append(base64.b64decode(c.keys[0].key))
            else:
                assert code in (503, -1), (code, getattr(c, "message", c))
                time.sleep(0.1)
            out.append((t0, time.monotonic(), code))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def _consumed_by_nodes(cluster) -> dict[str, int]:
    """Per link ``[u,v]``: the bits consumed, from both ends' offsets (they must agree)."""
    offs = {n: cluster.offsets(n) for n in cluster.names}
    out = {}
    for n, o in offs.items():
        for (link, d), v in o.items():
            u, w = (str(x) for x in json.loads(link))
            sender, receiver = (u, w) if d == 0 else (w, u)
            assert offs[receiver].get((link, d), 0) <= offs[sender].get((link, d), 0), (link, d)
            out[link] = out.get(link, 0)
    for link in out:
        u = str(json.loads(link)[0])
        out[link] = 8 * (offs[u].get((link, 0), 0) + offs[u].get((link, 1), 0))
    return out


def _no_reservation_lost_or_doubled(cluster) -> None:
    """The nodes never used more than etcd says was reserved (a lost reservation would show), no plan is in the
    audit twice, and no node's report had to lower a level."""
    state = cluster.state()
    reserved = {json.dumps([int(u), int(v)], separators=(",", ":")): int(c) for u, v, c, *_ in state["links"].values()}
    used = _consumed_by_nodes(cluster)
    for link, bits in used.items():
        assert bits <= reserved.get(link, 0), (link, bits, reserved.get(link))
    audit = cluster.audit()
    plans = [r["request_id"] for r in audit if r["event"] == "plan"]
    assert len(plans) == len(set(plans))
    assert not [r for r in audit if r["event"] == "levels reported"]
    return used, reserved


# -- set-up and status --------------------------------------------------------------------------------------
def test_status_lists_etcd_members_and_controllers_with_one_leader_each(cluster):
    rows = cluster.rows()
    by_role = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    assert len(by_role["etcd"]) == 3 and len(by_role["controller"]) == 3 and len(by_role["node"]) == 10
    for role in ("etcd", "controller"):
        assert all(r["healthy"] and r["pid"] for r in by_role[role]), by_role[role]
        assert sum(r["leader"] for r in by_role[role]) == 1
    for r in by_role["etcd"]:  # their own loopback ports, never etcd's defaults
        assert r["address"].startswith("127.0.0.1:") and int(r["address"].rsplit(":", 1)[1]) not in (2379, 2380)
    assert all(r["leader"] is None for r in by_role["node"])
    cluster.deliver("A", "0", "B", "7")
    assert (cluster.dir / "controller-1" / "kms.toml").is_file()  # made from DIR/controller/ on first use
    assert not (cluster.dir / "controller-1" / "kms.sqlite3").exists()


def test_a_standby_answers_not_leader_with_the_leaders_address(cluster):
    import httpx

    from qkdseg.net.wire import client_context

    lead = cluster.leader()
    standby = next(r for r in cluster.rows() if r["role"] == "controller" and not r["leader"])
    nd = cluster.dir / "nodes" / cluster.names["0"]
    ctx = client_context(nd / "node.crt", nd / "node.key", nd / "ca.crt")
    with httpx.Client(verify=ctx, timeout=5) as cl:
        r = cl.post(f"https://{standby['address']}/control/v1/plans",
                    json={"master": "A", "slave": "B", "number": 1, "size": 256, "level": 0.5,
                          "level_source": "default", "mandatory": False})
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "not_leader" and r.json()["leader"] == lead["address"]


# -- failures of the controller leader and of the etcd leader ------------------------------------------------
def test_kill9_leader_controller_a_standby_takes_over_and_deliveries_resume(cluster):
    lead = cluster.leader()
    stop, out = threading.Event(), []
    threads = _load(cluster, stop, out)
    try:
        time.sleep(2.0)
        t_kill, wall_kill = time.monotonic(), time.time()
        os.kill(lead["pid"], signal.SIGKILL)
        new, t_lead = cluster.wait_leader(lead["name"], TTL + 10)
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline and sum(1 for t0, _, c in out if t0 > t_lead and c == 200) < 5:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    first = min((t1 for t0, t1, c in out if t0 > t_kill and c == 200), default=None)
    plans = [x["time"] for x in cluster.audit() if x["event"] == "plan" and x["time"] > wall_kill]
    refused = sum(1 for t0, _, c in out if t0 > t_kill and c != 200)
    print(f"\nkill -9 of the leader controller: standby {new} led after {t_lead - t_kill:.2f} s; its first plan "
          f"{min(plans) - wall_kill:.2f} s after the kill; first delivery of a request sent after the kill at "
          f"{None if first is None else round(first - t_kill, 2)} s; {refused} requests refused meanwhile")
    assert t_lead - t_kill <= TTL + 2
    assert first is not None and sum(1 for t0, _, c in out if t0 > t_lead and c == 200) >= 5
    assert plans and min(plans) - wall_kill <= TTL + 2 + 3  # the new leader plans (a few s of slack under load)
    cluster.start(lead["name"])  # back as a standby
    assert not cluster.health(lead["name"])["leader"]
    time.sleep(2.5)  # the nodes' reports (QKDSEG_REPORT_S=1) reach the new leader
    _no_reservation_lost_or_doubled(cluster)


def test_kill9_etcd_leader_controller_serves_again_after_a_few_seconds(cluster):
    lead = cluster.leader("etcd")
    stop, out = threading.Event(), []
    threads = _load(cluster, stop, out, workers=2)
    try:
        time.sleep(1.5)
        t_kill = time.monotonic()
        os.kill(lead["pid"], signal.SIGKILL)
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline and sum(1 for t0, _, c in out if t0 > t_kill + 0.5 and c == 200) < 5:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    after = sorted((t0, t1, c) for t0, t1, c in out if t0 > t_kill)
    first = min((t1 for t0, t1, c in after if c == 200), default=None)
    refused = [c for _, _, c in after if c != 200]
    print(f"\nkill -9 of the etcd leader: first delivery after {None if first is None else round(first - t_kill, 2)} s, "
          f"{len(refused)} refused meanwhile")
    assert first is not None and first - t_kill <= 10
    leaders = [r for r in cluster.rows() if r["role"] == "etcd" and r["leader"]]
    assert len(leaders) == 1 and leaders[0]["name"] != lead["name"]
    cluster.start(lead["name"])  # rejoins from its data directory
    _no_reservation_lost_or_doubled(cluster)


def test_a_deposed_leader_paused_past_its_lease_cannot_commit_a_plan(cluster):
    import httpx

    from qkdseg.net.wire import client_context

    lead = cluster.leader()
    before = cluster.health(lead["name"])
    stopped_at = time.time()
    os.kill(lead["pid"], signal.SIGSTOP)
    try:
        new, t_new = cluster.wait_leader(lead["name"], TTL + 10)
        cluster.deliver_retrying("A", "0", "B", "7", 3)  # a plan (not spare keys) at the new leader
        nd = cluster.dir / "nodes" / cluster.names["0"]
        ctx = client_context(nd / "node.crt", nd / "node.key", nd / "ca.crt")
        answer = {}

        def ask():  # sent while it is stopped: it answers after SIGCONT
            with httpx.Client(verify=ctx, timeout=30) as cl:
                answer["r"] = cl.post(f"https://{lead['address']}/control/v1/plans",
                                      json={"master": "A", "slave": "B", "number": 1, "size": 256, "level": 0.5,
                                            "level_source": "default", "mandatory": False})

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)
    finally:
        os.kill(lead["pid"], signal.SIGCONT)
    t.join(40)
    r = answer["r"]
    assert r.status_code == 503 and r.json()["reason"] == "not_leader", r.text
    h = cluster.health(lead["name"])
    assert h["commits"] == before["commits"] and not h["leader"]
    assert cluster.health(new)["leader"]
    cluster.deliver_retrying("A", "0", "B", "7", 3)
    since = [x for x in cluster.audit() if x["time"] >= stopped_at]
    assert since and all(x["controller"] != lead["address"] for x in since)  # nothing from the deposed one


def test_election_and_revision_compared_commits_without_processes(cluster):
    """Two elections on the module's etcd: A leads and commits; A's lease ends (as when paused past it); B takes
    over; A's next commit is refused by etcd (the leader key's revision), B's goes on with A's audit head."""
    from qkdseg.server.audit import check_lines
    from qkdseg.server.store import Batch
    from qkdseg.net.replica import Election, EtcdStore, audit_lines
    from qkdseg.net.wire import Problem

    etcd, prefix, key = cluster.etcd(), f"/test-{time.time_ns()}/", b"k" * 32
    a = Election(etcd, prefix, "a", "A:1", lambda leading: None, ttl=2)
    b = Election(etcd, prefix, "b", "B:1", lambda leading: None, ttl=2)
    a.lease, b.lease = etcd.grant(2), etcd.grant(2)
    a._campaign()
    b._campaign()
    assert a.leading and not b.leading and b.leader_hint == "A:1"
    sa = EtcdStore(etcd, prefix, key, a)
    sa.commit(Batch(links={0: ("0", "1", 80, 100, 1.0)}, audit=[{"event": "plan", "request_id": "r1"}]))
    etcd.revoke(a.lease)  # its lease is gone, as when the process stood still past it
    b._campaign()
    assert b.leading
    with pytest.raises(Problem) as e:
        sa.commit(Batch(links={0: ("0", "1", 160, 20, 2.0)}, audit=[{"event": "plan", "request_id": "r2"}]))
    assert e.value.status == 503 and e.value.ext["reason"] == "not_leader" and sa.refused == 1
    sb = EtcdStore(etcd, prefix, key, b)
    assert sb.load_links()[0][2] == 80 and sb.audit_seq == 1  # what A committed, and only that
    stale = EtcdStore(etcd, prefix, key, b)
    sb.commit(Batch(links={0: ("0", "1", 120, 60, 3.0)}, audit=[{"event": "plan", "request_id": "r3"}]))
    with pytest.raises(Problem):  # same leader, but a state read before sb's commit: refused too
        stale.commit(Batch(audit=[{"event": "plan", "request_id": "r4"}]))
    lines = audit_lines(etcd, prefix)
    assert [json.loads(x)["request_id"] for x in lines] == ["r1", "r3"]
    assert not check_lines(key, lines).problems


def test_a_failover_keeps_the_suspect_nodes_and_clear_suspect_asks_the_new_leader(cluster):
    """Issue 38 over the processes: relay 1 run as the hostile-node harness corrupts what it relays; three runs
    through it fail key confirmation and the leader names a relay of theirs suspect; after the leader's kill -9
    the new leader excludes the same node until the same time (restored from etcd at its first request, a node's
    report); ``net clear-suspect`` is answered by the new leader."""
    from test_net_hostile import _stop

    name = f"node-{cluster.names['1']}"
    lie = cluster.dir.parent / "hostile-1.json"
    lie.write_text(json.dumps({"corrupt": ["pieces"]}))
    _stop(cluster, name)
    env = cluster.env
    cluster.env = {**env, "QKDSEG_ALLOW_HOSTILE": "1", "QKDSEG_HOSTILE_FILE": str(lie)}
    try:
        cluster.start(name)
    finally:
        cluster.env = env
    lead = cluster.leader()

    def named(ctl: str) -> dict:
        return {n: v for n, v in ((cluster.health(ctl) or {}).get("suspects") or {}).items() if "until" in v}

    try:
        codes = [_enc(cluster)[0] for _ in range(3)]  # --suspect-after 3 (net init's default)
        assert codes == [503] * 3, codes
        before = _until(lambda: named(lead["name"]), scaled(15))
        assert before, cluster.health(lead["name"])
    finally:
        lie.write_text("{}")  # it behaves again (still excluded until cleared)
    node = next(iter(before))
    os.kill(lead["pid"], signal.SIGKILL)
    new, _ = cluster.wait_leader(lead["name"], TTL + 10)
    after = _until(lambda: named(new), scaled(15))  # restored at its first request (the nodes report every second)
    assert after == before and cluster.health(new)["excluded"].get(node) == "suspect", (before, after)
    cluster.start(lead["name"])  # back as a standby
    r = _run("net", "clear-suspect", str(cluster.dir), node, env=cluster.env)
    assert r.returncode == 0 and f"node {node}:" in r.stdout, r.stdout + r.stderr
    assert node not in cluster.health(new)["excluded"]
    cluster.deliver_retrying("A", "0", "B", "7", 3)


def test_a_new_leader_keeps_the_suspects_and_their_expiry_without_processes(cluster):
    """Issue 38: the controller's suspect nodes are written into etcd's state with every commit; a controller that
    takes over restores them: the same nodes excluded until the same time, then readmitted (before: they lived in
    the old leader's memory only, and a failover planned through them again)."""
    from qkdseg import example_network
    from qkdseg.net.replica import Election, EtcdStore
    from qkdseg.net.suspects import Suspects
    from qkdseg.server.config import KmsConfig
    from qkdseg.server.planner import Planner
    from qkdseg.server.store import Batch

    etcd, prefix, key = cluster.etcd(), f"/test-{time.time_ns()}/", b"k" * 32
    net, now = example_network(), [1000.0]
    a = Election(etcd, prefix, "a", "A:1", lambda leading: None, ttl=2)
    b = Election(etcd, prefix, "b", "B:1", lambda leading: None, ttl=2)
    a.lease, b.lease = etcd.grant(2), etcd.grant(2)
    a._campaign()

    def controller(election):
        sus = Suspects(Planner(KmsConfig("example", {}), net, None), after=2, for_s=60.0, clock=lambda: now[0])
        store = EtcdStore(etcd, prefix, key, election)
        store.sections["suspects"] = sus.state
        return sus, store

    sus_a, sa = controller(a)
    idx = net.arrays.index
    for rid in ("r1", "r2"):  # two runs from node 0 to node 7 through relay 1 (untrusted), both timed out
        sus_a.planned(rid, net.arrays, [0, 1, 3], idx[0], idx[7])
    recs = sus_a.outcomes("0", [("r1", False, "timed out"), ("r2", False, "timed out")])
    assert [r["node"] for r in recs] == ["1"] and sus_a.planner.excluded_view() == {"1": "suspect"}
    sa.commit(Batch(audit=recs))
    etcd.revoke(a.lease)  # the leader is gone (as after its kill -9: its lease ends)
    b._campaign()
    assert b.leading
    sus_b, sb = controller(b)
    assert sus_b.planner.excluded_view() == {}  # a new controller starts with none ...
    sus_b.restore(sb.extra.get("suspects"))  # ... and takes etcd's (ReplicaHook.check on its first request)
    assert sus_b.planner.excluded_view() == {"1": "suspect"} and sus_b.until == {"1": 1060.0}
    assert sus_b.view()["1"] == {"failed_runs": 2, "until": 1060.0}
    now[0] = 1059.0
    assert sus_b.expire() == []
    now[0] = 1060.5  # its time is up at the new leader, as it would have been at the old one
    assert [r["event"] for r in sus_b.expire()] == ["node readmitted"] and sus_b.planner.excluded_view() == {}
    sb.commit(Batch(audit=[]))
    assert EtcdStore(etcd, prefix, key, b).extra["suspects"] == {"until": {}, "failed": {}}


# -- link faults through the proxies ----------------------------------------------------------------------
def _fault(cluster, *args) -> str:
    r = _run("net", "fault", str(cluster.dir), *args, env=cluster.env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _enc(cluster, number: int = 1):
    """enc_keys of A for B at node 0 with httpx (the route summary is in the answer) and the slave's fetch; each
    call another key size, so that no spare key of an earlier relay serves it (a relay every time)."""
    import httpx

    from qkdseg.net.wire import client_context

    pk = cluster.dir / "pki"
    ctx_a = client_context(pk / "A.crt", pk / "A.key", pk / "ca.crt")
    ctx_b = client_context(pk / "B.crt", pk / "B.key", pk / "ca.crt")
    with httpx.Client(verify=ctx_a, timeout=30) as a:
        r = a.get(f"https://{cluster.addr['0']}/api/v1/keys/B/enc_keys", params={"number": number,
                                                                                 "size": next(_SIZES)})
    if r.status_code != 200:
        assert r.status_code == 503 and r.json()["message"], r.text
        return r.status_code, r.json(), None
    body = r.json()
    ids = [{"key_ID": k["key_ID"]} for k in body["keys"]]
    with httpx.Client(verify=ctx_b, timeout=30) as b:
        back = b.post(f"https://{cluster.addr['7']}/api/v1/keys/A/dec_keys", json={"key_IDs": ids})
    assert back.status_code == 200
    assert [k["key"] for k in back.json()["keys"]] == [k["key"] for k in body["keys"]]  # never a wrong key
    return 200, body, body["key_container_extension"]["qkdseg_route"]


def _links_down(cluster) -> list[str]:
    """The leading controller's ``links_down`` (asked of each controller's /health: faster than net status)."""
    for name, p in cluster.procs().items():
        if p["role"] == "controller":
            h = cluster.health(name)
            if h and h.get("leader"):
                return h["links_down"]
    raise AssertionError("no controller leads")


def _until(fn, limit: float = 15.0):
    deadline = time.monotonic() + limit
    while True:
        out = fn()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.3)


def test_net_fault_cli_checks_its_input(cluster):
    for args, needle in ((("--link", "0-7", "--cut"), "not a link"), (("--link", "0-1", "--loss", "150%"), "--loss"),
                         (("--link", "0-1", "--cut", "--heal"), "--heal")):
        r = _run("net", "fault", str(cluster.dir), *args, env=cluster.env)
        assert r.returncode == 2 and r.stderr.startswith("qkdseg: error: ") and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert "delay 50 ms, loss 5%, up" in _fault(cluster, "--link", "1-0", "--delay", "50ms", "--loss", "5%")
    assert "delay 0 ms, loss 0%, up" in _fault(cluster, "--link", "0-1", "--heal")


def test_delay_and_loss_on_a_route_link_keys_still_delivered(cluster):
    _fault(cluster, "--link", "0-1", "--delay", "200ms", "--loss", "10%")
    try:
        got = [_enc(cluster)[0] for _ in range(6)]
    finally:
        _fault(cluster, "--link", "0-1", "--heal")
    assert got.count(200) >= 4, got  # correct whenever delivered (checked in _enc)


def test_a_cut_route_link_is_reported_down_and_routed_around_then_503_when_no_route_is_left(cluster):
    assert _until(lambda: not _links_down(cluster))
    code, _, route = _enc(cluster)
    assert code == 200 and route["paths"] == 6  # both of node 0's links
    before = cluster.offsets("0")
    _fault(cluster, "--link", "0-1", "--cut")
    try:
        _enc(cluster)  # may fail on the cut link: node 0 reports it DOWN
        assert _until(lambda: _links_down(cluster) == ["0-1"]), _links_down(cluster)
        code, _, route = _enc(cluster)
        assert code == 200 and route["paths"] == 5, route  # around the cut link
        mid = cluster.offsets("0")
        code, _, route = _enc(cluster)
        assert code == 200 and cluster.offsets("0").get(("[0,1]", 0)) == mid.get(("[0,1]", 0))  # nothing over 0-1
        _fault(cluster, "--link", "0-2", "--cut")
        _enc(cluster)
        assert _until(lambda: _links_down(cluster) == ["0-1", "0-2"]), _links_down(cluster)
        code, err, _ = _enc(cluster)
        assert code == 503 and "no route" in err["message"], err
    finally:
        _fault(cluster, "--link", "0-1", "--heal")
        _fault(cluster, "--link", "0-2", "--heal")
    assert _until(lambda: not _links_down(cluster)), _links_down(cluster)  # probed, answered: up again
    code, _, route = _enc(cluster)
    assert code == 200 and route["paths"] == 6
    after = {n: cluster.offsets(n) for n in ("0", "1")}
    assert after["0"][("[0,1]", 0)] >= before[("[0,1]", 0)]
    assert after["1"].get(("[0,1]", 0), 0) <= after["0"][("[0,1]", 0)]  # the receiver's mark never past the sender


# -- chaos --------------------------------------------------------------------------------------------------
def test_chaos_20s_seeded_no_mismatch_no_bit_reused_no_unfetchable_key(cluster):
    from qkdseg.net.chaos import make_schedule

    r = _run("net", "chaos", str(cluster.dir), "--duration", "20", "--seed", "3", "--format", "json", env=cluster.env,
             timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads(r.stdout)
    print("\nchaos 20 s:", {k: v for k, v in rep.items() if k not in ("schedule", "faults")})
    for field in ("requests", "delivered", "refused", "refused_by_reason", "latency_mean_s", "latency_p99_s",
                  "mismatched_keys", "bits_reused", "unfetchable_keys", "failovers", "longest_leaderless_s"):
        assert field in rep
    assert rep["mismatched_keys"] == 0 and rep["bits_reused"] == 0 and rep["unfetchable_keys"] == 0
    assert rep["requests"] == rep["delivered"] + rep["refused"] == sum(rep["refused_by_reason"].values()) + \
        rep["delivered"]
    assert rep["delivered"] > 0 and rep["faults"]
    relays = [str(n["id"]) for n in cluster.net["nodes"] if not n["saes"]]
    from qkdseg.net.cluster import load

    links = [p["link"] for p in load(cluster.dir)["proxies"]]
    kinds = ["kill_relay", "kill_controller_leader", "kill_etcd_leader", "link_delay", "link_loss", "link_cut"]
    assert rep["schedule"] == make_schedule(3, 20.0, kinds, relays, links)  # the seed alone makes the schedule
    assert json.dumps(make_schedule(3, 20.0, kinds, relays, links)) == json.dumps(make_schedule(3, 20.0, kinds,
                                                                                               relays, links))
    assert all(r["healthy"] for r in cluster.rows())  # every killed process was restarted


def test_fault_and_store_arguments_parse_or_refuse_in_one_line():
    from qkdseg.errors import InvalidRequest
    from qkdseg.net.faults import parse_delay, parse_loss
    from qkdseg.net.replica import parse_store

    assert parse_delay("50ms") == 50 and parse_delay("0.2s") == 200 and parse_delay("7") == 7
    assert parse_loss("5%") == 0.05 and parse_loss("0.1") == 0.1
    assert parse_store("etcd://127.0.0.1:2379,10.0.0.2:2381") == [("127.0.0.1", 2379), ("10.0.0.2", 2381)]
    for fn, bad in ((parse_delay, "fast"), (parse_delay, "2min"), (parse_loss, "150%"), (parse_loss, "-1"),
                    (parse_store, "sqlite://x"), (parse_store, "etcd://host"), (parse_store, "etcd://h:0")):
        with pytest.raises(InvalidRequest) as e:
            fn(bad)
        assert "\n" not in str(e.value)
