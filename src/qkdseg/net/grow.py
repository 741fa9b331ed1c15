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
import math
import re
import shutil
from pathlib import Path

from ..errors import InvalidRequest
from .growstate import Change, Deployment, _entry, _graph, _network, _oriented, _resolve, load
from .layout import dir_names


# -- the commands ---------------------------------------------------------------------------------
# Each checks what it is given first (the values alone, then against the deployment's files), then asks the
# controller (Change.ensure_up), then writes: a refusal leaves DIR and every process as they were.
def sae_add(directory: Path, sae: str, node: str, ca_key: Path | None = None) -> dict:
    from ..server.config import check_sae_id

    check_sae_id(sae, "SAE id")  # the rules of net init's --sae
    dep = load(directory)
    if sae in dep.cfg.saes:
        raise InvalidRequest(f"SAE {sae!r} is registered already (at node {dep.cfg.saes[sae]})")
    kmes = {str(c["etsi"].get("kme_id")): v for v, c in dep.confs.items()}
    if sae == dep.cfg.kme_id or sae in kmes:
        raise InvalidRequest(f"SAE {sae!r}: the KME id of {'node ' + kmes[sae] if sae in kmes else 'the controller'}"
                             " (an SAE and a KME need distinct ids); choose another id")
    v = _resolve(dep, node, f"SAE {sae}={node}: node")
    ca = _sae_ca(dep.dir, ca_key)
    ch = Change(dep, f"sae add {sae}={v}")
    ch.saes[sae] = str(v)
    for n in ch.nodes:
        if str(n["id"]) == str(v):
            n["saes"] = [*n["saes"], sae]
    out = ch.commit(nodes_first=True)
    out["certificate"] = _sae_cert(directory, sae, ca)
    return out


def _sae_ca(directory: Path, ca_key: Path | None):
    """The CA's key and certificate when its key is at hand (``--ca-key``, else ``DIR/pki/ca.key``), else None:
    loaded before the change, so that a bad key refuses it (nothing registered)."""
    from ..server.pki import load_ca

    pki = Path(directory) / "pki"
    if ca_key is None and not (pki / "ca.key").exists():
        return None
    return load_ca(pki, ca_key)


def _sae_cert(directory: Path, sae: str, ca) -> str:
    """``DIR/pki/SAE.crt`` and ``.key`` as ``net sae cert`` writes them, when the CA's key is at hand."""
    from ..server.pki import write_cert, write_key
    from .certs import issue_role, role_uri

    if ca is None:
        return f"none written: 'qkdseg net sae cert {directory} {sae} --ca-key PATH [--csr FILE]'"
    pki = Path(directory) / "pki"
    key, cert = issue_role(*ca, sae, role_uri("sae", sae))
    write_key(pki / f"{sae}.key", key)
    write_cert(pki / f"{sae}.crt", cert)
    return str(pki / f"{sae}.crt")


def _keep_saes(dep: Deployment, gone: list[str], what: str) -> None:
    """Refuse a change that leaves fewer than two SAEs, or unregisters one of a key stock's pairs: the controller's
    kms.toml would then not load at its next start."""
    left = [s for s in dep.cfg.saes if s not in gone]
    if len(left) < 2:
        raise InvalidRequest(f"{what}: removing it would leave {len(left)} SAE(s) ({', '.join(left) or 'none'}); a network "
                             "keeps at least two (the controller's kms.toml): 'qkdseg net sae add' another first")
    pairs = (dep.cfg.stock or {}).get("pairs", [])
    stocked = [p for p in pairs if set(str(p).split(":")) & set(gone)]
    if stocked:
        raise InvalidRequest(f"{what}: SAE pair {stocked[0]} keeps a key stock (the controller's kms.toml [stock]); "
                             "a change of membership does not change the stocks yet")


def sae_remove(directory: Path, sae: str) -> dict:
    dep = load(directory)
    if sae not in dep.cfg.saes:
        raise InvalidRequest(f"SAE {sae!r} is not registered ({', '.join(sorted(dep.cfg.saes))})")
    _keep_saes(dep, [sae], f"SAE {sae!r}")
    ch = Change(dep, f"sae remove {sae}")
    del ch.saes[sae]
    for n in ch.nodes:
        n["saes"] = [s for s in n["saes"] if s != sae]
    return ch.commit(nodes_first=False)


def add_link(directory: Path, u: str, v: str, rate: float | None = None) -> dict:
    _check_rate(rate)
    dep = load(directory)
    a, b = _resolve(dep, u, "U"), _resolve(dep, v, "V")
    if a == b or dep.network.graph.has_edge(a, b):
        raise InvalidRequest(f"link ({a}, {b}): {'a node is not linked to itself' if a == b else 'exists already'}")
    return _with_links(dep, f"add-link {a} {b}", [(a, b)], rate).commit(nodes_first=True)


def _check_rate(rate: float | None) -> None:
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise InvalidRequest(f"--rate {rate:g}: must be a number of bits/s above 0")


def _with_links(dep: Deployment, op: str, pairs: list, rate: float | None, ch: Change | None = None, g=None):
    """The change that adds links ``pairs`` (each end's entry and seed)."""
    from ..network import DEFAULT_POOL_BITS

    ch = ch or Change(dep, op)
    g = _graph(dep) if g is None else g
    for a, b in pairs:
        g.add_edge(a, b, pool_bits=DEFAULT_POOL_BITS, **({"rate_bps": float(rate)} if rate else {}))
    ch.network = _network(g, dep.network.name)
    for a, b in pairs:
        a, b = _oriented(ch.network, a, b)
        data = ch.network.graph.edges[a, b]
        for end in (a, b):  # an entry left by a change the controller refused (DIR written first) is replaced
            conf = ch.confs[str(end)]
            conf["links"] = [*(lk for lk in conf["links"] if set(lk["link"]) != {a, b}), _entry(ch, end, a, b, data)]
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
    out = ch.commit(nodes_first=False)
    out["unlinked"] = [str(x) for x in (a, b) if g.degree(x) == 0]
    return out


#: A new node's id: as an SAE id (it names the node's certificate and, where it is a safe name, its directory).
_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")


def add_node(directory: Path, ident: str, address: str, links: list[str], *, trusted: bool = False,
             p: float | None = None, rate: float | None = None, ca_key: Path | None = None) -> dict:
    from ..server.pki import load_ca
    from .inventory import split_address

    if not _ID.fullmatch(ident):
        raise InvalidRequest(f"--id {ident!r}: a node id is 1-64 characters of [A-Za-z0-9._~-]")
    try:
        split_address(address)
    except ValueError as err:
        raise InvalidRequest(f"--address {err}") from None
    if not links:
        raise InvalidRequest("--link: give at least one node to link the new node to")
    twice = next((x for x in links if links.count(x) > 1), None)
    if twice is not None:
        raise InvalidRequest(f"--link {twice}: given twice (one link to each neighbour)")
    if trusted and p is not None and p != 1:
        raise InvalidRequest(f"--p {p:g} with --trusted: a trusted relay's p is 1 (leave out --p or --trusted)")
    p = 1.0 if trusted else (0.8 if p is None else p)
    if not 0.0 <= p <= 1.0:
        raise InvalidRequest(f"--p {p:g}: must be in 0..1")
    _check_rate(rate)
    dep = load(directory)
    ids = list(dep.network.graph.nodes)
    whole = all(isinstance(x, int) for x in ids)
    if whole and not ident.isdigit():
        raise InvalidRequest(f"--id {ident}: the network's node ids are whole numbers")
    v = int(ident) if whole else ident
    if str(v) in {str(x) for x in ids} or str(v) in dep.net_conf.get("removed", {}):
        raise InvalidRequest(f"--id {ident}: a node of that id is (or was) in the network")
    if address in {n["address"] for n in dep.net_conf["nodes"]} or address == dep.net_conf["address"]:
        raise InvalidRequest(f"--address {address}: another process of the network listens there")
    others = [_resolve(dep, x, "--link") for x in links]
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
    enrolled = not any((dep.node_dir(x) / "node.key").exists() for x in dep.names)
    ca = None if enrolled else load_ca(dep.dir / "pki", ca_key)  # its certificate: refused now if it cannot be
    ch.ensure_up()
    nd = _new_node_dir(dep, v, name, address, ca)
    try:
        _with_links(dep, ch.op, [(v, o) for o in others], rate, ch, g)
    except BaseException:  # nothing told yet: the new directory goes with the change
        shutil.rmtree(nd, ignore_errors=True)
        raise
    out = ch.commit(nodes_first=True)
    out["directory"] = str(nd)
    if not (nd / "node.key").exists():  # enrolment: its host makes its keys (node keygen), net sign its certificate
        bundle_path = dep.dir / "bundles" / f"node-{name}.tar.gz"
        bundle_path.parent.mkdir(mode=0o700, exist_ok=True)
        from .bundle import bundle

        bundle(dep.dir, bundle_path, node=str(v))
        out["bundle"] = str(bundle_path)
    return out


def _new_node_dir(dep: Deployment, v, name: str, address: str, ca) -> Path:
    """``DIR/nodes/<dir>/``: its CA certificate, and (without enrolment: ``ca``, the CA's key and certificate)
    its certificate, key, storage and audit keys; with enrolment (the other nodes hold no storage key here) nothing
    secret."""
    from ..server.audit import make_audit_key
    from ..server.pki import write_cert, write_key
    from ..server.storagekey import make_storage_key
    from .certs import issue_role, role_uri

    nd = dep.dir / "nodes" / name
    nd.mkdir(mode=0o700, parents=True)
    (nd / "ca.crt").write_bytes((dep.dir / "pki" / "ca.crt").read_bytes())
    if ca is not None:
        (nd / "links.sealed.json").write_text("{}\n")
        make_storage_key(nd / "storage.key")
        make_audit_key(nd / "audit.key")
        key, cert = issue_role(*ca, f"node {v}", role_uri("node", v), hosts=(address.rsplit(":", 1)[0].strip("[]"),))
        write_key(nd / "node.key", key)
        write_cert(nd / "node.crt", cert)
    return nd


def remove_node(directory: Path, ident: str) -> dict:
    dep = load(directory)
    v = _resolve(dep, ident, "ID")
    at = [s for s, n in dep.cfg.saes.items() if str(n) == str(v)]
    _keep_saes(dep, at, f"node {v} (its SAEs: {', '.join(at)})")
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
