"""The network's certificates: roles as SAN URIs, the profile ``net init`` and ``net sign`` issue, CSRs.

A node's certificate: CN ``node <id>``, SAN URI ``urn:qkdseg:node:<id>``, the
IP address or DNS name of its address (and ``localhost``), key usages digital
signature and key agreement, extended key usages serverAuth and clientAuth. The
controller's: CN ``controller``, ``urn:qkdseg:controller``, its address. An
SAE's: CN = the SAE id, ``urn:qkdseg:sae:<id>``, clientAuth only. The admin's
``operator`` certificate (``net status`` from a machine that holds no
process's key): ``urn:qkdseg:operator``, clientAuth only: a process answers it
``/health`` and nothing else. The admin's ``admin`` certificate (``net add-node``,
``net sae add``, ...: :mod:`.membership`): ``urn:qkdseg:admin``, clientAuth only;
the one role the processes take a change of membership from.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..server.pki import DAY, _name
from .inventory import is_ip


def role_uri(role: str, ident: str | None = None) -> str:
    """``urn:qkdseg:node:<id>``, ``urn:qkdseg:controller``, ``urn:qkdseg:operator`` or ``urn:qkdseg:sae:<id>``
    (the id percent-encoded)."""
    if role in ("controller", "operator", "admin"):
        return f"urn:qkdseg:{role}"
    return f"urn:qkdseg:{role}:{quote(str(ident), safe='')}"


def role_cn(role: str, ident: str | None = None) -> str:
    """The subject CN of a role's certificate: ``node <id>``, ``controller``, ``operator``, or the SAE's id."""
    return {"node": f"node {ident}", "sae": str(ident)}.get(role, role)


def _host_names(hosts) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for h in hosts:
        name = x509.IPAddress(ipaddress.ip_address(h)) if is_ip(h) else x509.DNSName(h.lower())
        if name not in out:
            out.append(name)
    return out


def issue_role(ca_key, ca_cert, cn: str, uri: str, *, hosts: tuple[str, ...] = (), days: int = 825,
               public_key=None):
    """A leaf certificate with its role as a SAN URI; ``hosts`` (IPs or DNS names) make it a server certificate
    too. ``public_key``: certify that key (a CSR's; returns ``(None, cert)``), else a new key pair."""
    key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
    start = dt.datetime.now(dt.timezone.utc) - DAY
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if hosts:
        sans += _host_names(hosts)
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(public_key if key is None else key.public_key())
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


def make_csr(key, role: str, ident: str | None, hosts: tuple[str, ...]) -> x509.CertificateSigningRequest:
    """The CSR ``node keygen`` / ``controller keygen`` write: the role's CN and SAN URI, and its address."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(role_uri(role, ident))]
    sans += [n for n in _host_names(hosts) if n != x509.DNSName("localhost")]
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(_name(role_cn(role, ident)))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))


def csr_request(csr: x509.CertificateSigningRequest) -> tuple[str | None, list[str], list[str], str | None]:
    """What a CSR asks for: ``(CN, its SAN URIs, its SAN hosts (IPs, DNS names; lower case), the role's id)``."""
    attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(attrs[0].value) if attrs else None
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return cn, [], [], None
    uris = list(sans.get_values_for_type(x509.UniformResourceIdentifier))
    hosts = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    hosts += [d.lower() for d in sans.get_values_for_type(x509.DNSName) if d.lower() != "localhost"]
    ident = None
    for uri in uris:
        for kind in ("node", "sae"):
            if uri.startswith(f"urn:qkdseg:{kind}:"):
                ident = unquote(uri[len(f"urn:qkdseg:{kind}:"):])
    return cn, uris, hosts, ident
