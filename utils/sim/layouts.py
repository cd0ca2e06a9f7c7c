"""Simulated campaigns on disk: the three layouts the toolkit reads, with their ground truth.

Writes one of three on-disk layouts -- ``standard`` (bias, dark and flat test
sections of raw frames), ``irradiation`` (pre-irradiation, dose steps and
post-irradiation stages of raw frames, plus the campaign radiation log) or
``dosedirs`` (already-converted FITS frames in ``<dose>kRads/fits`` folders) --
and, next to it, ``truth/truth.json`` (every physical parameter and one record
per frame) and ``truth/truth.npz`` (the per-pixel maps the frames were drawn
from), so tests can check recovery.

Frames are drawn one at a time from a single seeded generator: the same seed
gives byte-identical files, and memory stays proportional to one frame, so the
same code writes 40 x 24 test campaigns and full 2048 x 2048 ones.  The
physics is in :mod:`utils.sim.physics`, the truth records in
:mod:`utils.sim.campaign`, the command line in :mod:`utils.simulate`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np
from astropy.io import fits

from .. import adu
from .. import headers as kw
from ..errors import ConfigError, UserError
from ..io.fitsio import atomic_path, write_hdul, write_text
from ..progress import progress
from . import flats
from .campaign import TRUTH_DIR, TRUTH_JSON, TRUTH_NPZ, AttemptTruth, Campaign, FrameTruth
from .physics import (
    _KIND_NAMES,
    _MAP_UNITS,
    SAMPLE_BITS,
    Physics,
    Sensor,
    damage_maps,
    make_sensor,
    render_frame,
    truth_maps,
)

logger = logging.getLogger(__name__)

# --- acquisition conventions (not physics: how the test bench names and times things) ----------
#: First frame of every campaign: 2025-06-01T08:00:00Z, as a Unix time [s].
CAMPAIGN_START = _dt.datetime(2025, 6, 1, 8, 0, 0, tzinfo=_dt.timezone.utc).timestamp()
#: Exposure of a bias frame [s] (the camera's shortest, 12 us).
BIAS_EXPOSURE = 12e-6
#: Readout and transfer time added to the exposure between two frames [s].
FRAME_OVERHEAD = 1.0
#: Upper bound of the random extra delay between two frames [s].
FRAME_JITTER = 0.05
#: Pause between two attempts of the same set point [s].
ATTEMPT_GAP = 120.0
#: Pause when the set point, frame kind, stage or dose step changes (settling) [s].
SETTLE_GAP = 1200.0
#: Camera gain setting written in the logs (``ExpGain``) and the configuration.
EXP_GAIN = 100
#: Sensor model name written in the configuration files.
SENSOR_MODEL = "SIM-CMOS-12"
#: Bytes missing from the truncated-file defect.
TRUNCATE_BYTES = 300
#: Fraction of the frame zeroed by the dead-region defect.
DEAD_FRACTION = 0.05

TEMPERATURE_LOG = "temperatureLog.csv"
RADIATION_LOG = "radiationLog.csv"
CAMPAIGN_RADIATION_LOG = "radiationLogCompleto.csv"
DOSEDIR_LOG = "radiationLogDef.csv"
_LOG_COLUMNS = ("FrameNum", "TimeStamp", "ExtTemperature", "ExpTime", "RealExpTime", "ExpGain",
                "Temperature", "InitialTemp", "DeltaTemperature", "PowerCons")
_IRRADIATION_SECTIONS = {"bias": "Bias", "dark": "Darks", "flat": "Flats"}
_STAGE_DIRS = {"pre": "Preirradiation", "radiating": "Irradiation", "post": "Postirradiation"}


# ================================================================================================
# Planning (pure): which folders, which frames, when, at what temperature and dose
# ================================================================================================

@dataclass
class _Attempt:
    """One folder of frames to write, before scheduling."""

    rel_dir: PurePosixPath
    kind: str
    setpoint: float
    exposure: float
    frames: int
    number: int = 0                      # attempt number in raw file names (``At<n>``)
    stage: str | None = None
    step: str | None = None
    nominal_dose: float = 0.0            # dose reached at the end of its step [krad]
    log_name: str | None = TEMPERATURE_LOG
    delimiter: str = ","
    temp_column: str = "Temperature"
    config_index: int | None = 0         # style of the configuration file, None for none
    fits: bool = False                   # dose-dir FITS frames instead of raw
    frame_offset: int = 0                # first FrameNum (FITS folders number frames continuously)

    @property
    def section(self) -> tuple:
        """Changing this costs a settling pause."""
        return (self.stage, self.step, self.kind, self.setpoint)


@dataclass
class _Frame:
    """A scheduled frame: its truth and the log-only values."""

    truth: FrameTruth
    ext_temperature: float
    initial_temperature: float
    power: float
    radiation_level: float = 0.0


_CONFIG_STYLES = (  # (file name, line format, lower-case keys)
    ("configFile.txt", "{key}: {value}", False),
    ("configFile.txt", "{key}={value}", True),
    ("configFile.txt", "{key} = {value}", False),
    ("config.txt", "{key}: {value}", False),
)


def _g(value: float) -> str:
    """Folder and file-name token of a number (``:g``, no negative zero)."""
    return f"{float(value) + 0.0:g}"


def _check_levels(name: str, values: Sequence[float], *,
                  positive: bool = False) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values:
        raise ConfigError(f"{name} must list at least one value")
    if not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
        raise ConfigError(f"{name} must be finite{' and > 0' if positive else ''}, got {values}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} has duplicate values: {values}")
    return values


def _check_size(width: int, height: int, frames: int) -> None:
    if int(width) < 2 or int(height) < 2:
        raise ConfigError(f"frames must be at least 2x2 pixels, got {width}x{height}")
    if int(frames) < 1:
        raise ConfigError(f"frames per attempt must be >= 1, got {frames}")


def _plan_standard(frames, attempts, bias_temperatures, dark_temperatures, dark_exposures,
                   flat_temperatures, flat_exposures) -> list[_Attempt]:
    """Folders of the standard campaign, with every naming variant the converter must handle."""
    plan: list[_Attempt] = []
    for t in bias_temperatures:
        for n in range(attempts):
            plan.append(_Attempt(PurePosixPath("TestSection1", f"T{_g(t)}", f"attempt{n}"),
                                 "bias", t, BIAS_EXPOSURE, frames, n))
    dark_groups = [(t, e) for t in dark_temperatures for e in dark_exposures]
    for g, (t, e) in enumerate(dark_groups):
        for n in range(attempts):
            plan.append(_Attempt(_dark_dir(g, len(dark_groups), n, t, e), "dark", t, e, frames, n))
    flat_groups = [(t, e) for t in flat_temperatures for e in flat_exposures]
    for g, (t, e) in enumerate(flat_groups):
        for n in range(attempts):
            plan.append(_Attempt(_flat_dir(g, len(flat_groups), n, t, e), "flat", t, e, frames, n))
    for i, att in enumerate(plan):
        att.config_index = i % len(_CONFIG_STYLES)
    # one ';'-delimited log and one log naming the sensor temperature CCDTemp
    bias = [a for a in plan if a.kind == "bias"]
    darks = [a for a in plan if a.kind == "dark"]
    bias[min(1, len(bias) - 1)].delimiter = ";"
    darks[min(2, len(darks) - 1)].temp_column = "CCDTemp"
    return plan


def _dark_dir(g: int, groups: int, n: int, t: float, e: float) -> PurePosixPath:
    """Dark folder of group ``g``, attempt ``n``: nested, swapped, plain or attempt-less."""
    T, E = f"T{_g(t)}", f"{_g(e)}s"
    if g == 0:
        decoy = f"T{_g(30.0 if t == 20.0 else 20.0)}"  # outer T level is not the set point
        return PurePosixPath("TestSection2", "20Frames", decoy, T, E, f"attempt{n}")
    if g == groups - 1:
        if n == 0:
            return PurePosixPath("TestSection2", "20Frames", T, E)  # no attempt folder
        return PurePosixPath("TestSection2", "ContinuousFrames", E, T, f"attempt{n}")
    if g % 2:
        return PurePosixPath("TestSection2", "ContinuousFrames", E, T, f"attempt{n}")
    return PurePosixPath("TestSection2", "20Frames", T, E, f"attempt{n}")


def _flat_dir(g: int, groups: int, n: int, t: float, e: float) -> PurePosixPath:
    """Flat folder of group ``g`` attempt ``n``: plain, attempt-less and continuous variants."""
    T, E = f"T{_g(t)}", f"{_g(e)}s"
    if g == groups - 1 and groups > 1:
        if n == 0:
            return PurePosixPath("TestSection3", "20Frames", T, E)  # no attempt folder
        return PurePosixPath("TestSection3", "ContinuousFrames", T, E, f"attempt{n}")
    return PurePosixPath("TestSection3", "20Frames", T, E, f"attempt{n}")


def _plan_irradiation(frames, doses, temperature, dark_exposures, flat_exposures,
                      model_temperatures=None) -> list[_Attempt]:
    """Folders of the irradiation campaign: pre, one stage per dose step, post.

    With ``model_temperatures`` the pre and post stages take bias and darks at each of
    those set points (enough for a dark-current model in temperature); flats and the dose
    steps stay at ``temperature``.
    """
    stages = [("pre", PurePosixPath(_STAGE_DIRS["pre"]), None, 0.0)]
    stages += [("radiating", PurePosixPath(_STAGE_DIRS["radiating"], f"{_g(d)}kRads"),
                f"{_g(d)}kRads", d) for d in doses]
    stages.append(("post", PurePosixPath(_STAGE_DIRS["post"]), None, doses[-1]))
    plan: list[_Attempt] = []
    for stage, base, step, nominal in stages:
        setpoints = (tuple(model_temperatures) if model_temperatures and stage != "radiating"
                     else (temperature,))
        groups = []
        for t in setpoints:
            T = f"T{_g(t)}"
            groups.append(("bias", t, BIAS_EXPOSURE,
                           base / _IRRADIATION_SECTIONS["bias"] / T / "attempt0"))
            groups += [("dark", t, e, base / _IRRADIATION_SECTIONS["dark"] / T / f"{_g(e)}s"
                        / "attempt0") for e in dark_exposures]
        T = f"T{_g(temperature)}"
        groups += [("flat", temperature, e, base / _IRRADIATION_SECTIONS["flat"] / T / f"{_g(e)}s"
                    / "attempt0") for e in flat_exposures]
        for kind, setpoint, exposure, rel in groups:
            # while the beam is on, darks and flats carry the per-attempt radiation log
            log = RADIATION_LOG if stage == "radiating" and kind != "bias" else TEMPERATURE_LOG
            plan.append(_Attempt(rel, kind, setpoint, exposure, frames, 0, stage, step,
                                 nominal, log_name=log))
    for i, att in enumerate(plan):
        att.config_index = i % len(_CONFIG_STYLES)
    return plan


def _plan_dosedirs(frames, doses, temperature, dark_exposure) -> list[_Attempt]:
    """Groups of the dose-directory layout: bias then darks in each ``<dose>kRads/fits``."""
    plan: list[_Attempt] = []
    for d in doses:
        rel = PurePosixPath(f"{_g(d)}kRads", "fits")
        for i, (kind, exposure) in enumerate((("bias", BIAS_EXPOSURE), ("dark", dark_exposure))):
            plan.append(_Attempt(rel, kind, temperature, exposure, frames, 0, "radiating",
                                 f"{_g(d)}kRads", d, log_name=None, config_index=None, fits=True,
                                 frame_offset=i * frames))
    return plan


def _frame_path(att: _Attempt, frame: int) -> str:
    if att.fits:
        return str(att.rel_dir / f"{att.kind}_exp{_g(att.exposure)}s_f{frame:04d}.fits")
    name = (f"{_KIND_NAMES[att.kind]}T{_g(att.setpoint)}_exp{_g(att.exposure)}s"
            f"At{att.number}f{frame}.raw")
    return str(att.rel_dir / "frames" / name)


def _schedule(rng: np.random.Generator, plan: list[_Attempt], physics: Physics,
              start: float = CAMPAIGN_START) -> list[list[_Frame]]:
    """Time stamps, recorded temperatures and log values of every frame, in acquisition order."""
    out: list[list[_Frame]] = []
    clock = start
    previous = None
    for att in plan:
        if previous is not None:
            clock += SETTLE_GAP if att.section != previous else ATTEMPT_GAP
        previous = att.section
        n = att.frames
        steps = att.exposure + FRAME_OVERHEAD + rng.uniform(0.0, FRAME_JITTER, n)
        times = np.round(clock + np.concatenate([[0.0], np.cumsum(steps[:-1])]), 3)
        clock = float(times[-1] + steps[-1])
        temps = np.round(att.setpoint + physics.temperature_jitter * rng.standard_normal(n), 3)
        # slow enclosure drift (hourly) plus sensor noise
        ext = np.round(physics.enclosure_temperature
                       + 0.3 * np.sin(2 * np.pi * (times - start) / 3600.0)
                       + 0.05 * rng.standard_normal(n), 2)
        real_us = np.round(att.exposure * 1e6 + physics.real_exposure_offset
                           + 0.1 * rng.standard_normal(n), 1)
        power = np.round(physics.power_base + physics.power_per_degc * np.abs(ext - temps)
                         + 0.02 * rng.standard_normal(n), 3)
        frames = []
        for i in range(n):
            number = att.frame_offset + i
            truth = FrameTruth(path=_frame_path(att, number), attempt=str(att.rel_dir),
                               kind=att.kind, stage=att.stage, step=att.step,
                               setpoint=att.setpoint, temperature=float(temps[i]),
                               exposure=att.exposure, real_exposure=float(real_us[i]) * 1e-6,
                               dose=0.0, damage_dose=0.0, frame=number,
                               timestamp=float(times[i]))
            frames.append(_Frame(truth, float(ext[i]), float(temps[0]), float(power[i])))
        out.append(frames)
    return out


#: How the dose of a step is delivered (see :func:`_assign_doses`).
DOSE_PROFILES = ("ramp", "before", "increments")
#: Beam-on window of the ``before`` profile, as fractions of the settling pause before a step.
_BEFORE_WINDOW = (0.75, 0.25)
#: Beam-on window of each ``increments`` dose, seconds before the frame it precedes (it lies in
#: the readout pause after the previous frame).
_INCREMENT_WINDOW = (0.5, 0.1)


def _assign_doses(rng: np.random.Generator, plan: list[_Attempt], scheduled: list[list[_Frame]],
                  physics: Physics, profile: str = "ramp") -> dict[str, Any]:
    """Dose, dose rate and beam state of every frame; annealed damage after irradiation.

    ``profile`` says how each dose step is delivered:

    * ``ramp`` (default): the accumulated dose rises linearly in time from the previous
      step's nominal dose (at the step's first frame) to its own (at its last frame), the
      beam being on during the step's frames; each frame's damage is the dose at its time;
    * ``before``: the step's dose is delivered in the settling pause before its first frame
      (beam off while measuring, the usual test method): every frame of the step carries
      the nominal dose;
    * ``increments``: the beam is off during every frame; before frame k (of n) of a step an
      equal increment is delivered, so the frame carries ``previous + (k+1) (nominal -
      previous) / n`` (the acquisition the old dose-spreading rule assumes).

    Post-irradiation frames log the final dose but carry only ``1 - annealing_fraction`` of
    its damage.  Returns the beam-on intervals and per-step rates for the truth file.
    """
    if profile not in DOSE_PROFILES:
        raise ConfigError(f"dose profile must be one of {', '.join(DOSE_PROFILES)}, "
                          f"got {profile!r}")
    steps: dict[str, list[_Frame]] = {}
    nominal: dict[str, float] = {}
    for att, frames in zip(plan, scheduled):
        if att.stage == "radiating":
            steps.setdefault(att.step, []).extend(frames)
            nominal[att.step] = att.nominal_dose
    rates: dict[str, float] = {}
    frame_rate: dict[int, float] = {}           # id(frame) -> true rate during it [krad/s]
    intervals: list[tuple[float, float, float]] = []   # (on, off, rate) [s, s, krad/s]
    previous = 0.0
    for step, frames in steps.items():
        frames = sorted(frames, key=lambda f: f.truth.timestamp)
        t0, t1 = frames[0].truth.timestamp, frames[-1].truth.timestamp
        delta = nominal[step] - previous
        if profile == "ramp":
            rates[step] = delta / (t1 - t0) if t1 > t0 else 0.0
            for f in frames:
                t = f.truth.timestamp
                dose = nominal[step] if t1 <= t0 else previous + rates[step] * (t - t0)
                f.truth = dataclasses.replace(f.truth, dose=round(dose, 4),
                                              damage_dose=round(dose, 4))
                frame_rate[id(f)] = rates[step] if t < t1 else 0.0
            intervals.append((t0, t1, rates[step]))
        elif profile == "before":
            on, off = (t0 - SETTLE_GAP * _BEFORE_WINDOW[0], t0 - SETTLE_GAP * _BEFORE_WINDOW[1])
            rates[step] = delta / (off - on)
            for f in frames:
                f.truth = dataclasses.replace(f.truth, dose=round(nominal[step], 4),
                                              damage_dose=round(nominal[step], 4))
                frame_rate[id(f)] = 0.0
            intervals.append((on, off, rates[step]))
        else:
            width = _INCREMENT_WINDOW[0] - _INCREMENT_WINDOW[1]
            rates[step] = delta / len(frames) / width
            for k, f in enumerate(frames):
                dose = round(previous + (k + 1) * delta / len(frames), 4)
                f.truth = dataclasses.replace(f.truth, dose=dose, damage_dose=dose)
                frame_rate[id(f)] = 0.0
                t = f.truth.timestamp
                intervals.append((t - _INCREMENT_WINDOW[0], t - _INCREMENT_WINDOW[1],
                                  rates[step]))
        previous = nominal[step]
    final = previous
    for att, frames in zip(plan, scheduled):
        step_rate = rates.get(att.step, 0.0) if att.stage == "radiating" else 0.0
        for f in frames:
            if att.stage == "post":
                f.truth = dataclasses.replace(
                    f.truth, dose=final,
                    damage_dose=round(final * (1.0 - physics.annealing_fraction), 4))
            rate = frame_rate.get(id(f), 0.0)
            t = f.truth.timestamp
            ended = [off for on, off, _ in intervals if off <= t]
            since = round(t - max(ended), 3) if rate == 0.0 and ended else None
            f.truth = dataclasses.replace(f.truth, dose_rate=rate, beam=rate > 0,
                                          since_beam_off=since)
            # the monitor reads the step's rate (the default ramp) or the rate during the frame
            true_rate = step_rate if profile == "ramp" else rate
            measured = (true_rate * (1.0 + physics.dose_rate_noise * rng.standard_normal())
                        + physics.radiation_background * abs(rng.standard_normal()))
            f.radiation_level = float(f"{max(measured, 0.0):.6g}")
    return {"dose_profile": profile, "step_dose_rates_krad_s": rates,
            "beam_on_intervals": [list(iv) for iv in intervals]}


def _place_defects(plan: list[_Attempt], scheduled: list[list[_Frame]], *,
                   standard: bool = True, flat: bool = False) -> dict[tuple[int, int], str]:
    """Choose ``(attempt index, frame index)`` of each defect so that no group loses its frames.

    A slot is accepted only if its group (same kind, stage, step, set point and
    exposure) keeps at least two clean frames.  ``standard``: the truncated, all-zero
    and dead-region defects; ``flat``: also the flat defects of :mod:`utils.sim.flats`.
    """
    def group(i: int) -> tuple:
        a = plan[i]
        return (a.kind, a.stage, a.step, a.setpoint, a.exposure)

    clean: dict[tuple, int] = {}
    for i, frames in enumerate(scheduled):
        clean[group(i)] = clean.get(group(i), 0) + len(frames)
    darks = [i for i, a in enumerate(plan) if a.kind == "dark" and not a.fits]
    flats = [i for i, a in enumerate(plan) if a.kind == "flat"]
    wanted = (("truncated", darks[1:] + darks[:1]),
              ("all_zero", darks[::-1]),
              ("dead_region", flats + darks)) if standard else ()
    if flat:
        wanted += (("zero_band", flats), ("lamp_drift", flats[1:] + flats[:1]))
    placed: dict[tuple[int, int], str] = {}
    for name, candidates in wanted:
        slot = next(((i, k) for i in candidates for k in reversed(range(len(scheduled[i])))
                     if (i, k) not in placed and clean[group(i)] >= 3), None)
        if slot is None:
            logger.warning("no room for the %s defect: groups need at least 3 frames", name)
            continue
        placed[slot] = name
        clean[group(slot[0])] -= 1
    return placed


def _dead_region(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Bottom-left block covering about DEAD_FRACTION of the frame."""
    h, w = shape
    side = math.sqrt(DEAD_FRACTION)
    rows, cols = max(1, math.ceil(h * side)), max(1, math.ceil(w * side))
    return slice(h - rows, h), slice(0, cols)


# ================================================================================================
# Text formats (pure)
# ================================================================================================

def _num(value: float, decimals: int = 6) -> str:
    """Fixed-point number without trailing zeros (no exponent: loggers never write one)."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _config_text(att: _Attempt, width: int, height: int, seed: int) -> str:
    _, line, lower = _CONFIG_STYLES[att.config_index]
    entries = [("WIDTH", width), ("HEIGHT", height), ("BIT_DEPTH", SAMPLE_BITS),
               ("SensorModel", SENSOR_MODEL), ("ExposureMode", "Global"), ("Gain", EXP_GAIN),
               ("FrameCount", att.frames), ("TriggerMode", "Internal")]
    lines = [f"# camera configuration (synthetic campaign, seed {seed})"]
    lines += [line.format(key=k.lower() if lower else k, value=v) for k, v in entries[:3]]
    lines.append("")
    lines += [line.format(key=k.lower() if lower else k, value=v) for k, v in entries[3:]]
    return "\n".join(lines) + "\n"


def _log_text(att: _Attempt, frames: list[_Frame]) -> str:
    columns = [att.temp_column if c == "Temperature" else c for c in _LOG_COLUMNS]
    radiation = att.log_name == RADIATION_LOG
    if radiation:
        columns += ["Dose", "RadiationLevel"]
    lines = [att.delimiter.join(columns)]
    for f in frames:
        t = f.truth
        row = [str(t.frame), _num(t.timestamp, 3), _num(f.ext_temperature, 2),
               _num(t.exposure * 1e6, 3), _num(t.real_exposure * 1e6, 1), str(EXP_GAIN),
               _num(t.temperature, 3), _num(f.initial_temperature, 3),
               _num(t.temperature - f.initial_temperature, 3), _num(f.power, 3)]
        if radiation:
            row += [_num(t.dose, 4), _num(f.radiation_level, 8)]
        lines.append(att.delimiter.join(row))
    return "\n".join(lines) + "\n"


def _campaign_radiation_log_text(frames: Iterable[_Frame],
                                 beam_rows: Sequence[tuple[float, float, float]] = ()) -> str:
    """The campaign log: one row per frame, plus rows without a frame (empty FrameNum and
    Temperature) at ``beam_rows`` ``(time [s], dose [krad], level [krad/s])``."""
    rows = [(f.truth.timestamp, f"{f.truth.frame},{_num(f.truth.timestamp, 3)},"
             f"{_num(f.truth.dose, 4)},{_num(f.radiation_level, 8)},"
             f"{_num(f.truth.temperature, 3)}") for f in frames]
    rows += [(t, f",{_num(t, 3)},{_num(d, 4)},{_num(level, 8)},") for t, d, level in beam_rows]
    lines = ["FrameNum,TimeStamp,Dose,RadiationLevel,Temperature"]
    lines += [text for _, text in sorted(rows, key=lambda r: r[0])]
    return "\n".join(lines) + "\n"


def _beam_rows(info: dict[str, Any], physics: Physics) -> list[tuple[float, float, float]]:
    """Log rows at the beam switching times of the ``before`` profile (the frames alone would
    not show when the dose was delivered)."""
    if info.get("dose_profile") != "before":
        return []
    rows, dose = [], 0.0
    for on, off, rate in info["beam_on_intervals"]:
        rows.append((round(on, 3), round(dose, 4), 0.0))
        dose += rate * (off - on)
        rows.append((round(off, 3), round(dose, 4), float(f"{rate:.6g}")))
    return rows


def _dosedir_log_text(frames: Iterable[_Frame], constant_dose: float | None) -> str:
    lines = ["FrameNum,TimeStamp,Dose"]
    for f in sorted(frames, key=lambda f: f.truth.timestamp):
        dose = f.truth.dose if constant_dose is None else constant_dose
        lines.append(f"{f.truth.frame},{_num(f.truth.timestamp, 3)},{_num(dose, 4)}")
    return "\n".join(lines) + "\n"


def _fits_header(truth: FrameTruth, physics: Physics) -> fits.Header:
    header = fits.Header()
    header[kw.IMAGETYP] = (truth.kind.upper(), "frame type")
    header[kw.FRAMENUM] = (truth.frame, "frame number in this folder")
    header[kw.TIMESTAMP] = (truth.timestamp, "[s] acquisition time, Unix time")
    header[kw.DATE_OBS] = (_dt.datetime.fromtimestamp(truth.timestamp, _dt.timezone.utc)
                           .strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "UTC acquisition time")
    header[kw.EXPTIME] = (truth.exposure, "[s] requested exposure time")
    header[kw.TEMP] = (truth.temperature, "[degC] sensor temperature")
    header[kw.BUNIT] = (adu.UNIT, "stored 16-bit ADU")
    for key, value, comment in adu.scaling_cards(physics.adc_bits):
        header[key] = (value, comment)
    return header


def _truth_document(layout: str, seed: int, width: int, height: int, physics: Physics,
                    plan: list[_Attempt], scheduled: list[list[_Frame]],
                    extra: dict[str, Any], map_names: Iterable[str]) -> dict[str, Any]:
    records = [dataclasses.asdict(f.truth) for frames in scheduled for f in frames]
    return {
        "layout": layout, "seed": seed, "width": width, "height": height,
        "start_time": _dt.datetime.fromtimestamp(CAMPAIGN_START, _dt.timezone.utc).isoformat(),
        "physics": dataclasses.asdict(physics),
        "physics_units": Physics.units(),
        "maps": {name: _MAP_UNITS[name] for name in map_names},
        **extra,
        "attempts": [dataclasses.asdict(_attempt_truth(a)) for a in plan],
        "frames": records,
    }


def _attempt_truth(att: _Attempt) -> AttemptTruth:
    config = None if att.config_index is None else _CONFIG_STYLES[att.config_index]
    return AttemptTruth(path=str(att.rel_dir), kind=att.kind, setpoint=att.setpoint,
                        exposure=att.exposure, frames=att.frames,
                        config=config[0] if config else None,
                        config_style=config[1].format(key="KEY" if not config[2] else "key",
                                                      value="value") if config else None,
                        log=att.log_name, delimiter=att.delimiter,
                        temperature_column=att.temp_column)


# ================================================================================================
# Writing (I/O only)
# ================================================================================================

def _prepare_root(out: str | os.PathLike) -> Path:
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder; choose another output path")
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f"{root} is not empty; simulate into a new or empty folder "
                        "(stale frames would mix with the new campaign)")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_raw(path: Path, data: np.ndarray, truncate: int = 0) -> None:
    payload = data.astype("<u2", copy=False).tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload[:len(payload) - truncate] if truncate else payload)


def _write_frames(root: Path, rng: np.random.Generator, sensor: Sensor, physics: Physics,
                  plan: list[_Attempt], scheduled: list[list[_Frame]], width: int, height: int,
                  seed: int, defects: dict[tuple[int, int], str], progress_bar: bool) -> None:
    """Write every attempt (configuration, log, frames), drawing each frame just before writing."""
    steps = progress(list(enumerate(zip(plan, scheduled))), desc="simulating",
                     enabled=progress_bar, unit="folder")
    for i, (att, frames) in steps:
        folder = root / att.rel_dir
        if att.config_index is not None:
            write_text(_config_text(att, width, height, seed),
                       folder / _CONFIG_STYLES[att.config_index][0])
        if att.log_name is not None:
            write_text(_log_text(att, frames), folder / att.log_name)
        for k, f in enumerate(frames):
            t = f.truth
            defect = defects.get((i, k))
            lamp = flats.lamp_factor(rng, physics, defect) if t.kind == "flat" else 1.0
            data = render_frame(rng, sensor, physics, kind=t.kind, temperature=t.temperature,
                                exposure=t.real_exposure, damage_dose=t.damage_dose,
                                illumination=lamp,
                                beam_dose=t.dose_rate * t.real_exposure)
            if defect == "all_zero":
                data[:] = 0
            elif defect == "dead_region":
                data[_dead_region(data.shape)] = 0
            elif defect == "zero_band":
                data[flats.zero_band(data.shape)] = 0
            if defect or lamp != 1.0:
                f.truth = dataclasses.replace(t, defect=defect, illumination=lamp)
            if att.fits:
                write_hdul(fits.HDUList([fits.PrimaryHDU(data, _fits_header(t, physics))]),
                           root / t.path)
            else:
                cut = min(TRUNCATE_BYTES, data.nbytes // 2) if defect == "truncated" else 0
                _write_raw(root / t.path, data, cut)
        logger.debug("wrote %s: %d %s frames, T=%s degC, exp=%s s", att.rel_dir, len(frames),
                     att.kind, _g(att.setpoint), _g(att.exposure))


def _write_truth(root: Path, document: dict[str, Any],
                 maps: dict[str, np.ndarray]) -> tuple[Path, Path]:
    folder = root / TRUTH_DIR
    json_path = write_text(json.dumps(document, indent=1) + "\n", folder / TRUTH_JSON)
    npz_path = folder / TRUTH_NPZ
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **maps)  # a file object: np.savez would append '.npz' to a name
    return json_path, npz_path


def _simulate(out, layout: str, seed: int, width: int, height: int, physics: Physics | None,
              plan: list[_Attempt], *, defects: bool, parameters: dict[str, Any],
              progress_bar: bool, write_extra=None, damage_states=None,
              dose_profile: str = "ramp", flat_defects: bool = False) -> Campaign:
    """Common driver: sensor -> schedule -> doses -> defects -> frames -> logs -> truth.

    ``write_extra(root, plan, scheduled, irradiation)`` writes layout-specific files
    (campaign logs; ``irradiation`` is what :func:`_assign_doses` returned);
    ``damage_states(plan, scheduled)`` returns ``(labels, doses)`` of the damage maps to
    record, for layouts with radiation.
    """
    physics = Physics() if physics is None else physics
    width, height = int(width), int(height)
    root = _prepare_root(out)
    # one generator, consumed in a fixed order: sensor maps, schedule, doses, frames
    rng = np.random.default_rng(seed)
    sensor = make_sensor(rng, width, height, physics)
    scheduled = _schedule(rng, plan, physics)
    irradiation = _assign_doses(rng, plan, scheduled, physics, dose_profile)
    placed = _place_defects(plan, scheduled, standard=defects, flat=flat_defects) \
        if defects or flat_defects else {}
    _write_frames(root, rng, sensor, physics, plan, scheduled, width, height, seed, placed,
                  progress_bar)
    if write_extra is not None:
        write_extra(root, plan, scheduled, irradiation)
    maps = truth_maps(sensor, physics)
    if damage_states is not None:
        maps.update(damage_maps(sensor, physics, *damage_states(plan, scheduled)))
    extra = {"parameters": parameters,
             "defects": _defect_details(scheduled, placed, (height, width))}
    if damage_states is not None:
        extra["irradiation"] = irradiation
    document = _truth_document(layout, seed, width, height, physics, plan, scheduled, extra, maps)
    json_path, npz_path = _write_truth(root, document, maps)
    return Campaign(root=root, layout=layout, seed=seed, width=width, height=height,
                    physics=physics, records=[f.truth for fr in scheduled for f in fr],
                    attempts=[_attempt_truth(a) for a in plan], truth_json=json_path,
                    truth_npz=npz_path)


def _defect_details(scheduled: list[list[_Frame]], placed: dict[tuple[int, int], str],
                    shape: tuple[int, int]) -> list[dict[str, Any]]:
    """Where each planted defect is and what exactly was done to the frame."""
    details = []
    for (i, k), name in sorted(placed.items()):
        item: dict[str, Any] = {"path": scheduled[i][k].truth.path, "defect": name}
        if name == "truncated":
            item["missing_bytes"] = min(TRUNCATE_BYTES, shape[0] * shape[1])
        elif name == "dead_region":
            rows, cols = _dead_region(shape)
            item["rows"], item["columns"] = [rows.start, rows.stop], [cols.start, cols.stop]
        elif name == "zero_band":
            rows, _ = flats.zero_band(shape)
            item["rows"], item["columns"] = [rows.start, rows.stop], [0, shape[1]]
        elif name == "lamp_drift":
            item["illumination"] = scheduled[i][k].truth.illumination
        details.append(item)
    return details


# ================================================================================================
# Public entry points
# ================================================================================================

def simulate_standard(out: str | os.PathLike, *, seed: int = 1, width: int = 40, height: int = 24,
                      frames: int = 4,
                      bias_temperatures: Sequence[float] = (-10.0, 0.0, 12.5, 25.0),
                      dark_temperatures: Sequence[float] = (0.0, 25.0),
                      dark_exposures: Sequence[float] = (0.5, 2.0),
                      flat_temperatures: Sequence[float] = (25.0,),
                      flat_exposures: Sequence[float] = (0.1, 0.4),
                      attempts: int = 2, defects: bool = True, physics: Physics | None = None,
                      progress_bar: bool = False, flat_defects: bool = False) -> Campaign:
    """Write a standard calibration campaign (bias, dark and flat test sections).

    Layout under ``out``: ``TestSection1/T<t>/attempt<n>/`` (bias, 12 us);
    ``TestSection2/`` darks in four folder variants (nested decoy
    ``20Frames/T20/T<t>/<e>s/attempt<n>``, swapped ``ContinuousFrames/<e>s/T<t>/attempt<n>``,
    plain ``20Frames/T<t>/<e>s/attempt<n>`` and attempt-less ``20Frames/T<t>/<e>s``);
    ``TestSection3/`` flats (plain, attempt-less and ``ContinuousFrames``).
    Every attempt folder holds a configuration file, ``temperatureLog.csv`` and
    ``frames/*.raw``; one log is ``;``-delimited, one names its temperature
    column ``CCDTemp``, configuration styles rotate (including ``config.txt``).

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the one random generator. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 40 and 24.
    frames : int, optional
        Frames per attempt. Default is 4.
    bias_temperatures : sequence of float, optional
        Bias set points [degC]. Default is (-10, 0, 12.5, 25).
    dark_temperatures, dark_exposures : sequence of float, optional
        Dark set points [degC] and exposures [s]; every combination is taken.
        Defaults are (0, 25) and (0.5, 2).
    flat_temperatures, flat_exposures : sequence of float, optional
        Flat set points [degC] and exposures [s]. Defaults are (25,) and (0.1, 0.4).
    attempts : int, optional
        Attempts per set point (and exposure). Default is 2.
    defects : bool, optional
        Plant a truncated raw file, an all-zero frame and a frame with a dead
        region (5 % zero pixels) among darks and flats. Default is True.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    progress_bar : bool, optional
        Show a progress bar. Default is False.
    flat_defects : bool, optional
        Also plant a flat whose middle rows read 0 (``zero_band``) and a flat lit 10 %
        low (``lamp_drift``), see :mod:`utils.sim.flats`. Default is False.

    Returns
    -------
    Campaign
        Paths and per-frame truth.

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).

    Examples
    --------
    >>> import tempfile
    >>> c = simulate_standard(tempfile.mkdtemp(), frames=2, attempts=1)
    >>> len(c.records), sorted({r.kind for r in c.records})
    (20, ['bias', 'dark', 'flat'])
    """
    _check_size(width, height, frames)
    if int(attempts) < 1:
        raise ConfigError(f"attempts must be >= 1, got {attempts}")
    levels = dict(bias_temperatures=_check_levels("bias_temperatures", bias_temperatures),
                  dark_temperatures=_check_levels("dark_temperatures", dark_temperatures),
                  dark_exposures=_check_levels("dark_exposures", dark_exposures, positive=True),
                  flat_temperatures=_check_levels("flat_temperatures", flat_temperatures),
                  flat_exposures=_check_levels("flat_exposures", flat_exposures, positive=True))
    plan = _plan_standard(int(frames), int(attempts), **levels)
    parameters = {**levels, "frames": int(frames), "attempts": int(attempts), "defects": defects}
    if flat_defects:
        parameters["flat_defects"] = True
    return _simulate(out, "standard", seed, width, height, physics, plan, defects=defects,
                     parameters=parameters, progress_bar=progress_bar,
                     flat_defects=flat_defects)


def _check_doses(doses: Sequence[float]) -> tuple[float, ...]:
    doses = _check_levels("doses", doses, positive=True)
    if any(b <= a for a, b in zip(doses, doses[1:])):
        raise ConfigError(f"doses must increase (they accumulate), got {doses}")
    return doses


def simulate_irradiation(out: str | os.PathLike, *, seed: int = 1, width: int = 40,
                         height: int = 24, frames: int = 3,
                         doses: Sequence[float] = (10.0, 20.0), temperature: float = 20.0,
                         dark_exposures: Sequence[float] = (1.0,),
                         flat_exposures: Sequence[float] = (0.2,), defects: bool = False,
                         physics: Physics | None = None, progress_bar: bool = False,
                         model_temperatures: Sequence[float] | None = None,
                         dose_profile: str = "ramp") -> Campaign:
    """Write an irradiation campaign: pre-irradiation, one stage per dose step, post-irradiation.

    Layout under ``out``: ``Preirradiation/``, ``Irradiation/<dose>kRads/`` and
    ``Postirradiation/``, each with ``Bias/T<t>/attempt0/``,
    ``Darks/T<t>/<e>s/attempt0/`` and ``Flats/T<t>/<e>s/attempt0/``; darks and
    flats of the dose steps carry ``radiationLog.csv`` (the temperature-log
    columns plus ``Dose`` [krad] and ``RadiationLevel`` [krad/s]) instead of
    ``temperatureLog.csv``.  ``radiationLogCompleto.csv`` at the root lists
    every frame in time order (``FrameNum`` restarts in every attempt).

    During a dose step the accumulated dose ramps at a constant rate from the
    previous step's dose (first frame of the step) to the step's nominal dose
    (last frame), and each frame's damage is the dose at its time stamp, so
    frames of one step do not share one dose.  Post-irradiation frames log the
    final dose but carry ``1 - annealing_fraction`` of its damage.

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the one random generator. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 40 and 24.
    frames : int, optional
        Frames per attempt. Default is 3.
    doses : sequence of float, optional
        Increasing nominal accumulated dose of each step [krad]. Default is (10, 20).
    temperature : float, optional
        Set point of every frame [degC]. Default is 20.
    dark_exposures, flat_exposures : sequence of float, optional
        Exposures of the darks and flats of every stage [s]. Defaults are (1,) and (0.2,).
    defects : bool, optional
        Plant the same three defects as :func:`simulate_standard`. Default is False.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    progress_bar : bool, optional
        Show a progress bar. Default is False.
    model_temperatures : sequence of float, optional
        Set points [degC] of the bias and darks of the pre and post stages (every
        exposure at each), so that their dark-current model in temperature can be
        fitted; flats and dose steps stay at ``temperature``. Default: ``temperature``
        only.
    dose_profile : {"ramp", "before"}, optional
        How each step's dose is delivered: ``ramp`` (default) while the step's frames
        are taken, ``before`` in the pause before them (beam off while measuring; the
        campaign log then has rows at the beam switching times). Per-frame dose rate,
        beam state and time since beam-off are in the frame records.

    Returns
    -------
    Campaign
        Paths and per-frame truth; ``truth.npz`` adds the damage maps of every
        dose step and of the post stage (labels ``<dose>kRads`` and ``post``);
        ``truth.json`` adds ``irradiation`` (beam-on intervals, per-step dose rates).

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).
    """
    _check_size(width, height, frames)
    physics = Physics() if physics is None else physics
    doses = _check_doses(doses)
    temperature = _check_levels("temperature", [temperature])[0]
    dark_exposures = _check_levels("dark_exposures", dark_exposures, positive=True)
    flat_exposures = _check_levels("flat_exposures", flat_exposures, positive=True)
    if model_temperatures is not None:
        model_temperatures = _check_levels("model_temperatures", model_temperatures)
    if dose_profile not in ("ramp", "before"):
        raise ConfigError(f"dose_profile must be ramp or before, got {dose_profile!r}")
    plan = _plan_irradiation(int(frames), doses, temperature, dark_exposures, flat_exposures,
                             model_temperatures)
    post_damage = round(doses[-1] * (1.0 - physics.annealing_fraction), 4)

    def write_extra(root, plan, scheduled, irradiation):
        write_text(_campaign_radiation_log_text((f for fr in scheduled for f in fr),
                                                _beam_rows(irradiation, physics)),
                   root / CAMPAIGN_RADIATION_LOG)

    def damage_states(plan, scheduled):
        return [f"{_g(d)}kRads" for d in doses] + ["post"], list(doses) + [post_damage]

    parameters = {"frames": int(frames), "doses": doses, "temperature": temperature,
                  "dark_exposures": dark_exposures, "flat_exposures": flat_exposures,
                  "defects": defects, "post_damage_dose": post_damage,
                  "radiation_log": CAMPAIGN_RADIATION_LOG,
                  "model_temperatures": model_temperatures, "dose_profile": dose_profile}
    return _simulate(out, "irradiation", seed, width, height, physics, plan, defects=defects,
                     parameters=parameters, progress_bar=progress_bar, write_extra=write_extra,
                     damage_states=damage_states, dose_profile=dose_profile)


def simulate_dosedirs(out: str | os.PathLike, *, seed: int = 1, width: int = 40, height: int = 24,
                      frames: int = 4, doses: Sequence[float] = (5.0, 10.0),
                      with_log: Sequence[bool] = (False, True), constant_dose_log: bool = True,
                      physics: Physics | None = None, temperature: float = 20.0,
                      dark_exposure: float = 1.0, progress_bar: bool = False,
                      dose_profile: str = "ramp") -> Campaign:
    """Write dose directories of already-converted FITS frames.

    Layout under ``out``: ``<dose>kRads/fits/`` holding ``frames`` bias frames
    (``bias_exp1.2e-05s_f0000.fits``...) then ``frames`` darks
    (``dark_exp1s_f0004.fits``...), numbered continuously within the folder,
    as uint16 FITS (BZERO 32768) with ``IMAGETYP``, ``FRAMENUM``, ``TIMESTMP``
    [s], ``DATE-OBS``, ``EXPTIME`` [s], ``TEMP`` [degC], ``BUNIT = 'adu'`` and
    the ADU-convention cards; no dose keyword.  Optionally
    ``<dose>kRads/radiationLogDef.csv`` (``FrameNum,TimeStamp,Dose``).

    The true dose ramps at a constant rate across each folder's frames, from
    the previous folder's nominal dose to this folder's.

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the one random generator. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 40 and 24.
    frames : int, optional
        Bias frames, and dark frames, per folder. Default is 4.
    doses : sequence of float, optional
        Increasing nominal dose of each folder [krad]. Default is (5, 10).
    with_log : sequence of bool, optional
        Whether each folder gets ``radiationLogDef.csv``; repeated cyclically
        when shorter than ``doses``. Default is (False, True).
    constant_dose_log : bool, optional
        Write the nominal dose in every row (a log that carries no dose
        information and must be treated as missing) instead of the true
        ramping dose. Default is True.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    temperature : float, optional
        Set point [degC]. Default is 20.
    dark_exposure : float, optional
        Exposure of the darks [s]. Default is 1.
    progress_bar : bool, optional
        Show a progress bar. Default is False.
    dose_profile : {"ramp", "increments"}, optional
        ``ramp`` (default): the dose rises at a constant rate over the folder's frames;
        ``increments``: the beam is off during every frame and an equal increment
        precedes each, so frame k (of n, in time order) of a folder carries
        ``previous + (k+1) (nominal - previous) / n`` (what the old dose-spreading rule
        assumes when a folder has no usable log).

    Returns
    -------
    Campaign
        Paths and per-frame truth; ``truth.npz`` adds the damage maps at each
        folder's nominal dose.

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).
    """
    _check_size(width, height, frames)
    doses = _check_doses(doses)
    temperature = _check_levels("temperature", [temperature])[0]
    dark_exposure = _check_levels("dark_exposure", [dark_exposure], positive=True)[0]
    logged = [bool(with_log[i % len(with_log)]) if len(with_log) else False
              for i in range(len(doses))]
    if dose_profile not in ("ramp", "increments"):
        raise ConfigError(f"dose_profile must be ramp or increments, got {dose_profile!r}")
    plan = _plan_dosedirs(int(frames), doses, temperature, dark_exposure)

    def write_extra(root, plan, scheduled, irradiation):
        for dose, has_log in zip(doses, logged):
            if not has_log:
                continue
            step = f"{_g(dose)}kRads"
            rows = [f for att, fr in zip(plan, scheduled) if att.step == step for f in fr]
            write_text(_dosedir_log_text(rows, dose if constant_dose_log else None),
                       root / step / DOSEDIR_LOG)

    def damage_states(plan, scheduled):
        return [f"{_g(d)}kRads" for d in doses], list(doses)

    parameters = {"frames": int(frames), "doses": doses, "with_log": logged,
                  "constant_dose_log": bool(constant_dose_log), "temperature": temperature,
                  "dark_exposure": dark_exposure, "dose_profile": dose_profile}
    return _simulate(out, "dosedirs", seed, width, height, physics, plan, defects=False,
                     parameters=parameters, progress_bar=progress_bar, write_extra=write_extra,
                     damage_states=damage_states, dose_profile=dose_profile)
