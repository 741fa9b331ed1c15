"""``net init --inventory hosts.toml``: where each process of a network runs (docs/network.md, "Deploying one node
per host").

The inventory is a TOML file (the contract)::

    [controller]
    address = "10.99.0.1:8443"          # or addresses = ["h1:8443", "h2:8443", "h3:8443"]: replicated controllers
    [etcd]                               # optional: the etcd members of replicated controllers
    members = ["h1:2379", "h2:2379", "h3:2379"]
    [nodes]
    "0" = "10.99.0.10:8443"             # node id (as in the network file) -> HOST:PORT; a DNS name is fine
    "1" = "node1.example.net:8443"

Every error is one line naming the file and the field (a node missing from ``[nodes]`` is named). This module also
holds what the processes and commands ask of an address: whether its host is an IP or a DNS name (the certificate's
SAN), whether it is on this machine (``net up`` starts only those), and whether a certificate covers it.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest

_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


@dataclass
class Inventory:
    """The addresses of an inventory: ``controllers`` (HOST:PORT, the first the one of ``DIR/controller/``),
    ``etcd`` (HOST:PORT of each member; empty without ``[etcd]``), ``nodes`` (node id as text -> HOST:PORT)."""

    controllers: list[str]
    nodes: dict[str, str]
    etcd: list[str] = field(default_factory=list)


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for an IPv6 address) -> ``(host, port)``; ValueError when it is not one."""
    text = str(address).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: expected HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif not is_ip(host) and not (host and set(host) <= _HOST_CHARS and len(host) <= 253
                                  and all(0 < len(part) <= 63 for part in host.split("."))):
        raise ValueError(f"{address!r}: {host!r} is neither an IP address nor a DNS name")
    return host, int(port)


def host_of(address: str) -> str:
    return split_address(address)[0]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_local(host: str) -> bool:
    """Whether ``host`` (an IP or a DNS name) is this machine: a loopback address, or one a socket can be bound to
    here (an address of a local interface). A name that does not resolve is not local."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    for family, _, _, _, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip.is_loopback:
            return True
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def load_inventory(path: Path, node_ids: list) -> Inventory:
    """The inventory of ``path`` for a network with ``node_ids``; one line naming the file and field on any error."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"--inventory {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"--inventory {path}: cannot read it: {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidRequest(f"{path}: not TOML ({err})") from None

    def bad(where: str, why: str) -> InvalidRequest:
        return InvalidRequest(f"{path}: {where}: {why}")

    def address(where: str, value) -> str:
        if not isinstance(value, str):
            raise bad(where, f"{value!r} is not a \"HOST:PORT\" string")
        try:
            split_address(value)
        except ValueError as err:
            raise bad(where, str(err)) from None
        return value.strip()

    unknown = sorted(set(data) - {"controller", "etcd", "nodes"})
    if unknown:
        raise bad(f"[{unknown[0]}]", "not a table of an inventory (controller, etcd, nodes)")
    ctrl = data.get("controller")
    if not isinstance(ctrl, dict):
        raise bad("[controller]", "missing: give address = \"HOST:PORT\" (or addresses = [...])")
    if ("address" in ctrl) == ("addresses" in ctrl) or set(ctrl) - {"address", "addresses"}:
        raise bad("[controller]", "give exactly one of address = \"HOST:PORT\" and addresses = [\"HOST:PORT\", ...]")
    if "address" in ctrl:
        controllers = [address("[controller] address", ctrl["address"])]
    else:
        if not isinstance(ctrl["addresses"], list) or not 1 <= len(ctrl["addresses"]) <= 9:
            raise bad("[controller] addresses", "a list of 1 to 9 \"HOST:PORT\"")
        controllers = [address(f"[controller] addresses[{i}]", a) for i, a in enumerate(ctrl["addresses"])]
    etcd: list[str] = []
    if "etcd" in data:
        members = data["etcd"].get("members") if isinstance(data["etcd"], dict) else None
        if not isinstance(members, list) or len(members) not in (1, 3, 5):
            raise bad("[etcd] members", "a list of 1, 3 or 5 \"HOST:PORT\" (an odd count: etcd's quorum)")
        etcd = [address(f"[etcd] members[{i}]", m) for i, m in enumerate(members)]
    if len(controllers) > 1 and not etcd:
        raise bad("[controller] addresses", "several controllers elect their leader in etcd: add [etcd] members")
    nodes_t = data.get("nodes")
    if not isinstance(nodes_t, dict):
        raise bad("[nodes]", "missing: one line \"NODE\" = \"HOST:PORT\" per node of the network")
    wanted = [str(v) for v in node_ids]
    for key in nodes_t:
        if key not in wanted:
            raise bad(f"[nodes] \"{key}\"", f"not a node of the network (its nodes: {', '.join(wanted[:10])}"
                                            + (", ..." if len(wanted) > 10 else "") + ")")
    nodes = {}
    for v in wanted:
        if v not in nodes_t:
            raise bad("[nodes]", f"node \"{v}\" is missing (every node of the network needs its HOST:PORT)")
        nodes[v] = address(f"[nodes] \"{v}\"", nodes_t[v])
    seen: dict[str, str] = {}
    for where, a in [*((f"[controller] {c}", c) for c in controllers), *((f"[nodes] \"{v}\"", a)
                                                                         for v, a in nodes.items())]:
        key = a.lower()
        if key in seen:
            raise bad(where, f"{a} is also the address of {seen[key]} (each process listens on its own)")
        seen[key] = where
    return Inventory(controllers=controllers, nodes=nodes, etcd=etcd)


def cert_hosts(cert) -> set[str]:
    """The IP addresses and DNS names (lower case) a certificate's SAN names."""
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
            | {d.lower() for d in sans.get_values_for_type(x509.DNSName)})


def check_cert_address(cert_path: Path, address: str, conf: str) -> None:
    """Refuse to serve at ``address`` (of the file ``conf``) with a certificate that does not name its host: the
    others would refuse every connection to it (one line naming both)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return  # missing or damaged: load_tls_files names it
    host = host_of(address)
    norm = str(ipaddress.ip_address(host)) if is_ip(host) else host.lower()
    names = cert_hosts(cert)
    if norm not in names:
        raise InvalidRequest(f"{cert_path}: the certificate is for {', '.join(sorted(names)) or 'no address'}, not "
                             f"for {host} ({conf}'s address {address}): the others could not connect; have it "
                             "re-issued for that address ('qkdseg node keygen' or 'controller keygen', then "
                             "'qkdseg net sign')")
