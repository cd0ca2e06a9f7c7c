"""Figures of the operation analysis.  Each ``plot_*`` takes computed results and an optional
``ax`` (or axes array); it draws and returns the axes, and never saves (the run does)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.io.tokens import value_error_text
from utils.models.correlation import Correlation, LineFit
from utils.plotting import finish_axes, new_axes, show_image

from .radiation import RadiationSeries
from .transients import block_reduce

__all__ = ["plot_metrics", "plot_rad_vs_outliers", "plot_intensity_stats", "plot_first_mean_last",
           "plot_cumulative_outliers"]


#: Legends of the stacked time series: right of each panel, never over its points.
_OUTSIDE = dict(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_metrics(frames: pd.DataFrame, radiation: RadiationSeries, power: pd.DataFrame | None,
                 *, axes=None):
    """Stacked time series: dose, radiation level, temperature, current, voltage, outliers.

    Only the series with data get a panel (a sequence without a power log had two panels
    saying 'no power log'); the title names what is missing.

    Parameters
    ----------
    frames : pandas.DataFrame
        Per-frame table (``TIME`` [s since the first frame], ``TEMP`` [degC],
        ``N_OUTLIERS``, ``N_EVENTS``, ``N_TRANSIENTS``).
    radiation : RadiationSeries
        The radiation log on the frames' time axis.
    power : pandas.DataFrame or None
        Power log with ``TIME`` relative to the first frame, ``CURRENT`` [A], ``VOLTAGE`` [V].
    axes : sequence of matplotlib axes, optional
        One per drawn panel (see :func:`metric_panels`).
    """
    t = frames["TIME"].to_numpy(float)
    panels, missing = metric_panels(frames, radiation, power)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(panels) + 1, 1, figsize=(9.5, 1.8 * len(panels) + 2.2),
                               sharex=True, layout="constrained", squeeze=False)
        axes = axes[:, 0]
    for ax, (ylabel, label, x, y, style) in zip(axes, panels):
        ax.plot(x, y, style, ms=3, lw=0.8, label=label)
        ax.legend(**_OUTSIDE)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax = axes[len(panels)]
    ax.plot(t, frames["N_OUTLIERS"], ".-", ms=3, lw=0.8, label="outlier pixels")
    ax.plot(t, frames["N_EVENTS"], ".-", ms=3, lw=0.8, label="events (connected groups)")
    ax.plot(t, frames["N_TRANSIENTS"], ".-", ms=3, lw=0.8, label="transients (new events)")
    ax.set_xlabel("time since first frame [s]")
    ax.set_ylabel("count per frame")
    ax.legend(**_OUTSIDE)
    ax.grid(alpha=0.3)
    axes[0].set_title("operation metrics vs time"
                      + (f" (no {', no '.join(missing)})" if missing else ""))
    return axes


def metric_panels(frames: pd.DataFrame, radiation: RadiationSeries,
                  power: pd.DataFrame | None) -> tuple[list[tuple], list[str]]:
    """The time-series panels of :func:`plot_metrics` that have data, as ``(ylabel, legend,
    x, y, style)``, and the names of the series left out."""
    t = frames["TIME"].to_numpy(float)
    candidates = [
        ("accumulated dose [krad]", "dose (radiation log)", radiation.log_time,
         radiation.log_dose, ".-", "dose log"),
        (f"{radiation.name or 'radiation'} [{radiation.unit or '-'}]",
         f"{radiation.name or 'radiation'} (radiation log)", radiation.log_time,
         radiation.log_values, ".-", "radiation log"),
        ("temperature [degC]", "sensor temperature", t, frames["TEMP"], ".-", "temperature"),
    ]
    for column, ylabel in (("CURRENT", "current [A]"), ("VOLTAGE", "voltage [V]")):
        have = power is not None and column in power
        candidates.append((ylabel, f"{column.lower()} (power log)",
                           power["TIME"] if have else np.zeros(0),
                           power[column] if have else np.zeros(0), "-", "power log"))
    panels, missing = [], []
    for ylabel, label, x, y, style, what in candidates:
        y = np.asarray(y, dtype=float)
        if y.size and np.isfinite(y).any():
            panels.append((ylabel, label, np.asarray(x, dtype=float), y, style))
        elif what not in missing:
            missing.append(what)
    return panels, missing


def plot_rad_vs_outliers(x: np.ndarray, counts: dict, correlations: dict, fits: dict, *,
                         xlabel: str, axes=None):
    """Counts per frame vs the radiation series, with the fitted line and Pearson r.

    Parameters
    ----------
    x : numpy.ndarray
        Radiation value at each frame (NaN where not covered).
    counts : dict
        ``{"outlier pixels": array, "events": array, "transients": array}`` per frame.
    correlations, fits : dict
        :class:`~utils.models.correlation.Correlation` and
        :class:`~utils.models.correlation.LineFit` per key of ``counts``.
    xlabel : str
        Axis label of ``x`` with its unit.
    """
    if axes is None:
        ax = new_axes(ncols=len(counts), figsize=(5.2 * len(counts), 4.2))
        axes = np.atleast_1d(ax)
    for ax, (name, y) in zip(axes, counts.items()):
        good = np.isfinite(x)
        ax.plot(x[good], np.asarray(y)[good], "o", ms=3, alpha=0.6, label="frames")
        c: Correlation = correlations[name]
        f: LineFit = fits[name]
        if good.any():
            xs = np.array([np.nanmin(x), np.nanmax(x)])
            if f.is_fallback:
                label = f"{f.method} (constant {f.intercept:.3g})"
            else:
                unit = xlabel.rsplit("[", 1)[1].rstrip("]") if xlabel.endswith("]") else ""
                label = (f"line fit: slope {value_error_text(f.slope, f.slope_err)}"
                         + (f" per {unit}" if unit else "")
                         + f", intercept {value_error_text(f.intercept, f.intercept_err)}")
            ax.plot(xs, f.predict(xs), "--", color="C3", label=label)
        if np.isfinite(c.r):
            title = (f"{name} vs radiation\nPearson r = {c.r:.3f} ± {c.stderr:.3f} "
                     f"(n = {c.n}, p = {c.p_value:.2g})")
        else:
            title = f"{name} vs radiation\nPearson r undefined ({c.reason})"
        finish_axes(ax, xlabel, f"{name} per frame", title, legend=False)
        if ax.get_legend_handles_labels()[0]:
            # room above the points for the legend (the fit's line is long): it hid the
            # top frames under 'best' placement
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.3 * (high - low))
            ax.legend(fontsize="small", loc="upper left")
    return axes


def plot_intensity_stats(frames: pd.DataFrame, *, ax=None):
    """Frame mean ± spatial standard deviation [adu] vs time [s]."""
    ax = new_axes(ax)
    t = frames["TIME"].to_numpy(float)
    mean = frames["MEAN"].to_numpy(float)
    std = frames["STD"].to_numpy(float)
    ax.plot(t, mean, ".-", ms=3, lw=0.8, label="frame mean")
    ax.fill_between(t, mean - std, mean + std, alpha=0.25, label="± spatial std")
    ax.plot(t, frames["MEDIAN"], "-", lw=0.8, label="frame median")
    return finish_axes(ax, "time since first frame [s]", "signal [adu]",
                       "frame intensity statistics")


def plot_first_mean_last(first: np.ndarray, mean: np.ndarray, last: np.ndarray, *,
                         times: tuple[float, float], axes=None):
    """First frame, temporal mean frame and last frame [adu], on one colour scale."""
    if axes is None:
        axes = new_axes(ncols=3, figsize=(15, 4.6))
    factor = _display_factor(mean.shape)
    finite = mean[np.isfinite(mean)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    for ax, image, title in ((axes[0], first, f"first frame (t = {times[0]:.1f} s)"),
                             (axes[1], mean, "temporal mean (clipped)"),
                             (axes[2], last, f"last frame (t = {times[1]:.1f} s)")):
        im = ax.imshow(block_reduce(image, factor), origin="lower", interpolation="nearest",
                       vmin=lo, vmax=hi, cmap="gray", extent=_extent(image.shape, factor))
        ax.set_title(title)
        ax.set_xlabel("column [px]")
        ax.set_ylabel("row [px]")
        ax.figure.colorbar(im, ax=ax, label="signal [adu]", shrink=0.8)
    return axes


def plot_cumulative_outliers(outlier_frames: np.ndarray, n_frames: int, *, ax=None):
    """Frames in which each pixel was an outlier (0 = never)."""
    factor = _display_factor(outlier_frames.shape)
    shown = block_reduce(outlier_frames.astype(np.float32), factor, np.max)
    title = (f"cumulative outliers: {int((outlier_frames > 0).sum())} pixels in {n_frames} "
             f"frames" + (f" (max over {factor}x{factor} blocks)" if factor > 1 else ""))
    ax = show_image(shown, ax=ax, unit="count", label="frames with the pixel an outlier",
                    percentiles=(0, 100), cmap="magma", title=title)
    colorbar = ax.images[0].colorbar
    if colorbar is not None:  # a count: whole ticks (they were 0.5, 1.0, 1.5 ...)
        from matplotlib.ticker import MaxNLocator

        colorbar.locator = MaxNLocator(integer=True)
        colorbar.update_ticks()
    if factor > 1:
        ax.images[0].set_extent(_extent(outlier_frames.shape, factor))
    return ax


#: Largest side of a full-frame image drawn in a figure [pixel].
DISPLAY_MAX = 1024


def _display_factor(shape) -> int:
    return max(1, -(-max(shape) // DISPLAY_MAX))


def _extent(shape, factor):
    """Image extent in sensor pixels of a block-reduced image."""
    h, w = (shape[0] // factor) * factor, (shape[1] // factor) * factor
    return (-0.5, w - 0.5, -0.5, h - 0.5)
