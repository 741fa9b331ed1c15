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

Private keys and storage keys are written with mode 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import math
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import InvalidRequest
from ..server.pki import DAY, _name, make_ca, write_cert, write_key, write_secret

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


def role_uri(role: str, ident: str | None = None) -> str:
    """``urn:qkdseg:node:<id>``, ``urn:qkdseg:controller`` or ``urn:qkdseg:sae:<id>`` (the id percent-encoded)."""
    return "urn:qkdseg:controller" if role == "controller" else f"urn:qkdseg:{role}:{quote(str(ident), safe='')}"


def issue_role(ca_key, ca_cert, cn: str, uri: str, *, hosts: tuple[str, ...] = (), days: int = 825):
    """A leaf certificate with its role as a SAN URI; ``hosts`` (IPs) make it a server certificate too."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.timezone.utc) - DAY
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if hosts:
        sans += [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + days * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


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


def _write_pki(pki: Path, registry: dict) -> tuple:
    """``DIR/pki/``: the network's CA and one certificate per SAE; returns the CA's key and certificate."""
    ca_key, ca = make_ca("qkdseg network CA")
    write_key(pki / "ca.key", ca_key)
    write_cert(pki / "ca.crt", ca)
    for sae in registry:
        key, cert = issue_role(ca_key, ca, sae, role_uri("sae", sae))
        write_key(pki / f"{sae}.key", key)
        write_cert(pki / f"{sae}.crt", cert)
    return ca_key, ca


def _write_controller(ctrl: Path, cfg, ca_key, ca, *, spec: str, source: Path | None, nodes: list[dict],
                      ctrl_addr: str, link_source: str, force: bool) -> None:
    """``DIR/controller/``: its copy of the network, ``kms.toml``, certificate, storage and audit keys, the
    dashboard's token and ``net.json`` (``nodes``: each node's id, directory, address and SAEs)."""
    from ..server.config import write_config
    from ..server.storagekey import init_keys

    if source is not None:
        (ctrl / spec).write_bytes(source.read_bytes())
    write_config(ctrl, cfg)
    key, cert = issue_role(ca_key, ca, "controller", role_uri("controller"), hosts=(CONTROLLER_HOST,))
    write_key(ctrl / "controller.key", key)
    write_cert(ctrl / "controller.crt", cert)
    write_cert(ctrl / "ca.crt", ca)
    if force:  # a new deployment: the old keys and stores would no longer match it
        _remove_state(ctrl)
    init_keys(cfg)  # the storage key (with its check value in the store) and the audit key, as kms init makes them
    write_secret(ctrl / "dashboard.token", (secrets.token_urlsafe(32) + "\n").encode())
    net_json = {"network": spec, "address": ctrl_addr, "link_source": link_source, "nodes": nodes}
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
                link_source: str, force: bool) -> dict:
    """``DIR/nodes/<dir>/`` but ``node.json``: its storage and audit keys, its certificate, and its adjacent links'
    seeds sealed under its storage key (or its device credentials); returns its links' entries for ``node.json``."""
    from ..server.audit import make_audit_key
    from ..server.storagekey import make_storage_key

    nd.mkdir(mode=0o700, parents=True, exist_ok=True)
    if force:
        _remove_state(nd)
        if link_source != "device" and (nd / "device").is_dir():  # the device credentials of an earlier init
            import shutil

            shutil.rmtree(nd / "device")
    skey = make_storage_key(nd / "storage.key")
    make_audit_key(nd / "audit.key")
    host = addr[str(v)].rsplit(":", 1)[0]
    key, cert = issue_role(ca_key, ca, f"node {v}", role_uri("node", v), hosts=(host,))
    write_key(nd / "node.key", key)
    write_cert(nd / "node.crt", cert)
    write_cert(nd / "ca.crt", ca)
    links, sealed = [], {}
    for a, b, seed, data in adjacent:
        device = devices[frozenset((str(a), str(b)))] if link_source == "device" else None
        links.append(_node_link(nd, v, a, b, data, addr, device, dev_dir))
        if device is None:
            name = link_name(a, b)
            sealed[name] = seal(skey, name, seed)
    (nd / "links.sealed.json").write_text(json.dumps(sealed, indent=1) + "\n")
    os.chmod(nd / "links.sealed.json", 0o600)
    return links


#: The flags of ``net init`` that set a field of the controller's ``kms.toml`` (its refusals name the flag).
INIT_FLAGS = {"security_level": "--security-level", "key_size": "--key-size", "algorithm": "--algorithm",
              "reconstruction": "--reconstruction", "saes": "--sae", "network": "--network",
              "algorithm_options": "--algorithm-option", "audit_max_mb": "--audit-max-mb", "stock": "--stock",
              "max_key_count": "--max-key-count", "sae_max_waiting": "--sae-max-waiting", "sae_rate": "--sae-rate"}


def init_network(directory: Path, spec: str, saes: dict[str, str], *, security_level: float = 0.9,
                 key_size: int = 256, algorithm: str = "smr", reconstruction: str = "paper",
                 port: int = DEFAULT_PORT, controller_port: int | None = None, force: bool = False,
                 algorithm_options: dict | None = None, link_source: str = "emulated",
                 max_skip_bits: int | None = None, retention: float = 3600.0, clock_skew: float = 60.0,
                 audit_max_mb: float = 64.0, stock: dict | None = None, quotas: dict | None = None,
                 suspect: tuple[int, float] = (3, 600.0)) -> dict:
    """Write the deployment (see the module docstring); returns a summary.

    ``link_source="device"``: the links' keys come from QKD devices over ETSI
    014 (:mod:`.devicelinks`); ``DIR/devices/`` is the device emulator's
    directory (:func:`qkdseg.devices.emulator.init_devices`), and each node gets its
    own links' device credentials in ``nodes/<dir>/device/`` instead of seeds.
    ``stock``: the ``[stock]`` table (:mod:`qkdseg.server.stockconfig`), in the controller's ``kms.toml`` and, with
    its own pairs only (its SAEs masters or slaves), in each node's ``node.json``.
    ``quotas``: ``max_key_count``, ``sae_max_waiting``, ``sae_rate`` (:mod:`qkdseg.server.quota`), in the
    controller's ``kms.toml`` and each node's ``etsi`` settings. ``suspect``: ``(suspect_after, suspect_for_s)``
    in the controller's ``net.json`` (:mod:`.suspects`).
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
                    key_size=key_size, algorithm=algorithm, reconstruction=reconstruction,
                    cert="controller.crt", key="controller.key", ca="ca.crt", durability="normal",
                    algorithm_options=dict(algorithm_options or {}), audit_max_mb=audit_max_mb,
                    retention_s=retention, stock=dict(stock or {}), **(quotas or {}), _dir=directory / "controller")
    cfg.check(flags=INIT_FLAGS)
    stocked = cfg.stock_config()
    ids = list(net.graph.nodes)
    if len(ids) > 200_000:
        raise InvalidRequest("at most 200,000 nodes fit the loopback range")
    names = dir_names(ids)
    addr = {str(v): node_address(i, port) for i, v in enumerate(ids)}
    ctrl_addr = f"{CONTROLLER_HOST}:{controller_port or port}"
    at_node: dict[str, list[str]] = {}
    for sae, v in registry.items():
        at_node.setdefault(str(v), []).append(sae)

    pki = directory / "pki"
    for d in (directory, pki, directory / "controller", directory / "nodes"):  # private, as the servers' own
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca = _write_pki(pki, registry)
    nodes = [{"id": v, "dir": names[str(v)], "address": addr[str(v)], "saes": at_node.get(str(v), [])} for v in ids]
    _write_controller(directory / "controller", cfg, ca_key, ca, spec=spec, source=source, nodes=nodes,
                      ctrl_addr=ctrl_addr, link_source=link_source, force=force)
    conf_path = directory / "controller" / "net.json"  # the controller's suspect settings (.suspects)
    conf_path.write_text(json.dumps({**json.loads(conf_path.read_text()), "suspect_after": after,
                                     "suspect_for_s": for_s}, indent=1) + "\n")
    dev_dir = directory / "devices"
    devices, dev_cfg = _init_devices(dev_dir, net, spec, cfg, key_size=key_size, link_source=link_source,
                                     force=force)
    seeds = {}
    for u, v, data in net.graph.edges(data=True):
        seeds[(u, v)] = (secrets.token_bytes(32), data)
    adj: dict = {v: [] for v in ids}
    for (u, v), (seed, data) in seeds.items():
        adj[u].append((u, v, seed, data))
        adj[v].append((u, v, seed, data))
    for v in ids:
        nd = directory / "nodes" / names[str(v)]
        links = _write_node(nd, v, adj[v], ca_key, ca, addr=addr, devices=devices, dev_dir=dev_dir,
                            link_source=link_source, force=force)
        conf = _node_conf(v, names[str(v)], cfg, addr=addr, ctrl_addr=ctrl_addr, network=net.name,
                          saes=at_node.get(str(v), []), links=links, key_size=key_size,
                          security_level=security_level)
        conf["max_skip_bits"] = max_skip_bits  # None: each link's pool_bits (net/linkhealth.py)
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
