"""Calibration sets: which frames go into one master.

Frames are grouped by stage (and dose), calibration type, a temperature *bin*
and, for darks and flats, an exposure time within a tolerance.  Temperature
bins are built around the readings actually present: sorted readings are
clustered greedily so that each bin spans at most ``temp_width`` degC.  This
keeps a 12.5 degC set point with +-0.2 degC jitter in one bin (rounding to whole
degrees would split it in two) while never merging set points further apart than
the width.

A bin is labelled by :func:`temperature_label`: the median reading of its
*usable* frames (not ``BADFITS``; darks and flats with an exposure time) to
0.1 degC, as the tags print it.  Every pipeline names a set by that one rule, so
index processing (which also sees the bad frames) and the bias/dark/flat
pipelines (which see only the usable ones) give the same set the same name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from ..io.tokens import number_text


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


def stage_tag(stage: str, dose: float = math.nan) -> str:
    """Name fragment of one (stage, dose step): ``pre``, ``radiating_D10kR``, ``post`` or ''.

    Every product made per irradiation stage carries it (folder or file name), so products
    of different stages and dose steps never collide.  Only the radiating stage has several
    dose steps; a radiating stage without a known step is plain ``radiating``.

    Examples
    --------
    >>> stage_tag("radiating", 10.0), stage_tag("radiating", 2.5), stage_tag("post", 40.0)
    ('radiating_D10kR', 'radiating_D2.5kR', 'post')
    >>> stage_tag("", math.nan)
    ''
    """
    if not stage:
        return ""
    if stage != "radiating" or dose is None or math.isnan(dose):
        return stage
    return f"{stage}_D{float(dose) + 0.0:g}kR"


def parse_stage_tag(tag: str) -> tuple[str, float]:
    """Inverse of :func:`stage_tag`: ``(stage, dose)`` (NaN dose for pre/post).

    Examples
    --------
    >>> parse_stage_tag("radiating_D10kR"), parse_stage_tag("pre")
    (('radiating', 10.0), ('pre', nan))
    """
    m = re.fullmatch(r"(.+)_D([-+0-9.eE]+)kR", tag)
    if m:
        return m.group(1), float(m.group(2))
    return tag, math.nan


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
        [degC] bin label (:func:`temperature_label`: median usable reading, 0.1 degC).
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
        """Folder of this stage's products: :func:`stage_tag` (``pre``, ``radiating_D10kR``,
        ``post`` or '')."""
        return stage_tag(self.stage, self.dose)

    @property
    def tag(self) -> str:
        """File-name fragment: ``T-10.0C`` or ``T25.0C_E0.5s`` (distinct for 0.01 s and 0.04 s)."""
        text = f"T{number_text(self.temperature)}C"
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
        return round(median, digits) + 0.0  # no -0.0 bin (a median of -0.03 degC)
    return float(f"{median:.{significant}g}")


def temperature_label(rows: pd.DataFrame) -> float:
    """[degC] label of one temperature bin: the rule every pipeline names a set by.

    The median ``TEMP`` of the bin's usable rows (``BADFITS`` false and, for darks and
    flats, a positive ``EXPTIME``; all rows when none is usable), rounded to 0.1 degC as
    :attr:`GroupKey.tag` prints it.  Bad frames never go into a master, so they do not move
    its name: index processing (all rows) and a pipeline given the usable rows only label a
    bin alike.

    Parameters
    ----------
    rows : pandas.DataFrame
        Rows of one temperature bin, with ``TEMP`` [degC] (and ``BADFITS``, ``CALTYPE``,
        ``EXPTIME`` [s]; a missing column excludes nothing).

    Returns
    -------
    float
        [degC] the label (never -0.0).

    Examples
    --------
    >>> rows = pd.DataFrame({"TEMP": [25.02, 25.04, 25.2], "BADFITS": [False, False, True]})
    >>> temperature_label(rows), temperature_label(rows[["TEMP"]])
    (25.0, 25.0)
    >>> temperature_label(pd.DataFrame({"TEMP": [25.02, 25.16, 25.2],
    ...                                 "BADFITS": [False, False, True]}))
    25.1
    """
    good = pd.Series(True, index=rows.index)
    if "BADFITS" in rows:
        good &= ~rows["BADFITS"].fillna(False).astype(bool)
    if "EXPTIME" in rows and "CALTYPE" in rows:
        # a dark or flat without a positive exposure time belongs to no set
        exptime = pd.to_numeric(rows["EXPTIME"], errors="coerce")
        good &= (rows["CALTYPE"] == "BIAS") | (exptime > 0)
    temps = rows["TEMP"][good] if good.any() else rows["TEMP"]
    return _label(temps, digits=1)


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
            temperature = temperature_label(t_part)
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


def _step_dose(table: pd.DataFrame) -> np.ndarray:
    """Dose step of each row as the grouping sees it: ``DOSE`` for radiating rows, else NaN."""
    stage = text_column(table["STAGE"]) if "STAGE" in table else pd.Series("", index=table.index)
    dose = pd.to_numeric(table["DOSE"], errors="coerce") if "DOSE" in table \
        else pd.Series(np.nan, index=table.index)
    return np.where(stage == "radiating", dose, np.nan)


def stage_groups(table: pd.DataFrame) -> list[tuple[str, float]]:
    """The distinct (stage, dose step) of index rows, in campaign order.

    Only the radiating stage is split by dose step (pre and post have one each).

    Examples
    --------
    >>> t = pd.DataFrame({"STAGE": ["post", "radiating", "pre", "radiating"],
    ...                   "DOSE": [20.0, 20.0, 0.0, 10.0]})
    >>> stage_groups(t)
    [('pre', nan), ('radiating', 10.0), ('radiating', 20.0), ('post', nan)]
    """
    order = {"pre": 0, "radiating": 1, "post": 2}
    stage = text_column(table["STAGE"]) if "STAGE" in table else pd.Series("", index=table.index)
    pairs = {(s, float(d)) if not math.isnan(d) else (s, math.nan)
             for s, d in zip(stage, _step_dose(table))}
    # NaN keys are not equal to each other: deduplicate on their text form
    unique = {stage_tag(s, d) or "": (s, d) for s, d in pairs}
    return sorted(unique.values(), key=lambda sd: (order.get(sd[0], 3), sd[0],
                                                   -math.inf if math.isnan(sd[1]) else sd[1]))


def select_stage(table: pd.DataFrame, stage: str | None, dose: float | None) -> pd.DataFrame:
    """Rows of one stage (``None``: any) and dose step (``None``: any; only radiating rows
    have a step, so a dose selects radiating rows)."""
    keep = np.ones(len(table), bool)
    if stage:
        keep &= (text_column(table["STAGE"]) == stage).to_numpy()
    if dose is not None:
        step = _step_dose(table)
        keep &= np.isclose(step, float(dose), rtol=0, atol=1e-9)
    return table[keep]


def check_one_dose_step(rows: pd.DataFrame, what: str) -> None:
    """Refuse a fit across dose steps: raise :class:`utils.errors.UserError` when ``rows``
    hold frames of several dose steps (a dose shift would be read as a temperature effect)."""
    from ..errors import UserError

    dose = pd.to_numeric(rows["DOSE"], errors="coerce") if "DOSE" in rows \
        else pd.Series(dtype=float)
    steps = sorted(set(np.round(dose.dropna().to_numpy(float), 9)))
    if len(steps) > 1:
        raise UserError(f"{what}: the frames come from {len(steps)} dose steps "
                        f"({', '.join(f'{d:g}' for d in steps)} krad); a fit across dose steps "
                        "would read the radiation shift as a temperature effect; choose one "
                        "with --stage and --dose, or give neither to model each step apart")


__all__ = ["cluster", "GroupKey", "calibration_groups", "temperature_label", "text_column",
           "stage_tag", "parse_stage_tag", "stage_groups", "select_stage", "check_one_dose_step"]
