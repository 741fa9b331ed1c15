"""The storage key: AES-256-GCM key of a service directory's keys at rest (``storage.key``, mode 0600), its check value."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidRequest
from .pki import write_secret


def make_storage_key(path: Path) -> bytes:
    """Write a new 32-byte AES-256-GCM storage key (mode 0600). Only ``kms init`` (and a rotation) make one."""
    if path.exists():
        raise InvalidRequest(f"{path}: a storage key exists already (rotate it with 'qkdseg kms rotate-storage-key')")
    key = AESGCM.generate_key(bit_length=256)
    write_secret(path, key)
    return key


def load_storage_key(path: Path) -> bytes:
    """The 32-byte storage key in ``path``; never made here (a missing key is an error, not a new key)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such file (the storage key; only 'qkdseg kms init' makes one; restore the "
                             "directory's storage key from its backup)") from None
    except OSError as err:
        raise InvalidRequest(f"{path}: cannot read the storage key: {err.strerror}") from None
    if len(data) != 32:
        raise InvalidRequest(f"{path}: a storage key must be 32 bytes, found {len(data)}")
    if path.stat().st_mode & 0o077:
        raise InvalidRequest(f"{path}: storage key is readable by group or others (chmod 600 it)")
    return data


def init_keys(cfg) -> None:
    """Make the storage key and the audit key of a new service directory (``kms init``); an existing one is kept."""
    from .audit import load_audit_key, make_audit_key

    for name, make, load in (("storage_key", make_storage_key, load_storage_key),
                             ("audit_key", make_audit_key, load_audit_key)):
        path = cfg.path(getattr(cfg, name))
        if not path.exists():
            make(path)
        else:
            load(path)  # one that is kept must be usable: a damaged one is named now, not at the first start


def storage_key_id(key: bytes) -> str:
    """The check value stored beside the data: 16 bytes of HKDF-SHA256 of the key (reveals nothing of it)."""
    return HKDF(hashes.SHA256(), 16, salt=None, info=b"qkdseg kms storage key id").derive(key).hex()
