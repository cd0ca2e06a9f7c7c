"""Figures of index processing.  Each ``plot_*`` takes computed results and an
optional ``ax``; it draws and returns the axes, and never saves (the pipeline does)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.io.tokens import number_text
from utils.plotting import draw_image, finish_axes, new_axes, subplots
from utils.stack.grouping import text_column


def _axes(ax, ncols: int = 1, figsize=(6.4, 4.2)):
    return new_axes(ax, ncols=ncols, figsize=figsize)


def _built(masters: pd.DataFrame, caltype: str) -> pd.DataFrame:
    """All-attempts masters of one type that exist on disk."""
    return masters[(masters["CALTYPE"] == caltype) & (text_column(masters["ATTEMPT"]) == "")
                   & masters["STATUS"].isin(["written", "existing"])]


_finish = finish_axes


def _stage_label(text: str, stage, dose) -> str:
    """``text`` with its irradiation stage (and dose) when there is one: a campaign without
    stages read 'frames, all frames' and '1 s, all frames'."""
    if not stage:
        return text
    if isinstance(dose, float) and not math.isnan(dose):
        return f"{text}, {stage} {dose:g} krad"
    return f"{text}, {stage}"


def plot_metric_vs_temperature(stats: pd.DataFrame, masters: pd.DataFrame, caltype: str,
                               metric: str, *, ax=None):
    """Per-frame ``metric`` [adu] vs sensor temperature, with master values per bin.

    Parameters
    ----------
    stats : pandas.DataFrame
        ``frame_stats.csv`` rows (``TEMP``, ``MEAN``, ``STD``...).
    masters : pandas.DataFrame
        ``masters_summary.csv`` rows (``TAVG``, ``MEAN``, ``NOISE``...).
    caltype : str
        ``BIAS``, ``DARK`` or ``FLAT``.
    metric : {"MEAN", "MEDIAN", "STD"}
        Frame statistic to draw; masters show ``MEAN`` (level) or ``NOISE``
        (median per-pixel temporal noise) alongside.
    """
    ax = _axes(ax)
    rows = stats[(stats["CALTYPE"] == caltype) & ~stats["BADFITS"].astype(bool)]
    for (stage, dose), part in rows.groupby([text_column(rows["STAGE"]), rows["DOSE"]],
                                            dropna=False):
        ax.plot(part["TEMP"], part[metric], ".", alpha=0.5,
                label=_stage_label("frames", stage, dose))
    mrows = _built(masters, caltype)
    column = "NOISE" if metric == "STD" else "MEAN"
    if caltype == "BIAS" and len(mrows):
        ax.plot(mrows["TAVG"], mrows[column], "ks", mfc="none",
                label="masters (" + ("typical pixel noise" if column == "NOISE" else "mean") + ")")
    names = {"MEAN": "frame mean", "MEDIAN": "frame median", "STD": "frame std (spatial)"}
    name = f"{caltype.lower()} {names.get(metric, metric)}"
    # the bias masters' squares are a per-pixel temporal noise: the axis names both
    ylabel = (f"{caltype.lower()} std: frames spatial, masters temporal [adu]"
              if column == "NOISE" and caltype == "BIAS" and len(mrows) else f"{name} [adu]")
    return _finish(ax, "sensor temperature [degC]", ylabel, f"{name} vs temperature")


def _plot_vs_exposure(masters: pd.DataFrame, caltype: str, column: str, ax):
    """One line per (stage, dose, temperature bin) of a master column vs exposure time."""
    rows = _built(masters, caltype)
    for (stage, dose, tbin), part in rows.groupby(
            [text_column(rows["STAGE"]), rows["DOSE"], "TBIN"], dropna=False):
        part = part.sort_values("EXPTIME")
        ax.plot(part["EXPTIME"], part[column], "o-",
                label=_stage_label(f"{number_text(tbin, 'g')} degC", stage, dose))
    return bool(len(rows))


def plot_dark_vs_exposure(masters: pd.DataFrame, *, ax=None):
    """Bias-subtracted dark master mean [adu] vs exposure [s], one line per temperature bin.

    No error bars: the per-pixel noise would overstate the error of a frame-wide mean.
    """
    ax = _axes(ax)
    drawn = _plot_vs_exposure(masters, "DARK", "MEAN", ax)
    return _finish(ax, "exposure time [s]", "dark signal, master mean [adu]",
                   "dark signal vs exposure time (bias subtracted)", drawn)


def plot_dark_rate_vs_temperature(masters: pd.DataFrame, *, ax=None):
    """Mean dark rate (master mean / exposure) [adu/s] vs temperature, log scale."""
    ax = _axes(ax)
    rows = _built(masters, "DARK").copy()
    rows["RATE"] = rows["MEAN"] / rows["EXPTIME"]
    for (stage, dose, exptime), part in rows.groupby(
            [text_column(rows["STAGE"]), rows["DOSE"], "EXPTIME"], dropna=False):
        part = part.sort_values("TBIN")
        ax.plot(part["TAVG"], part["RATE"], "o-",
                label=_stage_label(f"{exptime:g} s", stage, dose))
    if len(rows) and (rows["RATE"] > 0).all():
        ax.set_yscale("log")
    return _finish(ax, "sensor temperature [degC]", "mean dark rate [adu/s]",
                   "dark rate vs temperature", bool(len(rows)))


def plot_flat_level_vs_exposure(masters: pd.DataFrame, *, ax=None):
    """Flat normalisation level [adu] vs exposure [s] (lamp linearity at a glance)."""
    ax = _axes(ax)
    drawn = _plot_vs_exposure(masters, "FLAT", "LEVEL", ax)
    return _finish(ax, "exposure time [s]", "flat level (bias and dark removed) [adu]",
                   "flat level vs exposure time", drawn)


def plot_master_comparison(master: np.ndarray, frame: np.ndarray, *, unit: str, title: str,
                           axes=None):
    """Master, the noisiest input frame, and their difference, side by side.

    Parameters
    ----------
    master, frame : numpy.ndarray
        Images in the same unit (the frame already reduced like the master's inputs).
    unit : str
        Unit label of the colour bars, e.g. ``adu``.
    title : str
        Figure title.
    """
    if axes is None:
        fig, axes = subplots(1, 3, figsize=(13, 4))
        fig.suptitle(title)
    finite = master[np.isfinite(master)]
    lo, hi = (np.percentile(finite, [5, 95]) if finite.size else (0.0, 1.0))
    diff = frame - master
    dfin = diff[np.isfinite(diff)]
    span = float(np.percentile(np.abs(dfin), 99)) if dfin.size else 1.0
    for ax, image, name, kwargs in (
            (axes[0], master, "master", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[1], frame, "noisiest frame", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[2], diff, "frame - master", {"vmin": -span, "vmax": span, "cmap": "RdBu_r"})):
        im = draw_image(ax, image, **kwargs)  # limits above from the full images
        ax.set_title(name)
        ax.set_xlabel("column [px]")
        ax.set_ylabel("row [px]")
        ax.figure.colorbar(im, ax=ax, label=f"[{unit or 'relative'}]", shrink=0.8)
    return axes
