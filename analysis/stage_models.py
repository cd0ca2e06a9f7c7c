"""Per-(stage, dose step) calibration measurements of an irradiation campaign.

For each group of an index (``pre``, every ``radiating_D<d>kR``, ``post``) this
builds, with the dark pipeline's own steps and never across groups: the
bias-subtracted dark masters per (temperature bin, exposure), the dark-rate map
of every temperature bin, the 1-D dark model in temperature where the group has
two temperatures or more, the bias level referred to a common temperature and
the read noise.  The damage, annealing and hot-pixel analyses
(:mod:`analysis.damage`) take these as their points.  Masters are written below
``<out>/<stage tag>/`` and are not rebuilt when unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dark_pipeline.model_2d import rate_bias_errors
from dark_pipeline.pipeline import DarkSettings, measure
from dark_pipeline.rates import METHOD_SINGLE, RateMap, load_stack, measure_rates
from dark_pipeline.temperature_model import DarkModel1D, fit_temperature_model
from utils import cli
from utils.errors import UserError
from utils.io.index import DatasetIndex
from utils.models.bias_model import MASK_NOFIT
from utils.models.read_noise import ReadNoise, frame_pairs, read_noise
from utils.stack.grouping import select_stage, stage_groups, stage_tag
from utils.stack.master import read_master
from utils.stack.references import BIAS_FOLDER, select_frames

logger = logging.getLogger(__name__)


#: [degC] largest temperature correction applied to a rate map (beyond it a stage's own
#: 1-D model gives the rate at T_ref).
MAX_CORRECTION = 5.0


@dataclass
class StageMeasurement:
    """What one (stage, dose step) gave.

    Attributes
    ----------
    stage : str
        ``pre``, ``radiating`` or ``post``.
    dose : float
        [krad] dose step (NaN for pre and post: see ``framedose``).
    tag : str
        :func:`utils.stack.grouping.stage_tag` of the group.
    rates : list of RateMap
        Dark rate [adu/s] per temperature bin.
    model : DarkModel1D or None
        1-D dark model when the group has two temperatures or more.
    framedose : float
        [krad] mean accumulated dose of the group's dark frames (their FRAMEDOSE).
    framedose_bias : float
        [krad] mean accumulated dose of its bias frames.
    tanneal : float
        [s] median time since beam-off of its dark frames (NaN when not known).
    bias_temperature : float
        [degC] mean temperature of the bias masters.
    bias_masters : list of (temperature [degC], path)
        The group's bias masters.
    read_noise : ReadNoise or None
        From consecutive bias frame pairs.
    bias_model : utils.models.bias_model.BiasModel or None
        The group's bias(T) model when its bias frames span two temperatures.
    reason : str
        Why something is missing ('' when complete).
    """

    stage: str
    dose: float
    tag: str
    rates: list = field(default_factory=list)
    model: DarkModel1D | None = None
    framedose: float = math.nan
    framedose_bias: float = math.nan
    tanneal: float = math.nan
    bias_temperature: float = math.nan
    bias_masters: list = field(default_factory=list)
    read_noise: ReadNoise | None = None
    bias_model: object = None
    reason: str = ""

    @property
    def temperature(self) -> float:
        """[degC] temperature of the group's rate nearest 20 degC (its only one, usually)."""
        return self.rates[0].tavg if len(self.rates) == 1 else float(np.mean(
            [r.tavg for r in self.rates])) if self.rates else math.nan

    def rate_temperature(self, t_ref: float, max_correction: float = MAX_CORRECTION) -> float:
        """[degC] temperature of the rate :meth:`rate_at` refers to ``t_ref``: the map nearest
        ``t_ref`` (``t_ref`` itself when the group's own model gives the rate there)."""
        if not self.rates:
            return math.nan
        r = min(self.rates, key=lambda m: abs(m.tavg - t_ref))
        if abs(r.tavg - t_ref) > max_correction and self.model is not None \
                and math.isclose(self.model.t_ref, t_ref):
            return float(t_ref)
        return float(r.tavg)

    def rate_at(self, t_ref: float, slope: np.ndarray, slope_err: np.ndarray | float = 0.0,
                max_correction: float = MAX_CORRECTION, bias_drift: tuple = (0.0, 0.0)):
        """Dark rate [adu/s] and its error at ``t_ref`` [degC].

        The rate map nearest in temperature, brought to ``t_ref`` with the per-pixel
        temperature rate ``slope`` [1/degC] (of the pre or post model), whose error
        ``slope_err`` is propagated: the same linear estimator at every step, so that
        differences between steps are not differences between estimators.  Only when
        that map is more than ``max_correction`` degC away, the group's own 1-D model
        at TREF (its A is then an extrapolation-free interpolation; at low signal the
        A of pixels fitted on their own is biased up, as they were selected by noise).

        ``bias_drift`` is ``(value, error)`` [adu]: how much higher the bias was during the
        dark frames than during the bias frames subtracted from them (e.g. the bias shift
        per krad times the dose received between the two, when the beam is on while
        measuring).  A rate measured from one exposure holds it as dark current, so it is
        taken out there (drift / exposure); a slope over exposures has it in its offset.
        """
        if not self.rates:
            raise UserError(f"{self.tag}: no dark rate map ({self.reason or 'no darks'})")
        r = min(self.rates, key=lambda m: abs(m.tavg - t_ref))
        if abs(r.tavg - t_ref) > max_correction and self.model is not None \
                and math.isclose(self.model.t_ref, t_ref):
            return (self.model.fit.amplitude.astype(np.float64),
                    self.model.fit.amplitude_err.astype(np.float64))
        d = t_ref - r.tavg
        factor = np.exp(np.asarray(slope, dtype=np.float64) * d)
        measured = r.rate.astype(np.float64)
        measured_err = r.rate_err.astype(np.float64)
        drift, drift_err = (np.asarray(v, dtype=np.float64) for v in bias_drift)
        if r.method == METHOD_SINGLE and (np.any(drift != 0) or np.any(drift_err != 0)):
            t = float(r.exptimes[-1])
            measured = measured - drift / t
            measured_err = np.sqrt(measured_err ** 2 + (drift_err / t) ** 2)
        rate = measured * factor
        err = np.sqrt((measured_err * factor) ** 2
                      + (rate * d * np.asarray(slope_err, dtype=np.float64)) ** 2)
        return rate, err

    def bias_drift(self, shift_per_krad: float, shift_err: float = 0.0, *,
                   t_ref: float | None = None, bias_slope=0.0) -> tuple:
        """``(value, error)`` [adu] of the bias during the dark frames minus that of the bias
        master subtracted from them.

        From the bias shift per krad [adu/krad] and the dose received between them (their
        mean FRAMEDOSE; nothing when either is unknown) and, for a group without a bias
        model (its darks had the bias master nearest in temperature subtracted, not the
        model at their temperature), ``bias_slope`` [adu/degC, per pixel or one value] times
        the temperature of the rate used at ``t_ref`` minus that of the master.
        """
        value, err = np.float64(0.0), 0.0
        delta = self.framedose - self.framedose_bias
        if math.isfinite(delta) and math.isfinite(shift_per_krad) and delta != 0:
            value = value + shift_per_krad * delta
            err = abs(delta) * shift_err if math.isfinite(shift_err) else 0.0
        if t_ref is not None and self.bias_model is None and self.bias_masters and self.rates:
            temp = self.rate_temperature(t_ref)
            t_bias = min((t for t, _ in self.bias_masters), key=lambda t: abs(t - temp))
            if math.isfinite(temp) and math.isfinite(t_bias):
                value = value + np.asarray(bias_slope, dtype=np.float64) * (temp - t_bias)
        return value, err


def _mean_of(rows: pd.DataFrame, column: str, how=np.nanmean) -> float:
    if column not in rows:
        return math.nan
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    return float(how(values)) if np.isfinite(values).any() else math.nan


def measure_stage(index: DatasetIndex, stage: str, dose: float, out_dir: Path,
                  settings: DarkSettings, *, progress_bar: bool = False) -> StageMeasurement:
    """Masters, rate maps, model, bias and read noise of one (stage, dose step).

    Raises
    ------
    UserError
        No usable dark frame of the group, or no bias to subtract.
    """
    tag = stage_tag(stage, dose)
    dose_opt = None if math.isnan(dose) else float(dose)
    settings = replace(settings, stage=stage, dose=dose_opt)
    folder = Path(out_dir) / tag
    masters, bias, adc_bits = measure(index, folder, settings, [], progress_bar=progress_bar)
    stack = load_stack(masters, settings.combine.memory_limit)  # read by row tiles
    rates: list[RateMap] = measure_rates(stack)
    out = StageMeasurement(stage, dose, tag, rates)
    if len({round(r.tavg, 3) for r in rates}) >= 2:
        # one-exposure rates share the subtracted bias model's error between temperatures
        out.model = fit_temperature_model(rates, settings.t_ref, adc_bits=adc_bits, quiet=True,
                                          shared_errors=rate_bias_errors(stack, rates,
                                                                         bias.model))
    darks = select_frames(index, "DARK", stage, dose=dose_opt)
    try:
        bias_rows = select_frames(index, "BIAS", stage, dose=dose_opt)
    except UserError:
        bias_rows = darks.iloc[0:0]
    out.framedose = _mean_of(darks, "FRAMEDOSE")
    out.framedose_bias = _mean_of(bias_rows, "FRAMEDOSE")
    out.tanneal = _mean_of(darks, "TANNEAL", np.nanmedian)
    out.bias_masters = list(bias.masters)
    out.bias_temperature = float(np.mean([t for t, _ in bias.masters])) if bias.masters \
        else math.nan
    pairs = frame_pairs(bias_rows)
    if pairs:
        out.read_noise = read_noise(pairs).result()
    out.bias_model = bias.model
    return out


def nofit_pixels(model) -> np.ndarray | bool:
    """Pixels a bias model could not fit (``MASK_NOFIT``: fewer than two masters), whose
    line is noise; False when the model carries no mask."""
    mask = getattr(model, "mask", None)
    return False if mask is None else (np.asarray(mask) & MASK_NOFIT) != 0



def bias_level_at(measurement: StageMeasurement, t_ref: float, slope: np.ndarray):
    """Bias [adu] and its error per pixel at ``t_ref`` [degC] for one group.

    With the group's own bias model (two temperatures or more) its prediction; else the
    bias master nearest ``t_ref`` moved to ``t_ref`` with the per-pixel temperature
    coefficient ``slope`` [adu/degC] (of the pre-irradiation bias model).
    """
    model = getattr(measurement, "bias_model", None)
    if model is not None and model.covers(t_ref, 2.0):
        # a pixel the model could not fit (MASK_NOFIT: fewer than two masters) has no level
        nofit = nofit_pixels(model)
        return (np.where(nofit, np.nan, model.predict(t_ref).astype(np.float64)),
                np.where(nofit, np.nan, model.predict_err(t_ref).astype(np.float64)))
    if not measurement.bias_masters:
        raise UserError(f"{measurement.tag}: no bias master")
    t, path = min(measurement.bias_masters, key=lambda m: abs(m[0] - t_ref))
    image = read_master(path)
    level = image.data.astype(np.float64) + np.asarray(slope, np.float64) * (t_ref - t)
    return level, image.stderr.astype(np.float64)


def measure_campaign(index: DatasetIndex, out_dir: Path, settings: DarkSettings, *,
                     progress_bar: bool = False) -> tuple[list[StageMeasurement], dict]:
    """:func:`measure_stage` for every (stage, dose step) with dark frames, in campaign order.

    Returns the measurements and ``{tag: reason}`` of the groups that could not be measured.
    """
    table = index.table
    darks = table[(table["CALTYPE"] == "DARK") & ~table["BADFITS"].astype(bool)]
    groups = stage_groups(darks)
    done, failed = [], {}
    for stage, dose in groups:
        tag = stage_tag(stage, dose)
        if not len(select_stage(darks, stage, None if math.isnan(dose) else dose)):
            continue
        try:
            with cli.log_context(tag):  # its warnings name the group, as the pipelines' do
                done.append(measure_stage(index, stage, dose, out_dir, settings,
                                          progress_bar=progress_bar))
            logger.info("%s: %d rate map(s)%s", tag, len(done[-1].rates),
                        ", 1-D dark model" if done[-1].model is not None else "")
        except UserError as err:
            logger.warning("%s: not measured (%s)", tag, err)
            failed[tag] = str(err)
    return done, failed


__all__ = ["StageMeasurement", "measure_stage", "measure_campaign", "bias_level_at",
           "nofit_pixels", "BIAS_FOLDER"]
