"""The paper's four claims and their verdicts on the data (PASS/FAIL), below
both the report (:mod:`.report`) and the MSP beta sensitivity
(:mod:`.sensitivity`), which judge the same claims.

Every verdict is a **paired** test. The trials of a sweep share their seeds
across algorithms and points (docs/experiments.md: trial ``t`` has one
topology and one request pair at every point; Fig. 6's points differ only in
the trusted placement drawn from that seed), so two settings are compared
request by request: the differences ``x_t - y_t`` over the trials both
hold, their mean and a 95% Student-t half-width (:func:`paired`). A
difference is *significant* when that interval excludes 0.

- "A is more secure / consumes fewer keys / gets longer keys than B at every
  point": at every point (and level), A - B is significantly in the claimed
  direction.
- "key length grows with X": for A and B and every level, the last point
  minus the first is significantly positive, and no step between neighbouring
  points is significantly negative.

Each claim carries the settings it was measured on (:func:`settings_of`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import eps_column


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and its verdict on the data."""

    figure: str
    text: str
    passed: bool
    evidence: str
    settings: str = ""


def _x(sub) -> str:
    return "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"


def _fmt_x(x: str, v) -> str:
    return f"p={v:.2f}" if x == "p_untrusted" else f"T={int(v)}"


def paired(diff) -> tuple[float, float, int]:
    """Mean of the paired differences ``diff`` (NaNs dropped), its 95% Student-t half-width (``inf`` with fewer
    than two pairs) and the number of pairs.

    >>> m, h, n = paired([1.0, 2.0, 3.0])
    >>> m, round(h, 4), n
    (2.0, 2.4841, 3)
    """
    from scipy.stats import t as student_t

    d = np.asarray(diff, dtype=np.float64)
    d = d[~np.isnan(d)]
    n = int(d.size)
    if n < 2:
        return (float(d.mean()) if n else float("nan")), float("inf"), n
    return float(d.mean()), float(student_t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)), n


def _wide(sub, col: str):
    """``col`` by (point, trial) rows and algorithm columns."""
    return sub.pivot_table(index=["point", "trial"], columns="algorithm", values=col, aggfunc="first")


def _by_point(series):
    """A (point, trial)-indexed series as a trial x point table."""
    return series.unstack("point")


def settings_of(sub, epsilons=None) -> str:
    """What a figure's claims were measured on, from its rows: network, trusted relays, ``p``, trials per
    point, the levels judged, and the pairing."""
    x = _x(sub)
    nodes = sorted(sub["nodes"].unique()) if "nodes" in sub else []
    trials = int(sub.groupby("point")["trial"].nunique().min())
    ps, ts = sorted(sub["p_untrusted"].unique()), sorted(sub["n_trusted"].unique())
    net = f"{int(nodes[0])}-node Waxman networks" if len(nodes) == 1 else "Waxman networks"
    pt = f"p = {ps[0]:.2f}..{ps[-1]:.2f}" if x == "p_untrusted" else f"p = {ps[0]:.2f}"
    tt = f"T = {int(ts[0])}..{int(ts[-1])} trusted relays" if x == "n_trusted" else f"T = {int(ts[0])} trusted relays"
    lv = f"; ε = {', '.join(f'{e:g}' for e in epsilons)}" if epsilons else ""
    return f"{net}, {tt}, {pt}, {trials} trials per point{lv}; paired by trial"


def _margins(W, a: str, b: str):
    """Per point: the paired mean of ``a - b``, its half-width and pairs."""
    d = (W[a] - W[b]).groupby(level="point")
    return {int(k): paired(v.to_numpy()) for k, v in d}


def _kb(v: float) -> str:
    return f"{v / 1000:+.1f}"


def judge(df, epsilons=(0.5, 0.7, 0.9), a: str = "smr", b: str = "msp") -> list[Claim]:
    """Evaluate the paper's four claims for every figure in ``df`` with paired tests (module docstring).

    1. ``a`` (SMR) is more secure than ``b`` (MSP) at every point.
    2. ``a`` consumes fewer key bits than ``b`` at every point.
    3. Key length grows with the swept parameter, for ``a`` and ``b`` at every epsilon.
    4. ``a`` gets longer keys than ``b`` at every point and every epsilon.
    """
    claims = []
    for fig in sorted(df["figure"].unique()):
        sub = df[df["figure"] == fig]
        if not {a, b} <= set(sub["algorithm"]):
            continue
        x = _x(sub)
        xs = sub.groupby("point")[x].first().to_dict()
        eps = [e for e in epsilons if eps_column(e) in sub]
        eps_cols = [eps_column(e) for e in eps]
        plain, levels = settings_of(sub), settings_of(sub, eps)
        # 1. security
        W = _wide(sub, "security")
        mg = _margins(W, a, b)
        worst = min(mg, key=lambda k: mg[k][0] - mg[k][1])
        m, h, n = mg[worst]
        sig = sum(1 for v in mg.values() if v[0] - v[1] > 0)
        claims.append(Claim(fig, f"{a.upper()} is more secure than {b.upper()} at every point", sig == len(mg),
                            f"{a} - {b} significantly above 0 at {sig} of {len(mg)} points; smallest paired margin "
                            f"{m:+.4f} ± {h:.4f} at {_fmt_x(x, xs[worst])} (n={n})", plain))
        # 2. consumption
        W = _wide(sub, "consumed_bits")
        mg = _margins(W, a, b)
        worst = max(mg, key=lambda k: mg[k][0] + mg[k][1])
        m, h, n = mg[worst]
        sig = sum(1 for v in mg.values() if v[0] + v[1] < 0)
        means = sub.groupby(["point", "algorithm"])["consumed_bits"].mean().unstack()
        ratio = means[a] / means[b]
        claims.append(Claim(fig, f"{a.upper()} consumes fewer keys than {b.upper()} at every point", sig == len(mg),
                            f"{a} - {b} significantly below 0 at {sig} of {len(mg)} points; largest paired difference "
                            f"{m / 1e6:+.3f} ± {h / 1e6:.3f} Mb at {_fmt_x(x, xs[worst])}; consumed bits {a}/{b} "
                            f"(means) at most {ratio.max():.3f}", plain))
        # 3. growth
        what = "p" if x == "p_untrusted" else "the number of trusted relays"
        ok, notes = True, []
        points = sorted(xs)
        for alg in (a, b):
            for e, col in zip(eps, eps_cols):
                T = _by_point(_wide(sub, col)[alg])
                mean = T.mean()
                first, last = points[0], points[-1]
                m, h, _ = paired((T[last] - T[first]).to_numpy())
                grows = m - h > 0
                falls = []
                for k0, k1 in zip(points, points[1:]):
                    sm, sh, _ = paired((T[k1] - T[k0]).to_numpy())
                    if sm + sh < 0:
                        falls.append(f"significant fall {_fmt_x(x, xs[k0])} -> {_fmt_x(x, xs[k1])}: "
                                     f"{mean[k0] / 1000:.1f} -> {mean[k1] / 1000:.1f} kb, {_kb(sm)} ± {sh / 1000:.1f} kb")
                ok &= grows and not falls
                notes.append(f"{alg} ε={e:g}: {mean[first] / 1000:.1f} -> {mean[last] / 1000:.1f} kb "
                             f"(last - first {_kb(m)} ± {h / 1000:.1f} kb{'' if grows else ', not significant'})"
                             + "".join(f"; {f}" for f in falls))
        claims.append(Claim(fig, f"key length grows with {what}", bool(ok), "; ".join(notes), levels))
        # 4. longer keys
        ok, notes = True, []
        for e, col in zip(eps, eps_cols):
            mg = _margins(_wide(sub, col), a, b)
            worst = min(mg, key=lambda k: mg[k][0] - mg[k][1])
            m, h, _ = mg[worst]
            sig = sum(1 for v in mg.values() if v[0] - v[1] > 0)
            ok &= sig == len(mg)
            notes.append(f"ε={e:g}: significant at {sig} of {len(mg)} points, smallest paired margin {_kb(m)} ± "
                         f"{h / 1000:.1f} kb at {_fmt_x(x, xs[worst])}")
        claims.append(Claim(fig, f"{a.upper()} gets longer keys than {b.upper()} (every point, every epsilon)", bool(ok),
                            "; ".join(notes), levels))
    return claims
