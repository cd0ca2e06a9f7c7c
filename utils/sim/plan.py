"""Planning a simulated campaign (pure): which folders and frames, when, at what
temperature and dose, and where the planted defects go.

The acquisition conventions (how the test bench names and times things) live here too;
:mod:`utils.sim.layouts` turns a plan into files.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..io.tokens import number_text
from .campaign import FrameTruth
from .physics import _KIND_NAMES, Physics

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
    return number_text(value, "g")


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

def _check_doses(doses: Sequence[float]) -> tuple[float, ...]:
    doses = _check_levels("doses", doses, positive=True)
    if any(b <= a for a, b in zip(doses, doses[1:])):
        raise ConfigError(f"doses must increase (they accumulate), got {doses}")
    return doses
