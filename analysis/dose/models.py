"""Dose-response fits of the summary rows: every coefficient with its standard error.

All take the summary table (:mod:`analysis.dose.summary`) restricted to the rows
at the analysis temperature (``USED``), never mix exposure times (darks are
split by exposure), and return :class:`utils.models.regression.Regression`
results whose ``status`` says why a fit was skipped (too few rows, all dose
rates equal, a single dose step) -- the old code's ``polyfit`` on constant
abscissae aborted the whole run.

* STD model: ``STD = a MEAN + b``, separately for irradiating and non-irradiating
  rows;
* dose-rate effect: MEAN and STD vs ``DOSE_RATE``, irradiating and not;
* dose-rate model: ``MEAN = A0 + A1 D + A2 DOSE_RATE``,
  ``STD = B0 + B1 D + B2 DOSE_RATE`` (irradiating rows, three at least);
* dose model: MEAN vs D (irradiating rows);
* base-level trend: MEAN vs D per calibration type and exposure (irradiating);

``D`` is the dose the rows' frames received (:func:`received_dose`: their mean
``FRAMEDOSE``), not the step's label ``DOSE``, which the step's frames received only when
the beam was off while they were taken.
* stage base-level difference: first step - pre and last step - post.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.models.regression import Regression, fit_line, fit_linear

from .summary import IRRADIATING


def received_dose(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The abscissa of a dose-response fit [krad] and the column it came from.

    The dose the rows' frames received -- their mean ``FRAMEDOSE`` -- when every row has
    one, else the dose step ``DOSE``.  A step is named after the dose at its end: with the
    beam on while measuring (a ramp) the frames of the 10 krad step received 0-10 krad, and
    regressing on the label put the bias shift at 2.0 +- 0.4 adu/krad (chi2/dof 472) for a
    true 3.2 (the damage analysis, on FRAMEDOSE: 3.19 +- 0.02).

    Examples
    --------
    >>> rows = pd.DataFrame({"DOSE": [10.0, 20.0], "FRAMEDOSE": [5.0, 15.0]})
    >>> x, column = received_dose(rows)
    >>> list(x), column
    ([5.0, 15.0], 'FRAMEDOSE')
    >>> received_dose(rows.assign(FRAMEDOSE=[5.0, None]))[1]
    'DOSE'
    """
    if "FRAMEDOSE" in rows:
        framedose = pd.to_numeric(rows["FRAMEDOSE"], errors="coerce")
        if len(framedose) and bool(np.isfinite(framedose).all()):
            return framedose.astype(float), "FRAMEDOSE"
    return pd.to_numeric(rows["DOSE"], errors="coerce").astype(float), "DOSE"


def irradiating(rows: pd.DataFrame) -> pd.Series:
    """True for rows of the irradiating stage (``radiating``, old ``during``)."""
    return rows["STAGE"].isin(IRRADIATING)


def series(rows: pd.DataFrame) -> list[tuple[str, float, pd.DataFrame]]:
    """``(caltype, exposure, rows)``: bias as one series, darks and flats per exposure."""
    out = []
    for cal in ("BIAS", "DARK", "FLAT"):
        part = rows[rows["CALTYPE"] == cal]
        if part.empty:
            continue
        if cal == "BIAS":
            out.append((cal, math.nan, part))
            continue
        for exp, epart in part.groupby("EXPTIME", sort=True):
            out.append((cal, float(exp), epart))
    return out


def std_model(rows: pd.DataFrame, what: str) -> tuple[Regression, Regression]:
    """``STD = a MEAN + b`` on the irradiating rows and on the others."""
    ir = irradiating(rows)
    return (fit_line(rows.loc[ir, "MEAN"], rows.loc[ir, "STD"], what=f"{what} STD vs MEAN "
                     "(irradiating)", xname="MEAN"),
            fit_line(rows.loc[~ir, "MEAN"], rows.loc[~ir, "STD"], what=f"{what} STD vs MEAN "
                     "(not irradiating)", xname="MEAN"))


def dose_rate_effect(rows: pd.DataFrame, what: str) -> dict:
    """MEAN and STD vs DOSE_RATE, irradiating and not: ``{(quantity, subset): Regression}``."""
    out = {}
    ir = irradiating(rows)
    for subset, mask in (("ir", ir), ("no", ~ir)):
        part = rows[mask & rows["DOSE_RATE"].notna()]
        for q in ("MEAN", "STD"):
            out[(q.lower(), subset)] = fit_line(
                part["DOSE_RATE"], part[q], what=f"{what} {q} vs dose rate "
                f"({'irradiating' if subset == 'ir' else 'not irradiating'})",
                xname="dose rate")
    return out


def dose_rate_model(rows: pd.DataFrame, what: str) -> tuple[Regression, Regression]:
    """``MEAN = A0 + A1 D + A2 DOSE_RATE`` and ``STD = B0 + B1 D + B2 DOSE_RATE``, ``D`` the
    dose received (:func:`received_dose`).

    Examples
    --------
    >>> t = pd.DataFrame({"DOSE": [0, 1, 0, 1], "DOSE_RATE": [0, 0, 2, 2],
    ...                   "MEAN": [2.0, 3.5, 2.4, 3.9], "STD": [0.5, 0.55, 0.7, 0.75]})
    >>> a, b = dose_rate_model(t, "example")
    >>> [round(float(v), 6) for v in a.coef], [round(float(v), 6) for v in b.coef]
    ([2.0, 1.5, 0.2], [0.5, 0.05, 0.1])
    """
    cols = {"dose": received_dose(rows)[0], "dose_rate": rows["DOSE_RATE"]}
    labels = {"dose": "dose", "dose_rate": "dose rate"}
    return (fit_linear(rows["MEAN"], cols, what=f"{what} MEAN dose-rate model", labels=labels),
            fit_linear(rows["STD"], cols, what=f"{what} STD dose-rate model", labels=labels))


def dose_model(rows: pd.DataFrame, what: str) -> Regression:
    """MEAN vs the dose received (:func:`received_dose`; the rows' mean errors as weights
    when known)."""
    sigma = rows["MEAN_ERR"] if "MEAN_ERR" in rows and rows["MEAN_ERR"].notna().all() \
        and (rows["MEAN_ERR"] > 0).all() else None
    x, _ = received_dose(rows)
    return fit_line(x, rows["MEAN"], sigma, what=f"{what} MEAN vs dose", xname="dose")


def stage_base_diff(rows: pd.DataFrame) -> dict:
    """First radiating step minus pre, last radiating step minus post (MEAN, with errors).

    Returns ``{"dose": [min, max], "first_pre": (diff, err), "last_post": (diff, err),
    "status": ...}``; a missing stage gives NaN and says so.
    """
    ir = rows[irradiating(rows)]
    out = {"dose": [math.nan, math.nan], "first_pre": (math.nan, math.nan),
           "last_post": (math.nan, math.nan), "status": []}
    if ir.empty:
        out["status"].append("no irradiating rows")
        return out
    dmin, dmax = float(ir["DOSE"].min()), float(ir["DOSE"].max())
    out["dose"] = [dmin, dmax]

    def level(part):
        if part.empty:
            return math.nan, math.nan
        err = np.sqrt(np.sum(part["MEAN_ERR"] ** 2)) / len(part) if "MEAN_ERR" in part \
            else math.nan
        return float(part["MEAN"].mean()), float(err)

    first, last = level(ir[ir["DOSE"] == dmin]), level(ir[ir["DOSE"] == dmax])
    for key, a, ref, name in (("first_pre", first, level(rows[rows["STAGE"] == "pre"]), "pre"),
                              ("last_post", last, level(rows[rows["STAGE"] == "post"]), "post")):
        if math.isnan(ref[0]):
            out["status"].append(f"no {name} rows: {key} not computed")
            continue
        out[key] = (a[0] - ref[0], math.hypot(a[1], ref[1]))
    return out


__all__ = ["received_dose", "irradiating", "series", "std_model", "dose_rate_effect",
           "dose_rate_model", "dose_model", "stage_base_diff"]
