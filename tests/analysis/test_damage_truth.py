"""Damage analysis numbers against a known truth on small seeded synthetic inputs (no files):
the checks of the irradiation truth audit (notes/truthrad.md)."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd

from analysis.damage import step_currents
from analysis.stage_models import StageMeasurement
from dark_pipeline.rates import METHOD_SINGLE, RateMap


def _single_exposure_group(rng, stage, dose, framedose, framedose_bias, true_rate, drift,
                           noise, exposure=1.0):
    """A group whose one-exposure rate map holds ``drift`` [adu] of residual bias."""
    shape = true_rate.shape
    measured = true_rate + drift / exposure + noise * rng.standard_normal(shape)
    rate = RateMap(20.0, 20.0, measured.astype(np.float32),
                   np.full(shape, noise, np.float32), np.zeros(shape, np.float32),
                   np.zeros(shape, np.float32), np.full(shape, np.nan, np.float32),
                   (exposure,), METHOD_SINGLE)
    # the temperature rate (of a pre model) plays no part at T_ref: zero
    model = SimpleNamespace(fit=SimpleNamespace(rate=np.zeros(shape, np.float32),
                                                rate_err=np.zeros(shape, np.float32)))
    return StageMeasurement(stage, dose, f"{stage}_{dose:g}", [rate], model=model,
                            framedose=framedose, framedose_bias=framedose_bias)


def test_step_current_takes_out_the_bias_the_darks_gained_under_the_beam():
    """With the beam on while measuring, a step's dark frames come after its bias frames and
    carry more dose: the bias in them is alpha (D_dark - D_bias) higher than the bias master
    subtracted, and a one-exposure rate counted it as dark current.  On the simulator's
    default irradiation campaign (alpha 3.2 adu/krad, 1 s darks, 3.3-6.7 krad between bias and
    darks) that was +10.7 to +21 adu/s per step: damage slope 3.01 +- 0.26 adu/s/krad for a
    true 2.09.  Now the analysis subtracts alpha dD / t with the measured alpha and its error."""
    rng = np.random.default_rng(7)
    truth = np.full((40, 50), 40.0)
    alpha, alpha_err = 3.2, 0.02           # [adu/krad]
    framedose, framedose_bias = 30.0, 23.33
    group = _single_exposure_group(rng, "radiating", 40.0, framedose, framedose_bias, truth,
                                   alpha * (framedose - framedose_bias), noise=20.0)
    (raw,) = step_currents([group], 20.0, None)
    (step,) = step_currents([group], 20.0, None, bias_shift=(alpha, alpha_err))
    n = truth.size
    mean_err = float(np.sqrt(np.sum(step.error ** 2)) / n)
    # error of the mean: 20/sqrt(2000) = 0.45 from the noise, 0.13 from alpha: 5 sigma
    assert abs(step.current.mean() - 40.0) < 5 * mean_err, (step.current.mean(), mean_err)
    assert raw.current.mean() - 40.0 > 15.0          # the 21.3 adu/s it held before
    assert mean_err > 20.0 / math.sqrt(n)             # alpha's error is propagated
    # a group whose bias and darks carry the same dose (pre, post, beam off) is unchanged
    still = _single_exposure_group(rng, "pre", 0.0, 0.0, 0.0, truth, 0.0, noise=20.0)
    (a,) = step_currents([still], 20.0, None)
    (b,) = step_currents([still], 20.0, None, bias_shift=(alpha, alpha_err))
    np.testing.assert_array_equal(a.current, b.current)


def _damage_steps(rng, base, k, doses, noise):
    """StepCurrents [e-/s] of pre, radiating steps at ``doses`` and nothing else."""
    from analysis.damage import StepCurrent

    steps = []
    for i, d in enumerate([0.0] + list(doses)):
        stage, tag = ("pre", "pre") if i == 0 else ("radiating", f"radiating_D{d:g}kR")
        true = base * (1.0 + k * d)
        steps.append(StepCurrent(stage, tag, d if i else math.nan, d, math.nan, 20.0,
                                 true + noise * rng.standard_normal(base.shape),
                                 np.full(base.shape, noise), "e-/s"))
    return steps


def test_normal_pixels_are_not_cut_from_the_population_by_the_fixed_threshold():
    """The damage slope's normal pixels were those below the fixed 5 e-/s threshold at every
    step whenever a gain was known.  With the simulator's default sensor (median 5 e-/s at
    20 degC) tripled by 40 krad, 1 pixel of 3072 was left: damage slope 0.36 +- 0.48
    e-/s/krad (truth 0.26), recovered fraction 5.5 +- 42, both reported 'ok'.  Now the
    normal pixels are those no pre-relative outlier at any step (the rule without a gain)."""
    from analysis.damage import damage_slope, find_hot_pixels, normal_masks, normal_pixels

    rng = np.random.default_rng(11)
    base = 5.0 * np.exp(0.3 * rng.standard_normal((48, 64)))
    k = 0.05
    steps = _damage_steps(rng, base, k, (5.0, 15.0, 30.0), noise=0.3)
    hot = find_hot_pixels(steps, 5.0, 5.0)
    masks, rule = normal_masks(hot)
    normal = normal_pixels(steps, masks_as_hot(hot, masks))
    assert normal.mean() > 0.95 and "relative" in rule
    result = damage_slope(steps, normal)
    truth = k * float(base[normal].mean())
    slope, err = result.fit.value("slope"), result.fit.error("slope")
    assert abs(slope - truth) < 4 * err, (slope, truth, err)
    assert err < 0.02 * truth
    # the old rule: the fixed masks leave a handful of low pixels
    assert normal_pixels(steps, masks_as_hot(hot, hot.fixed)).mean() < 0.05


def masks_as_hot(hot, masks):
    """``hot`` with ``masks`` as its fixed and relative masks (as damage_analysis passes)."""
    from analysis.damage import HotPixels

    return HotPixels(masks, masks, hot.threshold_fixed, hot.threshold_relative, hot.table)


def test_recovered_fraction_refers_the_irradiated_current_to_the_final_dose():
    """The recovered fraction (I_last - I_post) / (I_last - I_pre) took I_last from the last
    step's darks at their mean dose, while the post darks carry the final dose: with the beam
    on while measuring (a ramp from 20 to 40 krad) the last step's darks received 30 krad, so
    f compared damage at two doses (true annealing 0.30: 2/30 = 0.07 expected, 0.38 +- 0.006
    measured on the simulated campaign with the bias drift added).  Now I_last is the last
    step's current brought to the post's dose along the damage line, its error propagated
    through the slope: over 300 seeded campaigns the pulls are N(0, 1)."""
    from analysis.damage import StepCurrent, annealing

    a, k = 0.30, 0.05
    pulls, per_pixel = [], []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        base = 5.0 * np.exp(0.3 * rng.standard_normal((6, 8)))
        steps = _damage_steps(rng, base, k, (5.0, 15.0, 30.0), noise=0.3)
        post = base * (1.0 + k * 40.0 * (1 - a))
        steps.append(StepCurrent("post", "post", math.nan, 40.0, 3600.0, 20.0,
                                 post + 0.3 * rng.standard_normal(base.shape),
                                 np.full(base.shape, 0.3), "e-/s"))
        result = annealing(steps, np.ones(base.shape, bool))
        assert result.status == "ok" and result.end_dose == 40.0
        pulls.append((result.fraction - a) / result.fraction_err)
        ok = np.isfinite(result.fraction_map)
        per_pixel.append(((result.fraction_map - a) / result.fraction_map_err)[ok])
    pulls, per_pixel = np.array(pulls), np.concatenate(per_pixel)
    # 300 pulls: mean within 4 / sqrt(300) = 0.23, std within 4 standard errors (0.041 each)
    assert abs(pulls.mean()) < 0.23, pulls.mean()
    assert abs(pulls.std() - 1.0) < 0.17, pulls.std()
    # per pixel (f = ratio of noisy numbers: use robust statistics of 14400 pulls)
    assert abs(np.median(per_pixel)) < 0.1
    assert abs(1.4826 * np.median(np.abs(per_pixel - np.median(per_pixel))) - 1.0) < 0.1


def test_recovered_fraction_unchanged_when_the_last_step_carries_the_final_dose():
    """Beam off while measuring: the last step's darks carry the final dose, as the post's;
    the recovered fraction is the plain ratio of the three means (as before)."""
    from analysis.damage import StepCurrent, annealing, recovered_fraction, step_means

    rng = np.random.default_rng(5)
    base = 5.0 * np.exp(0.3 * rng.standard_normal((6, 8)))
    steps = _damage_steps(rng, base, 0.05, (10.0, 20.0, 40.0), noise=0.3)
    steps.append(StepCurrent("post", "post", math.nan, 40.0, 3600.0, 20.0, base * 2.4,
                             np.full(base.shape, 0.3), "e-/s"))
    normal = np.ones(base.shape, bool)
    result = annealing(steps, normal)
    table = step_means([steps[0], steps[3], steps[4]], normal)
    m, e = table["DC_MEAN"].to_numpy(), table["DC_MEAN_ERR"].to_numpy()
    f, f_err = recovered_fraction(m[0], m[1], m[2], e[0], e[1], e[2])
    assert result.fraction == float(f) and result.fraction_err == float(f_err)


def test_step_temperature_is_that_of_the_rate_measured():
    """damage_summary.csv TEMP and the dark-current maps' TMEAS ('temperature of the measured
    rate') gave the mean of a stage's temperature bins: 15.0 degC for pre darks at 0, 10, 20
    and 30 degC, while the current at 20 degC came from the 20.2 degC map.  Now the
    temperature of the map used."""
    rng = np.random.default_rng(2)
    truth = np.full((4, 5), 40.0)
    group = _single_exposure_group(rng, "pre", 0.0, 0.0, 0.0, truth, 0.0, noise=1.0)
    maps = []
    for tavg in (0.1, 9.8, 20.2, 30.0):
        maps.append(RateMap(round(tavg), tavg, truth.astype(np.float32),
                            np.ones(truth.shape, np.float32), truth * 0, truth * 0, truth * 0,
                            (1.0,), METHOD_SINGLE))
    group.rates = maps
    (step,) = step_currents([group], 20.0, None)
    assert step.temperature == 20.2


def test_step_current_takes_out_the_bias_temperature_difference_without_a_bias_model():
    """A dose step has its bias at one temperature: the dark pipeline subtracted the bias
    master nearest in temperature as it is (no model to evaluate at the darks' temperature),
    and a one-exposure rate held b (T_dark - T_bias): with b = 8 adu/degC the 10 krad step of
    the default campaign (bias 20.17, darks 19.97 degC) was 1.3 +- 0.4 adu/s low (pulls of
    the step means -3.1, -3.3 once the dose drift was taken out).  Now b of the pre bias
    model (per pixel) times that difference is taken out too."""
    rng = np.random.default_rng(4)
    truth = np.full((40, 50), 50.0)
    b = np.full(truth.shape, 8.0)
    t_dark, t_bias = 19.97, 20.17
    group = _single_exposure_group(rng, "radiating", 10.0, 5.0, 0.0, truth,
                                   3.2 * 5.0 + 8.0 * (t_dark - t_bias), noise=5.0)
    group.rates = [replace(group.rates[0], temperature=20.0, tavg=t_dark)]
    group.bias_masters = [(t_bias, "master_bias_T20.2C.fits")]
    (step,) = step_currents([group], 20.0, None, bias_shift=(3.2, 0.0), bias_slope=b)
    mean_err = float(np.sqrt(np.sum(step.error ** 2)) / truth.size)
    # the current is at 20 degC from 19.97 with a zero temperature rate: the truth itself
    assert abs(step.current.mean() - 50.0) < 5 * mean_err, (step.current.mean(), mean_err)
    (old,) = step_currents([group], 20.0, None, bias_shift=(3.2, 0.0))
    assert old.current.mean() - 50.0 < -1.2


def test_dose_summary_means_without_the_bias_drift():
    """dose_summary.csv: a dark or flat master is its frames minus the bias master of its
    step; with the beam on while measuring the darks (and flats) come after the bias frames
    and held alpha (D_dark - D_bias) more bias: the dose analysis's dark MEAN vs FRAMEDOSE
    slope came out 3.63 +- 0.39 adu/krad (chi2/dof 143) on a default campaign whose true
    mean dark signal rises by about 2.5.  Now the bias rows' shift per krad times the dose
    difference is taken out of MEAN (BIAS_DRIFT, BIAS_FRAMEDOSE) with its error."""
    from analysis.dose.models import dose_model
    from analysis.dose.summary import take_out_bias_drift

    rng = np.random.default_rng(9)
    alpha, k, rows = 3.2, 2.0, []
    for stage, d_bias, d_dark in (("pre", 0.0, 0.0), ("radiating", 0.0, 5.0),
                                  ("radiating", 10.0, 15.0), ("radiating", 20.0, 30.0)):
        rows.append({"STAGE": stage, "CALTYPE": "BIAS", "FRAMEDOSE": d_bias, "USED": True,
                     "MEAN": 3355.0 + alpha * d_bias + 0.2 * rng.standard_normal(),
                     "MEAN_ERR": 0.2, "BIAS_FRAMEDOSE": np.nan, "BIAS_DRIFT": 0.0})
        rows.append({"STAGE": stage, "CALTYPE": "DARK", "FRAMEDOSE": d_dark, "USED": True,
                     "MEAN": 40.0 + k * d_dark + alpha * (d_dark - d_bias)
                     + 0.4 * rng.standard_normal(), "MEAN_ERR": 0.4, "BIAS_FRAMEDOSE": d_bias,
                     "BIAS_DRIFT": 0.0})
    table, note = take_out_bias_drift(pd.DataFrame(rows))
    dark = table[(table["CALTYPE"] == "DARK") & (table["STAGE"] == "radiating")]
    fit = dose_model(dark, "dark")
    assert abs(fit.value("slope") - k) < 4 * fit.error("slope"), (fit.value("slope"), note)
    assert np.allclose(dark["BIAS_DRIFT"], alpha * np.array([5.0, 5.0, 10.0]), rtol=0.05)
    assert (table.loc[table["CALTYPE"] == "BIAS", "BIAS_DRIFT"] == 0).all()


def test_bias_level_leaves_out_pixels_the_bias_model_could_not_fit():
    """A pixel the pre bias model could not fit (MASK_NOFIT: one valid master of four) has a
    line of noise (b = -387071 adu/degC, SIGMA_A 1.6e9 in a seeded default campaign): the
    damage analysis averaged it into the pre bias level (839.7 +- 5.2e9 adu for a true
    3361.4) and moved the dose steps' bias masters to T_ref with it (-8.9, +5.5, +2.9 adu:
    pulls -25, +15, +8; bias shift 3.79 +- 0.34 for 3.2).  Now such pixels have no level
    and no temperature coefficient."""
    from analysis.damage_analysis import _bias_slope_map
    from analysis.stage_models import bias_level_at
    from utils.models.bias_model import MASK_NOFIT

    shape = (4, 5)
    a = np.full(shape, 3200.0)
    b = np.full(shape, 8.0)
    a[1, 2], b[1, 2] = -539.0, -387071.0
    mask = np.zeros(shape, np.uint8)
    mask[1, 2] = MASK_NOFIT
    model = SimpleNamespace(a=a, b=b, mask=mask, t_ref=0.0,
                            covers=lambda t, margin=0.0: True,
                            predict=lambda t: (a + b * t).astype(np.float32),
                            predict_err=lambda t: np.where(mask > 0, 1.6e9, 0.5))
    group = StageMeasurement("pre", math.nan, "pre", bias_model=model)
    level, err = bias_level_at(group, 20.0, b)
    ok = np.isfinite(level) & np.isfinite(err)
    assert ok.sum() == 19 and float(level[ok].mean()) == 3360.0
    slope, _ = _bias_slope_map([group])
    assert np.isnan(slope[1, 2]) and np.nanmax(slope) == 8.0
