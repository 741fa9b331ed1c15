"""The key service: ETSI GS QKD 014 key delivery over the paper's method (docs/kms.md).

An adapter over the core (STYLE.md layering): it routes with the routing
registry, relays real key bytes with :mod:`qkdseg.keys` and reconstructs
with :mod:`qkdseg.reconstruction`; nothing in the core imports it.

- :mod:`.config`: ``kms.toml`` (SAE registry, defaults, TLS files).
- :mod:`.pki`: a test CA and certificates (``cryptography``).
- :mod:`.source`: the key source interface, emulated QKD links, pool levels.
- :mod:`.lock`: one process per service directory (an OS file lock).
- :mod:`.audit`: the audit log's keyed chain (HMAC-SHA256), its checks.
- :mod:`.store`: SQLite (WAL, group commit), AES-GCM at rest with a checked
  storage key, the audit chain checked at start.
- :mod:`.etsi`: the ETSI 014 vocabulary (caller, key request, errors), shared by the services.
- :mod:`.service`: a key request -> route -> relay -> stored keys.
- :mod:`.app`: the ETSI 014 HTTP routes (Starlette) and the error map.
- :mod:`.server`: uvicorn over mutual TLS.

Its commands, ``qkdseg kms init|serve|demo|audit|sae|rotate-storage-key``, are
:mod:`qkdseg.cli.kms`.
"""

# Loaded on first use (PEP 562): a network node imports .app, .etsi, .store and .pki without .service,
# which routes (numba, scipy; docs/network.md).
_LAZY = {"KmsConfig": "config", "load_config": "config", "write_config": "config", "Caller": "etsi",
         "KeyRequest": "etsi", "KmsError": "etsi", "KeyService": "service"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'qkdseg.kms' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["Caller", "KeyRequest", "KeyService", "KmsConfig", "KmsError", "load_config", "write_config"]
