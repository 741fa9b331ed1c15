"""Key reconstruction (paper section III.C, docs/model.md section 4).

Every path of every segment delivers one key *piece* of ``B`` bits. A
reconstruction scheme turns a route's pieces into *global keys*: a global key
has exactly one *part* per segment, a part being a group of that segment's
pieces XORed (or, for ``reuse``, hashed) into one segment key. The global key
is relayed hop by hop under the segment keys, so it stays secret iff every
one of its parts does (and the segment nodes relaying it are safe).

Four schemes, all pure functions with the signature::

    scheme(p, segments, chain, epsilon, block_bits, **options) -> Reconstruction

where ``p`` is the node security array, ``segments[j]`` the node-index paths
of segment ``j``, and ``chain`` the interior segment nodes. They are
registered in :data:`SCHEMES`:

``xor-all``
    All pieces of a segment into one part; one global key, kept only if it
    meets ``epsilon``.
``paper``
    The paper's flexible reconstruction: a priority queue per segment
    (merge the two weakest keys), balanced matching across segments, and the
    paper's stopping rule. docs/reconstruction.md works an example by hand.
``optimal``
    The most global keys that meet ``epsilon``, solved exactly as an integer
    program with :func:`scipy.optimize.milp` (a pattern formulation over the
    minimal feasible keys, see :func:`optimal`). Capped in size and time;
    when capped it says so and never returns fewer keys than ``paper``.
``reuse``
    Key reuse: combinations of a segment's pieces hashed with HKDF-SHA256
    (:func:`derive_key`); one piece may feed several keys. These keys are
    *computational*, and the information-theoretic ceiling is reported
    beside them.

Security. Inside a segment, a part is secret iff one of its paths has all its
relays safe; its security is computed exactly (:func:`qkdseg.security.exact_security`),
so relays shared between paths (possible with ``trusted_p < 1``) are handled.
A key's reported ``security`` is the exact probability that every part stays
secret and every chain node is safe. Decisions (merging, matching, the
integer program) use the product of the parts' exact securities times the
chain's, which equals the exact value when no risky relay is shared between
segments and is otherwise a lower bound (all these events are increasing in
the set of safe nodes, so by Harris' inequality they are positively
correlated): a key accepted on the product always meets ``epsilon`` exactly.

A key meets the level when ``security >= epsilon - TOLERANCE``
(:data:`TOLERANCE` absorbs floating-point rounding at exact ties such as
``0.5``).

Layout: :mod:`.result` (the result types and :func:`meets`),
:mod:`.evaluator` (exact part and key securities), :mod:`.registry`
(:data:`SCHEMES`, :func:`register`, :func:`reconstruct`), and one module per
scheme: :mod:`.xor_all`, :mod:`.paper`, :mod:`.optimal`, :mod:`.reuse`.
"""

from __future__ import annotations

# Registration order is the order of SCHEMES (and of ``qkdseg algorithms``).
from .registry import SCHEME_DESCRIPTIONS, SCHEME_OPTIONS, SCHEMES, reconstruct, register
from .result import TOLERANCE, GlobalKey, KeyPart, Reconstruction, meets
from .xor_all import xor_all
from .paper import balanced_matching, paper, paper_key_counts
from .optimal import OPTIMAL_MAX_CHOICES, OPTIMAL_MAX_COLUMNS, OPTIMAL_TIME_LIMIT, optimal
from .reuse import REUSE_MAX_COMBINATIONS, derive_key, reuse

__all__ = [
    "GlobalKey",
    "KeyPart",
    "Reconstruction",
    "SCHEMES",
    "balanced_matching",
    "derive_key",
    "meets",
    "optimal",
    "paper",
    "reconstruct",
    "reuse",
    "xor_all",
]
