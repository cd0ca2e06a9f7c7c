"""Figures of the RTS analysis.  Each ``plot_*`` takes computed results and an optional ``ax``;
it draws and returns the axes, and never saves (the run does)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.io.tokens import number_text
from utils.plotting import finish_axes, new_axes, show_histogram

__all__ = ["plot_counts", "plot_amplitudes", "plot_dwell_times", "plot_examples"]


def plot_counts(counts: pd.DataFrame, *, ax=None):
    """RTS pixels per million pixels vs dose, with binomial errors, per temperature."""
    ax = new_axes(ax)
    done = counts[counts["STATUS"] == "analysed"]
    for (tbin, exp), part in done.groupby(["TEMP", "EXPTIME"], dropna=False):
        x = part["DOSE"].fillna(0.0).to_numpy(float)
        ax.errorbar(x, 1e6 * part["FRACTION"], yerr=1e6 * part["FRACTION_ERR"], fmt="o-",
                    capsize=3, label=f"{number_text(tbin, 'g')} degC, {exp:g} s")
        for xi, yi, stage in zip(x, 1e6 * part["FRACTION"], part["STAGE"]):
            ax.annotate(str(stage or ""), (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize="x-small")
    return finish_axes(ax, "dose step [krad]", "RTS pixels [per million pixels]",
                       "RTS pixels vs dose", legend=bool(len(done)))


def plot_amplitudes(table: pd.DataFrame, *, ax=None):
    """Histogram of RTS amplitudes in units of each pixel's own noise."""
    rts = table[table["CLASS"] == "rts"]
    return show_histogram(rts["AMP_SIGMA"].to_numpy(float), ax=ax, bins=30, log=False,
                          xlabel="RTS step / pixel noise [sigma]",
                          title=f"RTS amplitudes ({len(rts)} pixels)")


def plot_dwell_times(table: pd.DataFrame, unit: str, *, ax=None):
    """Mean dwell time of the high level vs the low level (two-level RTS pixels)."""
    ax = new_axes(ax)
    rts = table[(table["CLASS"] == "rts") & (table["NLEVELS"] == 2)]
    ax.errorbar(rts["DWELL_0"], rts["DWELL_1"], xerr=rts["DWELL_0_ERR"],
                yerr=rts["DWELL_1_ERR"], fmt="o", ms=3, alpha=0.7, label="two-level pixels")
    if len(rts):
        top = float(np.nanmax(rts[["DWELL_0", "DWELL_1"]].to_numpy()))
        if math.isfinite(top):
            ax.plot([0, top], [0, top], "k:", lw=0.8, label="equal dwell")
    return finish_axes(ax, f"mean dwell time, low level [{unit}]",
                       f"mean dwell time, high level [{unit}]", "RTS dwell times",
                       legend=bool(len(rts)))


def plot_examples(examples: dict, times: np.ndarray | None, *, title: str = "", axes=None):
    """Time series of a few RTS pixels [adu] with their fitted levels; ``title`` (the
    sequence drawn) over the figure."""
    n = max(1, len(examples))
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(n, 1, figsize=(8, 1.8 * n + 0.8), sharex=True,
                               layout="constrained", squeeze=False)
        axes = axes[:, 0]
    for ax, ((r, c), (series, levels)) in zip(axes, examples.items()):
        x = times if times is not None and len(times) == len(series) else np.arange(len(series))
        ax.plot(x, series, lw=0.6)
        for level in levels:
            ax.axhline(level, color="C3", lw=0.8, ls="--")
        ax.set_ylabel("signal - common mode [adu]", fontsize="x-small")
        ax.set_title(f"pixel (row {r}, col {c})", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time since the first frame [s]" if times is not None else
                        "frame index")
    if title:
        axes[0].figure.suptitle(title, fontsize="medium")
    return axes
