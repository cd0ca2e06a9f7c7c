"""Figures of the damage analysis.  Each ``plot_*`` takes computed results (see
:mod:`analysis.damage`) and an optional ``ax``, draws and returns the axes; the
driver saves them with their data twins."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.io.tokens import value_error_text
from utils.models.regression import Regression
from utils.plotting import STAGE_COLOURS, finish_axes, new_axes, show_histogram

#: Stages whose steps the dose-response lines are fitted to (post is annealed: shown apart).
FITTED_STAGES = ("pre", "radiating")


def _fit_line(ax, fit: Regression, table: pd.DataFrame, label: str) -> None:
    """The fitted line over the doses of the steps it was fitted to, not beyond (the post
    step sits at the last dose after annealing: a line drawn to it reads as a bad fit)."""
    x = table.loc[table["STAGE"].isin(FITTED_STAGES), "FRAMEDOSE"].to_numpy(float)
    x = x[np.isfinite(x)]
    if fit.ok and x.size:
        xs = np.linspace(float(x.min()), float(x.max()), 50)
        slope, err = fit.value("slope"), fit.error("slope")
        ax.plot(xs, fit.predict(xs), "k--", lw=1, label=f"{label}: {value_error_text(slope, err)}")


def plot_dark_current_vs_dose(table: pd.DataFrame, fit: Regression, unit: str, *, ax=None):
    """Mean dark current at T_ref of the normal pixels per step vs accumulated dose, with the
    damage-slope line; post-irradiation shown apart (annealed, not fitted)."""
    ax = new_axes(ax)
    for stage, marker in (("pre", "o"), ("radiating", "s"), ("post", "^")):
        part = table[table["STAGE"] == stage]
        if len(part):
            ax.errorbar(part["FRAMEDOSE"], part["DC_MEAN"], part["DC_MEAN_ERR"], fmt=marker,
                        capsize=3, label=stage, color=STAGE_COLOURS[stage])
    _fit_line(ax, fit, table, f"slope [{unit}/krad]")
    return finish_axes(ax, "accumulated dose [krad]", f"mean dark current [{unit}]",
                       "dark current at T_ref vs dose (normal pixels)")


def plot_level_trend(table: pd.DataFrame, value: str, error: str, fit: Regression, *,
                     ylabel: str, title: str, unit: str, ax=None):
    """A per-step quantity (bias level, read noise) vs accumulated dose with its line."""
    ax = new_axes(ax)
    for stage, marker in (("pre", "o"), ("radiating", "s"), ("post", "^")):
        part = table[table["STAGE"] == stage]
        if len(part):
            ax.errorbar(part["FRAMEDOSE"], part[value], part[error], fmt=marker, capsize=3,
                        label=stage, color=STAGE_COLOURS[stage])
    _fit_line(ax, fit, table, f"slope [{unit}/krad]")
    return finish_axes(ax, "accumulated dose [krad]", ylabel, title)


def plot_distributions(hists: dict, unit: str, *, ax=None):
    """Histogram of the dark current at T_ref of every step (log abscissa)."""
    ax = new_axes(ax)
    for tag, (edges, counts) in hists.items():
        ax.stairs(counts, edges, label=tag)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return finish_axes(ax, f"dark current at T_ref [{unit}]", "pixels",
                       "dark-current distribution per step")


def plot_cumulative(curves: dict, unit: str, threshold: float, *, ax=None):
    """Pixels above x for every step, with the fixed hot-pixel threshold."""
    ax = new_axes(ax)
    for tag, (x, above) in curves.items():
        ax.step(x, above, where="post", label=tag)
    if math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls=":", label=f"hot threshold {threshold:g} {unit}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return finish_axes(ax, f"dark current at T_ref [{unit}]", "pixels above x",
                       "cumulative dark-current distribution")


def plot_hot_pixels(table: pd.DataFrame, *, ax=None):
    """Hot-pixel counts per step vs accumulated dose: fixed and relative thresholds, new."""
    ax = new_axes(ax)
    x = table["FRAMEDOSE"]
    for column, style, label in (("N_HOT", "C0o-", "fixed threshold"),
                                 ("N_HOT_RELATIVE", "C1s--", "relative to pre"),
                                 ("N_NEW", "C2^:", "new (not hot at pre)")):
        # a count not measured (no fixed threshold without a gain) is no line of zeros
        if column in table and table[column].notna().any():
            ax.plot(x, pd.to_numeric(table[column]).astype(float), style, label=label)
    return finish_axes(ax, "accumulated dose [krad]", "hot pixels [count]",
                       "hot pixels per step")


def plot_doubling(pre: np.ndarray | None, post: np.ndarray | None, *, ax=None):
    """Doubling temperature of the pixels with their own fit, pre vs post."""
    ax = new_axes(ax)
    for label, values in (("pre", pre), ("post", post)):
        if values is not None:
            v = values[np.isfinite(values) & (values > 0) & (values < 100)]
            if v.size:
                show_histogram(v, ax=ax, xlabel="doubling temperature [degC]",
                               title="doubling temperature pre vs post", bins=60)
                ax.patches[-1].set_label(f"{label} ({v.size} pixels)")
    ax.legend(fontsize="small")
    return ax


__all__ = ["plot_dark_current_vs_dose", "plot_level_trend", "plot_distributions",
           "plot_cumulative", "plot_hot_pixels", "plot_doubling"]
