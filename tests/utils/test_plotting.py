"""Figures off the critical path: display copies, levels, the rendering pool, failures."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from utils import plotting, rendering


def test_display_copy_block_means_with_nan_and_partial_blocks():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    image[0, 0] = np.nan
    shown, extent = plotting.display_copy(image, max_pixels=4)   # factor 2: 3 x 4 blocks
    assert shown.shape == (3, 4) and extent == (-0.5, 6.5, -0.5, 4.5)
    assert shown[0, 0] == pytest.approx(np.nanmean(image[0:2, 0:2]))   # NaN left out
    assert shown[2, 3] == image[4, 6]                                  # a 1-pixel corner block
    assert shown[1, 2] == pytest.approx(image[2:4, 4:6].mean())
    all_nan = np.full((4, 4), np.nan)
    assert np.isnan(plotting.display_copy(all_nan, 2)[0]).all()
    small = np.ones((3, 3))
    assert plotting.display_copy(small, 4)[1] is None


def test_show_image_limits_from_the_full_data_picture_from_the_copy():
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 5.0, (2100, 300)).astype(np.float32)
    ax = plotting.show_image(image, unit="adu", title="t")
    shown = ax.images[0].get_array()
    assert max(shown.shape) <= plotting.DISPLAY_PIXELS
    lo, hi = ax.images[0].get_clim()
    assert lo == pytest.approx(np.percentile(image, 1)) and hi == pytest.approx(
        np.percentile(image, 99))
    assert ax.images[0].get_extent() == [-0.5, 299.5, -0.5, 2099.5]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    # exactly the float64 percentiles of the finite pixels, symmetric or not; input untouched
    image[::7, ::3] = np.nan
    image -= 100
    before = image.copy()
    finite = image[np.isfinite(image)].astype(np.float64)
    for symmetric in (False, True):
        ax = plotting.show_image(image, unit="adu", title="t", symmetric=symmetric)
        lo, hi = ax.images[0].get_clim()
        if symmetric:
            assert -lo == hi == np.percentile(np.abs(finite), 99)
        else:
            assert (lo, hi) == tuple(np.percentile(finite, (1, 99)))
        plt.close(ax.figure)
    np.testing.assert_array_equal(image, before)


def _line():
    ax = plotting.new_axes()
    ax.plot([0, 1], [0, 1], label="a")
    return plotting.finish_axes(ax, "x [s]", "y [adu]", "line")


def test_levels_choose_which_figures_are_written(tmp_path):
    with plotting.figure_output("summary", workers=0) as writer:
        assert plotting.save(_line, tmp_path / "s.png") == tmp_path / "s.png"
        assert plotting.save(_line, tmp_path / "a.png", level="all") is None
        assert writer.wants("summary") and not writer.wants("all")
    with plotting.figure_output("none", workers=0):
        assert plotting.save(_line, tmp_path / "n.png") is None
    assert (tmp_path / "s.png").is_file()
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "n.png").exists()
    with pytest.raises(ValueError):
        plotting.FigureWriter("some")


def test_a_figure_that_fails_is_logged_and_the_run_goes_on(tmp_path, caplog):
    def broken():
        raise ValueError("no data")

    caplog.set_level(logging.WARNING)
    with plotting.figure_output("all", workers=0) as writer:
        assert plotting.save(broken, tmp_path / "b.png") is None
        assert plotting.save(_line, tmp_path / "ok.png") is not None
    assert writer.failed == [tmp_path / "b.png"]
    assert any("b.png not drawn" in r.getMessage() and "no data" in r.getMessage()
               for r in caplog.records)
    assert (tmp_path / "ok.png").is_file()


def test_figures_rendered_by_a_process_pool(tmp_path):
    with plotting.figure_output("summary", workers=1) as writer:
        paths = [plotting.save(_line, tmp_path / f"f{i}.png") for i in range(3)]
        image = np.random.default_rng(1).normal(size=(1500, 1500))
        paths.append(plotting.save(lambda: plotting.show_image(image, unit="adu", title="i"),
                                   tmp_path / "image.png"))
    assert writer.failed == []
    for path in paths:
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wait_renders_here_the_figures_the_renderer_has_not_started(tmp_path, monkeypatch):
    """At wait() (the end of a run), the figures still queued for the renderer are taken
    back (cancelled there) and rendered by the waiting process, last first, with the pixels
    the renderer writes; the one the renderer is on is waited for."""
    import threading
    from concurrent.futures import Future

    class BusyPool:
        def __init__(self):
            self.futures = []

        def submit(self, func, payload, path, dpi):
            self.futures.append((Future(), func, payload, path, dpi))
            return self.futures[-1][0]

    writer = plotting.FigureWriter("summary", workers=1)
    pool = BusyPool()
    monkeypatch.setattr(writer, "_executor", lambda: pool)
    for i in range(4):
        writer.save(_line, tmp_path / f"f{i}.png")
    assert len(pool.futures) == 4 and not list(tmp_path.glob("*.png"))
    first, func, payload, path, dpi = pool.futures[0]
    assert first.set_running_or_notify_cancel()                     # the renderer is on f0
    waiting = threading.Thread(target=writer.wait, daemon=True)
    waiting.start()
    for _ in range(300):
        if all(f[0].cancelled() for f in pool.futures[1:]) and \
                (tmp_path / "f1.png").is_file():
            break
        waiting.join(0.1)
    assert [f[0].cancelled() for f in pool.futures] == [False, True, True, True]
    assert all((tmp_path / f"f{i}.png").is_file() for i in (1, 2, 3))
    assert waiting.is_alive()                                       # f0 is still the pool's
    first.set_result(func(payload, path, dpi))
    waiting.join(30)
    assert not waiting.is_alive() and writer.failed == [] and not writer._pending
    plotting.write_png(rendering._figure_of(_line()), tmp_path / "direct.png")
    for i in range(4):
        np.testing.assert_array_equal(_decoded(tmp_path / f"f{i}.png")[0],
                                      _decoded(tmp_path / "direct.png")[0])


def test_a_busy_renderer_does_not_stop_the_main_process(tmp_path, monkeypatch):
    """With MAX_PENDING figures queued and the renderer still on them, the next figure is
    rendered in the calling process at once (it used to wait, idle, for the oldest: 8 s of
    a 23 s irradiation run); once the renderer has finished one, figures queue again."""
    import threading
    from concurrent.futures import Future

    class StuckPool:
        def __init__(self):
            self.futures = []

        def submit(self, func, payload, path, dpi):
            self.futures.append((Future(), func, payload, path, dpi))
            return self.futures[-1][0]

    monkeypatch.setattr(rendering, "MAX_PENDING", 2)
    writer = plotting.FigureWriter("summary", workers=1)
    pool = StuckPool()
    monkeypatch.setattr(writer, "_executor", lambda: pool)
    done = threading.Event()

    def save_four():
        for i in range(4):
            writer.save(_line, tmp_path / f"f{i}.png")
        done.set()

    worker = threading.Thread(target=save_four, daemon=True)
    worker.start()
    assert done.wait(30), "save() waited for the busy renderer"
    assert len(pool.futures) == 2                                   # queued: f0, f1
    assert not (tmp_path / "f0.png").exists()
    assert (tmp_path / "f2.png").is_file() and (tmp_path / "f3.png").is_file()  # here
    first, func, payload, path, dpi = pool.futures[0]
    first.set_result(func(payload, path, dpi))                      # the renderer frees one
    writer.save(_line, tmp_path / "f4.png")
    assert len(pool.futures) == 3 and not (tmp_path / "f4.png").exists()   # queued again
    for future, func, payload, path, dpi in pool.futures[1:]:
        future.set_result(func(payload, path, dpi))
    writer.close()
    assert writer.failed == [] and all((tmp_path / f"f{i}.png").is_file() for i in range(5))


def test_plots_option_and_old_alias():
    from utils import cli

    parser = cli.make_parser("x", "doc")
    plotting.add_plots_option(parser)
    assert parser.parse_args([]).plots == "summary"
    assert parser.parse_args(["--plots", "all"]).plots == "all"
    assert parser.parse_args(["--no-save-plots"]).plots == "none"
    assert parser.parse_args(["--no_save_plots"]).plots == "none"


def test_finish_axes_ticks_carry_whole_values_without_an_offset():
    """Frames 12043.4-12047.4 s after the campaign's first one were labelled 3.5 ... 7.5 with
    '+1.204e4' in the axis corner (matplotlib's offset); now the ticks read 12043.5 ..."""
    import matplotlib

    matplotlib.use("Agg")
    from utils.plotting import finish_axes, new_axes

    ax = new_axes()
    ax.plot(12040.0 + np.array([3.4, 5.4, 7.4]), 3356.0 + np.array([0.1, 0.2, 0.15]), "o-")
    finish_axes(ax, "time since the campaign's first frame [s]", "mean [adu]", "t")
    ax.figure.canvas.draw()
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert ax.yaxis.get_offset_text().get_text() == ""
    ticks = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels()
             if t.get_text()]
    assert min(ticks) > 12000.0
    # a log axis (another formatter) is left as it is
    ax = new_axes()
    ax.plot([1.0, 10.0, 100.0], [1.0, 2.0, 3.0])
    ax.set_xscale("log")
    finish_axes(ax, "x [adu]", "y [adu]", "t")


def test_count_axis_has_whole_number_ticks_from_zero():
    """Hot pixels 2, 3, 3 at three temperatures were drawn with ticks 2.0, 2.2 ... 3.0 (a
    count of 2.2 pixels, and a 50 % rise filling the axis); a ``[count]`` axis now ticks
    whole numbers from 0.  Other axes keep matplotlib's ticks."""
    import matplotlib

    matplotlib.use("Agg")
    from utils.plotting import finish_axes, new_axes

    ax = new_axes()
    ax.plot([5.0, 15.0, 25.0], [2, 3, 3], "o-")
    finish_axes(ax, "sensor temperature [degC]", "hot pixels [count]", "t")
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ax.get_ylim()[0] == 0 and ticks[0] == 0
    assert all(float(t).is_integer() for t in ticks) and len(ticks) >= 2
    ax = new_axes()
    ax.plot([5.0, 15.0, 25.0], [2, 3, 3], "o-")
    finish_axes(ax, "sensor temperature [degC]", "mean [adu]", "t")
    assert not all(float(t).is_integer() for t in ax.get_yticks())


def _decoded(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), image.info.get("dpi")


def _savefig(fig, path, dpi=110):
    """The reference: matplotlib's own ``savefig`` (cropped when there is no layout engine)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=dpi,
                **({} if fig.get_layout_engine() is not None else {"bbox_inches": "tight"}))
    plt.close(fig)


def _figures():
    """A line plot, a log histogram, an image with a colour bar, a grid of panels (each the
    same figure at every call)."""
    def rng():
        return np.random.default_rng(5)

    yield _line
    yield lambda: plotting.show_histogram(rng().lognormal(size=5000), xlabel="x [adu]",
                                          title="h", markers={"median": 1.0})
    yield lambda: plotting.show_image(rng().normal(size=(700, 600)), unit="adu", title="i\nj")

    def grid():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 3, layout="constrained", figsize=(8, 5))
        values = rng().normal(size=(20, 30))
        for n, ax in enumerate(axes.flat):
            im = ax.imshow(values * n)
            plotting.finish_axes(ax, "column [px]", "row [px]", f"panel {n}")
        fig.colorbar(im, ax=axes, label="value [1]")
        fig.suptitle("grid")
        return axes
    yield grid


@pytest.mark.parametrize("n", range(4))
def test_write_png_draws_the_pixels_of_savefig(tmp_path, n):
    """One layout pass and one draw instead of savefig's two draws; unfiltered RGB rows:
    the same pixels and resolution as ``fig.savefig``."""
    import matplotlib.pyplot as plt

    draw = list(_figures())[n]
    open_before = len(plt.get_fignums())
    _savefig(rendering._figure_of(draw()), tmp_path / "old.png", dpi=110)
    plotting.write_png(rendering._figure_of(draw()), tmp_path / "new.png", dpi=110)
    old, old_dpi = _decoded(tmp_path / "old.png")
    new, new_dpi = _decoded(tmp_path / "new.png")
    assert old.shape == new.shape and old.shape[0] > 300
    np.testing.assert_array_equal(new, old)
    assert new_dpi == pytest.approx(old_dpi)
    assert len(plt.get_fignums()) == open_before  # both closed


def test_write_png_shares_a_renderer_per_size_with_the_same_pixels(tmp_path, monkeypatch):
    """Figures of one size drawn one after the other share an Agg renderer (its cached text
    sizes); each has the pixels of ``savefig`` (a fresh renderer), whatever was drawn before
    with the shared one (text, image, colour bar)."""
    import matplotlib.pyplot as plt

    rendering._RENDERERS.by_key = {}
    renderers = []
    share = rendering._share_renderer
    monkeypatch.setattr(rendering, "_share_renderer",
                        lambda canvas: share(canvas) or renderers.append(canvas.get_renderer()))
    drawn = list(_figures())
    for n in (2, 0, 2, 0, 3):
        plotting.write_png(rendering._figure_of(drawn[n]()), tmp_path / f"new{n}.png", dpi=110)
        _savefig(rendering._figure_of(drawn[n]()), tmp_path / f"old{n}.png", dpi=110)
        np.testing.assert_array_equal(_decoded(tmp_path / f"new{n}.png")[0],
                                      _decoded(tmp_path / f"old{n}.png")[0])
    assert renderers[2] is renderers[0] and renderers[3] is renderers[1]
    assert renderers[0] is not renderers[1]  # 6.4 x 4.8 and 6.4 x 4.2 inch
    assert len(rendering._RENDERERS.by_key) == 3
    plt.close("all")


def test_write_png_without_layout_engine_is_cropped_like_savefig(tmp_path):
    import matplotlib.pyplot as plt

    for name, save in (("old.png", _savefig), ("new.png", plotting.write_png)):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [2, 3])
        ax.set_xlabel("x [s]")
        save(fig, tmp_path / name, dpi=110)
    np.testing.assert_array_equal(_decoded(tmp_path / "new.png")[0],
                                  _decoded(tmp_path / "old.png")[0])


def test_legend_inside_the_axes_left_out_of_the_layout_same_pixels(tmp_path):
    """finish_axes's legend (placed inside the axes) is not measured by the layout passes;
    the same pixels as when it is."""
    images = []
    for in_layout in (False, True):
        ax = _line()
        ax.plot([0, 1], [1, 0], label="b")
        plotting.finish_axes(ax, "x [s]", "y [adu]", "line")
        assert ax.get_legend().get_in_layout() is False
        ax.get_legend().set_in_layout(in_layout)
        plotting.write_png(ax.figure, tmp_path / f"{in_layout}.png")
        images.append(_decoded(tmp_path / f"{in_layout}.png")[0])
    np.testing.assert_array_equal(images[0], images[1])


def test_edge_spines_left_out_of_the_layout_moved_spine_kept():
    """Spines on the axes' edges (and a colour bar's outline) are not measured by the layout
    (test_write_png_draws_the_pixels_of_savefig: the same pixels); a moved one still is."""
    import matplotlib.pyplot as plt

    fig, ax = plotting.subplots()
    fig.colorbar(ax.imshow(np.arange(4.0).reshape(2, 2)), ax=ax)
    ax.spines["left"].set_position(("outward", 10))
    rendering._edge_spines_out_of_layout(fig)
    kept = [(name, spine.spine_type) for a in fig.axes for name, spine in a.spines.items()
            if spine.get_in_layout()]
    assert kept == [("left", "left")]
    assert len(fig.axes) == 2 and fig.axes[1].spines["outline"].get_in_layout() is False
    plt.close(fig)


def test_save_figure_renders_through_write_png(tmp_path, monkeypatch):
    """The analyses that save their figures directly (bias per temperature, time series) get
    the one-draw rendering too, with the pixels of ``savefig``."""
    from utils.io.fitsio import save_figure

    calls = []
    write_png = rendering.write_png
    monkeypatch.setattr(rendering, "write_png",
                        lambda fig, path, dpi=110: calls.append(path) or write_png(fig, path, dpi))
    assert save_figure(_line().figure, tmp_path / "new.png") == tmp_path / "new.png"
    assert calls == [tmp_path / "new.png"]
    _savefig(_line().figure, tmp_path / "old.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "new.png")[0],
                                  _decoded(tmp_path / "old.png")[0])


def test_rendering_a_figure_imports_no_astropy(tmp_path):
    """The render process writes PNGs without importing astropy (~0.25 s CPU a run)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from utils import plotting; "
            "ax = plotting.new_axes(); ax.plot([0, 1]); "
            f"plotting.write_png(ax.figure, {str(tmp_path / 'a.png')!r}); "
            "assert 'astropy' not in sys.modules, 'astropy imported'")
    root = str(Path(plotting.__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path),
                   env={**os.environ, "PYTHONPATH": root})
    assert (tmp_path / "a.png").is_file()


@pytest.mark.parametrize("module", ["dark_pipeline.plots", "bias_pipeline.plots",
                                    "flat_pipeline.plots", "analysis.plots"])
def test_plot_modules_import_no_models_into_the_render_process(tmp_path, module):
    """The render process imports a drawing's plot module to draw it.  The dark and bias
    plot modules imported their models' modules (numba, scipy, astropy) for annotations and
    main-process helpers: ~120 MB resident in the render process beside the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import sys, {module}; "
            "heavy = [m for m in ('astropy', 'numba', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy")
    root = str(Path(plotting.__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path),
                   env={**os.environ, "PYTHONPATH": root})


def test_render_process_runs_at_a_lower_priority(tmp_path):
    """The computation wins the cores over the figures; the renderer collects garbage less
    often."""
    import gc
    import os

    with plotting.figure_output("summary", workers=1) as writer:
        worker = writer._executor().submit(os.nice, 0).result()
        thresholds = writer._executor().submit(gc.get_threshold).result()
        plotting.save(_line, tmp_path / "pool.png")
    assert worker == min(os.nice(0) + rendering.RENDER_NICENESS, 19)
    assert thresholds == rendering.RENDER_GC_THRESHOLDS
    assert (tmp_path / "pool.png").is_file()


def test_render_time_of_each_figure_is_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="utils.rendering")
    with plotting.figure_output("summary", workers=1):
        plotting.save(_line, tmp_path / "pool.png")
    with plotting.figure_output("summary", workers=0):
        plotting.save(_line, tmp_path / "here.png")
    messages = [r.getMessage() for r in caplog.records]
    assert any("pool.png rendered in" in m and "s CPU" in m for m in messages)
    assert any("here.png rendered here in" in m for m in messages)


def _decorated(fig, axes):
    """Titles, labels, a log axis, an image with a colour bar on the given axes."""
    axes = np.ravel(axes)
    rng = np.random.default_rng(2)
    for n, ax in enumerate(axes):
        if n % 2:
            ax.hist(rng.lognormal(size=3000), bins=50, log=True)
        else:
            fig.colorbar(ax.imshow(rng.normal(size=(30, 40))), ax=ax, label="value [adu]")
        plotting.finish_axes(ax, "column [px]", "count", f"panel {n}\nsecond line", legend=False)
    fig.suptitle("figure")


@pytest.mark.parametrize("shape", [(1, 1, {}), (2, 1, {"sharex": True}), (2, 3, {})])
def test_subplots_titles_at_a_fixed_height_draw_the_same_pixels(tmp_path, shape):
    """Titles not re-placed at each layout pass and draw (they stay where matplotlib would put
    them: nothing above the axes)."""
    import matplotlib.pyplot as plt

    nrows, ncols, kwargs = shape
    fig, axes = plotting.subplots(nrows, ncols, figsize=(7, 5), **kwargs)
    assert all(ax._autotitlepos is False for ax in np.ravel(axes))
    _decorated(fig, axes)
    plotting.write_png(fig, tmp_path / "fixed.png")
    fig, axes = plt.subplots(nrows, ncols, figsize=(7, 5), layout="constrained", **kwargs)
    _decorated(fig, axes)
    plotting.write_png(fig, tmp_path / "auto.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "fixed.png")[0],
                                  _decoded(tmp_path / "auto.png")[0])


# --- drawings: figures built in the render process ----------------------------------------------

def _old_show_image(image, *, unit, title, percentiles=(1.0, 99.0), symmetric=False):
    """show_image before ImageView (the reference): limits, then draw_image of the image."""
    ax = plotting.new_axes(None, figsize=(6.4, 4.8))
    finite = image[np.isfinite(image)].astype(np.float64)
    if symmetric:
        hi = float(np.percentile(np.abs(finite), percentiles[1])) or 1.0
        lo = -hi
    else:
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    im = plotting.draw_image(ax, image, vmin=lo, vmax=hi,
                             cmap="RdBu_r" if symmetric else "viridis")
    ax.set_title(title)
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    ax.figure.colorbar(im, ax=ax, label=f" [{unit}]".strip(), shrink=0.85)
    return ax


def _old_show_histogram(values, *, xlabel, title, markers):
    """show_histogram before Histogram (the reference): ax.hist of the values."""
    ax = plotting.new_axes()
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    ax.hist(values, bins=100, histtype="stepfilled", alpha=0.7, log=True, label="pixels")
    for name, x in markers.items():
        ax.axvline(x, ls="--", lw=1, label=name, color="k" if "median" in name else "C3")
    return plotting.finish_axes(ax, xlabel, "pixels", title)


def _png(ax, path):
    plotting.write_png(rendering._figure_of(ax), path)
    return path.read_bytes()


def test_image_view_and_histogram_draw_the_bytes_of_the_full_data(tmp_path):
    """A figure drawn from an ImageView (display copy, limits from every pixel) or a Histogram
    (counts and edges) is the PNG, byte for byte, of the one drawn from the full data -- as
    show_image and show_histogram drew it before -- and sends far fewer bytes."""
    import pickle

    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 5.0, (1030, 700)).astype(np.float32)
    image[::9, ::5] = np.nan
    for symmetric in (False, True):
        old = _png(_old_show_image(image - 100, unit="adu", title="t", symmetric=symmetric),
                   tmp_path / "old.png")
        view = plotting.image_view(image - 100, symmetric=symmetric)
        new = _png(plotting.show_image(view, unit="adu", title="t"), tmp_path / "new.png")
        assert new == old
        assert _png(plotting.show_image(image - 100, unit="adu", title="t",
                                        symmetric=symmetric), tmp_path / "direct.png") == old
        assert len(pickle.dumps(view)) < image.nbytes / 3.5      # 515 x 350 float32
    values = rng.lognormal(size=20000)
    values[::50] = np.inf
    for data in (values, values[:1], values[:0], np.full(7, 3.0)):
        markers = {"median": 1.0}
        with warnings.catch_warnings():  # no data: 'cannot be log-scaled', both
            warnings.simplefilter("ignore", UserWarning)
            old = _png(_old_show_histogram(data, xlabel="x [adu]", title="h", markers=markers),
                       tmp_path / "old.png")
            new = _png(plotting.show_histogram(plotting.histogram(data), xlabel="x [adu]",
                                               title="h", markers=markers), tmp_path / "new.png")
        assert new == old, data.size
    assert len(pickle.dumps(plotting.histogram(values))) < 2500


def _drawings(rng):
    """(name, drawing) pairs: an image map, a histogram, a lambda that returns a drawing."""
    image = rng.normal(size=(1100, 900))
    view = plotting.image_view(image)
    hist = plotting.histogram(rng.lognormal(size=5000))
    return [("map.png", plotting.drawing(plotting.show_image, view, unit="adu", title="m")),
            ("hist.png", plotting.drawing(plotting.show_histogram, hist, xlabel="x [adu]",
                                          title="h")),
            ("lazy.png", lambda: plotting.drawing(plotting.show_histogram, hist,
                                                  xlabel="y [adu]", title="l"))]


def test_drawings_are_drawn_in_the_render_process_with_the_same_bytes(tmp_path, monkeypatch,
                                                                       caplog):
    """A drawing (functools.partial) is pickled as it is and drawn by the renderer: the main
    process builds no figure (its axes factory raises here) and the PNGs are those drawn in
    the process (workers=0); the bytes sent are logged."""
    import matplotlib.pyplot as plt

    here = tmp_path / "here"
    with plotting.figure_output("summary", workers=0) as writer:
        for name, draw in _drawings(np.random.default_rng(4)):
            assert plotting.save(draw, here / name) == here / name
    assert writer.failed == []
    caplog.set_level(logging.DEBUG, logger="utils.rendering")
    pool = tmp_path / "pool"
    with plotting.figure_output("summary", workers=1) as writer:
        writer._executor()  # started before the main process's matplotlib is broken
        open_before = plt.get_fignums()

        def no_figures_here(*args, **kwargs):
            raise AssertionError("figure built in the main process")
        monkeypatch.setattr(plotting, "new_axes", no_figures_here)
        for name, draw in _drawings(np.random.default_rng(4)):
            assert plotting.save(draw, pool / name) == pool / name
        assert plt.get_fignums() == open_before
        sent = [r.getMessage() for r in caplog.records if "sent to the renderer" in r.getMessage()]
        assert len(sent) == 3 and all("drawing" in m for m in sent)
        monkeypatch.undo()
    assert writer.failed == []
    for name in ("map.png", "hist.png", "lazy.png"):
        assert (pool / name).read_bytes() == (here / name).read_bytes(), name


def _failing_image():
    return plotting.drawing(plotting.show_image, np.array(["not", "numbers"]), unit="adu",
                            title="x")


def test_a_drawing_that_fails_is_logged_and_loses_nothing(tmp_path, caplog):
    """A drawing that fails in the render process (or here, in-process) is a warning naming
    the figure and the error; the figures before and after it are written, no figure is
    left open; so is a drawing that cannot be pickled (drawn here instead)."""
    import matplotlib.pyplot as plt

    caplog.set_level(logging.WARNING)
    for workers in (1, 0):
        out = tmp_path / f"w{workers}"
        open_before = plt.get_fignums()
        with plotting.figure_output("summary", workers=workers) as writer:
            plotting.save(_line, out / "before.png")
            saved = plotting.save(_failing_image(), out / "bad.png")
            assert saved == (out / "bad.png" if workers else None)
            plotting.save(lambda: _failing_image(), out / "bad_lazy.png")
            # not picklable (a local function in the arguments): drawn here
            plotting.save(plotting.drawing(lambda: _line()), out / "local.png")
            plotting.save(_line, out / "after.png")
        assert sorted(p.name for p in writer.failed) == ["bad.png", "bad_lazy.png"]
        assert sorted(p.name for p in out.iterdir()) == ["after.png", "before.png", "local.png"]
        assert plt.get_fignums() == open_before
        messages = [r.getMessage() for r in caplog.records]
        for name in ("bad.png", "bad_lazy.png"):
            assert any(str(out / name) in m and "not drawn" in m for m in messages), (workers,
                                                                                     messages)
        caplog.clear()


def test_small_drawings_queue_where_bytes_of_figures_render_here(tmp_path, monkeypatch):
    """The renderer, now drawing too, falls behind in bursts (ten dark heatmaps, nine index
    trends): small drawings queue (up to MAX_PENDING) instead of being drawn and rendered by
    the main process; MAX_PENDING_BYTES of queued payloads still make the next one render
    here (the memory bound of the former 8 figures)."""
    from concurrent.futures import Future

    class StuckPool:
        def __init__(self):
            self.futures = []

        def submit(self, func, payload, path, dpi):
            self.futures.append((Future(), func, payload, path, dpi))
            return self.futures[-1][0]

    hist = plotting.histogram(np.random.default_rng(1).normal(size=1000))
    small = plotting.drawing(plotting.show_histogram, hist, xlabel="x [adu]", title="h")
    writer = plotting.FigureWriter("summary", workers=1)
    pool = StuckPool()
    monkeypatch.setattr(writer, "_executor", lambda: pool)
    for i in range(12):
        writer.save(small, tmp_path / f"s{i}.png")
    assert len(pool.futures) == 12 and not list(tmp_path.glob("*.png"))  # all queued
    payload = len(pool.futures[0][2])
    monkeypatch.setattr(rendering, "MAX_PENDING_BYTES", 13 * payload)
    writer.save(small, tmp_path / "s12.png")                            # 12 < 13: queued
    writer.save(small, tmp_path / "s13.png")                            # 13 queued: here
    assert len(pool.futures) == 13 and [p.name for p in tmp_path.glob("*.png")] == ["s13.png"]
    for future, func, payload, path, dpi in pool.futures:
        future.set_result(func(payload, path, dpi))
    writer.close()
    assert writer.failed == [] and len(list(tmp_path.glob("*.png"))) == 14
