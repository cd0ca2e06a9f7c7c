"""The bias, dark and flat pipelines run one after the other for each (stage, dose step).

Shared by the orchestrators (``run_calibration.py``, ``run_full_radiation_pipeline.py``),
which differ only in which groups they model and where each product goes.  The order
is stated once, in :func:`run_stage_pipelines`: the bias pipeline of every group, then
the photon-transfer gain from each group's flats (it needs only the bias and flat
pairs, and the dark pipeline's electron units and hot-pixel floor use it), then the
dark pipeline with that group's bias model and gain, then the flat pipeline with the
group's bias and dark models.  A group a pipeline cannot model (frames at one
temperature, no flats, ...) is reported in one warning and skipped: the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from bias_pipeline import pipeline as bias_pipeline
from dark_pipeline import pipeline as dark_pipeline
from flat_pipeline import pipeline as flat_pipeline
from utils import cli
from utils.errors import UserError
from utils.memory import release_free_memory
from utils.stack.grouping import stage_tag

from .masters import MasterSettings

logger = logging.getLogger(__name__)

#: ``place(kind, stage, dose) -> folder`` of one pipeline's products (kind: bias, dark, flat).
Place = Callable[[str, str, float], Path]


@dataclass
class StagePipelines:
    """Results of the pipelines, in run order, and the groups each one skipped."""

    bias: list = field(default_factory=list)
    dark: list = field(default_factory=list)
    flat: list = field(default_factory=list)
    gains: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)


def groups_with(table: pd.DataFrame, caltype: str, groups: list[tuple[str, float]]
                ) -> list[tuple[str, float]]:
    """The ``(stage, dose)`` groups among ``groups`` that hold ``caltype`` frames (a campaign
    without stages, ``("", nan)``, is always kept: the pipeline says what it lacks)."""
    stage = table["STAGE"].astype(object).fillna("").astype(str)
    dose = pd.to_numeric(table["DOSE"], errors="coerce")
    out = []
    for s, d in groups:
        if not s:
            out.append((s, d))
            continue
        sel = (table["CALTYPE"] == caltype) & (stage == s)
        if s == "radiating" and math.isfinite(d):
            sel &= (dose - d).abs() < 1e-6
        if sel.any():
            out.append((s, d))
    return out


def _if_file(path: Path) -> str:
    return str(path) if path.is_file() else ""


def _dose(stage: str, dose: float) -> float | None:
    return dose if stage == "radiating" and math.isfinite(dose) else None


def _label(stage: str, dose: float) -> str:
    return stage_tag(stage, dose) if stage else ""


def _attempt(result: StagePipelines, name: str, stage: str, dose: float, make):
    try:
        with cli.log_context(_label(stage, dose)):  # warnings.log names the group
            return make()
    except UserError as err:
        label = _label(stage, dose)
        logger.warning("%s pipeline%s skipped: %s", name, f" ({label})" if label else "", err)
        result.skipped.setdefault(name, {})[label] = str(err)
        return None
    finally:
        # the next pipeline starts from what this one holds, not from what it freed
        release_free_memory()


def run_stage_pipelines(index_path: Path, table: pd.DataFrame, groups: list[tuple[str, float]],
                        place: Place, *, gain: float | str | None = None,
                        masters_from: Path | None = None,
                        masters: MasterSettings | None = None,
                        progress_bar: bool = False) -> StagePipelines:
    """Bias, photon-transfer gain, dark and flat pipelines for every group, in that order.

    Parameters
    ----------
    index_path : pathlib.Path
        The campaign's index CSV.
    table : pandas.DataFrame
        Its rows (which groups hold which frame types).
    groups : list of (str, float)
        ``(stage, dose step)`` to model; ``("", nan)`` for a campaign without stages.
    place : callable
        ``place(kind, stage, dose)`` -> output folder of that pipeline and group.
    gain : float or str, optional
        Gain [e-/ADC count] or a ``gain.json`` for the dark pipeline; default: the gain
        measured from the group's own flats, when they allow it.
    masters_from : pathlib.Path, optional
        Folder of masters already built by index processing: the bias and dark pipelines take
        a master of the same INHASH from there instead of stacking its frames again.
    masters : MasterSettings, optional
        How the orchestrator's index processing grouped and combined its masters (its
        ``--sigma``, ``--method``, ``--temp-bin``...): every pipeline groups and combines the
        same way, so that its masters are the ones index processing built (and found there)
        and a model never rests on masters combined otherwise.  Default: the defaults.
    progress_bar : bool
        Show progress bars.

    Returns
    -------
    StagePipelines
        The results, the measured gains and the skipped groups with their reasons.
    """
    result = StagePipelines()
    reuse = str(masters_from) if masters_from is not None else ""
    m = masters or MasterSettings()
    grouping = dict(temp_bin=m.temp_bin, combine=m.combine)
    tolerances = dict(exp_tolerance=m.exp_tolerance, bias_temp_tolerance=m.bias_temp_tolerance)
    for stage, dose in groups_with(table, "BIAS", groups):
        run = _attempt(result, "bias", stage, dose, lambda: bias_pipeline.run(
            index_path, place("bias", stage, dose),
            bias_pipeline.BiasSettings(stage=stage, dose=_dose(stage, dose),
                                       masters_from=reuse, **grouping),
            progress_bar=progress_bar))
        if run is not None:
            logger.info("%s", run.summary_line())
            if getattr(run, "model", None) is not None:
                # the later steps read the model from its file: its maps (~130 MB at 2048^2)
                # are not carried through the dark and flat pipelines
                run = dataclasses.replace(run, model=None)
            result.bias.append(run)
    for stage, dose in groups_with(table, "FLAT", groups):
        settings = flat_pipeline.FlatSettings(
            stage=stage, dose=_dose(stage, dose),
            bias_model=_if_file(place("bias", stage, dose) / "bias_model.fits"),
            dark_temp_tolerance=m.dark_temp_tolerance, **grouping, **tolerances)
        gains = _attempt(result, "photon-transfer gain", stage, dose,
                         lambda: flat_pipeline.measure_gain_only(
                             index_path, place("flat", stage, dose), settings,
                             progress_bar=progress_bar))
        for g in gains or []:
            result.gains[_label(stage, dose)] = g
            logger.info("measured gain%s: %.4f +- %.4f e-/ADC count",
                        f" ({_label(stage, dose)})" if stage else "", g.gain, g.gain_err)
    for stage, dose in groups_with(table, "DARK", groups):
        measured = place("flat", stage, dose) / "gain.json"
        settings = dark_pipeline.DarkSettings(
            stage=stage, dose=_dose(stage, dose),
            bias_model=_if_file(place("bias", stage, dose) / "bias_model.fits"),
            gain=gain if gain is not None else (str(measured) if measured.is_file() else None),
            masters_from=reuse, **grouping, **tolerances)
        run = _attempt(result, "dark", stage, dose, lambda: dark_pipeline.run(
            index_path, place("dark", stage, dose), settings, progress_bar=progress_bar))
        if run is not None:
            logger.info("%s", run.summary_line())
            result.dark.append(run)
    for stage, dose in groups_with(table, "FLAT", groups):
        dark_2d = place("dark", stage, dose) / "dark_model_2d" / "dark_model_2d.fits"
        settings = flat_pipeline.FlatSettings(
            stage=stage, dose=_dose(stage, dose),
            bias_model=_if_file(place("bias", stage, dose) / "bias_model.fits"),
            dark_model=_if_file(dark_2d), dark_temp_tolerance=m.dark_temp_tolerance,
            **grouping, **tolerances)
        run = _attempt(result, "flat", stage, dose, lambda: flat_pipeline.run(
            index_path, place("flat", stage, dose), settings, progress_bar=progress_bar))
        if run is not None:
            logger.info("%s", run.summary_line())
            result.flat.append(run)
    return result


__all__ = ["StagePipelines", "run_stage_pipelines", "groups_with", "Place"]
