"""Dynamic range, base level and relative precision vs dose (summary level).

The full scale is the camera's saturation level from the frames' ADU convention
(:func:`utils.adu.saturation_level`: 65520 stored ADU for 12 bits), not 65536;
12-bit quantities divide by the ADU scale (16).  Darks are taken at one
reference exposure (never averaged across exposures).

Per dose common to bias and dark rows:

* base level ``base16 = bias MEAN + dark MEAN``, ``base12 = base16 / scale``;
* dynamic range ``DR16 = FS - base16``, ``DR12 = FS / scale - base12``;
* noise ``sqrt(sigma_bias^2 + sigma_dark^2)`` [adu], in magnitudes
  ``1.0857 noise / DR16``; reduction ``100 (FS - DR) / FS`` [%];
* relative precision: noise and magnitude error minus their pre-irradiation mean.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: 2.5 / ln(10): magnitude error per unit relative flux error.
MAG_PER_RELATIVE = 2.5 / math.log(10)


def dynamic_range(bias_mean, bias_std, dark_mean, dark_std, full_scale: float,
                  adu_scale: float) -> dict:
    """Dynamic range of one dose (arrays allowed), the old keys.

    Examples
    --------
    >>> r = dynamic_range(10.0, 1.0, 5.0, 2.0, full_scale=65536, adu_scale=16)
    >>> float(r["dynamic_range_16"]), round(float(r["noise_adu"]) ** 2, 9)
    (65521.0, 5.0)
    >>> float(r["reduction_16"]) == 100 * 15 / 65536
    True
    """
    bias_mean, bias_std, dark_mean, dark_std = (np.asarray(v, dtype=float) for v in
                                                (bias_mean, bias_std, dark_mean, dark_std))
    base16 = bias_mean + dark_mean
    base12 = base16 / adu_scale
    fs12 = full_scale / adu_scale
    dr16 = full_scale - base16
    dr12 = fs12 - base12
    noise = np.sqrt(bias_std ** 2 + dark_std ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise_mag = np.where(dr16 > 0, MAG_PER_RELATIVE * noise / dr16, np.inf)
    return {"bias_mean": bias_mean, "dark_mean": dark_mean, "dynamic_range_16": dr16,
            "dynamic_range_12": dr12, "noise_adu": noise, "noise_mag": noise_mag,
            "reduction_16": 100.0 * (full_scale - dr16) / full_scale,
            "reduction_12": 100.0 * (fs12 - dr12) / fs12, "base_level_16": base16,
            "base_level_12": base12, "full_scale_16": full_scale}


def limiting_magnitude_loss(dr16, noise, full_scale):
    """``-2.5 log10(DR16 / FS)`` [mag] and its error ``1.0857 noise / DR16``."""
    dr16 = np.asarray(dr16, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -2.5 * np.log10(dr16 / full_scale), MAG_PER_RELATIVE * np.asarray(noise) / dr16


def per_dose(rows: pd.DataFrame, dark_exposure: float, stages=("radiating", "during")
             ) -> pd.DataFrame:
    """Bias and dark (at ``dark_exposure``) MEAN/STD averaged per dose of ``stages``, doses
    common to both."""
    part = rows[rows["STAGE"].isin(stages)]
    bias = part[part["CALTYPE"] == "BIAS"].groupby("DOSE")[["MEAN", "STD"]].mean()
    dark = part[(part["CALTYPE"] == "DARK") & np.isclose(part["EXPTIME"], dark_exposure)]
    dark = dark.groupby("DOSE")[["MEAN", "STD"]].mean()
    both = bias.reset_index().merge(dark.reset_index(), on="DOSE", suffixes=("_B", "_D"))
    return both.sort_values("DOSE")


def relative_precision(rows: pd.DataFrame, dark_exposure: float, full_scale: float,
                       adu_scale: float) -> tuple[pd.DataFrame, str]:
    """NOISE16/12 and MAG16/12 of every stage and dose, and their differences to the pre
    mean (``*_DIFF``); returns the table and a status ('' or why the differences are NaN)."""
    records = []
    for stage in ("pre", "radiating", "post"):
        stages = ("radiating", "during") if stage == "radiating" else (stage,)
        for _, r in per_dose(rows, dark_exposure, stages).iterrows():
            dr = dynamic_range(r["MEAN_B"], r["STD_B"], r["MEAN_D"], r["STD_D"], full_scale,
                               adu_scale)
            n16 = float(dr["noise_adu"])
            n12 = n16 / adu_scale
            records.append({"STAGE": stage, "DOSE": r["DOSE"], "NOISE16": n16, "NOISE12": n12,
                            "MAG16": MAG_PER_RELATIVE * n16 / float(dr["dynamic_range_16"]),
                            "MAG12": MAG_PER_RELATIVE * n12 / float(dr["dynamic_range_12"])})
    table = pd.DataFrame(records, columns=["STAGE", "DOSE", "NOISE16", "NOISE12", "MAG16",
                                           "MAG12"])
    pre = table[table["STAGE"] == "pre"]
    status = "" if len(pre) else "no pre-irradiation rows: differences not computed"
    for m in ("NOISE16", "NOISE12", "MAG16", "MAG12"):
        table[f"{m}_DIFF"] = table[m] - (pre[m].mean() if len(pre) else math.nan)
    return table, status


__all__ = ["dynamic_range", "limiting_magnitude_loss", "per_dose", "relative_precision",
           "MAG_PER_RELATIVE"]
