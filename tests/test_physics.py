"""Link rates from physics (decoy-state BB84, GLLP asymptotic): against the published values, monotone in length."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from hypothesis import given, settings, strategies as st

from kms_helpers import QKDSEG
from qkdseg.topology.physics import LinkPhysics, bb84_decoy_rate, optimal_mu


def test_the_gys_setup_meets_the_published_distance_and_intensity():
    """Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), GYS parameters, infinitely many decoys: the key rate reaches zero at
    about 142 km, and the optimal signal intensity is about 0.48."""
    L = np.arange(100.0, 150.0, 0.1)
    r = bb84_decoy_rate(L)
    last = L[r > 0].max()
    assert 141.5 <= last <= 142.5
    mu, _ = optimal_mu([10.0, 50.0, 100.0])
    assert np.all(np.abs(mu - 0.48) < 0.015)


def test_a_perfect_channel_is_the_single_photon_bound_and_no_key_at_a_half_error():
    # no dark counts, no detector error, eta = 1: R = q * Q1 = 1/2 * mu e^-mu, maximal at mu = 1
    ideal = LinkPhysics(alpha_db_km=0.0, eta_bob=1.0, y0=0.0, e_detector=0.0, repetition_hz=1.0)
    assert abs(float(bb84_decoy_rate(0.0, ideal)) - 0.5 / np.e) < 1e-6
    assert float(bb84_decoy_rate(0.0, LinkPhysics(e_detector=0.5))) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 200), st.floats(0, 200))
def test_rate_does_not_grow_with_length(a, b):
    lo, hi = sorted((a, b))
    ra, rb = bb84_decoy_rate(np.array([lo, hi]))
    assert rb <= ra + 1e-9 * max(ra, 1.0)


def test_generate_with_physics_rates_and_show_prints_the_range(tmp_path):
    out = tmp_path / "w.json"
    args = [QKDSEG, "topology", "generate", "waxman", "--nodes", "30", "--seed", "3", "--rates", "physics", "-o"]
    subprocess.run(args + [str(out)], check=True, capture_output=True, timeout=60)
    again = tmp_path / "w2.json"
    subprocess.run(args + [str(again)], check=True, capture_output=True, timeout=60)
    assert out.read_bytes() == again.read_bytes()  # same seed, same file
    data = json.loads(out.read_text())
    links = data["links"]
    want = bb84_decoy_rate(np.array([e["length_km"] for e in links]))
    assert np.allclose([e["rate_bps"] for e in links], want, atol=0.051)
    assert json.loads(data["graph"]["rate_model"])["model"] == "bb84-decoy-gllp"
    show = subprocess.run([QKDSEG, "topology", "show", str(out), "--format", "json"], check=True, capture_output=True,
                          text=True, timeout=60)
    s = json.loads(show.stdout)
    assert s["rate_bps_min"] == min(e["rate_bps"] for e in links) and s["rate_bps_max"] == max(e["rate_bps"] for e in links)
    text = subprocess.run([QKDSEG, "topology", "show", str(out)], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    assert "link rate_bps" in text
    bad = subprocess.run(args[:-3] + ["--rates", "nope", "-o", str(tmp_path / "x.json")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("qkdseg: error: --rates")
