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
- :mod:`.service`: a key request -> route -> relay -> stored keys.
- :mod:`.app`: the ETSI 014 HTTP routes (Starlette) and the error map.
- :mod:`.server`: uvicorn over mutual TLS.
- :mod:`.cli`: ``qkdseg kms init|serve|demo|audit|sae|rotate-storage-key``.
"""

from .config import KmsConfig, load_config, write_config
from .service import Caller, KeyRequest, KeyService, KmsError

__all__ = ["Caller", "KeyRequest", "KeyService", "KmsConfig", "KmsError", "load_config", "write_config"]
