"""Enrolment by CSR: each host makes its own private keys; the admin machine signs (docs/network.md, "Deploying one
node per host").

- ``qkdseg node keygen NODEDIR``: on the node's host, ``node.key``, ``storage.key`` and ``audit.key`` (0600), the
  node's link seeds sealed under that storage key (``links.seeds.json`` -> ``links.sealed.json``, the plain file
  removed) and ``node.csr`` (CN ``node <id>``, SAN ``urn:qkdseg:node:<id>`` and the host of its address);
- ``qkdseg controller keygen CTRLDIR``: ``controller.key``, its storage and audit keys, ``dashboard.token`` and
  ``controller.csr`` (replicated controllers share one audit chain in etcd: the storage and audit keys and the token
  of the first, copied into the others' directories before their keygen, are kept);
- ``qkdseg net sign DIR CSR --ca-key PATH``: the CSR's name, role and address checked against ``DIR``'s layout
  (the inventory's addresses), then its certificate (by default beside the CSR);
- ``qkdseg net sae cert DIR SAE --ca-key PATH [--csr FILE]``: an SAE's client certificate ``DIR/pki/SAE.crt`` (and
  ``SAE.key`` when no CSR is given).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import InvalidRequest
from ..server.files import load_json
from ..server.pki import load_ca, write_cert, write_key, write_secret
from .certs import csr_request, issue_role, make_csr, role_cn, role_uri
from .inventory import host_of, is_ip
from .layout import link_name, seal, write_private


def _fresh(paths: list[Path]) -> None:
    there = [p for p in paths if p.exists()]
    if there:
        raise InvalidRequest(f"{there[0]}: exists already (keygen runs once per host; a new key needs a new "
                             "directory from 'qkdseg net bundle')")


def _write_csr(path: Path, csr: x509.CertificateSigningRequest) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def node_keygen(d: Path) -> Path:
    """On the node's host: its keys, its sealed link seeds and ``node.csr`` (returned)."""
    from ..server.audit import make_audit_key
    from ..server.storagekey import make_storage_key

    d = Path(d)
    conf = load_json(d / "node.json", "the node's configuration",
                     missing=f"{d}: not a node directory (no node.json; unpack the node's bundle there)")
    _fresh([d / "node.key", d / "storage.key", d / "audit.key"])
    seeds_path, sealed_path = d / "links.seeds.json", d / "links.sealed.json"
    agreed = conf.get("link_seeds") == "agree"  # the link's two ends agree its seed at run time: none to seal
    names = sorted(link_name(*lk["link"]) for lk in conf["links"] if "device" not in lk and not agreed)
    seeds: dict[str, bytes] = {}
    if seeds_path.exists() or not sealed_path.exists():  # checked whole before any key is made
        plain = load_json(seeds_path, "the node's link seeds", missing=(
            f"{seeds_path}: no such file (the seeds of the node's {len(names)} emulated links; unpack the node's "
            "bundle again)")) if names or seeds_path.exists() else {}
        for name in names:
            try:
                seeds[name] = bytes.fromhex(plain[name])
                if len(seeds[name]) != 32:
                    raise ValueError(name)
            except (KeyError, TypeError, ValueError):
                raise InvalidRequest(f"{seeds_path}: link {name}'s seed is missing or not 64 hex digits (unpack the "
                                     "node's bundle again)") from None
    skey = make_storage_key(d / "storage.key")
    make_audit_key(d / "audit.key")
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(d / "node.key", key)
    if seeds_path.exists() or not sealed_path.exists():
        sealed = {name: seal(skey, name, seed) for name, seed in seeds.items()}
        write_private(sealed_path, json.dumps(sealed, indent=1) + "\n")
        seeds_path.unlink(missing_ok=True)
    csr = make_csr(key, "node", str(conf["id"]), (host_of(conf["address"]),))
    _write_csr(d / "node.csr", csr)
    return d / "node.csr"


def controller_keygen(d: Path) -> Path:
    """On the controller's host: its key, storage and audit keys, dashboard token and ``controller.csr``."""
    import secrets

    from ..server.config import load_config
    from ..server.storagekey import init_keys

    d = Path(d)
    net = load_json(d / "net.json", "the network's layout",
                    missing=f"{d}: not a controller directory (no net.json; unpack the controller's bundle there)")
    cfg = load_config(d)
    _fresh([d / "controller.key"])
    init_keys(cfg)  # a replicated controller's storage and audit keys, copied from the first's, are kept
    if not (d / "dashboard.token").exists():
        write_secret(d / "dashboard.token", (secrets.token_urlsafe(32) + "\n").encode())
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(d / "controller.key", key)
    csr = make_csr(key, "controller", None, (host_of(net["address"]),))
    _write_csr(d / "controller.csr", csr)
    return d / "controller.csr"


def _load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such file (the CSR)") from None
    except OSError as err:
        raise InvalidRequest(f"{path}: cannot read the CSR: {err.strerror or err}") from None
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise InvalidRequest(f"{path}: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise InvalidRequest(f"{path}: the CSR's signature does not verify (damaged, or altered)")
    return csr


def _norm(host: str) -> str:
    import ipaddress

    return str(ipaddress.ip_address(host)) if is_ip(host) else host.lower()


def sign(directory: Path, csr_path: Path, ca_key_path: Path, out: Path | None = None) -> tuple[Path, str]:
    """Check a node's or controller's CSR against ``DIR``'s layout and write its certificate; ``(path, who)``."""
    directory, csr_path = Path(directory), Path(csr_path)
    net = load_json(directory / "controller" / "net.json", "the network's layout",
                    missing=f"{directory}: not a network directory (no controller/net.json; run 'qkdseg net init')")
    csr = _load_csr(csr_path)
    cn, uris, hosts, ident = csr_request(csr)
    roles = [u for u in uris if u.startswith("urn:qkdseg:")]
    if len(roles) != 1:
        raise InvalidRequest(f"{csr_path}: the CSR names {len(roles)} roles (SAN URIs urn:qkdseg:...); one is needed")
    uri = roles[0]
    addresses = {str(n["id"]): n["address"] for n in net["nodes"]}
    if uri.startswith("urn:qkdseg:node:"):
        role, who = "node", f"node {ident}"
        if ident not in addresses:
            raise InvalidRequest(f"{csr_path}: the CSR is for node {ident!r}, which is not a node of the network")
        allowed = [addresses[ident]]
    elif uri == "urn:qkdseg:controller":
        role, who = "controller", "the controller"
        allowed = list(net.get("controllers") or [net["address"]])
    else:
        raise InvalidRequest(f"{csr_path}: the CSR asks for role {uri}; net sign signs a node's or the controller's "
                             "(an SAE's: 'qkdseg net sae cert')")
    if cn != role_cn(role, ident):
        raise InvalidRequest(f"{csr_path}: the CSR's name (CN) is {cn!r}; {who}'s is {role_cn(role, ident)!r}")
    want = {_norm(host_of(a)) for a in allowed}
    if len(hosts) != 1 or hosts[0] not in want:
        raise InvalidRequest(f"{csr_path}: the CSR asks for address {', '.join(hosts) or 'none'}; {who} is at "
                             f"{' or '.join(sorted(want))} in {directory / 'controller' / 'net.json'} (the inventory)")
    ca_key, ca = load_ca(directory / "pki", ca_key_path)
    _, cert = issue_role(ca_key, ca, role_cn(role, ident), role_uri(role, ident), hosts=(hosts[0],),
                         public_key=csr.public_key())
    out = Path(out) if out is not None else csr_path.with_suffix(".crt")  # node.csr -> node.crt
    write_cert(out, cert)
    return out, who


def sae_cert(directory: Path, sae: str, ca_key_path: Path, csr_path: Path | None = None) -> Path:
    """``DIR/pki/SAE.crt`` for an SAE of the network's registry (and ``SAE.key`` without a CSR)."""
    from ..server.config import load_config

    directory = Path(directory)
    cfg = load_config(directory / "controller")
    if sae not in cfg.saes:
        raise InvalidRequest(f"SAE {sae!r} is not in the network's registry ({directory / 'controller' / 'kms.toml'}"
                             f": {', '.join(sorted(cfg.saes))})")
    ca_key, ca = load_ca(directory / "pki", ca_key_path)
    pki = directory / "pki"
    if csr_path is None:
        key, cert = issue_role(ca_key, ca, sae, role_uri("sae", sae))
        write_key(pki / f"{sae}.key", key)
    else:
        csr = _load_csr(Path(csr_path))
        cn, uris, _, _ = csr_request(csr)
        if cn != sae or any(u.startswith("urn:qkdseg:") and u != role_uri("sae", sae) for u in uris):
            raise InvalidRequest(f"{csr_path}: the CSR is for {cn!r} ({', '.join(uris) or 'no role'}), not SAE {sae!r}")
        _, cert = issue_role(ca_key, ca, sae, role_uri("sae", sae), public_key=csr.public_key())
        (pki / f"{sae}.key").unlink(missing_ok=True)
    write_cert(pki / f"{sae}.crt", cert)
    return pki / f"{sae}.crt"
