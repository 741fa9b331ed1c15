"""The paper's four claims and their verdicts on the data (PASS/FAIL), below
both the report (:mod:`.report`) and the MSP beta sensitivity
(:mod:`.sensitivity`), which judge the same claims."""

from __future__ import annotations

from dataclasses import dataclass

from .figures import summarise
from .spec import eps_column


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and its verdict on the data."""

    figure: str
    text: str
    passed: bool
    evidence: str


def _x(sub) -> str:
    return "p_untrusted" if sub["p_untrusted"].nunique() > 1 else "n_trusted"


def _fmt_x(x: str, v) -> str:
    return f"p={v:.2f}" if x == "p_untrusted" else f"T={int(v)}"


def judge(df, epsilons=(0.5, 0.7, 0.9), a: str = "smr", b: str = "msp") -> list[Claim]:
    """Evaluate the paper's four claims for every figure in ``df``.

    1. ``a`` (SMR) is more secure than ``b`` (MSP) at every point (means).
    2. ``a`` consumes fewer key bits than ``b`` at every point (means).
    3. Key length grows with the swept parameter: for ``a`` and ``b`` and
       every epsilon, the mean at the last point exceeds the first, and no
       step between neighbouring points falls by more than the two points'
       95% CI half-widths added.
    4. ``a`` gets longer keys than ``b`` at every point and every epsilon.
    """
    claims = []
    for fig in sorted(df["figure"].unique()):
        sub = df[df["figure"] == fig]
        x = _x(sub)
        eps_cols = [eps_column(e) for e in epsilons if eps_column(e) in sub]
        s = summarise(sub[sub["algorithm"].isin([a, b])], x, ["security", "consumed_bits", *eps_cols])
        if not {a, b} <= set(s["algorithm"]):
            continue
        A = s[s["algorithm"] == a].set_index(x)
        B = s[s["algorithm"] == b].set_index(x)
        xs = list(A.index)
        # 1. security
        diff = A["security_mean"] - B["security_mean"]
        worst = diff.idxmin()
        claims.append(Claim(fig, f"{a.upper()} is more secure than {b.upper()} at every point", bool((diff > 0).all()),
                            f"smallest margin {diff.min():+.4f} at {_fmt_x(x, worst)} "
                            f"({A['security_mean'][worst]:.4f} vs {B['security_mean'][worst]:.4f}); "
                            f"mean margin {diff.mean():+.4f}"))
        # 2. consumption
        ratio = A["consumed_bits_mean"] / B["consumed_bits_mean"]
        worst = ratio.idxmax()
        claims.append(Claim(fig, f"{a.upper()} consumes fewer keys than {b.upper()} at every point", bool((ratio < 1).all()),
                            f"consumed bits {a}/{b} at most {ratio.max():.3f} (at {_fmt_x(x, worst)}), "
                            f"mean {ratio.mean():.3f}"))
        # 3. growth
        what = "p" if x == "p_untrusted" else "the number of trusted relays"
        ok = True
        notes = []
        for alg, T in ((a, A), (b, B)):
            for col in eps_cols:
                m, ci = T[f"{col}_mean"].to_numpy(), T[f"{col}_ci"].to_numpy()
                grows = m[-1] > m[0]
                drops = [i for i in range(1, len(m)) if m[i] < m[i - 1] - (ci[i] + ci[i - 1])]
                ok &= grows and not drops
                notes.append(f"{alg} {col}: {m[0] / 1000:.1f} -> {m[-1] / 1000:.1f} kb"
                             + (f", significant drop at {', '.join(_fmt_x(x, xs[i]) for i in drops)}" if drops else ""))
        claims.append(Claim(fig, f"key length grows with {what}", bool(ok), "; ".join(notes)))
        # 4. longer keys
        margins = {col: (A[f"{col}_mean"] - B[f"{col}_mean"]) for col in eps_cols}
        ok = all((mg > 0).all() for mg in margins.values())
        ev = "; ".join(f"{col}: min margin {mg.min() / 1000:+.1f} kb at {_fmt_x(x, mg.idxmin())}" for col, mg in margins.items())
        claims.append(Claim(fig, f"{a.upper()} gets longer keys than {b.upper()} (every point, every epsilon)", bool(ok), ev))
    return claims
