"""Link key rates from the link's physics: decoy-state BB84, asymptotic (GLLP with infinitely many decoys).

**[choice]** (docs/model.md, "Link rates from physics") The secret key rate
of a link of ``L`` km is the asymptotic decoy-state BB84 rate of Lo, Ma and
Chen, Phys. Rev. Lett. 94, 230504 (2005), in the notation of Ma, Qi, Zhao
and Lo, Phys. Rev. A 72, 012326 (2005), eqs. (1)-(9), with the intensity
``mu`` of the signal state chosen per link to maximise it:

- transmittance ``eta = eta_bob * 10**(-alpha_db_km * L / 10)``;
- gain and error of the signal: ``Q = Y0 + 1 - exp(-eta * mu)``,
  ``E * Q = e0 * Y0 + e_detector * (1 - exp(-eta * mu))`` with ``e0 = 1/2``;
- single photons (known exactly with infinitely many decoys):
  ``Y1 = Y0 + eta - Y0 * eta``, ``Q1 = Y1 * mu * exp(-mu)``,
  ``e1 = (e0 * Y0 + e_detector * eta) / Y1``;
- GLLP: ``R = q * (-Q * f * H2(E) + Q1 * (1 - H2(e1)))`` bits per pulse,
  ``q = 1/2`` (BB84's sifting), ``f`` the error correction inefficiency,
  ``H2`` the binary entropy; a rate below zero is no key (0).

Bits per second: ``R * repetition_hz``. The defaults are the GYS set-up of
both papers (Gobby, Yuan and Shields, Appl. Phys. Lett. 84, 3762 (2004)):
``alpha_db_km = 0.21``, ``e_detector = 0.033``, ``Y0 = 1.7e-6``,
``eta_bob = 0.045``, ``f = 1.22``; the repetition rate is ours (1 GHz).
With them the rate reaches zero at about 142 km (Ma et al. 2005's maximal
secure distance of the infinite-decoy protocol) and the optimal ``mu`` is
about 0.48 at 0-100 km (tests/test_physics.py checks both).

>>> r = bb84_decoy_rate([0.0, 50.0, 100.0])
>>> [f"{x:.4g}" for x in r]
['2.555e+06', '2.226e+05', '1.719e+04']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

MODEL = "bb84-decoy-gllp"


@dataclass(frozen=True)
class LinkPhysics:
    """The parameters of :func:`bb84_decoy_rate` (defaults: the GYS set-up; see the module)."""

    alpha_db_km: float = 0.21
    eta_bob: float = 0.045
    y0: float = 1.7e-6
    e_detector: float = 0.033
    f_ec: float = 1.22
    repetition_hz: float = 1e9

    def as_dict(self) -> dict:
        return {"model": MODEL, **asdict(self)}


def _h2(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 1e-300, 1 - 1e-16)
    return -x * np.log2(x) - (1 - x) * np.log2(1 - x)


def rate_per_pulse(length_km, mu, phys: LinkPhysics = LinkPhysics()) -> np.ndarray:
    """GLLP's secret key bits per pulse at signal intensity ``mu`` (broadcast over both), not clipped at 0."""
    L = np.asarray(length_km, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    eta = phys.eta_bob * 10.0 ** (-phys.alpha_db_km * L / 10.0)
    e0 = 0.5
    det = 1.0 - np.exp(-eta * mu)
    q_mu = phys.y0 + det
    e_mu = (e0 * phys.y0 + phys.e_detector * det) / q_mu
    y1 = phys.y0 + eta - phys.y0 * eta
    q1 = y1 * mu * np.exp(-mu)
    e1 = (e0 * phys.y0 + phys.e_detector * eta) / y1
    return 0.5 * (-q_mu * phys.f_ec * _h2(e_mu) + q1 * (1.0 - _h2(e1)))


#: The signal intensities searched (mean photon numbers).
MU_GRID = np.linspace(0.005, 1.5, 2991)


def optimal_mu(length_km, phys: LinkPhysics = LinkPhysics()) -> tuple[np.ndarray, np.ndarray]:
    """The intensity that maximises the rate at each length (on :data:`MU_GRID`), and the rate per pulse there."""
    L = np.atleast_1d(np.asarray(length_km, dtype=np.float64))
    r = rate_per_pulse(L[:, None], MU_GRID[None, :], phys)
    best = np.argmax(r, axis=1)
    return MU_GRID[best], r[np.arange(L.size), best]


def bb84_decoy_rate(length_km, phys: LinkPhysics = LinkPhysics()) -> np.ndarray:
    """Secret key rate (bits/s) of links of ``length_km`` (a number or an array), 0 where no key can be made."""
    L = np.asarray(length_km, dtype=np.float64)
    if np.any(~np.isfinite(L)) or np.any(L < 0):
        raise ValueError("length_km must be finite and non-negative")
    _, r = optimal_mu(L.ravel(), phys)
    return (np.maximum(r, 0.0) * phys.repetition_hz).reshape(L.shape)


def apply_physics_rates(network, phys: LinkPhysics = LinkPhysics()) -> dict:
    """Set every link's ``rate_bps`` from its ``length_km`` (rounded to 0.1 bit/s) and record the model on the network.

    The model and its parameters go into the graph's ``rate_model``
    attribute, as JSON text (the network file's field). A link without ``length_km`` is an error (the model needs it).
    Returns the rate range.
    """
    g = network.graph
    edges = list(g.edges(data=True))
    missing = [(u, v) for u, v, d in edges if d.get("length_km") is None]
    if missing:
        from ..errors import InvalidRequest

        raise InvalidRequest(f"--rates physics needs every link's length_km; link {missing[0]} has none")
    rates = bb84_decoy_rate(np.array([d["length_km"] for *_, d in edges], dtype=np.float64), phys)
    for (_, _, d), r in zip(edges, rates):
        d["rate_bps"] = round(float(r), 1)
    g.graph["rate_model"] = json.dumps(phys.as_dict(), sort_keys=True)  # text: GraphML and GML keep it too
    return {"min": float(rates.min()), "max": float(rates.max()), "zero": int((rates <= 0).sum())}
