"""Drawing helpers shared by every ``plot_*`` function.

Plot functions take computed results and an optional ``ax``, draw, and return
the axes; they never save (pipelines do, through :func:`save` or
:func:`utils.io.fitsio.save_figure`).  A figure of a large result has two halves: a
``*_data`` function reducing the result to what is drawn (here, in the main process) and a
``plot_*_data`` function drawing that (wherever the figure is rendered); ``plot_*`` of the
result is the one after the other.  matplotlib is imported lazily with the
non-interactive Agg backend.

Figures are off the critical path of a run:

* images are drawn from a display copy (:func:`display_copy`: block averages, at most
  :data:`DISPLAY_PIXELS` a side) while their colour limits come from the full data;
* inside :func:`figure_output` (the commands open one from their ``--plots`` option) a
  figure is rendered to PNG by a separate process at the lowest priority while the run
  goes on; the pool is drained when the block ends.  The pipelines send it a *drawing*
  (:class:`functools.partial` of a ``plot_*`` function and the small data it draws: an
  :class:`ImageView` of a map, a :class:`Histogram` of values, a table), and the figure is
  built there too; a figure drawn here (a lambda's) is pickled and sent -- small either
  way: images are display copies;
* ``--plots`` chooses how many are drawn (:data:`LEVELS`): ``summary`` (the default) the
  figures a report needs, ``all`` also one figure per master or per (T, t) set, ``none``
  nothing;
* a figure that fails to draw or to render is logged as a warning and never stops the
  run or loses a product.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# where figures are rendered, under the names the pipelines use (``plotting.save``...)
from .rendering import (  # noqa: F401
    LEVELS,
    FigureWriter,
    NotDrawn,
    add_plots_option,
    drawing,
    figure_output,
    figures,
    save,
    wants,
    write_png,
)

#: Colour of each irradiation stage in every figure that shows stages (the same stage reads
#: the same in the damage, dose and radiation-model figures).
STAGE_COLOURS = {"pre": "C0", "radiating": "C1", "post": "C2"}
#: Largest side of an image as drawn [pixel]: a 1024 x 1024 master shows as 512 x 512
#: blocks of 2 x 2, a 2048 x 2048 one as blocks of 4 x 4.  An image's axes are ~500 pixels
#: wide at the figures' 110 dpi, so a larger copy would only be decimated again by the
#: renderer (nearest neighbour: dropping pixels rather than averaging them), and it costs
#: ~25 % more to render and 4x the bytes to pickle for the render pool.
DISPLAY_PIXELS = 512


def display_copy(image: np.ndarray, max_pixels: int = DISPLAY_PIXELS
                 ) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Block-averaged copy of ``image`` with at most ``max_pixels`` a side, and its extent.

    Blocks of ``f x f`` pixels (``f`` the smallest integer that fits) are averaged over
    their finite pixels (NaN when none is finite); partial blocks at the edges count
    the pixels they have.  The extent keeps the axes in pixels of the full image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    max_pixels : int, optional
        Largest side of the copy [pixel]. Default is :data:`DISPLAY_PIXELS`.

    Returns
    -------
    (numpy.ndarray, tuple or None)
        The copy (float32; ``image`` itself, as float32, when small enough) and the
        ``extent`` for ``imshow`` (None when not reduced).

    Examples
    --------
    >>> small, extent = display_copy(np.arange(16.0).reshape(4, 4), max_pixels=2)
    >>> small.tolist(), extent
    ([[2.5, 4.5], [10.5, 12.5]], (-0.5, 3.5, -0.5, 3.5))
    """
    image = np.asarray(image)
    height, width = image.shape
    factor = -(-max(height, width) // max_pixels)
    if factor <= 1:
        return image.astype(np.float32, copy=False), None
    rows, cols = -(-height // factor), -(-width // factor)
    padded = np.full((rows * factor, cols * factor), np.nan, np.float32)
    padded[:height, :width] = image
    blocks = padded.reshape(rows, factor, cols, factor)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, blocks, 0).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    return mean, (-0.5, width - 0.5, -0.5, height - 0.5)


def draw_image(ax, image: np.ndarray, max_pixels: int = DISPLAY_PIXELS, **kwargs):
    """``ax.imshow`` of the display copy of ``image`` (axes in full-image pixels)."""
    return _imshow_copy(ax, *display_copy(image, max_pixels), **kwargs)


def _imshow_copy(ax, shown: np.ndarray, extent, **kwargs):
    """``ax.imshow`` of a display copy ``shown`` whose ``extent`` (None: not reduced) is
    in full-image pixels."""
    kwargs.setdefault("origin", "lower")
    kwargs.setdefault("interpolation", "nearest")
    if extent is not None:
        kwargs["extent"] = extent
    return ax.imshow(shown, **kwargs)


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.2), **kwargs):
    """``plt.subplots`` on a new constrained-layout figure (Agg), its axes' titles at a fixed
    height.

    matplotlib places a title at the top of its axes unless tick labels or an offset text sit
    there, and checks this in each layout pass and at the draw by measuring the whole y axis
    again (~8 % of a figure's rendering); the project's figures have their x ticks at the
    bottom and no offset text (:func:`finish_axes`), so the title is drawn where it would
    be (the same pixels), without the checks.

    Parameters
    ----------
    nrows, ncols : int, optional
        Grid of axes. Default is 1 x 1.
    figsize : (float, float), optional
        [inch]. Default is (6.4, 4.2).
    **kwargs
        More ``plt.subplots`` options (``squeeze``, ``sharex``, ``height_ratios``...).

    Returns
    -------
    (matplotlib.figure.Figure, axes)
        As ``plt.subplots``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"axes.titley": 1.0}):
        return plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kwargs)


def new_axes(ax=None, ncols: int = 1, nrows: int = 1, figsize=(6.4, 4.2)):
    """``ax`` itself, or new axes on a new constrained-layout figure (:func:`subplots`)."""
    if ax is not None:
        return ax
    return subplots(nrows, ncols, figsize=figsize, squeeze=True)[1]


def finish_axes(ax, xlabel: str, ylabel: str, title: str, legend: bool = True):
    """Label the axes (units in brackets), add a light grid and a legend.

    Tick labels carry whole values: no offset text in the corner (times 12043-12047 s since
    the first frame read '3.5 ... 7.5' and '+1.204e4' under the axis, easily missed).  A y
    axis of counts (``ylabel`` ending in ``[count]``) has whole-number ticks from 0: hot
    pixels of 2, 3, 3 drew ticks at 2.2, 2.4 ... and a 50 % rise as a wall."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
    if ylabel.endswith("[count]") and ax.get_yscale() == "linear":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if legend and ax.get_legend_handles_labels()[0]:  # nothing labelled (e.g. no usable frame)
        # placed inside the axes ("best"), so the layout need not measure it nor search its
        # place in each of its passes
        ax.legend(fontsize="small").set_in_layout(False)
    return ax


class ImageView(NamedTuple):
    """What an image figure draws of an image (:func:`image_view`): small enough to send to
    the render process (a 2048 x 2048 map's view is 1 MB, the map 16 MB)."""

    #: Display copy (:func:`display_copy`, float32).
    shown: np.ndarray
    #: ``imshow`` extent in the full image's pixels (None: not reduced).
    extent: tuple[float, float, float, float] | None
    #: Colour limits from every finite pixel of the full image.
    vmin: float
    vmax: float
    #: Whether the limits are centred on 0 (and the colour map diverging).
    symmetric: bool = False


def colour_limits(image: np.ndarray, percentiles=(1.0, 99.0), symmetric: bool = False
                  ) -> tuple[float, float]:
    """Colour limits of ``image``: the ``percentiles`` of its finite pixels (float64), or
    +- the upper one of their absolute values when ``symmetric``; (0, 1) when none is finite,
    a span of 1 when they coincide."""
    image = np.asarray(image)
    # limits from the finite pixels in float64, partitioned in place: one float64 copy of
    # them, not three (a 2048^2 map's would be ~100 MB)
    finite = image[np.isfinite(image)].astype(np.float64, copy=False)
    if finite.size == 0:
        return 0.0, 1.0
    if symmetric:
        hi = float(np.percentile(np.abs(finite, out=finite), percentiles[1],
                                 overwrite_input=True)) or 1.0
        return -hi, hi
    lo, hi = (float(v) for v in np.percentile(finite, percentiles, overwrite_input=True))
    return lo, (lo + 1.0 if hi <= lo else hi)


def image_view(image: np.ndarray, *, percentiles=(1.0, 99.0), symmetric: bool = False,
               max_pixels: int = DISPLAY_PIXELS) -> ImageView:
    """The :class:`ImageView` of ``image``: colour limits from every pixel
    (:func:`colour_limits`), the picture from the display copy -- what :func:`show_image`
    draws of it.  Made where the image is (the main process), drawn where the figure is
    rendered.

    Examples
    --------
    >>> view = image_view(np.arange(16.0).reshape(4, 4), percentiles=(0, 100), max_pixels=2)
    >>> view.shown.tolist(), view.extent, (view.vmin, view.vmax)
    ([[2.5, 4.5], [10.5, 12.5]], (-0.5, 3.5, -0.5, 3.5), (0.0, 15.0))
    """
    lo, hi = colour_limits(image, percentiles, symmetric)
    shown, extent = display_copy(image, max_pixels)
    return ImageView(shown, extent, lo, hi, bool(symmetric))


def show_image(image, *, ax=None, unit: str, title: str, label: str = "",
               percentiles=(1.0, 99.0), symmetric: bool = False, cmap: str | None = None):
    """Image with a colour bar, scaled to the given percentiles of its finite pixels.

    Parameters
    ----------
    image : numpy.ndarray or ImageView
        2-D image, or its :func:`image_view` (then ``percentiles`` and ``symmetric`` are
        the view's: the same figure).
    unit : str
        Unit of the colour bar, e.g. ``adu``.
    title : str
        Axes title.
    label : str, optional
        Quantity shown (colour-bar label before the unit).
    percentiles : (float, float), optional
        Colour limits [percent of finite pixels].
    symmetric : bool, optional
        Centre the colour scale on 0 (residuals, differences).
    """
    ax = new_axes(ax, figsize=(6.4, 4.8))
    view = image if isinstance(image, ImageView) else image_view(
        image, percentiles=percentiles, symmetric=symmetric)
    # colour limits from every pixel, the picture from the display copy
    im = _imshow_copy(ax, view.shown, view.extent, vmin=view.vmin, vmax=view.vmax,
                      cmap=cmap or ("RdBu_r" if view.symmetric else "viridis"))
    ax.set_title(title)
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    ax.figure.colorbar(im, ax=ax, label=f"{label} [{unit or 'relative'}]".strip(), shrink=0.85)
    return ax


class Histogram(NamedTuple):
    """Counts and bin edges of the finite values (:func:`histogram`): what
    :func:`show_histogram` draws, without the values."""

    counts: np.ndarray
    edges: np.ndarray


def histogram(values: np.ndarray, bins: int = 100) -> Histogram:
    """The :class:`Histogram` of the finite ``values``: ``bins`` bins over their range, as
    ``ax.hist`` makes them (the same counts and edges).

    Examples
    --------
    >>> histogram(np.array([0.0, 1.0, np.nan, 1.0]), bins=2)
    Histogram(counts=array([1, 2]), edges=array([0. , 0.5, 1. ]))
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    # ax.hist's range: min and max of the data (None, then numpy's (0, 1), when empty)
    span = (np.nanmin(values), np.nanmax(values)) if values.size else None
    counts, edges = np.histogram(values, bins, range=span)
    return Histogram(counts, edges)


def show_histogram(values, *, ax=None, xlabel: str, title: str, bins: int = 100,
                   log: bool = True, markers: dict | None = None):
    """Histogram of the finite values (or their :func:`histogram`), with optional vertical
    markers ``{label: x}``."""
    ax = new_axes(ax)
    hist = values if isinstance(values, Histogram) else histogram(values, bins)
    # each bin's left edge weighted by its count: ax.hist's own bins and tops
    ax.hist(hist.edges[:-1], bins=hist.edges, weights=hist.counts, histtype="stepfilled",
            alpha=0.7, log=log, label="pixels")
    for name, x in (markers or {}).items():
        ax.axvline(x, ls="--", lw=1, label=name, color="k" if "median" in name else "C3")
    return finish_axes(ax, xlabel, "pixels", title)
