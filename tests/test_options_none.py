"""``None`` as an algorithm option (issue 23): a value, never silently dropped.

Audit of every option of every algorithm: an option whose function default is
``None`` may be left out when given ``None`` (same route, same record); every
other option given ``None`` either means what its docs say (``smr-exact``'s
``candidates=None``: all trusted relays) or is refused with one clear error.
"""

from __future__ import annotations

import inspect

import pytest

from qkdseg import ALGORITHMS, example_network, route, waxman
from qkdseg.errors import InvalidRequest
from qkdseg.routing.smr_exact import DEFAULT_CANDIDATES


def test_smr_exact_candidates_none_means_all():
    """Waxman(40, 12 trusted, p=0.7, seed 4): with 8 or 9 candidates the best chain is missed;
    ``candidates=None`` (all 12) finds it, as 10 or more do, and records the option."""
    net = waxman(40, trusted=12, p=0.7, seed=4)
    capped = route(net, 13, 14, "smr-exact")
    uncapped = route(net, 13, 14, "smr-exact", candidates=None)
    all_ = route(net, 13, 14, "smr-exact", candidates=12)
    assert capped.options == {} and DEFAULT_CANDIDATES == 8
    assert uncapped.options == {"candidates": None}
    assert uncapped.segment_nodes == all_.segment_nodes == (13, 28, 34, 14)
    assert uncapped.security == all_.security > capped.security + 0.07


def _none_is_default(algo, name) -> bool:
    return inspect.signature(algo.func).parameters[name].default is None


@pytest.mark.parametrize("algorithm, option", [(a, o) for a in sorted(ALGORITHMS) for o in sorted(ALGORITHMS[a].options)])
def test_every_option_given_none(algorithm, option):
    """Every option of every algorithm: ``None`` is the default (same route as leaving it out),
    a documented value (recorded), or an error -- never silently replaced by another default."""
    net = example_network()
    kw = {"epsilon": 0.5} if "epsilon" in ALGORITHMS[algorithm].options else {}
    algo = ALGORITHMS[algorithm]
    if option == "epsilon":  # the request's level, not a free option
        with pytest.raises(InvalidRequest, match="epsilon"):
            route(net, 0, 7, algorithm)
        return
    base = route(net, 0, 7, algorithm, **kw)
    if _none_is_default(algo, option):
        r = route(net, 0, 7, algorithm, **kw, **{option: None})
        assert r == base and r.options == base.options
        return
    try:
        r = route(net, 0, 7, algorithm, **kw, **{option: None})
    except InvalidRequest as err:
        assert option in str(err)
        return
    assert r.options.get(option, "missing") is None, f"{algorithm}.{option}=None was dropped"
