"""Every input of a flat-pipeline run, checked before anything is written.

Bad input ends the run with one line (a :class:`utils.errors.UserError`): no flats, flats
of several shapes, every flat saturated, a missing or mismatched bias or dark model (checked
from their headers), no bias, no dark without ``--allow-bias-only``, a missing frame of the
``--dark-files-json`` list, a missing ``--illumination-model`` or flat model
(``evaluate_model``), an unreadable ``--gain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import ConfigError, UserError
from utils.io.index import DatasetIndex, load_frames
from utils.models.gain import resolve_gain
from utils.stack.master import adc_bits_of
from utils.stack.references import select_frames

from .flat_model import MODEL_FILE, MODEL_FOLDER
from .illumination import read_relative_illumination
from .reduction import FlatGroup, flat_groups, frame_shape
from .settings import MASTER_MODES, FlatSettings


@dataclass
class Inputs:
    """The frames, their (stage, dose) groups, and each group's frame shape and ADC bits."""

    index: DatasetIndex
    groups: list[FlatGroup]
    shapes: dict
    adc_bits: dict


def check_inputs(basepath, out_dir: Path, settings: FlatSettings, *,
                 progress_bar: bool = False, need_dark: bool = True) -> Inputs:
    """Load the frames and check every input a run needs (one-line errors), writing nothing
    but the index cache.

    Raises
    ------
    UserError
        No flats; flats of several shapes; every flat saturated; a missing or mismatched
        bias/dark model; no bias; no dark without ``--allow-bias-only``.
    """
    if not basepath:
        raise ConfigError(f"mode {settings.mode} needs --basepath (converted flat frames or an "
                          "index)")
    cache = out_dir / "index.csv" if Path(basepath).is_dir() else None
    index = load_frames(basepath, cache, progress_bar=progress_bar)
    groups = flat_groups(index, settings.stage, settings.dose)
    shapes, bits = {}, {}
    for group in groups:
        rows = group.rows
        usable = rows[~rows["BADFITS"].astype(bool)]
        if usable.empty:
            raise UserError(f"all {len(rows)} flat frames of {group.label} are flagged BADFITS "
                            f"(e.g. {Path(rows['PATH'].iloc[0]).name}: {rows['REASON'].iloc[0]})")
        shapes[group.label] = frame_shape(usable)
        bits[group.label] = adc_bits_of(usable)
        sat = pd.to_numeric(usable["SATFRACTION"], errors="coerce")
        if sat.notna().all() and (sat > settings.max_saturated_fraction).all() and \
                settings.mode in MASTER_MODES:
            raise UserError(f"all {len(usable)} flat frames of {group.label} are saturated "
                            f"(at least {100 * sat.min():.1f}% of their pixels at full scale, "
                            f"e.g. {Path(usable['PATH'].iloc[0]).name}); take flats at a lower "
                            "level or exposure")
        if not settings.bias_model:
            dose = group.key.dose if group.key.stage == "radiating" else None
            if select_frames(index, "BIAS", group.key.stage, dose=dose, purpose="the bias "
                             "under the flats").empty:
                raise UserError(f"missing bias for the flats of {group.label}: no usable bias "
                                "frames next to them and no --bias-model; give --bias-model "
                                "OUT/bias_model.fits from the bias pipeline")
        if need_dark and not (settings.dark_model or settings.dark_files_json
                              or settings.allow_bias_only):
            dose = group.key.dose if group.key.stage == "radiating" else None
            darks = index.table[(index.table["CALTYPE"] == "DARK")
                                & ~index.table["BADFITS"].astype(bool)]
            darks = darks[darks["STAGE"].astype(str) == group.key.stage]
            if dose is not None:
                darks = darks[np.isclose(pd.to_numeric(darks["DOSE"], errors="coerce"), dose)]
            if darks.empty:
                raise UserError(f"no dark correction for the flats of {group.label}: no dark "
                                "frames next to them and no --dark-model; give --dark-model "
                                "OUT/dark_model_2d/dark_model_2d.fits, --dark-files-json, or "
                                "--allow-bias-only")
    # model files: checked here (headers) so a missing or mismatched one stops the run
    # before any write
    from utils.models.dark_model import DarkSignalModel

    shape = next(iter(shapes.values()))
    if settings.bias_model:
        bias_shape = _bias_model_shape(settings.bias_model)
        if bias_shape != shape:
            raise UserError(f"bias model {settings.bias_model} is {bias_shape[1]}x"
                            f"{bias_shape[0]} but the flat frames are {shape[1]}x{shape[0]}")
    if settings.dark_model:
        _, dark_shape = DarkSignalModel.check(settings.dark_model)
        if dark_shape != shape:
            raise UserError(f"dark model {settings.dark_model} is {dark_shape[1]}x"
                            f"{dark_shape[0]} but the flat frames are {shape[1]}x{shape[0]}")
    if settings.illumination_model:
        read_relative_illumination(settings.illumination_model, shape)
    if settings.dark_files_json:
        from .reduction import darks_from_json

        darks_from_json(settings.dark_files_json)  # every listed frame exists
    if settings.mode == "evaluate_model":
        for group in groups:
            path = model_path(out_dir, settings, group)
            if not path.is_file():
                raise UserError(f"{path}: flat model not found; run the flat pipeline in mode "
                                "full or fit_model first, or give --model-dir")
    if settings.gain is not None:
        resolve_gain(settings.gain)
    return Inputs(index, groups, shapes, bits)


def _bias_model_shape(path: str) -> tuple[int, int]:
    """``(height, width)`` of a bias model file, from its headers (a one-line error when it
    is missing or not a bias model)."""
    from utils.models.bias_model import open_bias_model

    with open_bias_model(path) as hdul:
        head = hdul[0].header
        return int(head.get("NAXIS2", 0)), int(head.get("NAXIS1", 0))


def model_path(out_dir: Path, settings: FlatSettings, group: FlatGroup) -> Path:
    base = Path(settings.model_dir) if settings.model_dir else out_dir
    return base / group.key.stage_dir / MODEL_FOLDER / MODEL_FILE


__all__ = ["Inputs", "check_inputs", "model_path"]
