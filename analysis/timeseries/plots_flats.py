"""Figures of the structure and outgassing analyses.  Each ``plot_*`` takes computed results
and an optional ``ax``; it draws and returns the axes, and never saves (the run does)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.io.tokens import number_text
from utils.plotting import draw_image, finish_axes, new_axes

from .flat_compare import FlatDifference

__all__ = ["plot_difference", "plot_timeline", "plot_counts_vs", "plot_mean_std_vs",
           "plot_sensor_plane", "CLASS_COLOURS"]

#: Colours of the outgassing classes (the old toolkit's).
CLASS_COLOURS = {"Sensor Damage": "red", "Likely Sensor": "orange", "Temperature": "green"}


def plot_difference(fd: FlatDifference, *, title: str, labels: np.ndarray | None = None,
                    points: np.ndarray | None = None, ax=None):
    """Relative difference (± 3 robust sigma) with detections outlined or circled.

    Parameters
    ----------
    fd : FlatDifference
        The comparison.
    title : str
        Axes title.
    labels : numpy.ndarray, optional
        Region label map (0 = none): region outlines are drawn.
    points : numpy.ndarray, optional
        ``(n, 2)`` row, column of single outlier pixels: circled.
    """
    ax = new_axes(ax, figsize=(6.4, 5.0))
    span = 3.0 * fd.robust_std if math.isfinite(fd.robust_std) and fd.robust_std > 0 else 1.0
    im = draw_image(ax, fd.diff, cmap="RdBu_r", vmin=-span, vmax=span)
    ax.figure.colorbar(im, ax=ax, shrink=0.85,
                       label="relative difference F/med(F) - R/med(R) [1]")
    if labels is not None and labels.any():
        ax.contour(labels > 0, levels=[0.5], colors="k", linewidths=1.0)
    if points is not None and len(points):
        ax.scatter(points[:, 1], points[:, 0], s=60, facecolors="none", edgecolors="k",
                   linewidths=0.8, label=f"{len(points)} outlier pixels")
        ax.legend(fontsize="small", loc="upper right")
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    ax.set_title(title, fontsize="medium")
    return ax


def plot_timeline(comparisons: pd.DataFrame, *, axes=None):
    """Detections (count and total area) vs time since each group's reference [h]."""
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(2, 1, figsize=(7.0, 6.5), sharex=True, layout="constrained")
    done = comparisons[comparisons["STATUS"] == "compared"]
    for (tbin, exp), part in done.groupby(["TBIN", "EXPTIME"], dropna=False):
        hours = part["DT_S"].to_numpy(float) / 3600.0
        label = f"{number_text(tbin, 'g')} degC, {exp:g} s"
        # a count holds from one comparison to the next: steps, not slopes between them
        axes[0].plot(hours, part["N_REGIONS"], "o-", ms=4, label=label, drawstyle="steps-post")
        axes[1].plot(hours, part["AREA_PX"], "o-", ms=4, label=label, drawstyle="steps-post")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:  # counts of structures and of pixels: whole-number ticks
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("new structures [count]")
    axes[0].set_title("structures vs the earliest flat of each temperature bin")
    axes[0].grid(alpha=0.3)
    if len(done):
        axes[0].legend(fontsize="small")
    finish_axes(axes[1], "time since the reference flat [h]", "area of the structures [px]", "",
                legend=bool(len(done)))
    return axes


def plot_counts_vs(table: pd.DataFrame, x: str, *, xlabel: str, ax=None):
    """Outlier pixels per compared flat vs ``x`` (time [h] or temperature [degC]), per analysis."""
    ax = new_axes(ax)
    done = table[table["status"] == "compared"]
    for name, part in _count_series(done):
        ax.plot(part[x], part["n_outliers"], "o", ms=4, label=name)
    return finish_axes(ax, xlabel, "outlier pixels per flat",
                       f"outlier pixels vs {xlabel.split(' [')[0]}", legend=bool(len(done)))


def _count_series(done: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The series of :func:`plot_counts_vs`: one per temperature bin (and exposure group) of
    the by-temperature comparisons, then one for every comparison ignoring temperature (its
    rows carry each flat's own temperature, which is not a series)."""
    series = []
    by_temp = done[done["analysis_type"] != "ignore_temperature"]
    label = by_temp["label"] if "label" in by_temp else pd.Series("", index=by_temp.index)
    for (temp, lab), part in by_temp.groupby([by_temp["approx_temp"], label.fillna("")],
                                            sort=True, dropna=False):
        exposure = lab.split("_E", 1)[1].removesuffix("s") if "_E" in lab else ""
        series.append((f"{number_text(temp, 'g')} degC" + (f", {exposure} s" if exposure
                                                            else ""), part))
    ignore = done[done["analysis_type"] == "ignore_temperature"]
    if len(ignore):
        series.append(("ignoring temperature", ignore))
    return series


def plot_mean_std_vs(table: pd.DataFrame, x: str, *, xlabel: str, ax=None):
    """Flat mean ± spatial standard deviation [adu] vs ``x`` (one point per flat)."""
    ax = new_axes(ax)
    rows = table[table["analysis_type"] == "by_temperature"].drop_duplicates("file_path")
    ax.errorbar(rows[x], rows["mean_flat"], yerr=rows["std_flat"], fmt="o", ms=4, capsize=2,
                label="mean ± spatial std")
    return finish_axes(ax, xlabel, "flat level [adu]",
                       f"flat mean and spatial std vs {xlabel.split(' [')[0]}",
                       legend=bool(len(rows)))


def plot_sensor_plane(outliers: pd.DataFrame, shape: tuple[int, int], *, title: str, ax=None):
    """Outlier pixels on the sensor, coloured by class, marker size growing with occurrences."""
    ax = new_axes(ax, figsize=(6.4, 5.2))
    for name, colour in CLASS_COLOURS.items():
        part = outliers[outliers["classification"] == name]
        ax.scatter(part["col"], part["row"],
                   s=12.0 + 10.0 * part["num_occurrences"].to_numpy(dtype=float),
                   color=colour, alpha=0.7, label=f"{name} ({len(part)})", edgecolors="k",
                   linewidths=0.3)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(-0.5, shape[0] - 0.5)
    ax.set_aspect("equal")
    if not len(outliers):  # a result, not a missing figure: say it on the plane
        ax.text(0.5, 0.5, "no outlier pixel", transform=ax.transAxes, ha="center",
                va="center", color="0.3")
    return finish_axes(ax, "column [px]", "row [px]", title, legend=bool(len(outliers)))
