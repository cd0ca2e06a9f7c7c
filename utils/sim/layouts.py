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
:mod:`utils.sim.campaign`, the plan (folders, schedule, doses, defects) in
:mod:`utils.sim.plan`, the command line in :mod:`utils.simulate`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
from pathlib import Path
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
    _MAP_UNITS,
    SAMPLE_BITS,
    Physics,
    Sensor,
    damage_maps,
    make_sensor,
    render_frame,
    truth_maps,
)
from .plan import (
    _CONFIG_STYLES,
    _LOG_COLUMNS,
    CAMPAIGN_RADIATION_LOG,
    CAMPAIGN_START,
    DOSEDIR_LOG,
    EXP_GAIN,
    RADIATION_LOG,
    SENSOR_MODEL,
    TRUNCATE_BYTES,
    _assign_doses,
    _Attempt,
    _check_doses,
    _check_levels,
    _check_size,
    _dead_region,
    _Frame,
    _g,
    _place_defects,
    _plan_dosedirs,
    _plan_irradiation,
    _plan_standard,
    _schedule,
)

logger = logging.getLogger(__name__)

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
