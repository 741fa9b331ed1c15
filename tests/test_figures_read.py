"""Figures that read (issue 26 item 5, issue 39 item 5): small multiples with distinct labelled styles and
legends outside the panels, intervals and served counts, runs and windows stated, route plots with a legend for
path styles, integer budget ticks, a rasterised heat map in the SVG; files byte-identical on a rerun."""

import numpy as np
import pandas as pd
import pytest

from qkdseg.experiments import FigureSpec, SweepSpec, run_sweep
from qkdseg.experiments import figures as figmod


@pytest.fixture(scope="module")
def rows():
    spec = SweepSpec(figures=(FigureSpec("fig5", "p_untrusted", ((0.6, 10), (0.9, 10))),), trials=3, seed=1)
    return run_sweep(spec, backend="serial", progress=False)


def _capture(monkeypatch, *modules):
    """Keep the figure ``save_figure`` is given (laid out as it would be saved) instead of closing it."""
    figs = []

    def keep(fig, out_dir, stem):
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.canvas.draw()
        figs.append(fig)
        return []

    for mod in (figmod, *modules):
        monkeypatch.setattr(mod, "save_figure", keep)
    return figs


def _curves(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and ln.get_label() and not ln.get_label().startswith("_")]


def test_fig_small_multiples_with_distinct_labelled_styles(rows, monkeypatch):
    """Issue 39 item 5: Fig. 5/6 as small multiples (at most five curves a panel), one key-length panel per
    epsilon, every algorithm its own colour, line style and marker, named in a legend below every panel,
    and ``disjoint - smr`` drawn as a paired difference."""
    figs = _capture(monkeypatch)
    figmod.plot_figure(rows, "fig5", "unused")
    (fig,) = figs
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 6
    titles = [ax.get_title() for ax in axes]
    assert sum("ε = " in t and "length of the global key" in t for t in titles) == 3
    assert any("disjoint - smr" in t and "paired" in t for t in titles)
    r = fig.canvas.get_renderer()
    for ax in axes:
        assert 1 <= len(_curves(ax)) <= 5, ax.get_title()
    styles = {}
    for ln in _curves(axes[0]):
        styles[ln.get_label()] = (ln.get_color(), str(ln.get_linestyle()), ln.get_marker())
    assert set(styles) == {"smr", "msp", "disjoint", "single"} and len(set(styles.values())) == len(styles)
    assert len({m for _, _, m in styles.values()}) == len(styles) and len({ls for _, ls, _ in styles.values()}) >= 3
    (legend,) = fig.legends
    assert {t.get_text() for t in legend.get_texts()} == set(styles)
    lb = legend.get_window_extent(r)
    assert lb.y1 <= min(ax.get_window_extent(r).y0 for ax in axes) and lb.y0 >= 0  # below every panel, inside the file
    assert "trials per point" in fig._suptitle.get_text()
    fig.clf()


def test_fig_level_has_intervals_and_served_counts(rows, monkeypatch):
    from qkdseg.experiments import level

    figs = _capture(monkeypatch, level)
    lv = level.run_level(2, 1, epsilons=(0.5,))
    lv = lv[lv["p_untrusted"].isin([0.6, 0.9])]
    rows5 = rows.assign(trial=rows["trial"])
    eff = level.level_efficiency(rows5[rows5["trial"] < 2], lv)
    level.plot_level(eff, "unused")
    (fig,) = figs
    top, bottom = fig.axes[0], fig.axes[1]
    assert "95% CI" in top.get_title() and "served" in bottom.get_ylabel()
    assert len(top.collections) == len(_curves(top)) == 5  # a band per curve
    assert {ln.get_label() for ln in _curves(bottom)} == {ln.get_label() for ln in _curves(top)}
    fig.clf()


def test_simulation_figures_state_their_run_and_window(monkeypatch, tmp_path):
    """timeseries.png: moving averages with the window in the title; every load figure names epsilon, key size
    and run length."""
    import qkdseg
    from qkdseg.experiments import simplots
    from qkdseg.experiments.simulation import run_load_sweep, write_run, write_sweep

    figs = _capture(monkeypatch, simplots)
    net = qkdseg.example_network()
    res = qkdseg.simulate(net, rate=40.0, duration=20.0, algorithms=("smr", "disjoint"), key_bits=5000, epsilon=0.5)
    write_run(res, net, tmp_path / "run", command="test")
    df, _ = run_load_sweep(net, [20.0, 40.0], duration=5.0, replications=2, algorithms=("smr", "least-loaded"),
                           key_bits=5000, epsilon=0.5, backend="serial", progress=False)
    params = {"network": "example", "nodes": 10, "links": 12, "replications": 2, "duration": 5.0, "key_bits": 5000,
              "epsilon": 0.5, "ttl": 0.0, "seed": 0, "algorithms": ["smr", "least-loaded"]}
    write_sweep(df, tmp_path / "sweep", command="test", params=params)
    ts, load, cost = figs
    title = ts._suptitle.get_text()
    assert "moving averages over 10 interval(s) of 0.1 s (1 s window)" in title
    for fig in (ts, load, cost):
        text = fig._suptitle.get_text()
        assert "ε = 0.5" in text and "5,000-bit keys" in text and ("20 s runs" in text or "5 s runs" in text), text
    assert [ax.get_ylabel() for ax in load.axes][:4] == [label for _, label, _ in simplots.LOAD_PANELS]
    for fig in figs:
        fig.clf()


def test_route_plot_legend_labels_and_numbers(tmp_path, monkeypatch):
    import matplotlib.figure

    import qkdseg
    from qkdseg.plot import plot_route

    kept = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: kept.append(self))
    net = qkdseg.waxman(100, trusted=10, p=0.8, seed=7)
    plot_route(net, qkdseg.route(net, 3, 60), tmp_path / "r.png")
    plot_route(net, qkdseg.route(net, 3, 60, "single"), tmp_path / "s.png")
    smr, single = (f.axes[0] for f in kept)
    assert "3,900,000 bits" in smr.get_title()
    texts = [t.get_text() for t in smr.get_legend().get_texts()]
    assert "segment 1: 3→85, 6 paths" in texts and "path 1 of a segment" in texts and "path 6 of a segment" in texts
    assert any(t.endswith(", 1 path") for t in (x.get_text() for x in single.get_legend().get_texts()))
    labels = [c for c in smr.texts if c.get_text() in ("3", "85", "60")]
    assert len(labels) == 3 and all(t.anncoords == "offset points" and t.xyann == (7, 5) for t in labels)  # beside the star


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
