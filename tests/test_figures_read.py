"""Figures that read (issue 26 item 5): legends outside the axes, distinct twin-axis styles,
integer budget ticks, a rasterised heat map in the SVG; files byte-identical on a rerun."""

import numpy as np
import pandas as pd
import pytest

from qkdseg.experiments import FigureSpec, SweepSpec, run_sweep
from qkdseg.experiments import figures as figmod


@pytest.fixture(scope="module")
def rows():
    spec = SweepSpec(figures=(FigureSpec("fig5", "p_untrusted", ((0.6, 10), (0.9, 10))),), trials=3, seed=1)
    return run_sweep(spec, backend="serial", progress=False)


def _capture(monkeypatch):
    """Keep the figure ``save_figure`` is given (laid out as it would be saved) instead of closing it."""
    figs = []

    def keep(fig, out_dir, stem):
        fig.tight_layout()
        fig.canvas.draw()
        figs.append(fig)
        return []

    monkeypatch.setattr(figmod, "save_figure", keep)
    return figs


def test_fig_legends_below_the_axes_and_twin_axes_styled(rows, monkeypatch):
    figs = _capture(monkeypatch)
    figmod.plot_figure(rows, "fig5", "unused")
    (fig,) = figs
    ax_a, ax_b = fig.axes[0], fig.axes[1]
    ax_r = fig.axes[2]
    assert ax_r.get_shared_x_axes().joined(ax_a, ax_r)
    r = fig.canvas.get_renderer()
    for ax in (ax_a, ax_b):
        legends = [c for c in ax.get_children() if c.__class__.__name__ == "Legend"]
        assert len(legends) == 2
        box = ax.get_window_extent(r)
        for lg in legends:
            lb = lg.get_window_extent(r)
            assert lb.y1 < box.y0  # wholly below the plotting area: covers no curve and no tick
            assert lb.y0 >= 0  # and inside the saved figure
    sec = [ln for ln in ax_a.get_lines()]
    con = [ln for ln in ax_r.get_lines()]
    assert sec and len(sec) == len(con)
    assert {ln.get_linestyle() for ln in sec} == {"-"} and {ln.get_marker() for ln in sec} == {"o"}
    assert {ln.get_linestyle() for ln in con} == {"--"} and {ln.get_marker() for ln in con} == {"s"}
    assert all(ln.get_markerfacecolor() == "white" for ln in con)
    assert "dashed" in ax_r.get_ylabel() and "solid" in ax_a.get_ylabel()
    fig.clf()


def test_placement_axes_have_integer_ticks(monkeypatch):
    from qkdseg.experiments.placement import plot_curve, plot_placement_study

    figs = _capture(monkeypatch)
    plot_curve({"greedy": [0.9, 0.95, 0.97, 0.98], "degree": [0.9, 0.93, None, 0.96]}, [0, 1, 2, 3], "unused",
               title="t", ylabel="mean security")
    df = pd.DataFrame([{"network": "waxman-n100-s0", "method": m, "k": k, "value": v}
                       for m in ("greedy", "degree") for k, v in ((1, 0.9), (2, 0.95), (3, 0.97))])
    plot_placement_study(df, "unused")
    assert len(figs) == 2
    for fig in figs:
        ticks = fig.axes[0].get_xticks()
        assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks))
        fig.clf()


def test_pool_level_heat_map_is_one_image_in_the_svg(tmp_path):
    from qkdseg.experiments.simulation import plot_pool_levels

    m, steps = 40, 300
    rng = np.random.default_rng(0)
    lv = pd.DataFrame({"algorithm": np.repeat(["smr", "msp"], steps * m),
                       "t": np.tile(np.repeat(np.arange(1, steps + 1, dtype=float), m), 2),
                       "level_bits": rng.integers(0, 1000, 2 * steps * m)})
    cap = np.full(m, 1000.0)
    plot_pool_levels(lv, cap, tmp_path / "a")
    plot_pool_levels(lv, cap, tmp_path / "b")
    svg = (tmp_path / "a" / "pool_levels.svg").read_text()
    # 2 x 300 x 40 cells: as vector paths this is several MB; rasterised it is an embedded image per panel
    assert svg.count("<image") >= 2 and (tmp_path / "a" / "pool_levels.svg").stat().st_size < 400_000
    for f in ("pool_levels.svg", "pool_levels.png"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
