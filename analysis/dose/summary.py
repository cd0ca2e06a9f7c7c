"""Groups, masters and the per-group summary of the dose analysis (``dose_summary.csv``).

A group is one (stage, calibration type, dose step, exposure time, temperature
bin); nothing is stacked across dose steps or exposures.  Each group gets a
sigma-clipped master (darks and flats minus the bias master of the same stage,
dose step and nearest temperature), and a summary row:

``STAGE, CALTYPE, DOSE, EXPTIME, MEAN, STD, DOSE_RATE, DOSE_RATE_STD`` (the old
columns) then ``TEMP, NFRAMES, FRAMEDOSE, MEAN_ERR, NOISE, SPATIAL_STD, MASTER,
DOSE_RATE_SRC, USED``.  ``MEAN`` [adu] is the master's mean over valid pixels and
``MEAN_ERR`` its error from the per-pixel errors; ``STD`` [adu] the pooled
standard deviation of every input pixel value around that mean (the old
definition: temporal and spatial together); ``NOISE`` the typical per-pixel
temporal noise (``utils.stack.stats.typical_noise``: a Gaussian sigma, whatever the
number of frames); ``DOSE_RATE`` [krad/s] the mean over the group's frames of the
dose rate the radiation log gives during each frame (index ``DOSERATE``), or,
without it, the old rule (dose difference over time difference between
consecutive frames); ``USED`` marks the rows at the analysis temperature that the
dose-response analyses take.

``BIAS_FRAMEDOSE`` [krad] is the mean accumulated dose of the bias frames whose master a
dark or flat row had subtracted, and ``BIAS_DRIFT`` [adu] what the bias moved between them
and the row's frames (:func:`take_out_bias_drift`: the bias shift per krad of the bias rows
times the dose difference), already taken out of that row's ``MEAN`` (its error added to
``MEAN_ERR``): with the beam on while measuring, a step's darks and flats come after its
bias frames and carry more bias than the master subtracted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils import adu
from utils import headers as kw
from utils.io.tokens import number_text
from utils.stack.grouping import cluster, temperature_label, text_column
from utils.stack.master import CombineSettings, make_master, read_master
from utils.stack.stats import typical_noise

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["STAGE", "CALTYPE", "DOSE", "EXPTIME", "MEAN", "STD", "DOSE_RATE",
                   "DOSE_RATE_STD", "TEMP", "NFRAMES", "FRAMEDOSE", "MEAN_ERR", "NOISE",
                   "SPATIAL_STD", "MASTER", "DOSE_RATE_SRC", "USED", "BIAS_FRAMEDOSE",
                   "BIAS_DRIFT"]
IRRADIATING = ("radiating", "during")


def exposure_token(exptime: float) -> str:
    """The old master-name exposure token: ``str(float)`` or ``none`` (bias).

    Examples
    --------
    >>> exposure_token(1.0), exposure_token(float("nan"))
    ('1.0', 'none')
    """
    return "none" if exptime is None or math.isnan(exptime) else str(float(exptime))


def master_name(caltype: str, stage: str, dose: float, exptime: float,
                temperature: float | None = None) -> str:
    """``master_<cal>_<stage>_D{dose:g}kR_E<exp>[_T<t>C].fits`` (old name, plus the
    temperature bin when a group has several).

    Examples
    --------
    >>> master_name("DARK", "pre", 0.0, 1.0)
    'master_dark_pre_D0kR_E1.0.fits'
    """
    name = f"master_{caltype.lower()}_{stage}_D{float(dose) + 0.0:g}kR_E{exposure_token(exptime)}"
    if temperature is not None:
        name += f"_T{number_text(temperature)}C"
    return name + ".fits"


def dose_rates_by_sequence(doses, times) -> np.ndarray:
    """The old per-file dose rate [krad/s]: (dose_i - dose_i-1) / (t_i - t_i-1) in time order.

    The first file has none (NaN); so do files sharing a time stamp with the previous one
    (the old code gave them inf).  Returned in the input order.

    Examples
    --------
    >>> dose_rates_by_sequence([1, 1, 2, 2], [0, 10, 20, 40]).tolist()
    [nan, 0.0, 0.1, 0.0]
    """
    doses = np.asarray(doses, dtype=float)
    times = np.asarray(times, dtype=float)
    order = np.argsort(times, kind="stable")
    d, t = doses[order], times[order]
    rates = np.full(d.size, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.diff(d) / np.diff(t)
    step[~np.isfinite(step)] = np.nan
    rates[1:] = step
    out = np.empty_like(rates)
    out[order] = rates
    return out


def group_rate(rates: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite rates (NaN, NaN when none; std NaN
    for a single one).

    Examples
    --------
    >>> group_rate(np.array([0.1, 0.0, np.nan]))
    (0.05, 0.07071067811865475)
    """
    v = np.asarray(rates, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


@dataclass(frozen=True)
class GroupKey:
    """One group of the dose analysis."""

    stage: str
    caltype: str
    dose: float
    exptime: float
    temperature: float


def group_frames(table: pd.DataFrame, temp_bin: float = 1.0,
                 exp_tolerance: float = 0.01) -> list[tuple[GroupKey, pd.DataFrame]]:
    """Usable frames (not BADFITS, with a dose step) split into groups, in a stable order."""
    rows = table[~table["BADFITS"].astype(bool)].copy()
    rows["STAGE"] = text_column(rows["STAGE"])
    rows = rows[np.isfinite(pd.to_numeric(rows["DOSE"], errors="coerce"))
                & rows["CALTYPE"].isin(["BIAS", "DARK", "FLAT"])]
    out = []
    for (stage, caltype, dose), part in rows.groupby(["STAGE", "CALTYPE", "DOSE"], sort=True):
        tl = cluster(part["TEMP"].to_numpy(float), temp_bin)
        for t_id in sorted(set(tl) - {-1}):
            tpart = part[tl == t_id]
            temp = temperature_label(tpart)
            if caltype == "BIAS":
                out.append((GroupKey(stage, caltype, float(dose), math.nan, temp), tpart))
                continue
            el = cluster(tpart["EXPTIME"].to_numpy(float), exp_tolerance, relative=True)
            for e_id in sorted(set(el) - {-1}):
                epart = tpart[el == e_id]
                exp = float(f"{float(np.median(epart['EXPTIME'])):.6g}")
                out.append((GroupKey(stage, caltype, float(dose), exp, temp), epart))
    return out


def analysis_temperature(groups) -> float:
    """[degC] the temperature of the dose steps (most frames among radiating groups), else
    of all groups: the dose-response analyses use the rows at it."""
    weights: dict[float, int] = {}
    radiating = [(k, r) for k, r in groups if k.stage in IRRADIATING] or groups
    for k, rows in radiating:
        weights[k.temperature] = weights.get(k.temperature, 0) + len(rows)
    return max(weights, key=weights.get) if weights else math.nan


def pooled_std(data: np.ndarray, noise: np.ndarray, count: np.ndarray) -> float:
    """Population std of every input pixel value about the master's mean (old ``STD``):
    ``sqrt(mean(noise^2 (n-1)/n) + var(master))`` over valid pixels."""
    ok = np.isfinite(data) & np.isfinite(noise) & (count > 0)
    if not ok.any():
        return math.nan
    n = count[ok].astype(np.float64)
    temporal = np.mean(noise[ok].astype(np.float64) ** 2 * (n - 1) / n)
    return float(math.sqrt(temporal + np.var(data[ok].astype(np.float64))))


def build_summary(groups, out_dir: Path, combine: CombineSettings, *, temp_bin: float,
                  bias_tolerance: float = 2.0, progress_bar: bool = False) -> pd.DataFrame:
    """Masters of every group (bias first) and the summary table (see module notes)."""
    t_an = analysis_temperature(groups)
    multi_t = {}
    for k, _ in groups:
        key = (k.stage, k.caltype, k.dose, k.exptime if math.isfinite(k.exptime) else -1)
        multi_t.setdefault(key, set()).add(k.temperature)
    bias_masters: dict = {}
    have_rates = all(pd.to_numeric(rows.get("DOSERATE"), errors="coerce").notna().any()
                     for _, rows in groups) if groups else False
    if not have_rates:
        # the old rule over every frame of the analysis in time order
        allrows = pd.concat([rows.assign(_GDOSE=k.dose) for k, rows in groups])
        seq = dose_rates_by_sequence(allrows["_GDOSE"], allrows["TIMESTAMP"])
        seq_rate = dict(zip(allrows["PATH"], seq))
    records = []
    for caltype in ("BIAS", "DARK", "FLAT"):
        for k, rows in groups:
            if k.caltype != caltype:
                continue
            key = (k.stage, k.caltype, k.dose, k.exptime if math.isfinite(k.exptime) else -1)
            tname = k.temperature if len(multi_t[key]) > 1 else None
            path = out_dir / "masters" / master_name(k.caltype, k.stage, k.dose, k.exptime,
                                                     tname)
            subtract = stderr = None
            extra = {kw.STAGE: (k.stage or "none", "irradiation stage"),
                     kw.DOSE: (k.dose, "[krad] dose step"),
                     kw.CALTYPE: (k.caltype, "calibration type"),
                     kw.TBIN: (k.temperature, "[degC] temperature bin label")}
            refs: tuple = ()
            if caltype != "BIAS":
                cands = [(t, p) for (s, d, t), p in bias_masters.items()
                         if s == k.stage and d == k.dose
                         and abs(t - k.temperature) <= bias_tolerance]
                if not cands:
                    logger.warning("%s %s: no bias master of %s %g krad within %g degC; group "
                                   "skipped", caltype.lower(), path.name, k.stage, k.dose,
                                   bias_tolerance)
                    records.append(_row(k, rows, math.nan, math.nan, math.nan, math.nan,
                                        math.nan, "", t_an, temp_bin, "no bias master"))
                    continue
                _, (bpath, bias_dose) = min(cands, key=lambda c: abs(c[0] - k.temperature))
                bias = read_master(bpath)
                subtract, stderr = bias.data, bias.stderr
                extra[kw.BIASFILE] = (bpath.name, "master bias subtracted")
                refs = (str(bpath),)
            if math.isfinite(k.exptime):
                extra[kw.EXPTIME] = (k.exptime, "[s] exposure time of the group")
            make_master(rows, path, combine, product=f"MASTER_{caltype}", subtract=subtract,
                        sub_stderr=stderr, extra=extra, refs=refs, progress_bar=progress_bar)
            if caltype == "BIAS":
                fd = pd.to_numeric(rows["FRAMEDOSE"], errors="coerce")
                bias_masters[(k.stage, k.dose, k.temperature)] = (
                    path, float(fd.mean()) if fd.notna().any() else math.nan)
            image = read_master(path)
            ok = np.isfinite(image.data)
            mean = float(np.mean(image.data[ok])) if ok.any() else math.nan
            mean_err = float(np.sqrt(np.nansum(image.stderr[ok] ** 2)) / ok.sum()) \
                if ok.any() else math.nan
            std = pooled_std(image.data, image.noise, image.count)
            noise = typical_noise(image.noise, image.count)
            spatial = float(np.std(image.data[ok])) if ok.any() else math.nan
            if have_rates:
                rate, rate_std = group_rate(pd.to_numeric(rows["DOSERATE"], errors="coerce")
                                            .to_numpy(float) / 1000.0)
                src = "radiation log (DOSERATE during each frame)"
            else:
                rate, rate_std = group_rate(np.array([seq_rate[p] for p in rows["PATH"]]))
                src = "consecutive frames (no log rate)"
            rec = _row(k, rows, mean, std, rate, rate_std, mean_err,
                       path.relative_to(out_dir).as_posix(), t_an, temp_bin, src)
            rec.update(NOISE=noise, SPATIAL_STD=spatial,
                       BIAS_FRAMEDOSE=bias_dose if caltype != "BIAS" else math.nan)
            records.append(rec)
    table = pd.DataFrame(records, columns=SUMMARY_COLUMNS + ["FLAG"])
    return table


def _row(k: GroupKey, rows, mean, std, rate, rate_std, mean_err, master, t_an, temp_bin,
         src) -> dict:
    fd = pd.to_numeric(rows["FRAMEDOSE"], errors="coerce")
    used = math.isfinite(t_an) and abs(k.temperature - t_an) <= temp_bin / 2 + 1e-9 \
        and math.isfinite(mean)
    return {"STAGE": k.stage, "CALTYPE": k.caltype, "DOSE": k.dose, "EXPTIME": k.exptime,
            "MEAN": mean, "STD": std, "DOSE_RATE": rate, "DOSE_RATE_STD": rate_std,
            "TEMP": k.temperature, "NFRAMES": len(rows),
            "FRAMEDOSE": float(fd.mean()) if fd.notna().any() else math.nan,
            "MEAN_ERR": mean_err, "NOISE": math.nan, "SPATIAL_STD": math.nan, "MASTER": master,
            "DOSE_RATE_SRC": src if math.isfinite(mean) else "",
            "USED": bool(used), "FLAG": "" if math.isfinite(mean) else src,
            "BIAS_FRAMEDOSE": math.nan, "BIAS_DRIFT": 0.0}


def take_out_bias_drift(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Dark and flat rows' ``MEAN`` without the bias their frames gained over the bias frames
    of the master they had subtracted, and a note saying what was done.

    The bias shift per krad is the weighted line of the used pre and irradiating bias rows'
    ``MEAN`` vs ``FRAMEDOSE`` (post rows carry annealed damage); each dark or flat row gets
    ``BIAS_DRIFT = shift (FRAMEDOSE - BIAS_FRAMEDOSE)`` subtracted from ``MEAN`` and
    ``|FRAMEDOSE - BIAS_FRAMEDOSE|`` times the shift's error added to ``MEAN_ERR``.  Nothing
    changes when the shift cannot be fitted or the doses are equal or unknown.
    """
    from utils.models.regression import fit_line

    out = summary.copy()
    bias = out[(out["CALTYPE"] == "BIAS") & out["USED"].astype(bool)
               & out["STAGE"].isin(("pre",) + IRRADIATING)
               & np.isfinite(pd.to_numeric(out["FRAMEDOSE"], errors="coerce"))
               & np.isfinite(out["MEAN"])]
    if bias["FRAMEDOSE"].nunique() < 2:
        return out, "bias drift not taken out: bias rows at fewer than two doses"
    sigma = bias["MEAN_ERR"] if (bias["MEAN_ERR"] > 0).all() else None
    fit = fit_line(bias["FRAMEDOSE"], bias["MEAN"], sigma, what="bias shift for the drift")
    if not fit.ok:
        return out, f"bias drift not taken out: {fit.message}"
    shift, shift_err = fit.value("slope"), fit.error("slope")
    if not math.isfinite(shift_err):
        shift_err = 0.0
    gap = pd.to_numeric(out["FRAMEDOSE"], errors="coerce") - pd.to_numeric(
        out["BIAS_FRAMEDOSE"], errors="coerce")
    which = out["CALTYPE"].isin(("DARK", "FLAT")) & np.isfinite(gap) & (gap != 0)
    drift = (shift * gap).where(which, 0.0)
    out["BIAS_DRIFT"] = drift
    out["MEAN"] = out["MEAN"] - drift
    out.loc[which, "MEAN_ERR"] = np.hypot(out.loc[which, "MEAN_ERR"],
                                          shift_err * gap[which].abs())
    return out, (f"dark and flat means without the bias drift: {shift:.4g} +- {shift_err:.2g} "
                 f"adu/krad times the dose between their frames and their bias frames "
                 f"({int(which.sum())} rows)")


def full_scale(rows: pd.DataFrame) -> tuple[float, int]:
    """The camera's saturation level [stored adu] and ADU scale (16 for 12 bits) of the
    frames, from their ADU convention (never 65536 by assumption)."""
    from utils.stack.master import adc_bits_of

    bits = adc_bits_of(rows)
    return adu.saturation_level(bits), adu.adu_scale(bits)


__all__ = ["SUMMARY_COLUMNS", "GroupKey", "group_frames", "build_summary", "master_name",
           "exposure_token", "dose_rates_by_sequence", "group_rate", "analysis_temperature",
           "pooled_std", "full_scale", "take_out_bias_drift", "IRRADIATING"]
