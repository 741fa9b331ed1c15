"""The planning state of a key service: what ``kms serve`` and the network's controller both hold.

:class:`ServiceState` is the configuration, the network, the SAE registry,
the store (with its group commit), the :class:`.planner.Planner` (the links'
levels) and the observers of audited events (the dashboard's
:class:`.monitor.Monitor`). ``kms serve``'s :class:`qkdseg.kms.service.KeyService`
adds the keys and the ETSI 014 operations; the controller
(:mod:`qkdseg.net.controller`) plans with it and never holds a key.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .groupcommit import GroupCommit
from .planner import Planner
from .source import EmulatedKeySource, KeySource

logger = logging.getLogger("qkdseg.kms")


class ServiceState:
    """The state shared by a key service's central parts.

    Parameters
    ----------
    cfg : KmsConfig
    network : Network
    store : Store
        The database (the links' levels and the audit chain are loaded from it).
    source : KeySource, optional
        Default: :class:`.source.EmulatedKeySource` at the links' ``rate_bps``.
    clock : callable
        Unix time in seconds (a test may pass its own).
    """

    def __init__(self, cfg, network, store, source: KeySource | None = None, clock=time.time) -> None:
        self.cfg = cfg
        self.network = network
        self.arrays = network.arrays
        self.store = store
        self.clock = clock
        self.source = source or EmulatedKeySource(network, cfg.default_rate_bps)
        self.planner = Planner(cfg, network, self.source, clock)
        self.algorithm = self.planner.algorithm
        self.sae_node: dict[str, int] = {}
        from ..errors import QkdsegError

        for sae, node in cfg.saes.items():
            try:
                nid = network.resolve(str(node))
            except QkdsegError as err:  # kms.toml's registry against its network: name the file and the SAE
                raise type(err)(f"{cfg.path('kms.toml')}: SAE {sae!r}: {err}") from None
            self.sae_node[sae] = self.arrays.index[nid]
        self.committer = GroupCommit(store)
        #: Called with each audited event after it is committed (``event``: issue, deliver, deny, expire);
        #: an ``issue`` event also carries ``route_paths`` (node ids, per segment, per path). No key bytes.
        self.observers: list = []
        self.load()

    def load(self) -> None:
        """(Re)load the state from the store: the links' levels (:meth:`.planner.Planner.load`)."""
        self.planner.load(self.store)

    @property
    def levels(self):
        """Every link's pool level and consumed offset (:class:`qkdseg.keys.levels.LinkLevels`)."""
        return self.planner.levels

    @property
    def changes(self) -> list[str]:
        """What changed in the network since the last start (one line each)."""
        return self.planner.changes

    def refill(self, now: float) -> None:
        self.planner.refill(now)

    def warm(self) -> None:
        """Route once between two SAEs' nodes (no debit), so numba's kernels are compiled before the first request."""
        self.planner.warm(list(self.sae_node.values()), self.cfg.key_size, self.cfg.security_level)

    def waiting_keys(self) -> int:
        """Issued keys waiting for their slave (none where the state holds no key: the controller)."""
        return 0

    def spare_keys(self) -> int:
        """Relayed keys kept for later requests (none where the state holds no key: the controller)."""
        return 0

    def _notify(self, rec: dict, **extra) -> None:
        if not self.observers:
            return
        event = {**rec, **extra} if extra else rec
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 -- an observer (the dashboard) never breaks a request
                logger.exception("an observer of the key service failed")

    def close(self) -> None:
        self.committer.close()


def load_network(cfg):
    """The network of ``cfg`` (``kms.toml``'s ``network``: ``example``, ``topohub:...`` or a file beside it)."""
    from ..topology import load

    spec = cfg.network
    if not (spec == "example" or spec.startswith("topohub:")):
        spec = str(cfg.path(spec))
    return load(spec)


def open_state(directory: str | Path, factory=ServiceState, *, accept_broken_audit: bool = False, **options):
    """Load ``DIR/kms.toml``, its network and its store (locked, checked) into ``factory`` (a :class:`ServiceState`
    or a subclass: ``kms serve``'s :class:`qkdseg.kms.service.KeyService`); the store is closed if that fails."""
    from .config import load_config
    from .store import open_store

    cfg = load_config(Path(directory))
    network = load_network(cfg)
    store = open_store(cfg, accept_broken_audit=accept_broken_audit)
    try:
        return factory(cfg, network, store, **options)
    except BaseException:
        store.close()
        raise
