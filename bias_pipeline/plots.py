"""Figures of the bias pipeline.  Each ``plot_*`` takes computed results and an optional
``ax``; it draws and returns the axes, and never saves (the pipeline does).  A figure of
full-frame maps is also split in two: ``*_data`` reduces the result to what is drawn (in
the main process), ``plot_*_data`` draws that (in the render process; see
:func:`utils.plotting.FigureWriter.save`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils.io.tokens import error_decimals, number_text
from utils.plotting import finish_axes, histogram, image_view, new_axes, show_histogram, show_image

if TYPE_CHECKING:  # annotations only: the render process imports this module to draw, and
    # the models' modules would bring numba, scipy and astropy into it (~120 MB resident)
    from utils.models.bias_model import BiasModel
    from utils.models.read_noise import ReadNoise

__all__ = ["plot_model_map", "plot_slope_histogram", "plot_pixel_fits", "plot_read_noise",
           "plot_frame_means", "plot_mean_vs_temperature",
           "plot_evaluation_summary", "show_image", "image_view", "model_map_data",
           "plot_model_map_data", "slope_histogram_data", "plot_slope_histogram_data",
           "pixel_fits_data", "plot_pixel_fits_data", "read_noise_data", "plot_read_noise_data"]


def model_map_data(model: BiasModel, which: str) -> dict:
    """What :func:`plot_model_map` draws (an :class:`~utils.plotting.ImageView` of the map):
    small, for :func:`plot_model_map_data` in the render process."""
    if which == "a":
        return {"image": image_view(model.a), "unit": "adu", "label": "A",
                "title": f"bias at {model.t_ref:g} degC (A)"}
    return {"image": image_view(model.b), "unit": "adu/degC", "label": "B",
            "title": "bias temperature coefficient (B)"}


def plot_model_map_data(data: dict, *, ax=None):
    """The map of :func:`model_map_data`."""
    return show_image(ax=ax, **data)


def plot_model_map(model: BiasModel, which: str, *, ax=None):
    """Map of A (bias at TREF) [adu] or B (temperature coefficient) [adu/degC]."""
    return plot_model_map_data(model_map_data(model, which), ax=ax)


def slope_histogram_data(model: BiasModel) -> dict:
    """What :func:`plot_slope_histogram` draws (a :class:`~utils.plotting.Histogram`)."""
    from utils.stack.stats import exact_median  # made here, in the main process

    valid = (model.mask == 0) & np.isfinite(model.b)
    b = model.b[valid]
    median = exact_median(b) if b.size else None  # numpy's median, one selection not two
    markers = {f"median {median:.3f}": median} if b.size else {}
    return {"values": histogram(b), "xlabel": "B [adu/degC]", "markers": markers,
            "title": f"bias temperature coefficient ({valid.sum()} pixels)"}


def plot_slope_histogram_data(data: dict, *, ax=None):
    """The histogram of :func:`slope_histogram_data`."""
    return show_histogram(ax=ax, **data)


def plot_slope_histogram(model: BiasModel, *, ax=None):
    """Histogram of B over unmasked pixels, with its median and the flagged outliers' range."""
    return plot_slope_histogram_data(slope_histogram_data(model), ax=ax)


def pixel_fits_data(model: BiasModel, temperatures: np.ndarray, series) -> dict:
    """What :func:`plot_pixel_fits` draws: the series and the model's fit at their pixels."""
    fits = [{name: float(getattr(model, name)[row, col])
             for name in ("a", "b", "sigma_a", "sigma_b", "cov_ab", "chi2dof")}
            for (row, col), _, _ in series]
    return {"temperatures": temperatures, "series": list(series), "fits": fits,
            "t_ref": model.t_ref}


def plot_pixel_fits_data(data: dict, *, ax=None):
    """The figure of :func:`pixel_fits_data`."""
    ax = new_axes(ax, figsize=(7.2, 4.8))
    temperatures = data["temperatures"]
    grid = np.linspace(float(np.min(temperatures)) - 2, float(np.max(temperatures)) + 2, 50)
    for n, (((row, col), values, errors), fit) in enumerate(zip(data["series"], data["fits"])):
        colour = f"C{n}"
        d = grid - data["t_ref"]
        a, b = fit["a"], fit["b"]
        sa, sb, cov = fit["sigma_a"], fit["sigma_b"], fit["cov_ab"]
        line = a + b * d
        band = np.sqrt(np.maximum(sa ** 2 + d * d * sb ** 2 + 2 * d * cov, 0))
        offset = float(np.nanmedian(values))  # pixels differ by hundreds of adu
        ax.errorbar(temperatures, values - offset, yerr=errors, fmt="o", color=colour, ms=4,
                    capsize=2, label=f"pixel ({col}, {row}): B = {b:.3f} +- {sb:.3f} adu/degC, "
                                     f"chi2/dof {fit['chi2dof']:.2f}")
        ax.plot(grid, line - offset, color=colour, lw=1)
        ax.fill_between(grid, line - offset - band, line - offset + band, color=colour, alpha=0.2)
    return finish_axes(ax, "sensor temperature [degC]",
                       "master bias minus its median over T [adu]",
                       "bias vs temperature at representative pixels")


def plot_pixel_fits(model: BiasModel, temperatures: np.ndarray, series, *, ax=None):
    """Master bias vs temperature at a few pixels, with error bars, the fit and its 1-sigma band.

    Parameters
    ----------
    model : BiasModel
        The fitted model.
    temperatures : numpy.ndarray
        [degC] of the masters.
    series : list of ((row, col), values, errors)
        Master values [adu] and their errors at each pixel.
    """
    return plot_pixel_fits_data(pixel_fits_data(model, temperatures, series), ax=ax)


def read_noise_data(rn: ReadNoise) -> dict:
    """What :func:`plot_read_noise` draws (an :class:`~utils.plotting.ImageView` of the map
    and the colour limits of the typical pixel's chi-square range)."""
    from utils.models.read_noise import chi2_ppf  # made here, in the main process

    n = max(rn.npairs, 1)
    digits = error_decimals(rn.median_err) if rn.median_err > 0 else 2
    clim = (rn.median * np.sqrt(chi2_ppf([0.001, 0.999], n) / n)
            if np.isfinite(rn.median) and rn.median > 0 else None)
    return {"image": image_view(rn.map), "clim": clim,
            "title": f"read noise from {rn.npairs} frame pairs: typical pixel "
                     f"{rn.median:.{digits}f} +- {rn.median_err:.{digits}f} adu"}


def plot_read_noise_data(data: dict, *, ax=None):
    """The map of :func:`read_noise_data`."""
    ax = show_image(data["image"], ax=ax, unit="adu", label="read noise", title=data["title"])
    if data["clim"] is not None:
        ax.images[-1].set_clim(*data["clim"])
    return ax


def plot_read_noise(rn: ReadNoise, *, ax=None):
    """Per-pixel read-noise map [adu], coloured over the 99.8 % chi-square range of a
    typical pixel's estimate (brightest: excess noise).

    With the 1-99 % percentiles of the pixels the 1 % of noisy pixels set the top of the
    scale at 3x the typical noise, and every normal pixel showed in one dark colour.
    """
    return plot_read_noise_data(read_noise_data(rn), ax=ax)


def plot_evaluation_summary(table: pd.DataFrame, *, axes=None):
    """Leave-one-temperature-out MAE [adu], MAPE [%] and pull std vs the held-out temperature."""
    axes = new_axes(axes, ncols=3, figsize=(13, 4))
    t = table["TEMP"]
    axes[0].errorbar(t, table["MAE_MEAN"], yerr=table["MAE_STD"], fmt="o-", capsize=3,
                     label="mean +- std over pixels")
    finish_axes(axes[0], "held-out temperature [degC]", "MAE [adu]", "absolute error")
    axes[1].errorbar(t, table["MAPE_MEAN"], yerr=table["MAPE_STD"], fmt="o-", capsize=3,
                     label="mean +- std over pixels")
    finish_axes(axes[1], "held-out temperature [degC]", "MAPE [%]", "relative error")
    axes[2].plot(t, table["PULL_STD"], "o-", label="std of residual / predicted error")
    axes[2].axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    top = float(np.nanmax(table["PULL_STD"])) if len(table) else 1.0
    axes[2].set_ylim(0, max(1.5, 1.1 * top))
    finish_axes(axes[2], "held-out temperature [degC]", "pull std [1]",
                "error consistency")
    return axes


def plot_frame_means(values, temperature: float, *, ax=None):
    """Frame means [adu] of one temperature bin in acquisition order, with mean +- std band."""
    ax = new_axes(ax)
    values = np.asarray(values, dtype=float)
    mean, std = float(np.nanmean(values)), float(np.nanstd(values, ddof=1)) if values.size > 1 \
        else 0.0
    ax.plot(np.arange(values.size), values, "o-", ms=3, label="frame mean")
    ax.axhline(mean, color="k", lw=1, label=f"mean {mean:.2f} adu")
    ax.axhspan(mean - std, mean + std, color="C1", alpha=0.2, label=f"+- std {std:.2f} adu")
    return finish_axes(ax, "frame (acquisition order)", "frame mean [adu]",
                       f"bias frame means at {number_text(temperature)} degC")


def plot_mean_vs_temperature(table: pd.DataFrame, *, ax=None):
    """Mean of the frame means [adu] vs mean temperature [degC], error bars = std of both."""
    ax = new_axes(ax)
    ax.errorbar(table["TEMP_MEAN"], table["MEAN_ADU"], xerr=table["TEMP_STD"],
                yerr=table["STD_ADU"], fmt="o", capsize=3, label="bin: mean +- std of frames")
    return finish_axes(ax, "sensor temperature [degC]", "bias frame mean [adu]",
                       "bias level vs temperature")
