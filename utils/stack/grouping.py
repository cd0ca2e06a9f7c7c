"""Calibration sets: which frames go into one master.

Frames are grouped by stage (and dose), calibration type, a temperature *bin*
and, for darks and flats, an exposure time within a tolerance.  Temperature
bins are built around the readings actually present: sorted readings are
clustered greedily so that each bin spans at most ``temp_width`` degC, and the
bin is labelled by its median reading to 0.1 degC.  This keeps a 12.5 degC
set point with +-0.2 degC jitter in one bin (rounding to whole degrees would
split it in two) while never merging set points further apart than the width.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd


def cluster(values: np.ndarray, width: float, *, relative: bool = False) -> np.ndarray:
    """Greedy 1-D clustering: a new cluster starts when a value exceeds the first one by ``width``.

    Parameters
    ----------
    values : array-like
        Values to cluster; NaN gets label -1.
    width : float
        Largest span of a cluster (absolute), or relative span when ``relative``.
    relative : bool, optional
        Interpret ``width`` as a fraction of the cluster's first value.

    Returns
    -------
    numpy.ndarray
        Integer label per value, clusters numbered in increasing value order.

    Examples
    --------
    >>> cluster(np.array([12.4, 0.1, 12.6, -0.2, np.nan]), 1.0).tolist()
    [1, 0, 1, 0, -1]
    """
    values = np.asarray(values, dtype=float)
    labels = np.full(values.shape, -1, dtype=int)
    order = np.argsort(values, kind="stable")
    current, start = -1, math.nan
    for i in order:
        v = values[i]
        if math.isnan(v):
            continue
        limit = start + (abs(start) * width + 1e-12 if relative else width)
        if current < 0 or v > limit:
            current += 1
            start = v
        labels[i] = current
    return labels


@dataclass(frozen=True, order=True)
class GroupKey:
    """Identity of one calibration set.

    Attributes
    ----------
    stage : str
        ``pre``, ``radiating``, ``post`` or '' (no irradiation stage).
    dose : float
        [krad] dose step of a radiating stage, NaN otherwise.
    caltype : str
        ``BIAS``, ``DARK`` or ``FLAT``.
    temperature : float
        [degC] bin label (median reading, 0.1 degC).
    exptime : float
        [s] exposure label (NaN for bias).
    attempt : str
        Attempt name for per-attempt masters, '' for all attempts together.
    """

    stage: str
    dose: float
    caltype: str
    temperature: float
    exptime: float = math.nan
    attempt: str = ""

    @property
    def stage_dir(self) -> str:
        """Folder of this stage's products: ``pre``, ``radiating_10krad``, ``post`` or ''."""
        if not self.stage:
            return ""
        if math.isnan(self.dose) or self.stage != "radiating":
            return self.stage
        return f"{self.stage}_{self.dose:g}krad"

    @property
    def tag(self) -> str:
        """File-name fragment: ``T-10.0C`` or ``T25.0C_E0.5s`` (distinct for 0.01 s and 0.04 s)."""
        text = f"T{self.temperature:.1f}C"
        if not math.isnan(self.exptime):
            text += f"_E{self.exptime:.6g}s"
        if self.attempt:
            # letters of any script are kept (attempt_ñ and attempt_ü must not collide)
            text += "_" + re.sub(r"(?:[^\w.+-]|_)+", "-", self.attempt).strip("-")
        return text

    def without_attempt(self) -> "GroupKey":
        """The all-attempts key of the same set."""
        return GroupKey(self.stage, self.dose, self.caltype, self.temperature, self.exptime)


def text_column(series: pd.Series) -> pd.Series:
    """Strings with '' for missing values (empty CSV cells come back as NaN)."""
    return series.astype(object).where(series.notna(), "").astype(str)


def _label(values: pd.Series, digits: int | None = None, significant: int | None = None) -> float:
    median = float(np.median(values))
    if digits is not None:
        return round(median, digits)
    return float(f"{median:.{significant}g}")


def calibration_groups(table: pd.DataFrame, *, temp_width: float = 1.0,
                       exp_tolerance: float = 0.01, by_attempt: bool = False
                       ) -> Iterator[tuple[GroupKey, pd.DataFrame]]:
    """Split index rows into calibration sets.

    Parameters
    ----------
    table : pandas.DataFrame
        Index rows with ``STAGE, DOSE, CALTYPE, TEMP, EXPTIME`` (and ``ATTEMPT``).
    temp_width : float, optional
        [degC] largest temperature span of one bin. Default is 1.
    exp_tolerance : float, optional
        Largest relative exposure-time span of one set. Default is 0.01.
    by_attempt : bool, optional
        Also split by ``ATTEMPT``.

    Yields
    ------
    (GroupKey, pandas.DataFrame)
        Keys in a stable order (stage, dose, type, temperature, exposure, attempt).
        Rows without a temperature (or, for darks and flats, an exposure time)
        belong to no set; callers report them.
    """
    table = table.copy()
    table["STAGE"] = text_column(table["STAGE"])
    dose = pd.to_numeric(table["DOSE"], errors="coerce")
    table["_DOSE"] = np.where(table["STAGE"] == "radiating", dose, np.nan)
    out: list[tuple[GroupKey, pd.DataFrame]] = []
    for (stage, dose_value, caltype), part in table.groupby(
            ["STAGE", "_DOSE", "CALTYPE"], dropna=False, sort=True):
        t_labels = cluster(part["TEMP"].to_numpy(float), temp_width)
        for t_id in sorted(set(t_labels) - {-1}):
            t_part = part[t_labels == t_id]
            temperature = _label(t_part["TEMP"], digits=1)
            if caltype == "BIAS":
                e_parts = [(math.nan, t_part)]
            else:
                e_labels = cluster(t_part["EXPTIME"].to_numpy(float), exp_tolerance, relative=True)
                e_parts = [(_label(t_part["EXPTIME"][e_labels == e], significant=6),
                            t_part[e_labels == e]) for e in sorted(set(e_labels) - {-1})]
            for exptime, e_part in e_parts:
                base = GroupKey(stage, float(dose_value), caltype, temperature, exptime)
                out.append((base, e_part))
                if by_attempt:
                    for attempt, a_part in e_part.groupby(text_column(e_part["ATTEMPT"])):
                        out.append((GroupKey(stage, float(dose_value), caltype, temperature,
                                             exptime, attempt), a_part))
    yield from out
