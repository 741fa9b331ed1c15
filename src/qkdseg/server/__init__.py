"""The shared server core: what both deployments of the key service run on (docs/contributing.md).

``kms serve`` (:mod:`qkdseg.kms`, centralized) and the network of nodes
(:mod:`qkdseg.net`: ``node serve``, ``controller serve``) import this package;
it imports neither of them.

- :mod:`.etsi`: the ETSI GS QKD 014 vocabulary (caller, key request, errors).
- :mod:`.frontend`: the ETSI 014 HTTP routes (Starlette) and the error map.
- :mod:`.http`: the listener (uvicorn's h11 with limits, the caller from the TLS peer certificate, clean stops).
- :mod:`.tls`: the server's TLS context, loopback addresses, the dashboard's token.
- :mod:`.config`: ``kms.toml`` (SAE registry, defaults, limits, TLS files).
- :mod:`.pki`: a test CA and certificates (``cryptography``).
- :mod:`.schema`, :mod:`.store`, :mod:`.groupcommit`, :mod:`.storagekey`, :mod:`.directory`: the key store
  (SQLite, WAL, group commit, AES-GCM at rest with a checked storage key) and its offline checks.
- :mod:`.audit`: the audit log's keyed chain (HMAC-SHA256), its checks.
- :mod:`.lock`: one process per service directory (an OS file lock).
- :mod:`.source`: the key source interface and emulated QKD links.
- :mod:`.planner`: routing on the current levels, reconstruction at the requested level, reservations.
- :mod:`.core`: the planning state both deployments' centralized parts hold (``kms serve``, the controller).
- :mod:`.delivery`: ``dec_keys``'s checks, shared by ``kms serve`` and the nodes.
- :mod:`.logs`, :mod:`.metrics`, :mod:`.health`: logs, Prometheus metrics, ``/healthz`` and ``/readyz``.
- :mod:`.monitor`, :mod:`.dashboard` (and ``static/``): the operator dashboard.
"""
