"""The network model (docs/model.md section 1) and its frozen array form.

A :class:`Network` wraps a :class:`networkx.Graph` whose nodes carry

- ``trusted`` (bool): a trusted relay;
- ``p`` (float in [0, 1]): the probability that the node is *not*
  compromised. Trusted nodes default to ``p = 1``;

and whose links carry

- ``pool_bits`` (int >= 0, default 100 000): the key pool shared by its ends;
- optionally ``rate_bps`` (key generation rate, bit/s) and ``length_km``.

The network is validated once, when it is built, and is immutable afterwards.
The hot loops (routing, security evaluation) never touch the networkx graph:
they run on :attr:`Network.arrays`, a frozen CSR form built once and cached.

The package has four modules, each importing only those before it:
:mod:`.values` (bounds and the checks of one field), :mod:`.arrays` (the
frozen CSR form), :mod:`.model` (the :class:`Network` class and the records it may be
built from) and :mod:`.records` (networks read from records, validated
with array operations). Every public name is importable from
``qkdseg.network`` as before.
"""

from .arrays import NetworkArrays, arrays_from_edges
from .model import Network, NetworkRecords
from .records import network_from_records
from .values import COST_SCALE, DEFAULT_POOL_BITS, MAX_POOL_BITS, check_count, check_probability

__all__ = [
    "COST_SCALE",
    "DEFAULT_POOL_BITS",
    "MAX_POOL_BITS",
    "Network",
    "NetworkArrays",
    "NetworkRecords",
    "arrays_from_edges",
    "check_count",
    "check_probability",
    "network_from_records",
]
