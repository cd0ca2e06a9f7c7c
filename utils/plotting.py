"""Small drawing helpers shared by every ``plot_*`` function.

Plot functions take computed results and an optional ``ax``, draw, and return
the axes; they never save (pipelines do, with :func:`utils.io.fitsio.save_figure`).
matplotlib is imported lazily with the non-interactive Agg backend.
"""

from __future__ import annotations

import numpy as np


def new_axes(ax=None, ncols: int = 1, nrows: int = 1, figsize=(6.4, 4.2)):
    """``ax`` itself, or new axes on a new constrained-layout figure."""
    if ax is not None:
        return ax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=True)
    return ax


def finish_axes(ax, xlabel: str, ylabel: str, title: str, legend: bool = True):
    """Label the axes (units in brackets), add a light grid and a legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if legend and ax.get_legend_handles_labels()[0]:  # nothing labelled (e.g. no usable frame)
        ax.legend(fontsize="small")
    return ax


def show_image(image: np.ndarray, *, ax=None, unit: str, title: str, label: str = "",
               percentiles=(1.0, 99.0), symmetric: bool = False, cmap: str | None = None):
    """Image with a colour bar, scaled to the given percentiles of its finite pixels.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
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
    image = np.asarray(image, dtype=float)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        lo, hi = 0.0, 1.0
    elif symmetric:
        hi = float(np.percentile(np.abs(finite), percentiles[1])) or 1.0
        lo = -hi
    else:
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
        if hi <= lo:
            hi = lo + 1.0
    im = ax.imshow(image, origin="lower", interpolation="nearest", vmin=lo, vmax=hi,
                   cmap=cmap or ("RdBu_r" if symmetric else "viridis"))
    ax.set_title(title)
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    ax.figure.colorbar(im, ax=ax, label=f"{label} [{unit or 'relative'}]".strip(), shrink=0.85)
    return ax


def show_histogram(values: np.ndarray, *, ax=None, xlabel: str, title: str, bins: int = 100,
                   log: bool = True, markers: dict | None = None):
    """Histogram of the finite values, with optional vertical markers ``{label: x}``."""
    ax = new_axes(ax)
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.7, log=log, label="pixels")
    for name, x in (markers or {}).items():
        ax.axvline(x, ls="--", lw=1, label=name, color="k" if "median" in name else "C3")
    return finish_axes(ax, xlabel, "pixels", title)
