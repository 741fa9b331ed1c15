"""``qkdseg net up|down|status``: a whole network as local processes (docs/network.md).

``net up DIR`` starts the controller and one ``qkdseg node serve`` per node
(and first ``qkdseg device serve DIR/devices``, the QKD device emulator, for a
network made with ``net init --link-source device``; each its own OS process, its output in ``DIR/logs/``), writes their pids to
``DIR/run/pids.json``, waits until each answers its health check, and prints
a table. In the foreground it stops every process on SIGINT/SIGTERM (exit
0); with ``--detach`` it leaves them running and ``net down DIR`` stops them.

As an operator would run them (``DIR/run/ops.json`` keeps the choice, so a
process restarted later gets the same): ``--metrics-port-base P`` gives the
controller ``--metrics-port P``, the node listed i-th in ``nodes.json`` P + 1 +
i and the other controllers of a replicated network the ports after the
nodes'; ``--log-format`` and ``--log-level`` go to every qkdseg server (the
device emulator takes the level only, an etcd member the level in etcd's
words). What ``net up`` writes, and every process it starts, makes files 0600
and directories 0700.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import InvalidRequest
from ..server.files import load_json
from .layout import write_private


def _net(directory: Path) -> dict:
    from .membership import load_net_conf

    if not (directory / "controller" / "net.json").exists():
        raise InvalidRequest(f"{directory}: not a network directory (run 'qkdseg net init {directory} ...' first)")
    return load_net_conf(directory / "controller")


def processes(directory: Path) -> list[dict]:
    """One entry per process: role, node, address, etsi014_url, metrics_url, and its directory (with
    ``DIR/cluster.json``: the etcd members, every controller and the fault proxy too, net/cluster.py), and the
    options of ``DIR/run/ops.json`` in its ``args``."""
    net = _net(directory)
    ops = _ops(directory)
    out = []
    devices = directory / "devices"
    if (devices / "device.toml").exists():  # net init --link-source device: the QKD device emulator, first
        from ..devices.emulator import load_device_config

        dc = load_device_config(devices)
        out.append({"role": "device", "node": None, "address": f"{dc.host}:{dc.port}",
                    "etsi014_url": f"https://{dc.host}:{dc.port}", "dir": str(devices), "name": "device"})
    out.append({"role": "controller", "node": None, "address": net["address"], "etsi014_url": None,
                "dir": str(directory / "controller"), "name": "controller"})
    for n in net["nodes"]:
        out.append({"role": "node", "node": str(n["id"]), "address": n["address"],
                    "etsi014_url": f"https://{n['address']}" if n["saes"] else None,
                    "dir": str(directory / "nodes" / n["dir"]), "name": f"node-{n['dir']}", "saes": n["saes"]})
    from .cluster import load as load_cluster
    from .cluster import inventory_processes, replicated_processes

    out = inventory_processes(directory, net, out)  # net init --inventory: its controllers; each local or remote
    layout = load_cluster(directory)
    out = out if layout is None else replicated_processes(directory, layout, out, log_level=ops.get("log_level"))
    return _with_ops(directory, out, ops)


def _ops(directory: Path) -> dict:
    path = directory / "run" / "ops.json"
    if not path.exists():
        return {}
    return load_json(path, "net up's options of the processes", advice=f"net down, then net up {directory} again")


def _node_dirs(directory: Path) -> dict:
    """``DIR/nodes.json``: node id -> the node's directory name."""
    return load_json(directory / "nodes.json", "the network's list of nodes")


def metrics_ports(directory: Path, base: int) -> dict[str, int]:
    """Process name -> metrics port: ``controller`` on ``base``, the i-th node of ``nodes.json`` on base + 1 + i,
    the other controllers (``DIR/cluster.json``) after the nodes, in their order."""
    names = _node_dirs(directory)
    ports = {"controller": base}
    ports.update({f"node-{name}": base + 1 + i for i, name in enumerate(names.values())})
    from .cluster import load as load_cluster

    layout = load_cluster(directory) or {"controllers": []}
    others = [c["name"] for c in layout["controllers"] if c["name"] != "controller"]
    ports.update({name: base + 1 + len(names) + k for k, name in enumerate(others)})
    return ports


def _with_ops(directory: Path, procs: list[dict], ops: dict) -> list[dict]:
    ports = metrics_ports(directory, ops["metrics_port_base"]) if ops.get("metrics_port_base") else {}
    out = []
    for p in procs:
        args = list(p.get("args", ()))
        if p["role"] in ("controller", "node"):
            if p["name"] in ports:
                args += ["--metrics-port", str(ports[p["name"]])]
            for opt in ("log_format", "log_level"):
                if ops.get(opt):
                    args += [f"--{opt.replace('_', '-')}", ops[opt]]
        elif p["role"] == "device" and ops.get("log_level"):
            args += ["--log-level", ops["log_level"]]
        port = ports.get(p["name"])
        out.append({**p, "args": tuple(args), "metrics_url": f"http://127.0.0.1:{port}/metrics" if port else None})
    return out


def check_ops(directory: Path, metrics_port_base: int | None, log_format: str | None, log_level: str | None,
              controllers: int | None = None) -> dict:
    """``net up``'s options for every process (the log options checked by the command), the metrics ports checked
    (one line); the ``ops.json`` to write."""
    if metrics_port_base is not None:
        from .cluster import load as load_cluster

        layout = load_cluster(directory)
        count = len(_node_dirs(directory)) + (
            controllers or (len(layout["controllers"]) if layout else 1))
        if not 1 <= metrics_port_base <= 65536 - count:
            raise InvalidRequest(f"--metrics-port-base {metrics_port_base}: the controller(s) and the nodes take "
                                 f"{count} ports from it up; it must be in 1..{65536 - count}")
    return {k: v for k, v in (("metrics_port_base", metrics_port_base), ("log_format", log_format),
                              ("log_level", log_level)) if v is not None}


def _pids(directory: Path) -> dict:
    """``DIR/run/pids.json``'s process ids by name (none from a missing or damaged file, nor a value that is not one)."""
    try:
        pids = json.loads((directory / "run" / "pids.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in pids.items() if type(v) is int and v > 0} if isinstance(pids, dict) else {}


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of this process is not running
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def running(directory: Path) -> list[str]:
    """The network's processes that run: a live pid of ``DIR/run/pids.json`` on this machine, or one answering its
    health check over mutual TLS with this deployment's CA wherever it runs (``net init --force`` refuses then)."""
    alive = [name for name, pid in _pids(directory).items() if _alive(pid)]
    try:
        procs = processes(directory)
        ok = health(directory, procs, timeout=1.0)
    except (InvalidRequest, OSError):  # not a network directory, or one damaged: no process of it can be asked
        return alive
    return alive + [p["name"] for p in procs if ok[p["name"]] and p["name"] not in alive]


def health(directory: Path, procs: list[dict], timeout: float = 2.0, bodies: dict | None = None,
           problems: dict | None = None) -> dict[str, bool]:
    """Each process's health check over mutual TLS (the controller's certificate), by name (``bodies``: filled with
    each answering node's and controller's ``/health`` JSON, by name; ``problems``: with why a node or the controller
    did not answer, a certificate problem named: :mod:`.tlsfail`)."""
    import httpx

    from .cluster import status_context
    from .wire import Role, check_peer

    ctx = status_context(directory)
    dev_ctx = None

    def one(p):
        if p["role"] in ("etcd", "proxy"):
            from .cluster import other_health

            return other_health(directory, p)
        try:
            if p["role"] == "device":  # the emulator's own PKI: its operator certificate reads its counters
                with httpx.Client(verify=dev_ctx, timeout=timeout) as cl:
                    r = cl.get(f"https://{p['address']}/qkdseg/v1/counters")
                return r.status_code == 200 and "links" in r.json()
            with httpx.Client(verify=ctx, timeout=timeout) as cl, cl.stream("GET", f"https://{p['address']}/health") as r:
                if p["role"] == "controller" or p.get("node") is not None:  # another role's certificate there:
                    check_peer(r, Role("controller", None) if p["role"] == "controller"  # WrongRole (.tlsfail)
                               else Role("node", str(p["node"])), p["address"])
                r.read()
            if bodies is not None and r.status_code == 200:
                bodies[p["name"]] = r.json()
            return r.status_code == 200 and r.json().get("status") == "ok"
        except Exception as err:  # noqa: BLE001 -- not answering is unhealthy
            if problems is not None and p["role"] in ("node", "controller"):
                from .tlsfail import describe

                problems[p["name"]] = describe(err)
            return False

    if any(p["role"] == "device" for p in procs):
        import ssl

        from ..devices.emulator import ADMIN

        pk = directory / "devices" / "pki"
        dev_ctx = ssl.create_default_context(cafile=str(pk / "ca.crt"))
        dev_ctx.load_cert_chain(str(pk / f"{ADMIN}.crt"), str(pk / f"{ADMIN}.key"))

    with concurrent.futures.ThreadPoolExecutor(min(32, len(procs))) as ex:
        return dict(zip([p["name"] for p in procs], ex.map(one, procs)))


def status(directory: Path) -> list[dict]:
    procs = processes(directory)
    pids = _pids(directory)
    bodies: dict = {}
    problems: dict = {}
    ok = health(directory, procs, bodies=bodies, problems=problems)
    try:
        dash = json.loads((directory / "run" / "dashboard.json").read_text())["url"]
    except (FileNotFoundError, ValueError, KeyError):
        dash = None
    rows = [{"role": p["role"], "node": p["node"], "pid": pids.get(p["name"]) if _alive(pids.get(p["name"])) else None,
             "address": p["address"], "etsi014_url": p["etsi014_url"], "healthy": bool(ok[p["name"]]),
             "dashboard_url": dash if p["name"] == "controller" and pids else None,
             "metrics_url": p["metrics_url"] if pids else None} for p in procs]
    for row, p in zip(rows, procs):  # why a running process did not answer; a certificate problem, always
        why = problems.get(p["name"])
        if why is not None and (row["pid"] is not None or why.startswith(("wrong role", "the peer"))):
            row["problem"] = why
    for row, p in zip(rows, procs):  # the topology version each process runs (net add-node, ...: .membership)
        if "topology_version" in bodies.get(p["name"], {}):
            row["topology_version"] = bodies[p["name"]]["topology_version"]
    for row, p in zip(rows, procs):  # the nodes the controller plans around, each with its reason
        if not p.get("local", True):  # on another host (net init --inventory): net up does not start it
            row["remote"] = True
        if p["role"] == "controller":
            row["excluded"] = bodies.get(p["name"], {}).get("excluded", {})
        elif p["role"] == "node" and "stock" in bodies.get(p["name"], {}):  # the key stocks of its SAEs' pairs
            row["stock"] = bodies[p["name"]]["stock"]
    if any(p["role"] == "etcd" for p in procs) or sum(p["role"] == "controller" for p in procs) > 1:
        from .cluster import leaders

        for row, (name, flag) in zip(rows, leaders(directory, procs)):
            row["name"], row["leader"] = name, flag
    return rows


def start_one(directory: Path, p: dict, extra: tuple[str, ...] = (), env: dict | None = None) -> subprocess.Popen:
    logs = directory / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    cmd = p.get("cmd") or [sys.executable, "-m", "qkdseg", p["role"], "serve", p["dir"], *p.get("args", ()), *extra]
    if p.get("env"):
        env = {**(os.environ if env is None else env), **p["env"]}
    fd = os.open(logs / f"{p['name']}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, umask=0o077)


def up(directory: Path, *, timeout: float = 120.0, dashboard_port: int | None = None, controllers: int | None = None,
       etcd: int | None = None, faults: bool | None = None, metrics_port_base: int | None = None,
       log_format: str | None = None, log_level: str | None = None,
       port_range: tuple[int, int] | None = None) -> list[dict]:
    """Start every process and wait until each is healthy; returns the status rows.

    With ``dashboard_port`` the controller serves the operator dashboard on
    127.0.0.1 at that port (``net status`` gives its URL). With
    ``controllers``/``etcd``/``faults`` (net/cluster.py): an etcd cluster of
    ``etcd`` members, ``controllers`` controllers over it, and a fault proxy
    on every link; the etcd members start first. ``None``: as ``DIR/cluster.json`` says, else one controller
    on SQLite, no etcd, no proxies. ``port_range`` (``(lo, hi)``): the ports ``net up`` picks (etcd members,
    other controllers, fault proxies) are taken from it. The other options: the module's docstring.
    """
    from ..server.config import load_config

    net = _net(directory)
    load_config(directory / "controller")  # a damaged kms.toml of the controller: named before anything starts
    ops = check_ops(directory, metrics_port_base, log_format, log_level, controllers)
    pids = _pids(directory)
    running = [name for name, pid in pids.items() if _alive(pid)]
    if running:
        asked = [o for o, v in (("--dashboard-port", dashboard_port), ("--controllers", controllers), ("--etcd", etcd),
                                ("--faults", faults), ("--port-range", port_range), *((f"--{k.replace('_', '-')}", 1) for k in ops))
                 if v is not None]
        return _start_missing(directory, pids, running, asked, timeout)
    if net.get("inventory") and ((controllers or 1) != 1 or etcd or faults):
        raise InvalidRequest(f"{directory}: its processes' hosts are its inventory's (net init --inventory): "
                             "--controllers, --etcd and --faults run local replicas and proxies, not with one")
    if (controllers or 1) != 1 or etcd or faults or (directory / "cluster.json").exists():
        from .cluster import plan

        plan(directory, net, controllers, etcd, faults, port_range=port_range)
    if (directory / "run").exists() and not (directory / "run").is_dir():
        raise InvalidRequest(f"{directory / 'run'}: exists and is not a directory (net up keeps its run files there)")
    (directory / "run").mkdir(mode=0o700, exist_ok=True)
    write_private(directory / "run" / "ops.json", json.dumps(ops) + "\n")
    procs = [p for p in processes(directory) if p.get("local", True)]  # the others run on their own hosts
    dash = directory / "run" / "dashboard.json"
    dash.unlink(missing_ok=True)
    started = {}
    deadline = time.monotonic() + timeout
    try:
        # the etcd members and the fault proxy first (the controllers and nodes need them), then the others
        for phase in ([p for p in procs if p["role"] in ("etcd", "proxy")],
                      [p for p in procs if p["role"] not in ("etcd", "proxy")]):
            if phase:
                _start_phase(directory, phase, started, dashboard_port, deadline, timeout)
    except BaseException:
        _stop({k: v.pid for k, v in started.items()})
        for name in ("pids.json", "ops.json"):
            (directory / "run" / name).unlink(missing_ok=True)
        raise
    return status(directory)


def _start_missing(directory: Path, pids: dict, running: list[str], asked: list[str], timeout: float) -> list[dict]:
    """``net up`` while some of the network's processes run: start the others, as ``net up`` started them
    (``DIR/run/ops.json``, ``DIR/cluster.json``); the status rows. Refused when all run, or with an option."""
    procs = [p for p in processes(directory) if p.get("local", True)]
    missing = [p for p in procs if p["name"] not in running]
    if not missing or asked:
        why = f"options ({', '.join(asked)}) apply to a whole start" if missing else "every process runs"
        raise InvalidRequest(f"{directory}: already up ({len(running)} of {len(procs)} processes running; {why}: "
                             "'qkdseg net up DIR' with no option starts the missing ones, 'qkdseg net down' stops "
                             "all)")
    started: dict = {}
    deadline = time.monotonic() + timeout
    try:
        for phase in ([p for p in missing if p["role"] in ("etcd", "proxy")],
                      [p for p in missing if p["role"] not in ("etcd", "proxy")]):
            if phase:
                _start_phase(directory, phase, started, None, deadline, timeout, keep=pids)
    except BaseException:
        _stop({k: v.pid for k, v in started.items()})
        write_private(directory / "run" / "pids.json", json.dumps(pids) + "\n")
        raise
    nodes = [str(p["node"]) for p in missing if p["role"] == "node"]  # a new one (net add-node): planned through
    ctrl = [p for p in procs if p["role"] == "controller"][:1]  # once its first report reached the controller
    while nodes and ctrl and time.monotonic() < deadline:
        bodies: dict = {}
        health(directory, ctrl, timeout=1.0, bodies=bodies)
        if not any("unready" in bodies.get(ctrl[0]["name"], {}).get("excluded", {}).get(n, "") for n in nodes):
            break
        time.sleep(0.2)
    return status(directory)


def _start_phase(directory: Path, procs: list[dict], started: dict, dashboard_port, deadline: float,
                 timeout: float, keep: dict | None = None) -> None:
    dash = directory / "run" / "dashboard.json"
    for p in procs:
        extra = ("--dashboard-port", str(dashboard_port)) if p["name"] == "controller" and dashboard_port else ()
        started[p["name"]] = start_one(directory, p, extra)
    if dashboard_port and any(p["name"] == "controller" for p in procs):
        write_private(dash, json.dumps({"url": f"http://127.0.0.1:{dashboard_port}/dashboard/"}) + "\n")
    pids = {**(keep or {}), **{k: v.pid for k, v in started.items()}}
    write_private(directory / "run" / "pids.json", json.dumps(pids) + "\n")
    waiting = list(procs)
    while waiting:
        dead = [p["name"] for p in waiting if started[p["name"]].poll() is not None]
        if dead:
            why = _last_error(directory / "logs" / f"{dead[0]}.log")
            raise InvalidRequest(f"process(es) exited at start: {', '.join(dead[:5])}"
                                 + (f"; {dead[0]}: {why}" if why else "") + f" (see {directory / 'logs'}/)")
        ok = health(directory, waiting, timeout=1.0)
        waiting = [p for p in waiting if not ok[p["name"]]]
        if waiting and time.monotonic() > deadline:
            raise InvalidRequest(f"{len(waiting)} process(es) not healthy after {timeout:.0f} s "
                                 f"(first: {waiting[0]['name']}; see {directory / 'logs'}/)")
        if waiting:
            time.sleep(0.2)


def _stop(pids: dict, wait: float = 20.0) -> None:
    for pid in pids.values():
        if _alive(pid):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        for pid in pids.values():  # reap our own children
            try:
                os.waitpid(int(pid), os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)
    for pid in pids.values():
        if _alive(pid):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _last_error(log: Path) -> str | None:
    """The cause a process gave for its exit: its log's last ``error`` line (``qkdseg: error: ...``, or a JSON log
    line at level error), cut to 300 characters; ``None`` without one."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        return None
    for line in reversed(lines):
        if "error: " in line:
            return line.split("error: ", 1)[1].strip()[:300]
        if line.startswith("{") and '"level":"error"' in line.replace(" ", ""):
            try:
                return str(json.loads(line).get("message", ""))[:300] or None
            except ValueError:
                continue
    return None


def down(directory: Path) -> tuple[int, list[str]]:
    """Stop every process of ``DIR`` (SIGTERM, then SIGKILL after 20 s), whatever state its files are in.

    The processes are those of ``DIR/run/pids.json`` and every running process whose command line names a path
    inside ``DIR`` (all of them when the pid file is missing or damaged). Returns how many were running, and one
    line per thing that stands in the way (a damaged pid file, a process that would not stop)."""
    if not directory.is_dir() or not ((directory / "nodes.json").exists() or (directory / "controller").is_dir()):
        raise InvalidRequest(f"{directory}: not a network directory (run 'qkdseg net init {directory} ...' first)")
    notes: list[str] = []
    path = directory / "run" / "pids.json"
    pids: dict = {}
    if path.exists():
        try:
            pids = {str(k): int(v) for k, v in load_json(path, "net up's file of process ids", advice=(
                f"stopping the processes whose command line names {directory}")).items() if v}
        except InvalidRequest as err:
            notes.append(str(err))
        except (TypeError, ValueError, AttributeError):
            notes.append(f"{path}: net up's file of process ids is damaged: a value is not a process id; stopping the "
                         f"processes whose command line names {directory}")
    from .pidscan import naming

    ours = naming(directory)
    for name, pid in list(pids.items()):
        if pid not in ours:  # a stale or damaged file's pid, now another process's: never signalled
            if _alive(pid):
                notes.append(f"{path}: {name}'s pid {pid} is not a process of this network (its command line names no "
                             f"path in {directory}): left alone")
            del pids[name]
    for pid, cmd in ours.items():
        if pid not in pids.values():
            pids[f"pid {pid} ({cmd})"] = pid
    n = sum(1 for p in pids.values() if _alive(p))
    _stop(pids)
    notes += [f"{name} (pid {pid}) did not stop" for name, pid in pids.items() if _alive(pid)]
    for name in ("pids.json", "dashboard.json", "ops.json"):
        (directory / "run" / name).unlink(missing_ok=True)
    return n, notes


def wait_foreground(directory: Path) -> None:
    """Block until SIGINT/SIGTERM, then stop every process."""
    stop = []

    def handler(sig, frame):
        stop.append(sig)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        down(directory)
