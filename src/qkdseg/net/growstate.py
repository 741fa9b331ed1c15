"""What a change of membership starts from and how it is made (:mod:`.grow`'s commands): the deployment loaded from
``DIR``, the new state computed (:class:`Change`), ``DIR`` written, and every process told over mutual TLS with the
admin's certificate (``POST /control/v1/membership``: :mod:`.membership`, :mod:`.nodemembers`)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import secrets
import tempfile
import time
from pathlib import Path

from ..errors import InvalidRequest
from ..server.files import REMAKE, check_fields, load_json, write_durably
from .layout import link_name, seal


@dataclasses.dataclass
class Deployment:
    """What a change starts from, loaded from ``DIR``."""

    dir: Path
    net_conf: dict  # DIR/controller/net.json
    cfg: object  # DIR/controller/kms.toml (KmsConfig)
    network: object  # the network it plans over
    names: dict  # nodes.json: node id -> directory name
    confs: dict  # node id (text) -> its node.json

    @property
    def version(self) -> int:
        return int(self.net_conf.get("topology_version", 0))

    def node_dir(self, node) -> Path:
        return self.dir / "nodes" / self.names[str(node)]

    def agree(self) -> bool:
        """Whether the links' seeds are agreed by their ends (net init --link-seeds agree)."""
        return any(c.get("link_seeds") == "agree" for c in self.confs.values())


def load(directory: Path) -> Deployment:
    """The deployment in ``DIR``, each file a change reads or rewrites checked first (a damaged one is one line
    naming it and the field); no process is asked yet (:meth:`Change.ensure_up`), so a command's own refusals
    (an unknown node, a link that exists, a bad value) come first, also while the network is down."""
    from ..server.config import load_config
    from ..topology import load as load_network
    from .membership import load_net_conf

    d = Path(directory)
    if not (d / "controller" / "net.json").exists():
        raise InvalidRequest(f"{d}: not a network directory (run 'qkdseg net init {d} ...' first)")
    net_conf = load_net_conf(d / "controller")
    if net_conf.get("link_source") == "device":
        raise InvalidRequest(f"{d}: a device-fed network (--link-source device): changes of membership are not "
                             "supported for it yet")
    if net_conf.get("controllers"):
        raise InvalidRequest(f"{d}: replicated controllers: changes of membership are not supported for them yet")
    cfg = _kms_config(d / "controller", load_config)
    spec = cfg.network  # as the controller loads it (server.core.load_network, which would import the router)
    network = load_network(spec if spec == "example" or spec.startswith("topohub:") else str(cfg.path(spec)))
    names, confs = _node_files(d, net_conf, network)
    return Deployment(d, net_conf, cfg, network, names, confs)


def _node_files(d: Path, net_conf: dict, network) -> tuple[dict, dict]:
    """``nodes.json`` and every node's ``node.json`` (and ``links.sealed.json``), checked against the network the
    controller plans over: each of its nodes listed, its directory's files readable and its own."""
    from .layout import _SAFE
    from .node import load_node_conf

    ids = [str(v) for v in network.graph.nodes]
    in_net = {str(n["id"]) for n in net_conf["nodes"]}
    path = d / "nodes.json"
    names = load_json(path, "the network's list of nodes")
    for v in ids:
        for where, what, listed in ((d / "controller" / "net.json", "the network's layout", v in in_net),
                                    (path, "the network's list of nodes", v in names)):
            if not listed:
                raise InvalidRequest(f"{where}: {what} is damaged: node {v} of the network the controller plans over "
                                     f"is not in it; {REMAKE}")
    check_fields(path, "the network's list of nodes",
                 [(v, lambda v=v: bool(_SAFE.fullmatch(names[v]))) for v in ids])
    names = {v: names[v] for v in ids}  # an entry of an unfinished change left out: the next change rewrites it
    confs = {}
    for v, name in names.items():
        nd = d / "nodes" / name
        confs[v] = conf = load_node_conf(nd)
        check_fields(nd / "node.json", "the node's configuration", [("id", lambda: str(conf["id"]) == v)])
        if (nd / "links.sealed.json").exists():
            load_json(nd / "links.sealed.json", "the node's sealed link seeds")
    return names, confs


def _kms_config(c: Path, load_config):
    """The controller's ``kms.toml`` as it wrote it; not checked field by field as ``load_config`` does (its check
    imports the routing algorithms: seconds of a command's start). A file that does not read: ``load_config``'s
    one line."""
    import tomllib

    from ..server.config import KmsConfig

    try:
        raw = tomllib.loads((c / "kms.toml").read_text())
        cfg = KmsConfig(**{**raw, "saes": {str(k): str(v) for k, v in raw["saes"].items()}}, _dir=c)
    except Exception:  # noqa: BLE001 -- damaged or missing: named by the full load
        return load_config(c)
    check_fields(c / "kms.toml", "the controller's configuration", [  # the fields a change reads
        ("network", lambda: isinstance(cfg.network, str) and bool(cfg.network)),
        ("kme_id", lambda: isinstance(cfg.kme_id, str)), ("stock", lambda: isinstance(cfg.stock.get("pairs", []), list))])
    return cfg


def _node_link_data(network) -> dict:
    from ..topology.files import write_network

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.json"
        write_network(network, path)
        return json.loads(path.read_text())


def _client(d: Path):
    from .wire import client_context

    pki = d / "pki"
    gone = next((pki / f for f in ("admin.crt", "admin.key") if not (pki / f).exists()), None)
    if gone is not None:
        raise InvalidRequest(f"{gone}: no such file (the admin's certificate and key: net init makes DIR/pki/admin.crt "
                             "and .key since changes of membership exist; an older deployment: 'qkdseg net init "
                             "--force' or issue one for the role urn:qkdseg:admin with the network's CA)")
    ctx = client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
    from cryptography import x509

    from .wire import role_of

    role = role_of(x509.load_pem_x509_certificate((pki / "admin.crt").read_bytes()))
    if role is None or role.kind != "admin":  # refused with 403 by every process, after DIR was written
        raise InvalidRequest(f"{pki / 'admin.crt'}: not the admin's certificate (its role: "
                             f"{'none' if role is None else ' '.join(filter(None, (role.kind, role.ident)))}); "
                             "a change of membership is taken from the role urn:qkdseg:admin only")
    return ctx


def _controller_up(d: Path, address: str) -> None:
    """A change goes through the running controller: one line when it does not answer (nothing written)."""
    import httpx

    why = None
    try:
        with httpx.Client(verify=_client(d), timeout=5.0) as cl:
            code = cl.get(f"https://{address}/health").status_code
        if code != 200:
            why = f"its health check answered {code}"
    except httpx.HTTPError as err:
        from .tlsfail import describe

        why = describe(err)
    if why is not None:
        raise InvalidRequest(f"the controller at {address} does not answer ({why}): a change of membership goes through the running controller; 'qkdseg net up {d}' "
                             "first (nothing was changed)")


def _post(ctx, address: str, body: dict, timeout: float = 20.0) -> tuple[bool, str]:
    """One change to one process: ``(applied, why not)``."""
    import httpx

    try:
        with httpx.Client(verify=ctx, timeout=timeout) as cl:
            r = cl.post(f"https://{address}/control/v1/membership", json=body)
    except httpx.HTTPError as err:
        from .tlsfail import describe

        return False, f"not reached ({describe(err)})"
    if r.status_code == 200:
        return True, ""
    try:
        detail = r.json().get("detail", "")
    except ValueError:
        detail = r.text[:200]
    return False, f"answered {r.status_code}: {detail}"


class Change:
    """One change being made: the new state (network, registry, nodes, node.json files) and its messages."""

    def __init__(self, dep: Deployment, op: str) -> None:
        self.dep, self.op = dep, op
        self.version = dep.version + 1
        self.network = dep.network
        self.saes = dict(dep.cfg.saes)
        self.nodes = [dict(n) for n in dep.net_conf["nodes"]]
        self.names = dict(dep.names)
        self.confs = {k: dict(c) for k, c in dep.confs.items()}
        self.sealed: dict[str, dict[str, str]] = {}  # node -> link name -> its seed sealed to it
        self.removed: dict[str, str] = {}
        self.fresh: set[str] = set()  # new nodes: not running yet (net up starts them), not told
        self.t0 = time.perf_counter()
        self.up = False

    def ensure_up(self) -> None:
        """The controller answers (once per change): checked after every refusal of the command's own and before
        anything is written."""
        if not self.up:
            _controller_up(self.dep.dir, self.dep.net_conf["address"])
            self.up = True

    def conf_sync(self) -> None:
        """Every node.json's registry, addresses, version and SAEs from the new state."""
        addresses = {str(n["id"]): n["address"] for n in self.nodes}
        at = {str(n["id"]): list(n["saes"]) for n in self.nodes}
        for v, conf in self.confs.items():
            conf.update(registry=dict(self.saes), addresses=addresses, saes=at.get(v, []),
                        topology_version=self.version)
            if self.removed:
                conf["removed"] = {**conf.get("removed", {}), **self.removed}

    def new_seed(self, a, b) -> None:
        """A new link's seed sealed under each end's storage key (--link-seeds admin; none with agree)."""
        if self.dep.agree():
            return
        seed, name = secrets.token_bytes(32), link_name(a, b)
        from ..server.storagekey import load_storage_key

        for end in (a, b):
            path = self.dep.dir / "nodes" / self.names[str(end)] / "storage.key"
            if not path.exists():
                raise InvalidRequest(f"{path}: missing: with --link-seeds admin the admin machine seals a new link's "
                                     "seed under each end's storage key (an enrolled deployment agrees its seeds: "
                                     "net init --link-seeds agree)")
            self.sealed.setdefault(str(end), {})[name] = seal(load_storage_key(path), name, seed)

    def controller_body(self) -> dict:
        return {"version": self.version, "op": self.op, "network": _node_link_data(self.network),
                "saes": self.saes, "nodes": self.nodes, "removed": self.removed}

    def node_body(self, v: str) -> dict:
        return {"version": self.version, "op": self.op, "conf": self.confs[v], "sealed": self.sealed.get(v, {}),
                "removed": self.removed}

    def commit(self, *, nodes_first: bool, touched: set[str] | None = None) -> dict:
        """Write DIR, tell the processes in order, write the controller's files in DIR; the summary."""
        d = self.dep.dir
        self.ensure_up()
        ctx = _client(d)
        ctrl_addr = self.dep.net_conf["address"]
        self.conf_sync()
        for v, conf in self.confs.items():  # the admin's copies (a node that does not answer reads them at start)
            write_durably(d / "nodes" / self.names[v] / "node.json", json.dumps(conf, indent=1) + "\n")
        write_durably(d / "nodes.json", json.dumps(self.names, indent=1) + "\n")
        nodes = {str(n["id"]): n["address"] for n in self.nodes if str(n["id"]) in self.confs and str(n["id"]) not in self.fresh}

        def tell_nodes() -> dict:
            with concurrent.futures.ThreadPoolExecutor(min(16, max(1, len(nodes)))) as ex:
                futs = {v: ex.submit(_post, ctx, a, self.node_body(v), 10.0) for v, a in nodes.items()}
                return {v: f.result() for v, f in futs.items()}

        out: dict = {"op": self.op, "topology_version": self.version}
        t = time.perf_counter()
        if nodes_first:
            told = tell_nodes()
            ok, why = _post(ctx, ctrl_addr, self.controller_body())
        else:
            ok, why = _post(ctx, ctrl_addr, self.controller_body())
            told = tell_nodes() if ok else {}
        if not ok:
            raise InvalidRequest(f"the controller at {ctrl_addr} {why}: a change of membership goes through the "
                                 "running controller ('qkdseg net up DIR' first); the nodes' files in DIR are written, "
                                 "run the command again once it runs")
        self._fix_sealed(told)
        self._write_controller()
        out["processes_s"] = round(time.perf_counter() - t, 3)
        out["applied"] = ["controller"] + sorted(v for v, (ok, _) in told.items() if ok)
        out["not_applied"] = {v: why for v, (ok, why) in told.items() if not ok}
        out["seconds"] = round(time.perf_counter() - self.t0, 3)
        return out

    def _fix_sealed(self, told: dict) -> None:
        """The sealed seeds of a node that did not apply the change, in its DIR copy (a running node writes its own)."""
        for v, conf in self.confs.items():
            if v not in self.fresh and told.get(v, (False, ""))[0]:
                continue
            path = self.dep.dir / "nodes" / self.names[v] / "links.sealed.json"
            if not path.exists():
                continue
            sealed = json.loads(path.read_text())
            keep = {link_name(*lk["link"]) for lk in conf["links"]}
            new = {k: b for k, b in sealed.items() if k in keep} | self.sealed.get(v, {})
            if new != sealed:
                write_durably(path, json.dumps(new, indent=1) + "\n")

    def _write_controller(self) -> None:
        from ..server.config import write_config

        c = self.dep.dir / "controller"
        write_durably(c / "network.json", json.dumps(_node_link_data(self.network)) + "\n")
        write_config(c, dataclasses.replace(self.dep.cfg, network="network.json", saes=self.saes))
        conf = json.loads((c / "net.json").read_text())
        conf.update(nodes=self.nodes, topology_version=self.version, removed={**conf.get("removed", {}),
                                                                              **self.removed})
        write_durably(c / "net.json", json.dumps(conf, indent=1) + "\n")


def _graph(dep: Deployment):
    return dep.network.graph.copy()


def _network(g, name: str):
    from ..network import Network

    return Network(g, name=name)


def _resolve(dep: Deployment, text: str, what: str):
    try:
        return dep.network.resolve(str(text))
    except Exception:  # noqa: BLE001
        removed = dep.net_conf.get("removed", {})
        if str(text) in removed:
            raise InvalidRequest(f"{what} {text!r}: was removed from the network ({removed[str(text)]})") from None
        raise InvalidRequest(f"{what} {text!r}: not a node of the network "
                             f"({', '.join(map(str, list(dep.network.graph.nodes)[:20]))})") from None


def _entry(dep_or_change, v, a, b, data: dict) -> dict:
    """Node ``v``'s entry for its new link ``(a, b)`` (as net init writes them)."""
    other = b if a == v else a
    addr = {str(n["id"]): n["address"] for n in dep_or_change.nodes}
    return {"link": [a, b], "neighbour": other, "address": addr[str(other)],
            "pool_bits": int(data.get("pool_bits", 100_000)), "rate_bps": data.get("rate_bps")}


def _oriented(network, u, v) -> tuple:
    """The link's ends in the network's orientation (the controller's and the nodes' name of it)."""
    a = network.arrays
    k = next(k for k in range(a.n_links) if {a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]} == {u, v})
    return a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]
