"""Figures of the dose analysis.  Each ``plot_*`` draws computed results on an optional
``ax`` (or creates its figure) and returns the axes; :mod:`analysis.dose.pipeline` saves
them with their data twins.  Axes carry units."""

from __future__ import annotations

import math

import numpy as np

from analysis.dose.summary import IRRADIATING
from utils.io.index import stage_order
from utils.io.tokens import value_error_text
from utils.models.regression import Regression
from utils.plotting import STAGE_COLOURS, finish_axes, new_axes

#: Axis of a dose step (its label: the dose at the step's end).
DOSE = "dose step [krad]"
#: Axis of the dose the frames received (their mean FRAMEDOSE), the dose-response fits' x.
RECEIVED = "dose received [krad]"


def dose_axis(column: str) -> str:
    """The axis label of :func:`analysis.dose.models.received_dose`'s column."""
    return RECEIVED if column == "FRAMEDOSE" else DOSE


def _line(ax, fit: Regression, x, label: str, **kw) -> None:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if fit.ok and x.size:
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, fit.predict(xs),
                label=f"{label}: slope {value_error_text(fit.coef[1], fit.err[1])}", **kw)


def plot_series(points: dict, *, xlabel: str, ylabel: str, title: str, ax=None):
    """``points = {label: (x, y, yerr or None)}`` as error-bar lines (a stage label in its
    colour, :data:`utils.plotting.STAGE_COLOURS`)."""
    ax = new_axes(ax)
    for label, (x, y, e) in points.items():
        if len(np.atleast_1d(x)):
            ax.errorbar(x, y, e, fmt="o-", capsize=3, label=label, color=STAGE_COLOURS.get(label))
    return finish_axes(ax, xlabel, ylabel, title)


def plot_mean_std_vs_dose(dose, mean, std, fit_ir: Regression, fit_no: Regression, *,
                          title: str, stage=None, ax=None):
    """MEAN and STD vs dose on twin axes, a line per stage (``stage``: each point's; the
    stages are not joined: post and the last step share a dose); each STD = a MEAN + b fit's
    prediction marked at the points it was fitted to (irradiating: the radiating stage)."""
    ax = new_axes(ax)
    dose, mean, std = (np.asarray(v, dtype=float) for v in (dose, mean, std))
    stage = np.asarray(stage if stage is not None else ["radiating"] * dose.size, dtype=object)
    ax.set_ylabel("mean [adu]", color="C0")
    twin = ax.twinx()
    for i, name in enumerate(sorted(set(stage), key=stage_order)):
        sel = np.flatnonzero(stage == name)
        sel = sel[np.argsort(dose[sel])]
        ax.plot(dose[sel], mean[sel], "o-", color="C0", label="MEAN" if i == 0 else None)
        twin.plot(dose[sel], std[sel], "s-", color="C1", label="STD" if i == 0 else None)
    fitted = np.isin(stage, list(IRRADIATING))
    for fit, name, marker, sel in ((fit_ir, "irradiating", "x", fitted),
                                   (fit_no, "not irradiating", "+", ~fitted)):
        if fit.ok and sel.any():
            twin.plot(dose[sel], fit.predict(mean[sel]), marker, ms=9, mew=1.5, color="C3",
                      label=f"STD = {fit.coef[1]:.3g} MEAN + {fit.coef[0]:.3g} ({name})")
    twin.set_ylabel("std [adu]", color="C1")
    twin.legend(fontsize="small", loc="lower right")
    return finish_axes(ax, DOSE, "mean [adu]", title)


def plot_std_model(mean, std, fit_ir: Regression, fit_no: Regression, irr, *, title: str):
    """STD vs MEAN with both lines, and the residuals below."""
    axes = new_axes(None, nrows=2, figsize=(6.4, 6.0))
    mean, std, irr = np.asarray(mean, float), np.asarray(std, float), np.asarray(irr, bool)
    top, bottom = axes
    top.plot(mean[irr], std[irr], "o", label="irradiating")
    top.plot(mean[~irr], std[~irr], "s", label="not irradiating")
    for fit, name, m in ((fit_ir, "irradiating", irr), (fit_no, "not irradiating", ~irr)):
        _line(top, fit, mean[m], name, ls="--")     # over the means it was fitted to
        if fit.ok and m.any():
            bottom.plot(mean[m], std[m] - fit.predict(mean[m]), "o", label=name)
    finish_axes(top, "mean [adu]", "std [adu]", title)
    bottom.axhline(0, color="k", lw=0.8)
    finish_axes(bottom, "mean [adu]", "std - fit [adu]", "residuals",
                legend=bool(bottom.get_legend_handles_labels()[0]))
    return axes


def plot_dose_rate_effect(data: dict, fits: dict, *, title: str):
    """MEAN and STD vs dose rate, irradiating and not, with their lines."""
    axes = new_axes(None, ncols=2, figsize=(10.0, 4.2))
    for ax, q in zip(axes, ("mean", "std")):
        for subset, name in (("ir", "irradiating"), ("no", "not irradiating")):
            x, y = data[f"rate_{subset}"], data[f"{q}_{subset}"]
            ax.plot(x, y, "o", label=name)
            _line(ax, fits[(q, subset)], x, name, ls="--")
        finish_axes(ax, "dose rate [krad/s]", f"{q} [adu]", f"{title}: {q} vs dose rate")
    return axes


def plot_predicted(measured: dict, predicted: dict, *, title: str, fits: dict | None = None):
    """Measured vs predicted MEAN and STD (dose-rate model).  A fit with no degree of
    freedom (``fits = {"mean": Regression, "std": ...}``) meets every point by construction:
    its panel says so (the points on the 1:1 line test nothing)."""
    axes = new_axes(None, ncols=2, figsize=(10.0, 4.2))
    for ax, q in zip(axes, ("mean", "std")):
        fit = (fits or {}).get(q)
        note = (f" (exact: {fit.npoints} points, {fit.npoints} coefficients)"
                if fit is not None and fit.ok and fit.dof == 0 else "")
        m, p = np.asarray(measured[q], float), np.asarray(predicted[q], float)
        ax.plot(m, p, "o", label=q.upper())
        finite = np.concatenate([m[np.isfinite(m)], p[np.isfinite(p)]])
        if finite.size:
            ax.plot([finite.min(), finite.max()], [finite.min(), finite.max()], "k:",
                    label="1:1")
        finish_axes(ax, f"measured {q} [adu]", f"predicted {q} [adu]", f"{title}: {q}{note}")
    return axes


def plot_fit_with_residuals(x, y, yerr, fit: Regression, *, xlabel: str, ylabel: str,
                            title: str):
    """Data with the fitted line, and the residuals below."""
    axes = new_axes(None, nrows=2, figsize=(6.4, 6.0))
    top, bottom = axes
    top.errorbar(x, y, yerr, fmt="o", capsize=3, label="data")
    _line(top, fit, x, "fit", ls="--", color="k")
    finish_axes(top, xlabel, ylabel, title if fit.ok else f"{title} ({fit.status})")
    if fit.ok:
        bottom.errorbar(x, np.asarray(y, float) - fit.predict(np.asarray(x, float)), yerr,
                        fmt="o", capsize=3)
    bottom.axhline(0, color="k", lw=0.8)
    finish_axes(bottom, xlabel, f"residual [{ylabel.split('[')[-1].rstrip(']')}]",
                "residuals", legend=False)
    return axes


def plot_dynamic_range(dose, dr, noise, reduction, *, bits: int, full_scale: float):
    """Dynamic range with a +-noise band, and its percentage reduction."""
    axes = new_axes(None, nrows=2, figsize=(6.4, 6.0))
    top, bottom = axes
    dose, dr, noise = (np.asarray(v, float) for v in (dose, dr, noise))
    top.plot(dose, dr, "o-", label=f"dynamic range (full scale {full_scale:g} adu)")
    top.fill_between(dose, dr - noise, dr + noise, alpha=0.3, label="+- noise")
    finish_axes(top, DOSE, f"dynamic range [{bits}-bit adu]", f"dynamic range vs dose ({bits} bit)")
    bottom.plot(dose, reduction, "s-", color="C3", label="reduction")
    finish_axes(bottom, DOSE, "reduction [%]", "loss of dynamic range")
    return axes


def plot_map_relative(image: np.ndarray, *, title: str, ax=None):
    """(map - mean) / mean of a precision map, the old PNG view [1]."""
    from utils.plotting import show_image

    v = np.asarray(image, dtype=float)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else math.nan
    rel = (v - mean) / mean if mean else v
    return show_image(rel, unit="1", label="relative deviation from the map mean", title=title,
                      symmetric=True, ax=ax)


def plot_bars(values: dict, *, ylabel: str, title: str, ax=None):
    """Bar chart ``{label: value}``."""
    ax = new_axes(ax)
    labels = list(values)
    ax.bar(range(len(labels)), [values[k] for k in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    return finish_axes(ax, "metric", ylabel, title, legend=False)


__all__ = ["plot_series", "plot_mean_std_vs_dose", "plot_std_model", "plot_dose_rate_effect",
           "plot_predicted", "plot_fit_with_residuals", "plot_dynamic_range",
           "plot_map_relative", "plot_bars"]
