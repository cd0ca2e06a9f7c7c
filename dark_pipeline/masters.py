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

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils import headers as kw
from utils.errors import InputPathError, UserError
from utils.io.fitsio import read_image
from utils.io.index import DatasetIndex
from utils.models.bias_model import BiasModel, MasterStack, fit_bias_model
from utils.stack.grouping import (
    GroupKey,
    calibration_groups,
    check_one_dose_step,
    select_stage,
    stage_groups,
    stage_tag,
)
from utils.stack.master import CombineSettings, make_master

logger = logging.getLogger(__name__)

#: Folder of the dark masters below the output folder.
MASTER_FOLDER = "dark_masters"
#: Folder of the bias masters made from the tree's own bias frames.
BIAS_FOLDER = "bias_masters"


@dataclass
class DarkMaster:
    """One bias-subtracted dark master (signal [adu])."""

    temperature: float      # [degC] bin label
    tavg: float             # [degC] mean temperature of its frames
    exptime: float          # [s]
    path: Path
    ncombine: int
    written: bool


def select_frames(index: DatasetIndex, caltype: str, stage: str = "",
                  dose: float | None = None) -> pd.DataFrame:
    """Usable frames of one type and (stage, dose step) with a temperature; the others are
    logged.

    Raises
    ------
    UserError
        Frames of several (stage, dose step) groups remain (choose one), or of several
        dose steps (a fit across them is refused).
    """
    table = index.table
    rows = select_stage(table[table["CALTYPE"] == caltype], stage, dose)
    groups = stage_groups(rows)
    if len(groups) > 1:
        raise UserError(f"{caltype.lower()} frames of several stages or dose steps ("
                        + ", ".join(stage_tag(s, d) for s, d in groups)
                        + "); choose one with --stage and --dose")
    check_one_dose_step(rows, f"{caltype.lower()} frames")
    bad = rows["BADFITS"].astype(bool) | rows["TEMP"].isna()
    for _, row in rows[bad].iterrows():
        why = row["REASON"] if isinstance(row["REASON"], str) and row["REASON"] else \
            "no sensor temperature (TEMP)"
        logger.warning("%s: left out of the dark pipeline (%s)", row["PATH"], why)
    return rows[~bad]


def dark_groups(index: DatasetIndex, stage: str = "",
                dose: float | None = None) -> list[tuple[str, float]]:
    """(stage, dose step) groups of the dark frames selected by ``stage`` and ``dose``
    (empty when there is no dark frame at all: :func:`dark_frames` says so)."""
    table = index.table
    return stage_groups(select_stage(table[table["CALTYPE"] == "DARK"], stage, dose))


def dark_frames(index: DatasetIndex, stage: str = "", dose: float | None = None) -> pd.DataFrame:
    """Usable dark frames of one (stage, dose step); a one-line error when there are none or
    their shapes differ."""
    rows = select_frames(index, "DARK", stage, dose)
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


class BiasReference:
    """The bias removed from the dark frames: a per-pixel model, and/or masters by temperature.

    Parameters
    ----------
    model : BiasModel or None
        Per-pixel bias(T) model.
    masters : list of (temperature [degC], path)
        Bias masters usable when the model does not cover a temperature.
    tolerance : float
        [degC] largest distance to the model's range or to a master.
    source : str
        What the model came from (for headers and logs).
    """

    def __init__(self, model: BiasModel | None, masters: list[tuple[float, Path]],
                 tolerance: float, source: str):
        self.model, self.masters, self.tolerance, self.source = model, masters, tolerance, source
        # what was subtracted, by content: a refitted model at the same path changes the masters
        # (the file name only, so that two output folders give the same masters' INHASH)
        digest = hashlib.sha1(Path(source).name.encode())
        if model is not None:
            digest.update(np.ascontiguousarray(model.a).tobytes())
            digest.update(np.ascontiguousarray(model.b).tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def check_shape(self, shape: tuple[int, int]) -> None:
        """One-line error when the bias does not match the dark frames' shape."""
        if self.model is not None and self.model.shape != shape:
            raise UserError(f"bias model {self.source} is {self.model.shape[1]}x"
                            f"{self.model.shape[0]} but the dark frames are {shape[1]}x{shape[0]}")

    def for_set(self, rows: pd.DataFrame, temperature: float):
        """``(subtract, stderr, cards, refs)`` for :func:`utils.stack.master.make_master`, or
        None."""
        temps = rows["TEMP"].to_numpy(float)
        mean_t = float(np.mean(temps))
        if self.model is not None and self.model.covers(temperature, self.tolerance):
            cards = {kw.BIASFILE: (Path(self.source).name, "bias model A+B*(T-TREF) subtracted"),
                     kw.BIASTEMP: (mean_t, "[degC] mean frame temperature of the evaluation"),
                     kw.SUBTRACT: ("bias(T)", "bias model at each frame's TEMP")}
            return (self.model.subtractor(temps), self.model.predict_err(mean_t), cards,
                    (self.fingerprint, "model"))
        if self.masters:
            t_bias, path = min(self.masters, key=lambda m: abs(m[0] - temperature))
            if abs(t_bias - temperature) <= self.tolerance:
                data, _ = read_image(path)
                from astropy.io import fits

                with fits.open(path, memmap=False) as hdul:
                    err = np.asarray(hdul["UNCERT"].data, dtype=np.float32)
                cards = {kw.BIASFILE: (path.name, "master bias subtracted"),
                         kw.BIASTEMP: (t_bias, "[degC] temperature of that master bias"),
                         kw.SUBTRACT: ("bias", "master bias, same for every frame")}
                return np.asarray(data, np.float32), err, cards, (str(path),)
        return None


def bias_reference(index: DatasetIndex, out_dir: Path, *, model_path: str = "",
                   stage: str = "", dose: float | None = None, temp_bin: float = 1.0,
                   tolerance: float = 2.0,
                   combine: CombineSettings = CombineSettings(),
                   progress_bar: bool = False) -> BiasReference:
    """The bias model given by the user, else one fitted from the tree's bias frames.

    Raises
    ------
    UserError
        No ``model_path`` and no usable bias frame in the tree.
    """
    if model_path:
        model_path = resolve_bias_model(model_path, stage_tag(stage, math.nan if dose is None
                                                              else dose))
        model = BiasModel.read(model_path)
        logger.info("bias: model %s (%.1f..%.1f degC)", model_path, model.t_min, model.t_max)
        return BiasReference(model, [], tolerance, str(model_path))
    rows = select_frames(index, "BIAS", stage, dose)
    if rows.empty:
        raise UserError("missing bias: no usable bias frames next to the darks and no "
                        "--bias-model; give --bias-model OUT/bias_model.fits from the bias "
                        "pipeline (python bias_pipeline/run_pipeline.py)")
    masters = []
    for key, part in calibration_groups(rows, temp_width=temp_bin):
        path = out_dir / BIAS_FOLDER / f"master_bias_{key.temperature:.1f}C.fits"
        header, _ = make_master(part, path, combine, product="MASTER_BIAS",
                                progress_bar=progress_bar,
                                extra={kw.CALTYPE: ("BIAS", "calibration type"),
                                       kw.IMAGETYP: ("MASTER BIAS", "frame type")})
        masters.append((kw.get_float(header, kw.TAVG, key.temperature), path))
    temps = np.array([t for t, _ in masters])
    if np.unique(np.round(temps, 3)).size < 2:
        logger.info("bias: one temperature (%.1f degC): nearest-master subtraction only",
                    temps[0])
        return BiasReference(None, masters, tolerance, str(masters[0][1]))
    model, _ = fit_bias_model(MasterStack([p for _, p in masters], temps), cross_validate=False)
    path = model.write(out_dir / "bias_model.fits")
    logger.info("bias: model fitted from %d bias masters (%.1f..%.1f degC): %s", len(masters),
                temps.min(), temps.max(), path)
    return BiasReference(model, masters, tolerance, str(path))


def resolve_bias_model(path: str | Path, tag: str) -> Path:
    """The bias model file to use for the stage tag ``tag``: ``path`` itself when it is a
    file, else (a bias-pipeline output folder) ``path/<tag>/bias_model.fits`` when it
    exists, else ``path/bias_model.fits``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / tag / "bias_model.fits", path / "bias_model.fits"):
            if candidate.is_file():
                return candidate
        raise InputPathError(f"{path}: no bias_model.fits for {tag or 'these frames'} in this "
                             "folder; run the bias pipeline first or give the model file")
    return path


def dark_sets(rows: pd.DataFrame, temp_bin: float,
              exp_tolerance: float) -> list[tuple[GroupKey, pd.DataFrame]]:
    """Dark frames split into (temperature bin, exposure) sets."""
    return [(k, part) for k, part in calibration_groups(rows, temp_width=temp_bin,
                                                          exp_tolerance=exp_tolerance)
            if k.caltype == "DARK"]


def master_file(folder: Path, temperature: float, exptime: float) -> Path:
    """``<folder>/master_dark_T<T:.1f>C_E<t:g>s.fits``."""
    return Path(folder) / f"master_dark_T{temperature:.1f}C_E{exptime:g}s.fits"


def build_dark_masters(sets, bias: BiasReference, folder: Path, combine: CombineSettings, *,
                       progress_bar: bool = False) -> tuple[list[DarkMaster], list[str]]:
    """Bias-subtracted masters of every set; returns them and the reasons of refused sets."""
    masters, refused = [], []
    for key, rows in sets:
        ref = bias.for_set(rows, key.temperature)
        if ref is None:
            reason = (f"dark set {key.tag}: no bias within {bias.tolerance:g} degC of "
                      f"{key.temperature:g} degC; set skipped")
            logger.warning("%s", reason)
            refused.append(reason)
            continue
        subtract, stderr, cards, refs = ref
        cards.update({kw.CALTYPE: ("DARK", "calibration type"),
                      kw.IMAGETYP: ("MASTER DARK", "bias-subtracted dark signal"),
                      kw.TBIN: (key.temperature, "[degC] temperature bin label"),
                      kw.EXPTIME: (key.exptime, "[s] exposure time of the set")})
        path = master_file(folder, key.temperature, key.exptime)
        header, written = make_master(rows, path, combine, product="MASTER_DARK",
                                      subtract=subtract, sub_stderr=stderr, extra=cards,
                                      refs=refs, progress_bar=progress_bar)
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
