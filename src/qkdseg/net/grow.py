"""``qkdseg net add-node|add-link|remove-link|remove-node|sae add|sae remove``: a running network grown and shrunk.

Each command, on the admin's machine (the deployment directory ``DIR`` and ``DIR/pki/admin.crt``):

1. loads the deployment (``DIR/controller/net.json``, ``kms.toml``, its network, every ``node.json``) and
   computes the new one; the next ``topology_version`` is one more than ``net.json``'s;
2. writes what is new in ``DIR``: every ``node.json``, a new node's directory (its certificate and keys, or none
   with enrolment: then ``node keygen`` and ``net sign`` on its host, and a bundle, ``DIR/bundles/node-<dir>.tar.gz``),
   a new link's seed sealed under each end's storage key (``--link-seeds admin``; with ``agree`` the two ends agree
   it themselves, :mod:`.linkseeds`), ``nodes.json``;
3. tells every process over mutual TLS with the admin's certificate (``POST /control/v1/membership``,
   :mod:`.membership`, :mod:`.nodemembers`): on additions the nodes first, then the controller (the ends hold a
   link before it is planned over); on removals the controller first (no plan uses it), then the nodes (which
   destroy its key). The controller must run (it forgets a removed link's consumed offset in its store); a node
   that does not answer reads the change from its files at its next start (the command names it);
4. writes the controller's files in ``DIR`` as the controller wrote its own (``net.json``, ``network.json``,
   ``kms.toml``).

No process is restarted; ``net up DIR`` then starts a new node (and only what is not running).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidRequest
from .growstate import Change, Deployment, _entry, _graph, _network, _oriented, _resolve, load
from .layout import dir_names


# -- the commands ---------------------------------------------------------------------------------
def sae_add(directory: Path, sae: str, node: str, ca_key: Path | None = None) -> dict:
    from ..server.config import check_sae_id

    dep = load(directory)
    if sae in dep.cfg.saes:
        raise InvalidRequest(f"SAE {sae!r} is registered already (at node {dep.cfg.saes[sae]})")
    v = _resolve(dep, node, f"SAE={node}: node")
    ch = Change(dep, f"sae add {sae}={v}")
    check_sae_id(sae, "SAE id")  # the rules of net init's --sae
    if sae == dep.cfg.kme_id:
        raise InvalidRequest(f"SAE {sae!r}: the controller's KME id (kms.toml kme_id); choose another id")
    ch.saes[sae] = str(v)
    for n in ch.nodes:
        if str(n["id"]) == str(v):
            n["saes"] = [*n["saes"], sae]
    out = ch.commit(nodes_first=True)
    out["certificate"] = _sae_cert(directory, sae, ca_key)
    return out


def _sae_cert(directory: Path, sae: str, ca_key: Path | None) -> str:
    """``DIR/pki/SAE.crt`` and ``.key`` as ``net sae cert`` writes them, when the CA's key is at hand."""
    from ..server.pki import load_ca, write_cert, write_key
    from .certs import issue_role, role_uri

    pki = Path(directory) / "pki"
    if ca_key is None and not (pki / "ca.key").exists():
        return f"none written: 'qkdseg net sae cert {directory} {sae} --ca-key PATH [--csr FILE]'"
    ca_k, ca = load_ca(pki, ca_key)
    key, cert = issue_role(ca_k, ca, sae, role_uri("sae", sae))
    write_key(pki / f"{sae}.key", key)
    write_cert(pki / f"{sae}.crt", cert)
    return str(pki / f"{sae}.crt")


def sae_remove(directory: Path, sae: str) -> dict:
    dep = load(directory)
    if sae not in dep.cfg.saes:
        raise InvalidRequest(f"SAE {sae!r} is not registered ({', '.join(sorted(dep.cfg.saes))})")
    ch = Change(dep, f"sae remove {sae}")
    del ch.saes[sae]
    for n in ch.nodes:
        n["saes"] = [s for s in n["saes"] if s != sae]
    return ch.commit(nodes_first=False)


def add_link(directory: Path, u: str, v: str, rate: float | None = None) -> dict:
    dep = load(directory)
    a, b = _resolve(dep, u, "U"), _resolve(dep, v, "V")
    if a == b or dep.network.graph.has_edge(a, b):
        raise InvalidRequest(f"link ({a}, {b}): {'a node is not linked to itself' if a == b else 'exists already'}")
    return _with_links(dep, f"add-link {a} {b}", [(a, b)], rate).commit(nodes_first=True)


def _with_links(dep: Deployment, op: str, pairs: list, rate: float | None, ch: Change | None = None, g=None):
    """The change that adds links ``pairs`` (each end's entry and seed)."""
    from ..network import DEFAULT_POOL_BITS

    if rate is not None and not rate > 0:
        raise InvalidRequest(f"--rate {rate:g}: must be more than 0 bits/s")
    ch = ch or Change(dep, op)
    g = _graph(dep) if g is None else g
    for a, b in pairs:
        g.add_edge(a, b, pool_bits=DEFAULT_POOL_BITS, **({"rate_bps": float(rate)} if rate else {}))
    ch.network = _network(g, dep.network.name)
    for a, b in pairs:
        a, b = _oriented(ch.network, a, b)
        data = ch.network.graph.edges[a, b]
        for end in (a, b):
            conf = ch.confs[str(end)]
            conf["links"] = [*conf["links"], _entry(ch, end, a, b, data)]
        ch.new_seed(a, b)
    return ch


def remove_link(directory: Path, u: str, v: str) -> dict:
    dep = load(directory)
    a, b = _resolve(dep, u, "U"), _resolve(dep, v, "V")
    if not dep.network.graph.has_edge(a, b):
        raise InvalidRequest(f"link ({a}, {b}): no such link in the network")
    ch = Change(dep, f"remove-link {a} {b}")
    g = _graph(dep)
    g.remove_edge(a, b)
    ch.network = _network(g, dep.network.name)
    for end in (a, b):
        conf = ch.confs[str(end)]
        conf["links"] = [lk for lk in conf["links"] if set(lk["link"]) != {a, b}]
    return ch.commit(nodes_first=False)


def add_node(directory: Path, ident: str, address: str, links: list[str], *, trusted: bool = False,
             p: float | None = None, rate: float | None = None, ca_key: Path | None = None) -> dict:
    from ..server.files import port_of

    dep = load(directory)
    ids = list(dep.network.graph.nodes)
    v = int(ident) if ident.isdigit() and all(isinstance(x, int) for x in ids) else ident
    if str(v) in {str(x) for x in ids} or str(v) in dep.net_conf.get("removed", {}):
        raise InvalidRequest(f"--id {ident}: a node of that id is (or was) in the network")
    try:
        port_of(address)
    except Exception:  # noqa: BLE001
        raise InvalidRequest(f"--address {address!r}: expected HOST:PORT") from None
    if address in {n["address"] for n in dep.net_conf["nodes"]} or address == dep.net_conf["address"]:
        raise InvalidRequest(f"--address {address}: another process of the network listens there")
    if not links:
        raise InvalidRequest("--link: give at least one node to link the new node to")
    others = [_resolve(dep, x, "--link") for x in links]
    p = 1.0 if trusted else (0.8 if p is None else p)
    if not 0.0 <= p <= 1.0:
        raise InvalidRequest(f"--p {p:g}: must be in 0..1")
    g = _graph(dep)
    g.add_node(v, trusted=bool(trusted), p=float(p))
    ch = Change(dep, f"add-node {v} at {address}")
    name = dir_names([*ids, v])[str(v)]
    if (dep.dir / "nodes" / name).exists():
        name = f"n{len(ids)}"
    ch.names[str(v)] = name
    ch.fresh.add(str(v))
    ch.nodes.append({"id": v, "dir": name, "address": address, "saes": []})
    template = next(iter(dep.confs.values()))
    ch.confs[str(v)] = {**{k: x for k, x in template.items() if k not in ("stock", "removed")}, "id": v,
                        "address": address, "saes": [], "links": [],
                        "etsi": {**template["etsi"], "kme_id": f"KME_{name}"}}
    nd = _new_node_dir(dep, v, name, address, ca_key)
    _with_links(dep, ch.op, [(v, o) for o in others], rate, ch, g)
    out = ch.commit(nodes_first=True)
    out["directory"] = str(nd)
    if not (nd / "node.key").exists():  # enrolment: its host makes its keys (node keygen), net sign its certificate
        bundle_path = dep.dir / "bundles" / f"node-{name}.tar.gz"
        bundle_path.parent.mkdir(mode=0o700, exist_ok=True)
        from .bundle import bundle

        bundle(dep.dir, bundle_path, node=str(v))
        out["bundle"] = str(bundle_path)
    return out


def _new_node_dir(dep: Deployment, v, name: str, address: str, ca_key: Path | None) -> Path:
    """``DIR/nodes/<dir>/``: its CA certificate, and (without enrolment) its certificate, key, storage and audit
    keys; with enrolment (the other nodes hold no storage key here) nothing secret."""
    from ..server.audit import make_audit_key
    from ..server.pki import load_ca, write_cert, write_key
    from ..server.storagekey import make_storage_key
    from .certs import issue_role, role_uri

    nd = dep.dir / "nodes" / name
    enrolled = not any((dep.node_dir(x) / "node.key").exists() for x in dep.names)
    if not enrolled:
        ca_k, ca = load_ca(dep.dir / "pki", ca_key)
    nd.mkdir(mode=0o700, parents=True)
    (nd / "ca.crt").write_bytes((dep.dir / "pki" / "ca.crt").read_bytes())
    (nd / "links.sealed.json").write_text("{}\n") if not enrolled else None
    if not enrolled:
        make_storage_key(nd / "storage.key")
        make_audit_key(nd / "audit.key")
        key, cert = issue_role(ca_k, ca, f"node {v}", role_uri("node", v), hosts=(address.rsplit(":", 1)[0].strip("[]"),))
        write_key(nd / "node.key", key)
        write_cert(nd / "node.crt", cert)
    return nd


def remove_node(directory: Path, ident: str) -> dict:
    dep = load(directory)
    v = _resolve(dep, ident, "ID")
    ch = Change(dep, f"remove-node {v}")
    g = _graph(dep)
    g.remove_node(v)
    ch.network = _network(g, dep.network.name)
    ch.removed[str(v)] = f"net remove-node, topology version {ch.version}"
    gone_saes = [s for s, n in ch.saes.items() if str(n) == str(v)]
    for s in gone_saes:
        del ch.saes[s]
    ch.nodes = [n for n in ch.nodes if str(n["id"]) != str(v)]
    del ch.confs[str(v)]
    name = ch.names.pop(str(v))
    for conf in ch.confs.values():
        conf["links"] = [lk for lk in conf["links"] if v not in lk["link"]]
    out = ch.commit(nodes_first=False)
    out["saes_removed"] = gone_saes
    out["stopped"] = _stop_local(dep.dir, f"node-{name}")
    return out


def _stop_local(d: Path, name: str) -> bool:
    """Stop the removed node's process if ``net up`` started it here (its pid in ``DIR/run/pids.json``)."""
    from .pidscan import naming
    from .procs import _alive, _pids, _stop
    from .layout import write_private

    pid = _pids(d).get(name)
    if pid is None or not _alive(pid) or pid not in naming(d):
        return False
    _stop({name: pid})
    pids = {k: x for k, x in json.loads((d / "run" / "pids.json").read_text()).items() if k != name}
    write_private(d / "run" / "pids.json", json.dumps(pids) + "\n")
    return True
