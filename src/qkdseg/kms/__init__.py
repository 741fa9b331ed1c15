"""The centralized key service: ``kms serve``, ETSI GS QKD 014 key delivery over the paper's method (docs/kms.md).

One process plans, relays and delivers every key (the system of the paper's
Fig. 2 in one place). It runs on the shared server core (:mod:`qkdseg.server`:
the ETSI 014 front end, the store, the audit chain, the PKI, the listener,
logs, metrics, the planner) and never imports the network of nodes
(:mod:`qkdseg.net`).

- :mod:`.service`: a key request -> plan -> relay -> stored keys (:class:`.service.KeyService`).
- :mod:`.server`: ``kms serve``: uvicorn over mutual TLS, the dashboard and the metrics beside it.
- :mod:`.status`: ``kms status``, read-only from the directory.
- :mod:`.demo`: ``kms demo``.

Its commands, ``qkdseg kms init|serve|status|demo|audit|sae|rotate-storage-key``, are
:mod:`qkdseg.cli.kms`.
"""

# Loaded on first use (PEP 562): importing the package loads neither the service (routing: numba, scipy) nor the
# server core.
_LAZY = {"KmsConfig": "qkdseg.server.config", "load_config": "qkdseg.server.config",
         "write_config": "qkdseg.server.config", "Caller": "qkdseg.server.etsi", "KeyRequest": "qkdseg.server.etsi",
         "KmsError": "qkdseg.server.etsi", "KeyService": "qkdseg.kms.service"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'qkdseg.kms' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = ["Caller", "KeyRequest", "KeyService", "KmsConfig", "KmsError", "load_config", "write_config"]
