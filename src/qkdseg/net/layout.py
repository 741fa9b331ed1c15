"""``qkdseg net init``: a whole deployment in one directory (docs/network.md).

``DIR/``

- ``pki/``: the CA (``ca.crt``, ``ca.key``) and one certificate per SAE
  (``SAE.crt``/``SAE.key``, CN = SAE id, SAN ``urn:qkdseg:sae:SAE``);
- ``controller/``: ``kms.toml`` (network, SAE registry, defaults), ``net.json``
  (every node's address), its certificate (SAN ``urn:qkdseg:controller``),
  its store and audit once it runs;
- ``nodes/<dir>/``: ``node.json``, the node's certificate (SAN
  ``urn:qkdseg:node:<id>``, IP = its address), key, ``storage.key`` and
  ``links.sealed.json``: the seeds of its own adjacent links only,
  AES-256-GCM under its storage key;
- ``nodes.json``: node id -> directory name (ids that are not a safe file
  name are mapped to ``n<index>``).

Private keys and storage keys are written with mode 0600. With an inventory
(:mod:`.inventory`) every address is the inventory's (and ``pki/operator.crt``
is the admin's client certificate; ``pki/admin.crt`` is always written: the role that changes the
membership, :mod:`.membership`); with ``--enroll`` no private, storage or
audit key is written (each host makes its own: :mod:`.enroll`) and each
node's link seeds are in ``links.seeds.json`` for ``node keygen`` to seal.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidRequest
from ..server.pki import make_ca, write_cert, write_key, write_secret
from .certs import issue_role, role_uri  # noqa: F401 -- role_uri: the name the other modules import from here

DEFAULT_PORT = 8443
CONTROLLER_HOST = "127.0.0.1"
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 (written whole: a temporary file renamed onto it)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_cluster(directory: Path) -> dict | None:
    """``DIR/cluster.json`` (net up's etcd members, controllers and fault proxies: :mod:`.cluster`), checked field by
    field (a damaged file is one line naming it and the field); ``None`` without one."""
    from ..server.files import check_fields, load_json, port_of

    path = Path(directory) / "cluster.json"
    if not path.exists():
        return None
    what, advice = "net up's process layout", "stop the network's processes by hand and delete the file; net up " \
                                              "writes it again"
    layout = load_json(path, what, advice=advice)

    def each(name: str, fields) -> None:
        for item in layout[name] if name != "proxies" else layout.get(name, []):
            fields(item)

    check_fields(path, what, [
        ("etcd", lambda: each("etcd", lambda m: (str(m["name"]), str(m["dir"]), port_of(m["client"]),
                                                 port_of(m["peer"])))),
        ("controllers", lambda: each("controllers", lambda c: (str(c["name"]), str(c["dir"]), port_of(c["address"])))
         if layout["controllers"] else False),
        ("proxies", lambda: each("proxies", lambda p: (str(p["link"]), [str(e) for e in p["ends"]], [
            (d.split(">")[1], port_of(a)) for d, a in {**p["listen"], **p["target"]}.items()]))),
    ], advice)
    return layout


def node_address(index: int, port: int) -> str:
    """Node ``index`` (network order) listens on 127.0.0.(2 + index) (the loopback range: 127.0.0.0/8)."""
    return f"{ipaddress.IPv4Address(0x7F000002 + index)}:{port}"


def dir_names(node_ids: list) -> dict[str, str]:
    """Node id (as text) -> directory name: the id where it is a safe file name, else ``n<index>``."""
    out: dict[str, str] = {}
    used = set()
    for i, v in enumerate(node_ids):
        name = str(v)
        if not _SAFE.fullmatch(name) or name.lower() in used:
            name = f"n{i}"
        used.add(name.lower())
        out[str(v)] = name
    return out


def seal(storage_key: bytes, name: str, data: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(storage_key).encrypt(nonce, data, name.encode())).decode()


def unseal(storage_key: bytes, name: str, blob: str) -> bytes:
    raw = base64.b64decode(blob)
    return AESGCM(storage_key).decrypt(raw[:12], raw[12:], name.encode())


def link_name(u, v) -> str:
    return json.dumps([u, v], separators=(",", ":"))


#: What a node's or the controller's directory keeps between runs: replaced by ``net init --force``.
_STATE_FILES = ("storage.key", "audit.key", "kms.sqlite3", "kms.sqlite3-wal", "kms.sqlite3-shm", "audit.jsonl",
                "relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm", "restored")
#: The old deployment's rotated audit files (a chain under its audit key, which the new one replaces).
_ROTATED = ("audit-*.jsonl", "audit-*.jsonl.gz")


def _remove_state(d: Path) -> None:
    for name in _STATE_FILES:
        (d / name).unlink(missing_ok=True)
    for pattern in _ROTATED:
        for p in d.glob(pattern):
            p.unlink(missing_ok=True)


def _load_network(spec: str):
    """The network of ``spec`` (``example``, ``topohub:...`` or a file) and the name the deployment keeps it under;
    the file, if any, is copied into the controller's directory by :func:`_write_controller`."""
    from ..topology import load

    if not (spec == "example" or spec.startswith("topohub:")):
        source = Path(spec)
        net = load(source)
        # the deployment keeps its own copy (DIR/controller/network.<suffix>), so DIR can be moved or copied to
        # another host without the file it was made from
        return net, f"network{source.suffix.lower()}", source
    return load(spec), spec, None


def _write_pki(pki: Path, registry: dict, *, ca_key_out: Path | None, enroll: bool, operator: bool) -> tuple:
    """``DIR/pki/``: the network's CA (its key in ``ca_key_out`` when given, else ``pki/ca.key``), one certificate
    per SAE (none with ``enroll``: ``net sae cert`` makes them) and, with ``operator``, the admin's own client
    certificate for ``net status``; returns the CA's key and certificate."""
    ca_key, ca = make_ca("qkdseg network CA")
    if ca_key_out is not None:
        write_key(Path(ca_key_out), ca_key)
        (pki / "ca.key").unlink(missing_ok=True)
    else:
        write_key(pki / "ca.key", ca_key)
    write_cert(pki / "ca.crt", ca)
    for sae in registry if enroll else ():  # an earlier init's (--force): certified by the CA replaced now
        for suffix in (".key", ".crt"):
            (pki / f"{sae}{suffix}").unlink(missing_ok=True)
    for sae in () if enroll else registry:
        key, cert = issue_role(ca_key, ca, sae, role_uri("sae", sae))
        write_key(pki / f"{sae}.key", key)
        write_cert(pki / f"{sae}.crt", cert)
    key, cert = issue_role(ca_key, ca, "admin", role_uri("admin"))  # changes of membership (net add-node, ...)
    write_key(pki / "admin.key", key)
    write_cert(pki / "admin.crt", cert)
    if operator:
        key, cert = issue_role(ca_key, ca, "operator", role_uri("operator"))
        write_key(pki / "operator.key", key)
        write_cert(pki / "operator.crt", cert)
    else:  # an earlier init's (--force)
        for name in ("operator.key", "operator.crt"):
            (pki / name).unlink(missing_ok=True)
    return ca_key, ca


def _write_controller(ctrl: Path, cfg, ca_key, ca, *, spec: str, source: Path | None, nodes: list[dict],
                      ctrl_addr: str, link_source: str, force: bool, enroll: bool = False,
                      more: dict | None = None, share: Path | None = None) -> None:
    """``DIR/controller/`` (or a replicated one's ``DIR/controller-<i>/``): its copy of the network, ``kms.toml``,
    certificate, storage and audit keys, the dashboard's token and ``net.json`` (``nodes``: each node's id,
    directory, address and SAEs; ``more``: the inventory's controllers and etcd members). ``enroll``: no key
    (``controller keygen`` makes them on its host, and its CSR for ``net sign``). ``share``: the first controller's
    directory, whose storage and audit keys and dashboard token a replicated one shares (one audit chain in etcd)."""
    from ..server.config import write_config
    from ..server.storagekey import init_keys

    ctrl.mkdir(mode=0o700, parents=True, exist_ok=True)
    if source is not None:
        (ctrl / spec).write_bytes(source.read_bytes())
    write_config(ctrl, cfg)
    write_cert(ctrl / "ca.crt", ca)
    if force:  # a new deployment: the old keys and stores would no longer match it
        _remove_state(ctrl)
        for name in ("controller.key", "controller.crt", "controller.csr", "dashboard.token"):
            (ctrl / name).unlink(missing_ok=True)
    if not enroll:
        key, cert = issue_role(ca_key, ca, "controller", role_uri("controller"),
                               hosts=(ctrl_addr.rsplit(":", 1)[0].strip("[]"),))
        write_key(ctrl / "controller.key", key)
        write_cert(ctrl / "controller.crt", cert)
        for name in ("storage.key", "audit.key", "dashboard.token") if share is not None else ():
            write_secret(ctrl / name, (share / name).read_bytes())
        init_keys(cfg)  # the storage key (with its check value in the store) and the audit key, as kms init makes them
        if share is None:
            write_secret(ctrl / "dashboard.token", (secrets.token_urlsafe(32) + "\n").encode())
    net_json = {"network": spec, "address": ctrl_addr, "link_source": link_source, "nodes": nodes, **(more or {})}
    (ctrl / "net.json").write_text(json.dumps(net_json, indent=1) + "\n")


def _init_devices(dev_dir: Path, net, spec: str, cfg, *, key_size: int, link_source: str, force: bool):
    """``DIR/devices/`` for device-fed links (the emulator's directory): ``({u, v} -> ("U|V", the link's device
    endpoints), the emulator's config)``; for emulated links an earlier init's devices are removed."""
    devices: dict[frozenset, tuple[str, dict]] = {}  # {u, v} -> ("U|V", the link's device endpoints)
    dev_cfg = None
    if link_source == "device":
        from ..devices.emulator import init_devices

        if force:
            (dev_dir / "keys.jsonl").unlink(missing_ok=True)
        dev_cfg, tables = init_devices(dev_dir, net, spec, key_size=key_size, default_rate_bps=cfg.default_rate_bps)
        for name, table in tables.items():
            u, _, v = name.partition("|")
            devices[frozenset((u, v))] = (name, table)
    else:
        import shutil

        if force and (dev_dir / "device.toml").exists():  # an emulated network now: net up must not start it
            shutil.rmtree(dev_dir)
    return devices, dev_cfg


def _node_link(nd: Path, v, a, b, data: dict, addr: dict, device: tuple | None, dev_dir: Path) -> dict:
    """Node ``v``'s entry for its link ``(a, b)``; on a device-fed link (``device``: the link's name and device
    endpoints) with this end's device credentials, copied into ``nd/device/``."""
    other = b if a == v else a
    link = {"link": [a, b], "neighbour": other, "address": addr[str(other)],
            "pool_bits": int(data.get("pool_bits", 100_000)), "rate_bps": data.get("rate_bps")}
    if device is not None:  # this end's device credentials only; no seed
        dname, t = device
        mine = "a" if dname.partition("|")[0] == str(v) else "b"
        sae, peer = t[f"{mine}_sae"], t["b_sae" if mine == "a" else "a_sae"]
        (nd / "device").mkdir(exist_ok=True)
        (nd / "device" / "ca.crt").write_bytes((dev_dir / "pki" / "ca.crt").read_bytes())
        (nd / "device" / f"{sae}.crt").write_bytes((dev_dir / "pki" / f"{sae}.crt").read_bytes())
        write_secret(nd / "device" / f"{sae}.key", (dev_dir / "pki" / f"{sae}.key").read_bytes())
        link["device"] = {"url": t[f"{mine}_url"], "ca": "device/ca.crt", "cert": f"device/{sae}.crt",
                          "key": f"device/{sae}.key", "sae": sae, "peer_sae": peer, "key_size": int(t["key_size"])}
    return link


def _node_conf(v, name: str, cfg, *, addr: dict, ctrl_addr: str, network: str, saes: list, links: list,
               key_size: int, security_level: float) -> dict:
    """``node.json`` of node ``v`` (directory ``name``)."""
    return {
        "id": v, "address": addr[str(v)], "controller": ctrl_addr, "network": network,
        "saes": saes, "registry": {s: n for s, n in cfg.saes.items()},
        "links": links, "addresses": addr,
        "etsi": {"kme_id": f"KME_{name}", "key_size": key_size, "min_key_size": cfg.min_key_size,
                 "max_key_size": cfg.max_key_size, "max_key_per_request": cfg.max_key_per_request,
                 "max_key_count": cfg.max_key_count, "sae_max_waiting": cfg.sae_max_waiting,
                 "sae_rate": cfg.sae_rate, "security_level": security_level,
                 "key_ttl_s": cfg.key_ttl_s, "max_body_bytes": cfg.max_body_bytes,
                 "header_timeout_s": cfg.header_timeout_s, "body_timeout_s": cfg.body_timeout_s,
                 "keep_alive_s": cfg.keep_alive_s, "max_connections": cfg.max_connections},
    }


def _write_node(nd: Path, v, adjacent: list, ca_key, ca, *, addr: dict, devices: dict, dev_dir: Path,
                link_source: str, force: bool, enroll: bool = False) -> dict:
    """``DIR/nodes/<dir>/`` but ``node.json``: its storage and audit keys, its certificate, and its adjacent links'
    seeds sealed under its storage key (or its device credentials); returns its links' entries for ``node.json``.
    ``enroll``: no key, no certificate; the seeds in ``links.seeds.json`` (0600), which ``node keygen`` seals under
    the storage key it makes on the node's host and removes."""
    from ..server.audit import make_audit_key
    from ..server.storagekey import make_storage_key

    nd.mkdir(mode=0o700, parents=True, exist_ok=True)
    if force:
        _remove_state(nd)
        for name in ("node.key", "node.crt", "node.csr", "links.seeds.json", "links.sealed.json"):
            (nd / name).unlink(missing_ok=True)
        if link_source != "device" and (nd / "device").is_dir():  # the device credentials of an earlier init
            import shutil

            shutil.rmtree(nd / "device")
    skey = None
    if not enroll:
        skey = make_storage_key(nd / "storage.key")
        make_audit_key(nd / "audit.key")
        host = addr[str(v)].rsplit(":", 1)[0].strip("[]")
        key, cert = issue_role(ca_key, ca, f"node {v}", role_uri("node", v), hosts=(host,))
        write_key(nd / "node.key", key)
        write_cert(nd / "node.crt", cert)
    write_cert(nd / "ca.crt", ca)
    links, sealed = [], {}
    for a, b, seed, data in adjacent:
        device = devices[frozenset((str(a), str(b)))] if link_source == "device" else None
        links.append(_node_link(nd, v, a, b, data, addr, device, dev_dir))
        if device is None and seed is not None:  # None: agreed by the two ends at run time (.linkseeds)
            name = link_name(a, b)
            sealed[name] = seal(skey, name, seed) if skey is not None else seed.hex()
    if skey is not None:
        write_private(nd / "links.sealed.json", json.dumps(sealed, indent=1) + "\n")
    elif sealed:
        write_private(nd / "links.seeds.json", json.dumps(sealed, indent=1) + "\n")
    return links


#: The flags of ``net init`` that set a field of the controller's ``kms.toml`` (its refusals name the flag).
INIT_FLAGS = {"security_level": "--security-level", "key_size": "--key-size", "algorithm": "--algorithm",
              "reconstruction": "--reconstruction", "saes": "--sae", "network": "--network",
              "algorithm_options": "--algorithm-option", "audit_max_mb": "--audit-max-mb", "stock": "--stock",
              "key_ttl_s": "--key-ttl", "max_key_count": "--max-key-count", "sae_max_waiting": "--sae-max-waiting",
              "sae_rate": "--sae-rate", "sharing": "--sharing", "tolerate": "--tolerate"}


def init_network(directory: Path, spec: str, saes: dict[str, str], *, security_level: float = 0.9,
                 key_size: int = 256, algorithm: str = "smr", reconstruction: str = "paper",
                 port: int = DEFAULT_PORT, controller_port: int | None = None, force: bool = False,
                 algorithm_options: dict | None = None, link_source: str = "emulated",
                 max_skip_bits: int | None = None, retention: float = 3600.0, clock_skew: float = 60.0,
                 audit_max_mb: float = 64.0, stock: dict | None = None, key_ttl_s: float = 3600.0,
                 link_seeds: str | None = None, inventory: Path | None = None, enroll: bool = False,
                 ca_key_out: Path | None = None, quotas: dict | None = None,
                 suspect: tuple[int, float] = (3, 600.0), sharing: str = "xor", tolerate: int = 0) -> dict:
    """Write the deployment (see the module docstring); returns a summary.

    ``link_source="device"``: the links' keys come from QKD devices over ETSI
    014 (:mod:`.devicelinks`); ``DIR/devices/`` is the device emulator's
    directory (:func:`qkdseg.devices.emulator.init_devices`), and each node gets its
    own links' device credentials in ``nodes/<dir>/device/`` instead of seeds.
    ``stock``: the ``[stock]`` table (:mod:`qkdseg.server.stockconfig`), in the controller's ``kms.toml`` and, with
    its own pairs only (its SAEs masters or slaves), in each node's ``node.json``. ``key_ttl_s``: in the
    controller's ``kms.toml`` and each node's ``etsi`` settings.
    ``link_seeds="agree"``: no seed is drawn here; the two ends of each emulated link agree it (:mod:`.linkseeds`);
    the default is ``"agree"`` with ``enroll`` (the admin machine never knows a link's seed), else ``"admin"``.
    ``inventory``: every process's address (:mod:`.inventory`), else loopback. ``ca_key_out``: the CA's private key
    there, not in ``DIR/pki/``. ``enroll``: no private key, storage key or audit key in DIR (each host makes its own:
    :mod:`.enroll`), no SAE certificate (``net sae cert``).
    ``quotas``: ``max_key_count``, ``sae_max_waiting``, ``sae_rate`` (:mod:`qkdseg.server.quota`), in the
    controller's ``kms.toml`` and each node's ``etsi`` settings. ``suspect``: ``(suspect_after, suspect_for_s)``
    in the controller's ``net.json`` (:mod:`.suspects`). ``sharing``, ``tolerate``: in the controller's ``kms.toml``
    (threshold sharing, issue 40: the plans it sends say so).
    """
    from ..server.config import KmsConfig

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"{directory}: exists and is not a directory")
    from ..server.files import refuse_other_kind

    refuse_other_kind(directory, "nodes.json", "a network's directory (net init)")  # even with --force
    if (directory / "nodes.json").exists() and not force:
        raise InvalidRequest(f"{directory / 'nodes.json'}: a deployment exists already (use --force to overwrite)")
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"--port {port} must be in 1..65535")
    if link_source not in ("emulated", "device"):
        raise InvalidRequest(f"--link-source {link_source!r} must be 'emulated' or 'device'")
    if link_seeds is None:  # with --enroll the admin machine draws no seed: the ends agree them
        link_seeds = "agree" if enroll and link_source == "emulated" else "admin"
    if link_seeds not in ("admin", "agree") or (link_seeds == "agree" and link_source == "device"):
        raise InvalidRequest(f"--link-seeds {link_seeds!r} must be 'admin' or 'agree' (and 'agree' is for emulated "
                             "links: with --link-source device the devices give the keys)")
    if max_skip_bits is not None and not 8 <= max_skip_bits <= 1 << 40:
        raise InvalidRequest(f"--max-skip-bits {max_skip_bits} must be in 8..{1 << 40}")
    if not (math.isfinite(clock_skew) and clock_skew >= 0):
        raise InvalidRequest(f"--clock-skew {clock_skew:g} must be a number of seconds >= 0")
    if not (math.isfinite(retention) and retention >= clock_skew + 1):  # a message older than their difference: 409
        raise InvalidRequest(f"--retention {retention:g} must be at least --clock-skew ({clock_skew:g}) + 1 s: a "
                             "relay message older than the retention less the skew is refused")
    after, for_s = suspect
    if not 1 <= after <= 1_000_000:
        raise InvalidRequest(f"--suspect-after {after} must be in 1..1000000 (failed relay runs)")
    if not (math.isfinite(for_s) and for_s > 0):
        raise InvalidRequest(f"--suspect-for {for_s:g} must be a number of seconds > 0")
    net, spec, source = _load_network(spec)
    registry = {sae: net.resolve(node) for sae, node in saes.items()}
    cfg = KmsConfig(network=spec, saes={s: str(v) for s, v in registry.items()}, security_level=security_level,
                    key_size=key_size, algorithm=algorithm, reconstruction=reconstruction, sharing=sharing,
                    tolerate=tolerate, cert="controller.crt", key="controller.key", ca="ca.crt", durability="normal",
                    algorithm_options=dict(algorithm_options or {}), audit_max_mb=audit_max_mb,
                    retention_s=retention, stock=dict(stock or {}), key_ttl_s=key_ttl_s, **(quotas or {}),
                    _dir=directory / "controller")
    cfg.check(flags=INIT_FLAGS)
    from ..api.checks import check_tolerate_fits

    check_tolerate_fits(net.arrays, tolerate, "--tolerate", algorithm, cfg.algorithm_options)
    stocked = cfg.stock_config()
    ids = list(net.graph.nodes)
    if len(ids) > 200_000:
        raise InvalidRequest("at most 200,000 nodes fit the loopback range")
    names = dir_names(ids)
    if ca_key_out is not None:
        ca_key_out = Path(ca_key_out)
        if ca_key_out.is_dir():
            raise InvalidRequest(f"--ca-key-out {ca_key_out}: is a directory (name the file for the CA's private key)")
        if directory.resolve() in ca_key_out.resolve().parents:
            raise InvalidRequest(f"--ca-key-out {ca_key_out}: inside {directory}; the CA's key must be kept elsewhere")
    elif enroll:
        raise InvalidRequest("--enroll keeps every private key out of DIR: give --ca-key-out PATH (outside DIR) for "
                             "the CA's key")
    more: dict = {}
    if inventory is not None:
        from .inventory import load_inventory

        inv = load_inventory(Path(inventory), ids)
        addr, controllers = inv.nodes, inv.controllers
        more = {k: v for k, v in (("controllers", controllers if len(controllers) > 1 else None),
                                  ("etcd", inv.etcd or None), ("inventory", True)) if v}
    else:
        addr = {str(v): node_address(i, port) for i, v in enumerate(ids)}
        controllers = [f"{CONTROLLER_HOST}:{controller_port or port}"]
    ctrl_addr = controllers[0]
    at_node: dict[str, list[str]] = {}
    for sae, v in registry.items():
        at_node.setdefault(str(v), []).append(sae)

    pki = directory / "pki"
    for d in (directory, pki, directory / "controller", directory / "nodes"):  # private, as the servers' own
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca = _write_pki(pki, registry, ca_key_out=ca_key_out, enroll=enroll,
                            operator=enroll or inventory is not None)
    nodes = [{"id": v, "dir": names[str(v)], "address": addr[str(v)], "saes": at_node.get(str(v), [])} for v in ids]
    import dataclasses

    for i, c_addr in enumerate(controllers):  # DIR/controller/, then DIR/controller-<i>/ of replicated ones
        ctrl = directory / ("controller" if i == 0 else f"controller-{i}")
        _write_controller(ctrl, dataclasses.replace(cfg, _dir=ctrl), ca_key, ca, spec=spec, source=source,
                          nodes=nodes, ctrl_addr=c_addr, link_source=link_source, force=force, enroll=enroll,
                          more=more, share=directory / "controller" if i else None)
        conf_path = ctrl / "net.json"  # the controller's suspect settings (.suspects)
        conf_path.write_text(json.dumps({**json.loads(conf_path.read_text()), "suspect_after": after,
                                         "suspect_for_s": for_s}, indent=1) + "\n")
    dev_dir = directory / "devices"
    devices, dev_cfg = _init_devices(dev_dir, net, spec, cfg, key_size=key_size, link_source=link_source,
                                     force=force)
    seeds = {}
    for u, v, data in net.graph.edges(data=True):
        seeds[(u, v)] = (secrets.token_bytes(32) if link_seeds == "admin" else None, data)
    adj: dict = {v: [] for v in ids}
    for (u, v), (seed, data) in seeds.items():
        adj[u].append((u, v, seed, data))
        adj[v].append((u, v, seed, data))
    for v in ids:
        nd = directory / "nodes" / names[str(v)]
        links = _write_node(nd, v, adj[v], ca_key, ca, addr=addr, devices=devices, dev_dir=dev_dir,
                            link_source=link_source, force=force, enroll=enroll)
        conf = _node_conf(v, names[str(v)], cfg, addr=addr, ctrl_addr=ctrl_addr, network=net.name,
                          saes=at_node.get(str(v), []), links=links, key_size=key_size,
                          security_level=security_level)
        if len(controllers) > 1:  # every controller; the node asks the leader (net/leader.py)
            conf["controllers"] = controllers
        conf["max_skip_bits"] = max_skip_bits  # None: each link's pool_bits (net/linkhealth.py)
        if link_seeds == "agree":  # the node agrees its links' seeds with their other ends (net/linkseeds.py)
            conf["link_seeds"] = "agree"
        conf.update(retention_s=retention, clock_skew_s=clock_skew, audit_max_mb=audit_max_mb)  # .retention
        mine = stocked.only(at_node.get(str(v), [])) if stocked is not None else None
        if mine is not None and mine.pairs:  # the stocks this node keeps (its SAE the master) or holds (the slave)
            conf["stock"] = mine.table()
        (nd / "node.json").write_text(json.dumps(conf, indent=1) + "\n")
    (directory / "nodes.json").write_text(json.dumps(names, indent=1) + "\n")
    out = {"nodes": len(ids), "links": len(seeds), "saes": len(registry), "controller": ctrl_addr}
    if link_source == "device":
        out["devices"] = f"https://{dev_cfg.host}:{dev_cfg.port}"
    return out
