"""Flats for the time-series analyses: validity checks, and bias/dark removal at their own T.

``--reduce`` (structure analysis) and ``--calibrate`` (outgassing analysis)
remove from each flat the dark master of the same exposure time nearest in
temperature within a tolerance (a raw dark master holds bias plus dark
signal, so one subtraction removes both), else the bias master nearest in
temperature within a tolerance (the flat keeps its dark signal, said in
the table).  A flat with neither is not compared (a flagged row), never
silently left unreduced among reduced ones.  Masters are sigma-clipped,
streamed stacks (:func:`utils.stack.master.make_master`) written under
``OUT/masters/`` and rebuilt only when their inputs change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils import adu
from utils import headers as kw
from utils.io.fitsio import read_image
from utils.stack.grouping import calibration_groups
from utils.stack.master import CombineSettings, make_master, read_master

logger = logging.getLogger(__name__)


@dataclass
class MasterEntry:
    """A bias or dark master available for reduction."""

    caltype: str
    temperature: float     # [degC] bin label
    exptime: float         # [s] (NaN for bias)
    path: Path
    ncombine: int


@dataclass
class Reducer:
    """Bias and dark masters of a dataset and the rule that picks one for a flat.

    Attributes
    ----------
    masters : list of MasterEntry
        Available masters.
    temp_tolerance : float
        Largest |T_flat - T_master| [degC].
    exp_tolerance : float
        Largest |t_flat - t_dark| [s] for a dark to match.
    """

    masters: list = field(default_factory=list)
    temp_tolerance: float = 2.0
    exp_tolerance: float = 0.1
    _cache: dict = field(default_factory=dict, repr=False)

    def choose(self, temperature: float, exptime: float) -> tuple[MasterEntry | None, str]:
        """The master to subtract from a flat at ``temperature`` [degC], ``exptime`` [s]."""
        def near(entries):
            entries = [e for e in entries if math.isfinite(temperature)
                       and abs(e.temperature - temperature) <= self.temp_tolerance]
            return min(entries, key=lambda e: abs(e.temperature - temperature), default=None)

        dark = near([e for e in self.masters if e.caltype == "DARK" and math.isfinite(exptime)
                     and abs(e.exptime - exptime) <= self.exp_tolerance])
        if dark is not None:
            return dark, "dark (bias included)"
        bias = near([e for e in self.masters if e.caltype == "BIAS"])
        if bias is not None:
            return bias, "bias only (no dark of this exposure within tolerance)"
        return None, (f"no bias or dark master within {self.temp_tolerance:g} degC of "
                      f"{temperature:.2f} degC")

    def image(self, entry: MasterEntry) -> np.ndarray:
        """The master's image [adu] (loaded once)."""
        if entry.path not in self._cache:
            self._cache[entry.path] = read_master(entry.path).data
        return self._cache[entry.path]


def build_reducer(index: pd.DataFrame, out_dir: Path, *, temp_bin: float, exp_tolerance: float,
                  temp_tolerance: float, dark_exp_tolerance: float,
                  combine: CombineSettings = CombineSettings(),
                  progress_bar: bool = False) -> Reducer:
    """Bias and dark masters (per temperature bin and exposure) from the index's usable frames."""
    rows = index[index["CALTYPE"].isin(["BIAS", "DARK"]) & ~index["BADFITS"].astype(bool)]
    reducer = Reducer(temp_tolerance=temp_tolerance, exp_tolerance=dark_exp_tolerance)
    if rows.empty:
        return reducer
    for key, part in calibration_groups(rows, temp_width=temp_bin, exp_tolerance=exp_tolerance):
        if len(part) < 2:
            logger.warning("%s set %s has %d frame; no master", key.caltype.lower(), key.tag,
                           len(part))
            continue
        stage = f"{key.stage_dir}/" if key.stage_dir else ""
        path = out_dir / "masters" / f"{stage}master_{key.caltype.lower()}_{key.tag}.fits"
        header, _ = make_master(part, path, combine, product=f"MASTER_{key.caltype}",
                                progress_bar=progress_bar)
        reducer.masters.append(MasterEntry(key.caltype, key.temperature, key.exptime, path,
                                           int(header.get("NCOMBINE", len(part)))))
    return reducer


def saturation_of(header) -> float:
    """Saturation level of a frame [adu]: its ``SATLEVEL``, else the level of its ``ADCBITS``."""
    bits = int(kw.get_float(header, kw.ADCBITS, adu.DEFAULT_ADC_BITS))
    return kw.get_float(header, kw.SATLEVEL, adu.saturation_level(bits))


def load_flat(path, subtract: np.ndarray | None = None) -> np.ndarray:
    """A flat as float32 [adu], pixels at the header's saturation level NaN, minus ``subtract``."""
    data, header = read_image(path)
    raw = np.asarray(data)
    out = raw.astype(np.float32)
    out[raw >= saturation_of(header)] = np.nan
    if subtract is not None:
        out -= subtract
    return out




def select_flats(index: pd.DataFrame, *, temp_bin: float, exp_tolerance: float,
                 max_saturated: float, by_exposure: bool = True) -> pd.DataFrame:
    """The flats of an index with their temperature bin, exposure group and validity.

    Parameters
    ----------
    index : pandas.DataFrame
        Index rows (``PATH, CALTYPE, TEMP, EXPTIME, TIMESTAMP, BADFITS, REASON,
        SATFRACTION``).
    temp_bin : float
        [degC] largest temperature span of one bin (readings clustered, labelled by their
        median to 0.1 degC).
    exp_tolerance : float
        Largest relative exposure span of one group.
    max_saturated : float
        Largest fraction of pixels at the header's saturation level (``SATLEVEL``) in a
        valid flat.
    by_exposure : bool, optional
        Split temperature bins by exposure time.

    Returns
    -------
    pandas.DataFrame
        One row per flat: ``PATH, TEMP, EXPTIME, TIMESTAMP, SATFRACTION, TBIN, EXPGROUP,
        STATUS`` (``valid`` or why not), sorted by bin and time (time 0 is a time; a
        missing time stamp makes the flat invalid: it cannot be placed in the sequence).
    """
    from utils.stack.grouping import cluster

    flats = index[index["CALTYPE"] == "FLAT"].copy()
    cols = ["PATH", "TEMP", "EXPTIME", "TIMESTAMP", "SATFRACTION", "TBIN", "EXPGROUP", "STATUS"]
    if flats.empty:
        return pd.DataFrame(columns=cols)
    status = []
    for _, row in flats.iterrows():
        if bool(row["BADFITS"]):
            status.append(f"BADFITS: {row.get('REASON') or 'unreadable'}")
        elif not math.isfinite(float(row["TIMESTAMP"])):
            status.append("no time stamp (TIMESTMP): cannot be placed in time")
        elif not math.isfinite(float(row["TEMP"])):
            status.append("no sensor temperature (TEMP)")
        elif float(row.get("SATFRACTION", 0) or 0) > max_saturated:
            status.append(f"saturated: {100 * float(row['SATFRACTION']):.3g} % of pixels at "
                          f"SATLEVEL (limit {100 * max_saturated:g} %)")
        else:
            status.append("valid")
    flats["STATUS"] = status
    flats["TBIN"] = np.nan
    flats["EXPGROUP"] = np.nan
    valid = flats["STATUS"] == "valid"
    labels = cluster(flats.loc[valid, "TEMP"].to_numpy(float), temp_bin)
    temps = flats.loc[valid, "TEMP"].to_numpy(float)
    tbin = np.full(labels.shape, np.nan)
    for lab in set(labels) - {-1}:
        tbin[labels == lab] = round(float(np.median(temps[labels == lab])), 1)
    flats.loc[valid, "TBIN"] = tbin
    if by_exposure:
        for t in set(tbin):
            sel = valid & (flats["TBIN"] == t)
            exps = flats.loc[sel, "EXPTIME"].to_numpy(float)
            elab = cluster(exps, exp_tolerance, relative=True)
            group = np.full(elab.shape, np.nan)
            for e in set(elab) - {-1}:
                group[elab == e] = float(f"{np.median(exps[elab == e]):.6g}")
            flats.loc[sel, "EXPGROUP"] = group
    flats = flats.sort_values(["TBIN", "EXPGROUP", "TIMESTAMP", "PATH"], kind="stable",
                              na_position="last")
    return flats[cols].reset_index(drop=True)


def flats_of(basepath, out_dir: Path, settings, *, progress_bar: bool = False):
    """The index of ``basepath`` (a folder of FITS or an index CSV), its flats with their
    bins and validity (:func:`select_flats`), and the function that saves a folder's index
    (:func:`.inputs.frame_index`; call it once the inputs are checked).

    ``settings`` provides ``temp_bin``, ``exp_tolerance`` and ``max_saturated``.
    """
    from .inputs import frame_index

    index, save_index = frame_index(basepath, out_dir, progress_bar=progress_bar)
    return index, select_flats(index, temp_bin=settings.temp_bin,
                               exp_tolerance=settings.exp_tolerance,
                               max_saturated=settings.max_saturated), save_index


def reducer_for(settings, index: pd.DataFrame, out_dir: Path, *,
                progress_bar: bool = False) -> Reducer:
    """:func:`build_reducer` with the tolerances of a settings object (``temp_bin``,
    ``exp_tolerance``, ``temp_tolerance``, ``dark_exp_tolerance``, ``combine``)."""
    return build_reducer(index, Path(out_dir), temp_bin=settings.temp_bin,
                         exp_tolerance=settings.exp_tolerance,
                         temp_tolerance=settings.temp_tolerance,
                         dark_exp_tolerance=settings.dark_exp_tolerance,
                         combine=settings.combine, progress_bar=progress_bar)


__all__ = ["Reducer", "MasterEntry", "build_reducer", "load_flat", "select_flats",
           "saturation_of", "flats_of", "reducer_for"]
