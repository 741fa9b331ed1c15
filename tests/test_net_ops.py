"""Operating the network's servers (issue 31): ``net up`` as an operator runs them, clean stops, the cold backup,
private files, and the systemd units started under their own restrictions.

One small network (a line 0 - 1 - 2, node 1 trusted, SAE A at node 0 and B at node 2) is started once for the
module with ``net up --detach --faults --metrics-port-base P --log-format json --log-level info --port-range LO-HI``;
the last test of it stops it with ``net down`` (SIGTERM), takes the cold backup of docs/deploy.md, restores it
elsewhere and serves from it, then stops those processes with SIGTERM and SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import portblock

from qkdseg.net.keystream import generation
from qkdseg.server.serving import GRACE_S
from test_net import QKDSEG, Net, _free_port, _run, _status
from timing import scaled

LINE = {"directed": False, "graph": {"name": "line3"},
        "nodes": [{"id": i, "trusted": i == 1, "p": 1.0 if i == 1 else 0.8} for i in range(3)],
        "links": [{"source": 0, "target": 1}, {"source": 1, "target": 2}]}
STOP_S = 10.0  # docs/deploy.md: a stop takes at most this long


def _free_ports(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive ports of this run's own block (tests/portblock.py), free on ``host`` now."""
    return portblock.ports(n, (host,))


def _line_net(base: Path, d: Path) -> None:
    (base / "line.json").write_text(json.dumps(LINE))
    r = _run("net", "init", str(d), "--network", str(base / "line.json"), "--sae", "A=0", "--sae", "B=2",
             "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def opsnet(tmp_path_factory):
    base = tmp_path_factory.mktemp("opsnet")
    d = base / "deploy"
    _line_net(base, d)
    init_files = {p.relative_to(d) for p in d.rglob("*")}
    mbase, lo = _free_ports(4), int(portblock.port_range(200).split("-")[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    r = _run("net", "up", str(d), "--detach", "--faults", "--metrics-port-base", str(mbase), "--log-format", "json",
             "--log-level", "info", "--port-range", f"{lo}-{lo + 199}", env=env, timeout=180)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        n = Net(d, base, env)
        n.init_files, n.metrics_base, n.port_range = init_files, mbase, (lo, lo + 199)
        yield n
    finally:
        _run("net", "down", str(d), timeout=120)


def test_net_up_runs_each_process_with_metrics_json_logs_and_ports_in_the_range(opsnet):
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    order = list(json.loads((opsnet.dir / "nodes.json").read_text()))  # node ids, as listed
    rows = _status(opsnet)
    assert {r["role"] for r in rows} == {"controller", "node", "proxy"}
    for r in rows:
        if r["role"] == "proxy":
            assert r["metrics_url"] is None
            continue
        port = opsnet.metrics_base + (0 if r["role"] == "controller" else 1 + order.index(r["node"]))
        assert r["metrics_url"] == f"http://127.0.0.1:{port}/metrics", r
        text = requests.get(r["metrics_url"], timeout=10).text
        info = [s.labels for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "qkdseg_build_info"]
        assert [i["service"] for i in info] == [r["role"]], info
    for name in ["controller", *(f"node-{v}" for v in opsnet.names.values())]:
        lines = (opsnet.dir / "logs" / f"{name}.log").read_text().splitlines()
        recs = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(rec) for rec in recs), name
        assert any(rec["level"] == "info" for rec in recs), name  # --log-level info (the default is warning)
    lo, hi = opsnet.port_range
    layout = json.loads((opsnet.dir / "cluster.json").read_text())
    ports = [int(a.rsplit(":", 1)[1]) for p in layout["proxies"] for a in p["listen"].values()]
    assert len(ports) == 4 and all(lo <= p <= hi for p in ports), ports


@pytest.mark.parametrize("args, needle", [
    (["--metrics-port-base", "65533"], "--metrics-port-base 65533"),  # four ports from it: past 65535
    (["--port-range", "3000-2000"], "--port-range '3000-2000'"),
    (["--port-range", "80"], "--port-range '80'"),
    (["--log-format", "xml"], "--log-format 'xml'"),
])
def test_net_up_refuses_bad_values_in_one_line(opsnet, args, needle):
    run = {p.name: p.read_bytes() for p in (opsnet.dir / "run").iterdir()}
    r = _run("net", "up", str(opsnet.dir), "--detach", *args)  # refused before it would see the network is up
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: ") and needle in lines[0], r.stderr
    assert {p.name: p.read_bytes() for p in (opsnet.dir / "run").iterdir()} == run  # nothing written


def _as_initialised(opsnet, target: Path) -> None:
    """``target``: the module network's directory as ``net init`` wrote it (before ``net up``)."""
    for rel in sorted(opsnet.init_files):
        src, dst = opsnet.dir / rel, target / rel
        if src.is_dir():
            dst.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            shutil.copy2(src, dst)


def test_the_port_range_bounds_etcd_members_and_controllers_too(opsnet, tmp_path):
    from qkdseg.errors import InvalidRequest
    from qkdseg.net import cluster

    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (make etcd): plan() refuses --etcd without it")
    d = tmp_path / "n"
    _as_initialised(opsnet, d)
    net = json.loads((d / "controller" / "net.json").read_text())
    lo = int(portblock.port_range(81).split("-")[0])
    layout = cluster.plan(d, net, 3, 3, True, port_range=(lo, lo + 39))
    chosen = cluster._chosen_ports(layout)
    assert len(chosen) == 3 * 2 + 2 + 4 and all(lo <= p <= lo + 39 for p in chosen), chosen
    with pytest.raises(InvalidRequest, match="outside --port-range"):  # a kept layout outside a new range
        cluster.plan(d, net, None, None, None, port_range=(lo + 40, lo + 80))
    (d / "cluster.json").unlink()
    with pytest.raises(InvalidRequest, match=f"no free port on 127.0.0.1 in {lo}-{lo + 2}"):
        cluster.plan(d, net, 3, 3, False, port_range=(lo, lo + 2))


def test_every_file_the_servers_and_net_up_write_is_private(opsnet):
    opsnet.deliver("A", "0", "B", "2")
    d = opsnet.dir
    new = [p for p in d.rglob("*") if p.relative_to(d) not in opsnet.init_files]
    for name in opsnet.names.values():  # the relay store and its WAL, written while serving
        for f in ("relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm", "kms.sqlite3", "lock"):
            assert d / "nodes" / name / f in new, f
    assert d / "logs" / "controller.log" in new and d / "run" / "pids.json" in new
    bad = [f"{p.relative_to(d)} {_mode(p):o}" for p in new if _mode(p) != (0o700 if p.is_dir() else 0o600)]
    assert not bad, bad
    dirs = [d, d / "controller", d / "nodes", *(d / "nodes" / v for v in opsnet.names.values()), d / "logs", d / "run"]
    assert all(_mode(p) == 0o700 for p in dirs), [f"{p} {_mode(p):o}" for p in dirs]


def test_status_names_both_kmes_in_one_form(opsnet):
    """ETSI 014 status at a node: the source and the target KME ids in the same form (docs/network.md)."""
    code, st = opsnet.client("A", "0").get_status("B")
    assert code == 200, st
    assert (st.source_kme_id, st.target_kme_id) == (f"KME_{opsnet.names['0']}", f"KME_{opsnet.names['2']}")


def test_net_up_starts_only_the_process_that_exited(opsnet):
    """docs/network.md, "One process exited": `net up DIR --detach` (no option) starts only what does not run, with
    the first start's options; the others keep their pids; with every process running it says so. A restart in
    place is not a restore (no key voided)."""
    import requests

    from qkdseg.net.procs import _alive

    d, name = opsnet.dir, f"node-{opsnet.names['1']}"
    before = json.loads((d / "run" / "pids.json").read_text())
    os.kill(before[name], signal.SIGTERM)
    deadline = time.monotonic() + scaled(30)
    while _alive(before[name]):
        assert time.monotonic() < deadline, "node 1 did not stop"
        time.sleep(0.1)
    r = _run("net", "up", str(d), "--detach", env=opsnet.env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    after = json.loads((d / "run" / "pids.json").read_text())
    assert after[name] != before[name] and {k: v for k, v in after.items() if k != name} == {
        k: v for k, v in before.items() if k != name}
    rows = {(x["role"], x["node"]): x for x in _status(opsnet)}
    assert all(x["healthy"] for x in rows.values()), rows
    assert requests.get(rows[("node", "1")]["metrics_url"], timeout=10).status_code == 200  # its metrics port again
    assert json.loads((d / "logs" / f"{name}.log").read_text().splitlines()[-1])  # JSON logs, as first started
    for args in ((), ("--log-level", "debug")):
        r = _run("net", "up", str(d), "--detach", *args, env=opsnet.env)
        assert r.returncode == 2 and "every process runs" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    code, c = opsnet.client("A", "0").get_key("B", size=256)
    deadline = time.monotonic() + scaled(30)
    while code != 200:  # node 1 (the relay) syncs its links after its start
        assert time.monotonic() < deadline, getattr(c, "message", c)
        time.sleep(0.5)
        code, c = opsnet.client("A", "0").get_key("B", size=256)
    code, back = opsnet.client("B", "2").get_key_with_key_IDs("A", [c.keys[0].key_id])
    assert code == 200 and back.keys[0].key == c.keys[0].key
    assert not _audited(d / "nodes" / opsnet.names["1"], "restore")


def _audited(d: Path, event: str) -> list[dict]:
    text = (d / "audit.jsonl").read_text() if (d / "audit.jsonl").exists() else ""  # a relay node audits nothing
    return [r for r in map(json.loads, text.splitlines()) if r.get("event") == event]


def _relay_offsets(root: Path, names: dict) -> dict:
    from qkdseg.net.generations import read_offsets

    out = {}
    for node, v in names.items():
        con = sqlite3.connect(f"file:{root / 'nodes' / v / 'relay.sqlite3'}?mode=ro", uri=True)
        try:
            out[node] = read_offsets(con)
        finally:
            con.close()
    return out


def _wal_files(d: Path) -> list[str]:
    return [str(p) for p in d.rglob("*-wal")]


def test_sigterm_and_sigint_stop_cleanly_and_the_cold_backup_restores(opsnet, tmp_path):
    """docs/deploy.md, "Backup and restore" (a network of nodes, stopped): stop, copy the directory, restore it
    elsewhere, serve: the copy is seen at each node's start, so the key the slave had not fetched is voided (it
    might have been fetched after the copy; audited), new keys are delivered, and every link direction used after
    the restore is in a new generation above every offset used before (both ends of each link were put back)."""
    code, c = opsnet.client("A", "0").get_key("B", size=256)
    assert code == 200, getattr(c, "message", c)
    key_id, key = c.keys[0].key_id, c.keys[0].key
    r = _run("net", "down", str(opsnet.dir), timeout=120)  # SIGTERM to every process
    assert r.returncode == 0, r.stderr
    for name in ["controller", *(f"node-{v}" for v in opsnet.names.values())]:
        recs = [json.loads(line) for line in (opsnet.dir / "logs" / f"{name}.log").read_text().splitlines()]
        assert recs[-1]["message"] == "stopped", (name, recs[-3:])
    assert _wal_files(opsnet.dir) == []  # every WAL checkpointed into its database
    restored = tmp_path / "restored"
    shutil.copytree(opsnet.dir, restored)  # the cold backup, then its restore elsewhere
    before = _relay_offsets(restored, opsnet.names)

    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    procs = {}
    out = tmp_path / "out"
    out.mkdir()
    try:
        for name, args in [("controller", ["controller", "serve", str(restored / "controller")]),
                           *((f"node-{v}", ["node", "serve", str(restored / "nodes" / v)])
                             for v in opsnet.names.values())]:
            with open(out / f"{name}.out", "wb") as o, open(out / f"{name}.err", "wb") as e:
                procs[name] = subprocess.Popen([QKDSEG, *args], stdout=o, stderr=e, env=env)
        _wait_listening(out, procs)
        back = Net(restored, tmp_path, env)
        code, res = back.client("B", "2").get_key_with_key_IDs("A", [key_id])
        assert code == 400 and "not found" in res.message, (code, getattr(res, "message", res))
        voided = _audited(restored / "nodes" / opsnet.names["2"], "restore")
        assert len(voided) == 1 and voided[0]["key_ids"] == [key_id] and "not the file" in voided[0]["reason"]
        deadline = time.monotonic() + scaled(30)
        while True:  # the restored network delivers new keys once the nodes have reported their links
            code, c = back.client("A", "0").get_key("B", size=256)
            if code == 200:
                break
            assert time.monotonic() < deadline, (code, getattr(c, "message", c))
            time.sleep(0.2)
        code, res = back.client("B", "2").get_key_with_key_IDs("A", [c.keys[0].key_id])
        assert code == 200 and res.keys[0].key == c.keys[0].key and c.keys[0].key != key
        after, top = _relay_offsets(restored, opsnet.names), {}
        for per in before.values():
            for k, v in per.items():
                top[k] = max(top.get(k, 0), v)
        moved = [(node, k, v) for node, per in after.items() for k, v in per.items() if v != before[node].get(k, 0)]
        assert moved and all(generation(v) > 0 and v > top.get(k, 0) for _, k, v in moved), (top, moved)
        received = [m for m in moved if str(json.loads(m[1][0])[m[1][1]]) != m[0]]  # a receiver's mark moved
        assert received, moved
        assert _wal_files(restored)  # serving: the WAL files are there again
        # a request in flight at the stop: its relay hangs (node 1 paused), the stop's grace runs out, the master
        # gets a 503 with a JSON message, and the node still exits 0 within the bound
        first, relay = (f"node-{opsnet.names[n]}" for n in ("0", "1"))
        os.kill(procs[relay].pid, signal.SIGSTOP)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            pending = ex.submit(back.client("A", "0").get_key, "B")
            time.sleep(1.0)  # the request has reached node 0 and waits on its relay
            took = _stop(procs, first, signal.SIGTERM, out)
            code, res = pending.result(timeout=30)
        os.kill(procs[relay].pid, signal.SIGCONT)
        assert code == 503 and "stopped before this request completed" in res.message, (code, res)
        assert took > 4.0  # it waited for the request (5 s of grace), then cut it short
        for name, sig in (("controller", signal.SIGINT), (relay, signal.SIGINT),
                          (f"node-{opsnet.names['2']}", signal.SIGTERM)):
            _stop(procs, name, sig, out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _wal_files(restored) == []
    bad = [f"{p} {_mode(p):o}" for p in restored.rglob("*sqlite3*") if _mode(p) != 0o600]
    assert not bad, bad


def _stop_bound() -> float:
    """The bound on one stop on this machine now: the grace a request in flight gets (:data:`GRACE_S`, the server's
    own timer: not scaled) plus the rest of :data:`STOP_S` for the stop's work (stores closed, WAL checkpointed, the
    interpreter's exit: scaled, tests/timing.py). At most 5 + 6 x 5 = 35 s: a stop that hangs until a supervisor's
    kill (the units' TimeoutStopSec=60s) or for ever still fails."""
    return GRACE_S + scaled(STOP_S - GRACE_S)


def _stop(procs: dict, name: str, sig: int, out: Path) -> float:
    """Send ``sig`` to process ``name``; it must exit 0 within :func:`_stop_bound` with its ``stopped`` line; the
    seconds."""
    bound = _stop_bound()
    start = time.monotonic()
    procs[name].send_signal(sig)
    try:
        rc = procs[name].wait(timeout=bound)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - start
    err = (out / f"{name}.err").read_text()
    assert rc == 0 and took < bound, (name, sig, rc, took, bound, err[-2000:])
    assert err.rstrip().endswith("stopped"), (name, err[-500:])
    return took


def _wait_listening(out: Path, procs: dict, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    for name, proc in procs.items():
        while "listening on https://" not in (out / f"{name}.out").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (name, (out / f"{name}.err").read_text())
            time.sleep(0.1)


# -- the systemd units, started the way systemd would start them ----------------------------------------------
UNITS = Path(__file__).parents[1] / "deploy" / "systemd"


def _unit(name: str) -> dict:
    """The ``[Service]`` settings of a unit file: each key -> its values, in order."""
    section, out = None, {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


class UnitRunner:
    """Runs a unit's ``ExecStart`` as systemd would: its ``Environment=`` and ``EnvironmentFile=`` only (plus
    ``PATH``, ``HOME``, ``STATE_DIRECTORY``, ``CACHE_DIRECTORY``), its ``UMask``, and what ``ProtectSystem=strict``
    and ``ProtectHome`` leave writable: in a private mount namespace, the qkdseg package, the Python installation,
    ``HOME`` and ``/var/lib/qkdseg`` are mounted read-only, and only the unit's state and cache directories are
    writable again. The unit's absolute paths are moved under ``root``."""

    def __init__(self, root: Path, cache_root: Path) -> None:
        import qkdseg

        self.root, self.cache_root = root, cache_root
        self.readonly = sorted({str(Path(qkdseg.__file__).resolve().parent), sys.prefix, os.path.expanduser("~"),
                                str(root / "var/lib/qkdseg")})
        self.out: dict[str, Path] = {}

    def path(self, text: str) -> str:
        return (text.replace("/usr/local/bin/qkdseg", QKDSEG).replace("/usr/bin/etcd", shutil.which("etcd") or "etcd")
                .replace("/var/lib/qkdseg", str(self.root / "var/lib/qkdseg"))
                .replace("/etc/qkdseg", str(self.root / "etc/qkdseg")))

    def command(self, unit: str, instance: str = "", drop: tuple[str, ...] = ()) -> tuple[list[str], dict, int]:
        s = _unit(unit)

        def spec(text: str) -> str:
            return self.path(text.replace("%i", instance).replace("%C", str(self.cache_root)))

        env = {"PATH": os.environ["PATH"], "HOME": str(self.root / "var/lib/qkdseg"), "LANG": "C.UTF-8"}
        if os.environ.get("PYTHONPATH"):  # this checkout's sources, as the test runs them
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for value in s.get("Environment", []):
            env.update(dict(a.split("=", 1) for a in shlex.split(spec(value))))
        for value in s.get("EnvironmentFile", []):
            path = Path(spec(value.lstrip("-")))
            if path.exists():
                env.update(dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line))
            else:
                assert value.startswith("-"), f"{unit}: {path} is required"
        for key in drop:
            env.pop(key, None)
        state = [Path(spec("/var/lib/" + v)) for v in s.get("StateDirectory", [])]
        cache = [self.cache_root / spec(v) for v in s.get("CacheDirectory", [])]
        for p in state + cache:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
        env.update({"STATE_DIRECTORY": ":".join(map(str, state))} if state else {})
        env.update({"CACHE_DIRECTORY": ":".join(map(str, cache))} if cache else {})
        argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in shlex.split(spec(s["ExecStart"][-1]))]
        script = " && ".join([*(f"mount --bind -r {shlex.quote(p)} {shlex.quote(p)}" for p in self.readonly),
                              *(f"mount --bind {q} {q} && mount -o remount,bind,rw {q}"
                                for q in (shlex.quote(str(p)) for p in state + cache)),
                              'exec "$@"'])
        return ["unshare", "-m", "sh", "-c", script, "sh", *argv], env, int(s.get("UMask", ["0022"])[-1], 8)

    def start(self, name: str, unit: str, instance: str = "", drop: tuple[str, ...] = ()) -> subprocess.Popen:
        argv, env, umask = self.command(unit, instance, drop)
        self.out[name] = self.root / f"{name}.log"
        with open(self.out[name], "wb") as log:
            return subprocess.Popen(argv, env=env, umask=umask, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return self.out[name].read_text(errors="replace")


def _can_unshare() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a private mount namespace (unshare -m) makes the package and HOME read-only"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -r / / 2>&1 || mount --bind -r /tmp /tmp"],
                       capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"unshare -m cannot mount here: {r.stdout.strip() or r.stderr.strip()}"


def _ready(url: str, procs: dict, runner: UnitRunner, name: str, timeout: float = 90.0) -> dict:
    import requests

    deadline = time.monotonic() + scaled(timeout)
    while True:
        assert procs[name].poll() is None, f"{name} exited {procs[name].returncode}:\n{runner.log(name)[-3000:]}"
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"{name} not ready at {url}:\n{runner.log(name)[-3000:]}"
        time.sleep(0.2)


def test_systemd_units_start_with_the_package_and_home_read_only(opsnet, tmp_path):
    """Each unit of deploy/systemd/ started from its own ``ExecStart`` and environment (see :class:`UnitRunner`)
    becomes ready; without the unit's ``NUMBA_CACHE_DIR`` a controller cannot even import its kernels there.

    numba's cache (the unit's ``CacheDirectory``) is kept between runs of this test in the system's temporary
    directory, as ``/var/cache/qkdseg`` is kept between a unit's starts: only the first run on a machine
    compiles the routing kernels (about 20 s on 2 cores)."""
    why = _can_unshare()
    if why:
        pytest.skip(why)
    import tempfile

    cache_root = Path(tempfile.gettempdir()) / f"qkdseg-test-unit-cache-{os.geteuid()}"
    root = tmp_path / "host"
    lib = root / "var/lib/qkdseg"
    etc = root / "etc/qkdseg"
    etc.mkdir(parents=True)
    _as_initialised(opsnet, lib)  # lib/controller, lib/nodes/<dir>: what the controller's and nodes' units serve
    r = _run("kms", "init", str(lib / "kms"), "--network", "example", "--sae", "A=0", "--sae", "B=7")
    assert r.returncode == 0, r.stdout + r.stderr
    node_dir = json.loads((lib / "nodes.json").read_text())["0"]
    ports = {k: _free_port() for k in ("kms", "kms_m", "ctl_m", "node_m", "etcd_c", "etcd_p", "c1", "c1_m")}
    (etc / "kms.env").write_text(f"QKDSEG_HOST=127.0.0.1\nQKDSEG_PORT={ports['kms']}\n"
                                 f"QKDSEG_METRICS_PORT={ports['kms_m']}\n")
    (etc / "controller.env").write_text(f"QKDSEG_METRICS_PORT={ports['ctl_m']}\n")
    (etc / f"node-{node_dir}.env").write_text(f"QKDSEG_METRICS_PORT={ports['node_m']}\n")
    etcd = shutil.which("etcd")
    if etcd:
        (etc / "etcd-e0.env").write_text(
            f"ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:{ports['etcd_c']}\n"
            f"ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:{ports['etcd_c']}\n"
            f"ETCD_LISTEN_PEER_URLS=http://127.0.0.1:{ports['etcd_p']}\n"
            f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:{ports['etcd_p']}\n"
            f"ETCD_INITIAL_CLUSTER=e0=http://127.0.0.1:{ports['etcd_p']}\nETCD_INITIAL_CLUSTER_STATE=new\n"
            f"ETCD_INITIAL_CLUSTER_TOKEN=qkdseg-test-{ports['etcd_c']}\n")
        from qkdseg.net.cluster import make_controller_dir

        (lib / "controllers").mkdir(mode=0o700)
        make_controller_dir(lib, lib / "controllers" / "c1")
        (etc / "controller-c1.env").write_text(f"QKDSEG_ETCD=etcd://127.0.0.1:{ports['etcd_c']}\n"
                                               f"QKDSEG_ADDRESS=127.0.0.1:{ports['c1']}\n"
                                               f"QKDSEG_METRICS_PORT={ports['c1_m']}\n")
    runner = UnitRunner(root, cache_root)
    procs: dict[str, subprocess.Popen] = {}
    try:
        # the read-only package and HOME are real: without the unit's cache directory numba has nowhere to cache
        import importlib.util

        numba = importlib.util.find_spec("numba") is not None
        bare = runner.start("bare", "qkdseg-controller.service", drop=("NUMBA_CACHE_DIR",)) if numba else None
        procs["kms"] = runner.start("kms", "qkdseg-kms.service")
        procs["node"] = runner.start("node", "qkdseg-node@.service", node_dir)
        if etcd:
            procs["etcd"] = runner.start("etcd", "qkdseg-etcd@.service", "e0")
        if bare is not None:
            assert bare.wait(timeout=120) != 0 and "no locator available" in runner.log("bare"), runner.log("bare")
        procs["controller"] = runner.start("controller", "qkdseg-controller.service")
        if etcd:
            assert _ready(f"http://127.0.0.1:{ports['etcd_c']}/health", procs, runner, "etcd")["health"] == "true"
            procs["c1"] = runner.start("c1", "qkdseg-controller-etcd@.service", "c1")
        for name, port in (("kms", "kms_m"), ("controller", "ctl_m"), ("node", "node_m"), ("c1", "c1_m")):
            if name in procs:
                assert _ready(f"http://127.0.0.1:{ports[port]}/readyz", procs, runner, name)["ready"]
        for name, proc in procs.items():  # the units' stop: SIGTERM, a clean exit (etcd's own is etcd's)
            bound, start = _stop_bound(), time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            took = time.monotonic() - start
            assert name == "etcd" or (rc == 0 and took < bound), (name, rc, took, bound, runner.log(name))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not etcd:
        pytest.skip("etcd is not installed (make etcd): the etcd member and controller-over-etcd units did not run")
    # what the servers wrote in their directories: private
    written = [p for d in (lib / "kms", lib / "controller", lib / "nodes" / node_dir, lib / "controllers" / "c1")
               for p in d.iterdir() if p.name in ("kms.sqlite3", "audit.jsonl", "lock", "relay.sqlite3")]
    assert len(written) >= 8 and all(_mode(p) == 0o600 for p in written), [f"{p} {_mode(p):o}" for p in written]
