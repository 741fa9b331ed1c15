"""``net up --controllers N --etcd M --faults``: the layout of a replicated network (docs/network.md).

On the first such ``net up`` this writes ``DIR/cluster.json`` and keeps it
(an etcd member's data directory remembers its peer addresses, so the ports
must not change between runs):

- ``etcd``: ``M`` members ``e0..``, each on 127.0.0.1 with a client and a peer
  port chosen free (never 2379/2380), data in ``DIR/etcd/<name>/``;
  every port ``net up`` chooses is drawn from ``--port-range LO-HI``
  (default 20000-60000);
- ``controllers``: ``N`` controllers; the first is ``DIR/controller/`` at the
  address in ``net.json``, the others ``DIR/controller-<i>/`` (made from
  ``DIR/controller/`` on first use: its configuration, certificate and keys,
  not its SQLite state) on 127.0.0.1 at free ports;
- ``proxies`` (with ``--faults``): per link ``U-V`` one listener per
  direction, at the *receiving* node's IP on a free port (so the node's
  certificate still matches the address it is called at); ``net up`` tells
  each node its neighbours' proxy addresses (``QKDSEG_PEER_ADDRESSES``).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
from pathlib import Path

from ..errors import InvalidRequest
from .layout import load_cluster, write_private

RESERVED_PORTS = {2379, 2380}
COPY_SKIP = {"kms.sqlite3", "kms.sqlite3-wal", "kms.sqlite3-shm", "audit.jsonl", "lock"}
PORT_RANGE = (20000, 60000)
#: ``net up --log-level`` in etcd's words
ETCD_LEVELS = {"critical": "fatal", "error": "error", "warning": "warn", "info": "info", "debug": "debug"}


def parse_port_range(text: str) -> tuple[int, int]:
    """``--port-range LO-HI`` -> ``(lo, hi)``; anything else is one line of error."""
    lo, sep, hi = text.strip().partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        raise InvalidRequest(f"--port-range {text!r}: expected LO-HI, two ports with 1 <= LO <= HI <= 65535")
    return int(lo), int(hi)


def free_port(host: str = "127.0.0.1", taken: set | None = None, port_range: tuple[int, int] | None = None) -> int:
    """A port free on ``host`` now, in ``port_range`` (default :data:`PORT_RANGE`), not in ``taken`` (then added)."""
    taken = taken if taken is not None else set()
    lo, hi = port_range or PORT_RANGE
    if hi - lo < 400:  # a narrow range: each of its ports once, in random order
        candidates = random.sample(range(lo, hi + 1), hi - lo + 1)
    else:
        candidates = [random.randint(lo, hi) for _ in range(200)]
    for port in candidates:
        if port in RESERVED_PORTS or (host, port) in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add((host, port))
        return port
    raise InvalidRequest(f"no free port on {host} in {lo}-{hi}" + (" (--port-range)" if port_range else ""))


def path(directory: Path) -> Path:
    return directory / "cluster.json"


def load(directory: Path) -> dict | None:
    """``DIR/cluster.json`` (net up's etcd members, controllers and fault proxies), or ``None`` without one."""
    return load_cluster(directory)


def _link_key(u, v) -> str:
    return f"{u}-{v}"


def _chosen_ports(layout: dict) -> list[int]:
    """The ports the layout chose (the first controller's is net.json's, never chosen)."""
    addresses = [m[k] for m in layout["etcd"] for k in ("client", "peer")]
    addresses += [c["address"] for c in layout["controllers"][1:]]
    addresses += [a for p in layout.get("proxies", []) for a in p["listen"].values()]
    return [int(a.rsplit(":", 1)[1]) for a in addresses]


def plan(directory: Path, net: dict, controllers: int, etcd: int, faults: bool,
         port_range: tuple[int, int] | None = None) -> dict:
    """The cluster's layout (written once, then reused); refuses counts other than the ones it was made with
    (``None``: as it was made), and a ``port_range`` its ports are not in."""
    old = load(directory)
    if old is not None:
        have = (len(old["controllers"]), len(old["etcd"]), bool(old.get("proxies")))
        want = tuple(h if w is None else w for h, w in zip(have, (controllers, etcd, faults)))
        again = f"start with those (or net down, then remove {path(directory)} and {directory / 'etcd'}/)"
        if have != want:
            raise InvalidRequest(f"{path(directory)} was made for --controllers {have[0]} --etcd {have[1]}"
                                 f"{' --faults' if have[2] else ''}; {again}")
        outside = [p for p in _chosen_ports(old) if port_range and not port_range[0] <= p <= port_range[1]]
        if outside:
            lo, hi = port_range
            raise InvalidRequest(f"{path(directory)} was made with port {outside[0]}, outside --port-range {lo}-{hi}; "
                                 f"{again.replace('with those', 'without --port-range')}")
        return old
    controllers, etcd, faults = controllers or 1, etcd or 0, bool(faults)
    if controllers < 1 or etcd < 0:
        raise InvalidRequest("--controllers is at least 1 and --etcd at least 0")
    if controllers > 1 and etcd == 0:
        raise InvalidRequest("--controllers above 1 needs an etcd cluster to elect the leader: add --etcd 1 or 3")
    if etcd and not shutil.which("etcd"):
        raise InvalidRequest("etcd is not installed (Debian: apt-get install etcd-server; or 'make etcd')")
    taken: set = set()

    def pick(host: str) -> int:
        return free_port(host, taken, port_range)

    members = []
    for i in range(etcd):
        members.append({"name": f"e{i}", "client": f"127.0.0.1:{pick('127.0.0.1')}",
                        "peer": f"127.0.0.1:{pick('127.0.0.1')}", "dir": f"etcd/e{i}"})
    ctrls = [{"name": "controller", "dir": "controller", "address": net["address"]}]
    for i in range(1, controllers):
        ctrls.append({"name": f"controller-{i}", "dir": f"controller-{i}",
                      "address": f"127.0.0.1:{pick('127.0.0.1')}"})
    proxies = []
    if faults:
        addr = {str(n["id"]): n["address"] for n in net["nodes"]}
        for n in net["nodes"]:
            node_dir = directory / "nodes" / n["dir"]
            from .node import load_node_conf

            conf = load_node_conf(node_dir)
            for lk in conf["links"]:
                u, v = (str(x) for x in lk["link"])
                if str(n["id"]) != u:
                    continue  # each link once, from its first end
                hu, hv = addr[u].rsplit(":", 1)[0], addr[v].rsplit(":", 1)[0]
                proxies.append({"link": _link_key(u, v), "ends": [u, v],
                                # traffic from u to v enters at v's IP, and from v to u at u's IP
                                "listen": {u + ">" + v: f"{hv}:{pick(hv)}",
                                           v + ">" + u: f"{hu}:{pick(hu)}"},
                                "target": {u + ">" + v: addr[v], v + ">" + u: addr[u]}})
    layout = {"etcd": members, "controllers": ctrls, "proxies": proxies}
    for c in ctrls[1:]:
        make_controller_dir(directory, directory / c["dir"])
    write_private(path(directory), json.dumps(layout, indent=1) + "\n")
    return layout


def make_controller_dir(directory: Path, target: Path) -> None:
    """A standby controller's directory: ``DIR/controller/``'s files but its SQLite state (they share etcd's)."""
    if target.exists():
        return
    src = directory / "controller"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    for f in src.iterdir():
        if f.is_file() and f.name not in COPY_SKIP:
            shutil.copy2(f, tmp / f.name)
    tmp.rename(target)


def store_spec(layout: dict) -> str | None:
    if not layout["etcd"]:
        return None
    return "etcd://" + ",".join(m["client"] for m in layout["etcd"])


def etcd_command(directory: Path, layout: dict, m: dict, log_level: str = "warn") -> list[str]:
    cluster = ",".join(f"{x['name']}=http://{x['peer']}" for x in layout["etcd"])
    token = "qkdseg-" + json.loads((directory / "controller" / "net.json").read_text())["address"].replace(":", "-")
    return ["etcd", "--name", m["name"], "--data-dir", str(directory / m["dir"]),
            "--listen-client-urls", f"http://{m['client']}", "--advertise-client-urls", f"http://{m['client']}",
            "--listen-peer-urls", f"http://{m['peer']}", "--initial-advertise-peer-urls", f"http://{m['peer']}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", log_level, "--logger", "zap"]


def peer_table(layout: dict, node: str) -> dict[str, str]:
    """Node ``node``'s neighbours -> the proxy listener of the direction ``node -> neighbour``."""
    out = {}
    for p in layout.get("proxies", []):
        for direction, listen in p["listen"].items():
            src, dst = direction.split(">")
            if src == node:
                out[dst] = listen
    return out


def etcd_health(member: dict, timeout: float = 1.0) -> tuple[bool, bool]:
    """``(healthy, leader)`` of one member, from its own ``/health`` and ``maintenance/status``."""
    import httpx

    try:
        with httpx.Client(timeout=timeout) as cl:
            h = cl.get(f"http://{member['client']}/health")
            ok = h.status_code == 200 and h.json().get("health") == "true"
            st = cl.post(f"http://{member['client']}/v3/maintenance/status", json={}).json()
        return ok, str(st.get("leader")) == str(st.get("header", {}).get("member_id"))
    except Exception:  # noqa: BLE001 -- not answering is unhealthy
        return False, False


def replicated_processes(directory: Path, layout: dict, base: list[dict], log_level: str | None = None) -> list[dict]:
    """``procs.processes`` with the layout: the etcd members, every controller (over etcd), the proxy, and the
    nodes told every controller's address and their neighbours' proxy addresses. ``log_level``: net up's, for etcd."""
    spec = store_spec(layout)
    level = ETCD_LEVELS[log_level] if log_level else "warn"
    out = [{"role": "etcd", "node": None, "address": m["client"], "etsi014_url": None, "dir": str(directory / m["dir"]),
            "name": f"etcd-{m['name']}", "cmd": etcd_command(directory, layout, m, level), "member": m}
           for m in layout["etcd"]]
    for c in layout["controllers"]:
        args = ("--address", c["address"]) + (("--store", spec) if spec else ())
        out.append({"role": "controller", "node": None, "address": c["address"], "etsi014_url": None,
                    "dir": str(directory / c["dir"]), "name": c["name"], "args": args})
    if layout.get("proxies"):
        import sys

        out.append({"role": "proxy", "node": None, "address": "-", "etsi014_url": None, "dir": str(directory),
                    "name": "faults", "cmd": [sys.executable, "-m", "qkdseg.net.faults", str(directory)]})
    ctrl = ",".join(c["address"] for c in layout["controllers"])
    for p in base:
        if p["role"] != "node":
            continue
        env = {"QKDSEG_CONTROLLERS": ctrl}
        if layout.get("proxies"):
            env["QKDSEG_PEER_ADDRESSES"] = json.dumps(peer_table(layout, p["node"]))
        out.append({**p, "env": env})
    return out


def inventory_processes(directory: Path, net: dict, base: list[dict]) -> list[dict]:
    """``procs.processes`` with the inventory's replicated controllers (``DIR/controller-<i>/``, over its etcd
    members: ``--store``), each process marked ``local`` (its host is on this machine: ``net up`` starts it)."""
    from .inventory import host_of, is_local

    out = list(base)
    for i, extra in enumerate((net.get("controllers") or [])[1:], start=1):
        out.insert(out.index(next(p for p in out if p["role"] == "controller")) + i,
                   {"role": "controller", "node": None, "address": extra, "etsi014_url": None,
                    "dir": str(directory / f"controller-{i}"), "name": f"controller-{i}"})
    if net.get("etcd"):
        store = ("--store", "etcd://" + ",".join(net["etcd"]))
        out = [{**p, "args": store} if p["role"] == "controller" else p for p in out]
    local: dict[str, bool] = {}
    for p in out:  # net up starts the processes on this machine; the others run on their hosts
        host = host_of(p["address"]) if ":" in p["address"] else "127.0.0.1"
        p["local"] = local.setdefault(host, is_local(host))
    return out


def status_context(directory: Path):
    """The TLS client context ``net status`` calls the processes with: the controller's certificate where this
    machine holds its key, else the admin's ``DIR/pki/operator.crt`` (net init with an inventory or --enroll)."""
    from .wire import client_context

    c, pki = directory / "controller", directory / "pki"
    if (c / "controller.key").exists() or not (pki / "operator.key").exists():
        return client_context(c / "controller.crt", c / "controller.key", c / "ca.crt")
    return client_context(pki / "operator.crt", pki / "operator.key", pki / "ca.crt")


def other_health(directory: Path, p: dict) -> bool:
    if p["role"] == "etcd":
        return etcd_health(p["member"])[0]
    from .faults import ready

    return ready(directory)


def leaders(directory: Path, procs: list[dict]) -> list[tuple[str, bool | None]]:
    """Per process ``(name, leader)``: a controller's own ``/health`` (``leader``), an etcd member's status;
    ``None`` for the others."""
    import concurrent.futures

    import httpx

    ctx = status_context(directory)

    def one(p):
        if p["role"] == "etcd":
            return p["name"], etcd_health(p["member"])[1]
        if p["role"] != "controller":
            return p["name"], None
        try:
            with httpx.Client(verify=ctx, timeout=2.0) as cl:
                return p["name"], bool(cl.get(f"https://{p['address']}/health").json().get("leader", False))
        except Exception:  # noqa: BLE001 -- not answering: not the leader
            return p["name"], False

    with concurrent.futures.ThreadPoolExecutor(min(32, len(procs))) as ex:
        return list(ex.map(one, procs))
