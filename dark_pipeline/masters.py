"""Bias-subtracted dark masters per (temperature bin, exposure time).

Bias is removed frame by frame while stacking (nothing is written per frame):
with the per-pixel bias model evaluated at each frame's own temperature when
the set lies within the model's range (+- ``bias_temp_tolerance``), else
with the bias master nearest in temperature within that tolerance; a set with
neither is refused with a warning.  The subtracted bias's uncertainty is
carried in the master's ``UNCERT`` (and alone in ``SUBERR``).  The bias model
comes from ``--bias-model`` (the bias pipeline's product), else it is fitted
here from the bias frames of the same tree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils import headers as kw
from utils.errors import InputPathError, UserError
from utils.io.index import DatasetIndex
from utils.io.tokens import number_text
from utils.stack.grouping import GroupKey, calibration_groups, select_stage, stage_groups
from utils.stack.master import CombineSettings
from utils.stack.references import (
    BiasReference,
    bias_reference,
    build_dark_master,
    resolve_bias_model,
    select_frames,
)

logger = logging.getLogger(__name__)

#: Folder of the dark masters below the output folder.
MASTER_FOLDER = "dark_masters"


@dataclass
class DarkMaster:
    """One bias-subtracted dark master (signal [adu])."""

    temperature: float      # [degC] bin label
    tavg: float             # [degC] mean temperature of its frames
    exptime: float          # [s]
    path: Path
    ncombine: int
    written: bool


def dark_groups(index: DatasetIndex, stage: str = "",
                dose: float | None = None) -> list[tuple[str, float]]:
    """(stage, dose step) groups of the dark frames selected by ``stage`` and ``dose``
    (empty when there is no dark frame at all: :func:`dark_frames` says so)."""
    table = index.table
    return stage_groups(select_stage(table[table["CALTYPE"] == "DARK"], stage, dose))


def dark_frames(index: DatasetIndex, stage: str = "", dose: float | None = None) -> pd.DataFrame:
    """Usable dark frames of one (stage, dose step); a one-line error when there are none or
    their shapes differ."""
    rows = select_frames(index, "DARK", stage, dose=dose)
    if rows.empty:
        counts = ", ".join(f"{c or '?'}: {n}" for c, n in
                           index.table["CALTYPE"].value_counts().items())
        raise InputPathError(f"no usable dark frames among {len(index)} frames ({counts}); dark "
                             "frames are recognised from CALTYPE/IMAGETYP or EXPTIME")
    shapes = rows.groupby(["NAXIS1", "NAXIS2"]).size()
    if len(shapes) > 1:
        detail = ", ".join(f"{int(w)}x{int(h)}: {n} frames" for (w, h), n in shapes.items())
        raise UserError(f"dark frames of different shapes ({detail}); give frames of one "
                        "sensor mode")
    return rows


def dark_sets(rows: pd.DataFrame, temp_bin: float,
              exp_tolerance: float) -> list[tuple[GroupKey, pd.DataFrame]]:
    """Dark frames split into (temperature bin, exposure) sets."""
    return [(k, part) for k, part in calibration_groups(rows, temp_width=temp_bin,
                                                          exp_tolerance=exp_tolerance)
            if k.caltype == "DARK"]


def master_file(folder: Path, temperature: float, exptime: float) -> Path:
    """``<folder>/master_dark_T<T:.1f>C_E<t:g>s.fits``."""
    return Path(folder) / f"master_dark_T{number_text(temperature)}C_E{exptime:g}s.fits"


def build_dark_masters(sets, bias: BiasReference, folder: Path, combine: CombineSettings, *,
                       reuse=None, progress_bar: bool = False
                       ) -> tuple[list[DarkMaster], list[str]]:
    """Bias-subtracted masters of every set; returns them and the reasons of refused sets.

    ``reuse`` (``{INHASH: path}``, :func:`utils.stack.master.find_masters`): masters already
    built from the same frames with the same bias (index processing in a campaign run),
    linked instead of stacked again.
    """
    masters, refused = [], []
    for key, rows in sets:
        path = master_file(folder, key.temperature, key.exptime)
        made = build_dark_master(key, rows, bias, path, combine, reuse=reuse,
                                 progress_bar=progress_bar)
        if made is None:
            reason = (f"dark set {key.tag}: no bias within {bias.tolerance:g} degC of "
                      f"{number_text(key.temperature, 'g')} degC; set skipped")
            logger.warning("%s", reason)
            refused.append(reason)
            continue
        header, written = made
        masters.append(DarkMaster(key.temperature, kw.get_float(header, kw.TAVG, key.temperature),
                                  key.exptime, path, int(header.get(kw.NCOMBINE, 0)), written))
        logger.info("%s dark master %.1f degC %gs (%d frames): %s",
                    "wrote" if written else "kept", key.temperature, key.exptime, len(rows),
                    path.name)
    return masters, refused


def masters_table(masters: list[DarkMaster], out_dir: Path) -> pd.DataFrame:
    """``masters.csv``: one row per dark master."""
    return pd.DataFrame([{"TBIN": m.temperature, "TAVG": m.tavg, "EXPTIME": m.exptime,
                          "NCOMBINE": m.ncombine,
                          "PATH": m.path.relative_to(out_dir).as_posix()
                          if m.path.is_relative_to(out_dir) else str(m.path)}
                         for m in masters])


def temperatures_of(masters: list[DarkMaster]) -> list[float]:
    """Distinct temperature-bin labels, sorted."""
    return sorted({m.temperature for m in masters if math.isfinite(m.temperature)})


__all__ = ["DarkMaster", "BiasReference", "bias_reference", "dark_frames", "dark_sets",
           "dark_groups", "resolve_bias_model",
           "build_dark_masters", "masters_table", "master_file",
           "select_frames", "temperatures_of", "MASTER_FOLDER"]
