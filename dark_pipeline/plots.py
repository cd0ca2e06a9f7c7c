"""Figures of the dark pipeline.  Each ``plot_*`` takes computed results and an optional
``ax``; it draws and returns the axes, and never saves (the pipeline does).  A figure of
full-frame maps is also split in two: ``*_data`` reduces the result to what is drawn (in
the main process), ``plot_*_data`` draws that (in the render process; see
:func:`utils.plotting.FigureWriter.save`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils.io.tokens import number_text
from utils.plotting import (
    display_copy,
    finish_axes,
    histogram,
    image_view,
    new_axes,
    show_histogram,
    show_image,
    subplots,
)

if TYPE_CHECKING:  # annotations only: the render process imports this module to draw, and
    # the models' modules would bring numba, scipy and astropy into it (~120 MB resident)
    from .model_2d import DarkModel2D
    from .temperature_model import DarkModel1D

__all__ = ["plot_error_maps", "plot_model_map", "plot_doubling_histogram", "plot_gamma_histogram",
           "plot_heatmap", "plot_scatter", "plot_dark_current", "plot_hot_pixel_counts",
           "plot_pixel_rates", "model_map_data", "plot_model_map_data",
           "doubling_histogram_data", "plot_doubling_histogram_data", "gamma_histogram_data",
           "plot_gamma_histogram_data", "error_maps_data", "plot_error_maps_data",
           "pixel_rates_data", "plot_pixel_rates_data"]


def model_map_data(model: DarkModel1D, which: str) -> dict:
    """What :func:`plot_model_map` draws (an :class:`~utils.plotting.ImageView` of the map and
    its texts): small, for :func:`plot_model_map_data` in the render process."""
    if which == "a":
        image, unit, label = model.fit.amplitude, "adu/s", "A"
        title = f"dark rate at {model.t_ref:g} degC (A)"
    elif which == "b":
        image, unit, label = model.fit.rate, "1/degC", "B"
        title = "dark-current temperature coefficient (B)"
    elif which == "td":
        image, unit, label = model.doubling_temperature(), "degC", "T_d"
        title = "doubling temperature ln2/B"
    else:
        image, unit, label = model.activation_energy(), "eV", "E_a"
        title = "activation energy k_B B T^2"
    return {"image": image_view(image), "unit": unit, "label": label, "title": title}


def plot_model_map_data(data: dict, *, ax=None):
    """The map of :func:`model_map_data`."""
    return show_image(ax=ax, **data)


def plot_model_map(model: DarkModel1D, which: str, *, ax=None):
    """Map of A [adu/s at TREF], B [1/degC], T_d [degC] or E_a [eV] of the 1-D model."""
    return plot_model_map_data(model_map_data(model, which), ax=ax)


def doubling_histogram_data(model: DarkModel1D) -> dict:
    """What :func:`plot_doubling_histogram` draws (a :class:`~utils.plotting.Histogram`)."""
    good = ~model.fit.fallback & np.isfinite(model.fit.rate) & (model.fit.rate > 0)
    td = model.doubling_temperature()[good]
    med = model.headline()["doubling_temperature_degC"]
    return {"values": histogram(td[(td > 0) & (td < 10 * med)] if np.isfinite(med) else td),
            "xlabel": "doubling temperature [degC]",
            "markers": {f"population {med:.2f} degC": med},
            "title": f"doubling temperature ({good.sum()} pixels with own B)"}


def plot_doubling_histogram_data(data: dict, *, ax=None):
    """The histogram of :func:`doubling_histogram_data`."""
    return show_histogram(ax=ax, **data)


def plot_doubling_histogram(model: DarkModel1D, *, ax=None):
    """Histogram of the doubling temperature [degC] of well-measured pixels."""
    return plot_doubling_histogram_data(doubling_histogram_data(model), ax=ax)


def gamma_histogram_data(model: DarkModel2D) -> dict:
    """What :func:`plot_gamma_histogram` draws (a :class:`~utils.plotting.Histogram`)."""
    good = ~model.fit.fallback & np.isfinite(model.fit.gamma)
    g = model.fit.gamma[good]
    med = float(np.median(g)) if g.size else float("nan")
    return {"values": histogram(g), "xlabel": "gamma [1]", "markers": {f"median {med:.3f}": med},
            "title": "exposure-time power of the dark signal"}


def plot_gamma_histogram_data(data: dict, *, ax=None):
    """The histogram of :func:`gamma_histogram_data`."""
    return show_histogram(ax=ax, **data)


def plot_gamma_histogram(model: DarkModel2D, *, ax=None):
    """Histogram of gamma (exposure power) of well-measured pixels."""
    return plot_gamma_histogram_data(gamma_histogram_data(model), ax=ax)


def plot_heatmap(table: pd.DataFrame, column: str, *, title: str, label: str | None = None,
                 ax=None):
    """Heatmap of one evaluation column over the grid: exposures (rows) x temperature bins
    (``TBIN``; the masters' rounded mean temperatures for a table without it).

    Each cell is annotated with its value to 3 significant digits, trailing zeros kept
    (``1.00`` next to ``1.01``, not ``1``; whole numbers from 1000 on, not ``1.01e+03``), in
    black on light colours and white on dark ones; ``label`` (quantity [unit]) names the
    colour bar, ``column`` itself when None.
    """
    ax = new_axes(ax, figsize=(7, 4.6))
    columns = table["TBIN"] if "TBIN" in table else table["Temperature (°C)"].round(1)
    grid = table.assign(T=columns).pivot_table(
        index="Exposure (s)", columns="T", values=column, aggfunc="mean")
    im = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [number_text(t, "g") for t in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{e:g}" for e in grid.index])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.iat[i, j]
            if np.isfinite(v):
                red, green, blue, _ = im.cmap(im.norm(v))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # perceived brightness
                # clipped to the axes (inside them anyway): the layout does not measure it
                ax.text(j, i, f"{v:.0f}" if abs(v) >= 1000 else f"{v:#.3g}", ha="center",
                        va="center", color="k" if light else "w", fontsize=8, clip_on=True)
    ax.figure.colorbar(im, ax=ax, label=label or column)
    ax.set_xlabel("temperature [degC]")
    ax.set_ylabel("exposure time [s]")
    ax.set_title(title)
    return ax


def error_maps_data(maps: dict, which: int) -> dict:
    """What :func:`plot_error_maps` draws of ``maps``: each map's 256-pixel display copy and
    extent (a panel is ~200 pixels wide), and the colour scale's top (99th percentile of
    every finite value of the full maps)."""
    values = np.concatenate([v[which][np.isfinite(v[which])].ravel() for v in maps.values()]
                            or [np.zeros(1)])
    top = float(np.percentile(values, 99)) if values.size else 1.0
    del values
    return {"shown": {key: display_copy(v[which], 256) for key, v in maps.items()},
            "top": top}


def plot_error_maps_data(data: dict, *, title: str, unit: str, which: int, axes=None):
    """The grid of :func:`error_maps_data`."""
    shown = data["shown"]
    temps = sorted({t for t, _ in shown})
    exps = sorted({x for _, x in shown})
    if axes is None:
        _, axes = subplots(len(exps), len(temps), figsize=(2.6 * len(temps) + 1,
                                                           2.3 * len(exps) + 0.6), squeeze=False)
    im = None
    for i, x in enumerate(exps):
        for j, t in enumerate(temps):
            ax = axes[i][j]
            if (t, x) in shown:
                image, extent = shown[(t, x)]
                im = ax.imshow(image, vmin=0, vmax=data["top"] or 1.0, cmap="magma",
                               origin="lower", interpolation="nearest",
                               **({} if extent is None else {"extent": extent}))
            ax.set_title(f"{number_text(t)} degC, {x:g} s", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if im is not None:
        axes[0][0].figure.colorbar(im, ax=axes, label=f"{title} [{unit}]", shrink=0.8)
    blank = " (white: signal below 3 sigma)" if which == 1 else ""
    axes[0][0].figure.suptitle(f"{title}: rows exposure time, columns temperature{blank}")
    return axes


def plot_error_maps(maps: dict, which: int, *, title: str, unit: str, axes=None):
    """Grid of per-master error maps: exposures (rows) x temperatures (columns).

    ``maps[(T, t)] = (abs_error, ape)``; ``which`` 0 shows the absolute error, 1 the APE.
    """
    return plot_error_maps_data(error_maps_data(maps, which), title=title, unit=unit,
                                which=which, axes=axes)


def plot_scatter(real: np.ndarray, synth: np.ndarray, *, title: str, ax=None):
    """Predicted vs measured dark signal [adu] of a pixel sample, with the identity line."""
    ax = new_axes(ax, figsize=(5.2, 5))
    ax.plot(real, synth, ".", ms=2, alpha=0.4, label="pixels")
    lo = float(np.nanmin([real.min(), synth.min()])) if real.size else 0.0
    hi = float(np.nanmax([real.max(), synth.max()])) if real.size else 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    return finish_axes(ax, "measured dark signal [adu]", "model dark signal [adu]", title)


def plot_dark_current(table: pd.DataFrame, *, electrons: bool = False, ax=None):
    """Median (with error bars) and 95th-percentile dark current vs temperature, and the model."""
    ax = new_axes(ax)
    suffix, unit = ("_E", "e-/s") if electrons else ("", "adu/s")
    ax.errorbar(table["TAVG"], table["DC_MEDIAN" + suffix], yerr=table["DC_MEDIAN_ERR" + suffix],
                fmt="o", capsize=3, label="median of pixels (measured)")
    ax.plot(table["TAVG"], table["DC_P95" + suffix], "s", label="95th percentile (measured)")
    if "MODEL_MEDIAN" + suffix in table:
        ax.plot(table["TAVG"], table["MODEL_MEDIAN" + suffix], "-", label="1-D model, median")
    ax.set_yscale("log")
    return finish_axes(ax, "sensor temperature [degC]", f"dark current [{unit}]",
                       "dark current vs temperature")


def plot_hot_pixel_counts(table: pd.DataFrame, *, ax=None):
    """Hot pixels found at each temperature bin."""
    ax = new_axes(ax)
    ax.plot(table["TAVG"], table["N_HOT"], "o-", label="hot pixels")
    return finish_axes(ax, "sensor temperature [degC]", "hot pixels [count]",
                       "hot pixels vs temperature")


def pixel_rates_data(temps, values, errors, model: DarkModel1D, pixels) -> dict:
    """What :func:`plot_pixel_rates` draws: the rates and the model's A and B at the pixels
    only."""
    pixels = [(int(row), int(col)) for row, col in pixels]
    return {"temps": np.asarray(temps), "values": values, "errors": errors, "pixels": pixels,
            "amplitude": [float(model.fit.amplitude[p]) for p in pixels],
            "rate": [float(model.fit.rate[p]) for p in pixels], "t_ref": model.t_ref}


def plot_pixel_rates_data(data: dict, *, ax=None):
    """The figure of :func:`pixel_rates_data`."""
    ax = new_axes(ax, figsize=(7.2, 4.8))
    temps, values, errors = data["temps"], data["values"], data["errors"]
    grid = np.linspace(temps.min() - 2, temps.max() + 2, 60)
    for n, ((row, col), a, b) in enumerate(zip(data["pixels"], data["amplitude"],
                                               data["rate"])):
        ax.errorbar(temps, values[:, n], yerr=errors[:, n], fmt="o", ms=4, capsize=2,
                    color=f"C{n}", label=f"pixel ({col}, {row}): T_d = {np.log(2) / b:.2f} degC"
                    if b > 0 else f"pixel ({col}, {row})")
        ax.plot(grid, a * np.exp(b * (grid - data["t_ref"])), color=f"C{n}", lw=1)
    ax.set_yscale("symlog", linthresh=1.0)
    return finish_axes(ax, "sensor temperature [degC]", "dark rate [adu/s]",
                       "dark rate vs temperature at representative pixels")


def plot_pixel_rates(temps, values, errors, model: DarkModel1D, pixels, *, ax=None):
    """Measured rate vs temperature at a few pixels with error bars, and the 1-D model curve.

    ``temps`` [degC] of the K rate maps; ``values``, ``errors`` [adu/s], shape (K, n): the
    rate and its error of the n ``pixels`` ((row, column) each) in every map.
    """
    return plot_pixel_rates_data(pixel_rates_data(temps, values, errors, model, pixels), ax=ax)
