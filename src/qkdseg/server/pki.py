"""A test PKI for the key service, built with ``cryptography``.

``qkdseg kms init`` makes, in ``DIR/pki/``:

- ``ca.crt``/``ca.key``: a self-signed CA (ECDSA P-256);
- ``server.crt``/``server.key``: the KME's certificate, SANs
  ``IP:127.0.0.1`` and ``DNS:localhost`` (the real ETSI 014 clients verify
  the host name), CN = the KME id;
- ``SAE.crt``/``SAE.key`` for each SAE: a client certificate whose CN is
  the SAE id (the server takes the caller's identity from it).

Private keys are written with mode 0600. A production deployment brings its
own CA and certificates and points ``kms.toml``'s ``ca``, ``cert`` and ``key``
at them (docs/kms.md).

>>> ca_key, ca = make_ca("test CA")
>>> key, cert = issue(ca_key, ca, "SAE_A", client=True)
>>> common_name(cert)
'SAE_A'
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdseg")])


def make_ca(cn: str = "qkdseg test CA", *, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate and its key, valid ``days`` days from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + days * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    client: bool,
    days: int = 825,
    not_before: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate signed by the CA: a client certificate (CN = SAE id) or the server's.

    The server certificate carries SANs ``IP:127.0.0.1`` and ``DNS:localhost``.
    ``not_before`` (default: a day ago) and ``days`` set the validity window,
    so a test can make an expired certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.timezone.utc) - DAY
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + days * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def common_name(cert: x509.Certificate) -> str | None:
    """The certificate's subject CN, or ``None``."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint of a DER certificate, lower-case hex."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def write_key(path: Path, key) -> None:
    """Write a private key (PEM, unencrypted) with mode 0600 from the start."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(path, data)


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data`` (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(pki_dir: Path, saes: list[str], kme_id: str, *, ca_key_path: Path | None = None) -> None:
    """Write a CA, the server's certificate and one client certificate per SAE into ``pki_dir``.

    ``ca_key_path``: write the CA's private key there instead of
    ``pki_dir/ca.key`` (keep it off the server: whoever reads it can mint SAE
    certificates).
    """
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca(f"qkdseg test CA ({kme_id})")
    if ca_key_path is None:
        write_key(pki_dir / "ca.key", ca_key)
    else:
        write_key(Path(ca_key_path), ca_key)
        (pki_dir / "ca.key").unlink(missing_ok=True)
    write_cert(pki_dir / "ca.crt", ca)
    key, cert = issue(ca_key, ca, kme_id, client=False)
    write_key(pki_dir / "server.key", key)
    write_cert(pki_dir / "server.crt", cert)
    for sae in saes:
        add_sae_cert(pki_dir, sae, ca_key=ca_key, ca=ca)


def load_ca(pki_dir: Path, ca_key_path: Path | None = None):
    """The CA's private key (``ca_key_path``, else ``pki_dir/ca.key``) and certificate (``pki_dir/ca.crt``)."""
    from ..errors import InvalidRequest

    key_path = Path(ca_key_path) if ca_key_path is not None else pki_dir / "ca.key"
    crt_path = pki_dir / "ca.crt"

    def read(path: Path, kind: str, hint: str = "") -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise InvalidRequest(f"{path}: no such file (the {kind}{hint})") from None
        except IsADirectoryError:
            raise InvalidRequest(f"{path}: is a directory, not the {kind}") from None
        except OSError as err:
            raise InvalidRequest(f"{path}: cannot read the {kind}: {err.strerror or err}") from None

    crt = read(crt_path, "CA certificate")
    key = read(key_path, "CA's private key", "; kept elsewhere? give it with --ca-key PATH" if ca_key_path is None else "")
    try:
        ca = x509.load_pem_x509_certificate(crt)
    except ValueError:
        raise InvalidRequest(f"{crt_path}: not a PEM CA certificate (damaged, or another file)") from None
    try:
        ca_key = serialization.load_pem_private_key(key, None)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{key_path}: not an unencrypted PEM private key of the CA (damaged, or another file)"
                             ) from None
    if ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            ca_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise InvalidRequest(f"{key_path}: not the private key of {pki_dir / 'ca.crt'}")
    return ca_key, ca


def add_sae_cert(pki_dir: Path, sae: str, *, ca_key=None, ca=None, ca_key_path: Path | None = None,
                 days: int = 825) -> None:
    """Write ``SAE.crt``/``SAE.key`` (a new key pair) signed by the CA of ``pki_dir``, valid ``days`` days."""
    if ca_key is None:
        ca_key, ca = load_ca(pki_dir, ca_key_path)
    key, cert = issue(ca_key, ca, sae, client=True, days=days)
    write_key(pki_dir / f"{sae}.key", key)
    write_cert(pki_dir / f"{sae}.crt", cert)
