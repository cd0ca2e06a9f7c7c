"""Seeded synthetic test campaigns of the CMOS camera, with their ground truth.

Writes one of three on-disk layouts the toolkit reads -- ``standard`` (bias,
dark and flat test sections of raw frames), ``irradiation`` (pre-irradiation,
dose steps and post-irradiation stages of raw frames, plus the campaign
radiation log) or ``dosedirs`` (already-converted FITS frames in
``<dose>kRads/fits`` folders) -- and, next to it, ``truth/truth.json`` (every
physical parameter and one record per frame) and ``truth/truth.npz`` (the
per-pixel maps the frames were drawn from), so tests can check recovery.

Frames are drawn one at a time from a single seeded generator: the same seed
gives byte-identical files, and memory stays proportional to one frame, so the
same code writes 40 x 24 test campaigns and full 2048 x 2048 ones.  OUT must
be a new or empty folder.

Example
-------
::

    python -m utils.simulate standard /tmp/campaign
    python -m utils.simulate standard /tmp/big --width 2048 --height 2048 --frames 20 --seed 7
    python -m utils.simulate irradiation /tmp/irr --doses 10 20 40 --defects
    python -m utils.simulate dosedirs /tmp/dd --doses 5 10 20 --set dark_damage=0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np
from astropy.io import fits

from . import adu
from . import headers as kw
from .cli import make_parser, run_cli
from .errors import ConfigError, UserError
from .fitsio import atomic_path, write_hdul, write_text
from .progress import progress

logger = logging.getLogger(__name__ if __name__ != "__main__" else "utils.simulate")

__all__ = [
    "Physics", "Sensor", "FrameTruth", "AttemptTruth", "Campaign",
    "simulate_standard", "simulate_irradiation", "simulate_dosedirs", "load_campaign",
    "make_sensor", "bias_level", "dark_current", "flat_illumination", "render_frame",
    "digitise", "truth_maps", "damage_maps", "main",
]

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
#: Bits of each stored sample (``BIT_DEPTH`` of the configuration).
SAMPLE_BITS = adu.STORED_BITS
#: Bytes missing from the truncated-file defect.
TRUNCATE_BYTES = 300
#: Fraction of the frame zeroed by the dead-region defect.
DEAD_FRACTION = 0.05

TRUTH_DIR = "truth"
TRUTH_JSON = "truth.json"
TRUTH_NPZ = "truth.npz"
TEMPERATURE_LOG = "temperatureLog.csv"
RADIATION_LOG = "radiationLog.csv"
CAMPAIGN_RADIATION_LOG = "radiationLogCompleto.csv"
DOSEDIR_LOG = "radiationLogDef.csv"
_LOG_COLUMNS = ("FrameNum", "TimeStamp", "ExtTemperature", "ExpTime", "RealExpTime", "ExpGain",
                "Temperature", "InitialTemp", "DeltaTemperature", "PowerCons")
_KIND_NAMES = {"bias": "Bias", "dark": "Dark", "flat": "Flat"}
_IRRADIATION_SECTIONS = {"bias": "Bias", "dark": "Darks", "flat": "Flats"}
_STAGE_DIRS = {"pre": "Preirradiation", "radiating": "Irradiation", "post": "Postirradiation"}


# ================================================================================================
# Parameters
# ================================================================================================

def _param(default: Any, unit: str, doc: str):
    """A Physics field carrying its unit and one-line description."""
    return field(default=default, metadata={"unit": unit, "doc": doc})


@dataclass(frozen=True)
class Physics:
    """Every physical parameter of the simulated camera and test bench.

    Defaults are small but realistic.  Each field's unit and one-line
    description are in its metadata (listed below and in ``truth.json``).
    ADC counts are 12-bit counts (the stored 16-bit value is 16 times larger).
    """

    adc_bits: int = _param(12, "bit", "resolution of the camera ADC")
    gain: float = _param(2.0, "e-/ADC count", "system gain: electrons per ADC count")
    bias_level: float = _param(200.0, "ADC count", "mean bias offset at 0 degC")
    bias_row_sigma: float = _param(2.0, "ADC count", "rms of the per-row bias pattern")
    bias_col_sigma: float = _param(3.0, "ADC count", "rms of the per-column bias pattern")
    bias_pixel_sigma: float = _param(1.5, "ADC count", "rms of the per-pixel bias offset")
    bias_slope: float = _param(0.5, "ADC count/degC", "mean temperature coefficient of the bias")
    bias_slope_sigma: float = _param(0.03, "ADC count/degC", "per-pixel rms of that coefficient")
    read_noise: float = _param(2.0, "ADC count", "Gaussian read noise of a normal pixel")
    noisy_fraction: float = _param(0.01, "1", "fraction of pixels with excess read noise")
    noisy_factor: float = _param(4.0, "1", "read-noise multiplier of those noisy pixels")
    dark_median: float = _param(5.0, "e-/s", "median dark current at t_ref")
    dark_sigma_ln: float = _param(0.3, "1", "rms of ln(dark current) across pixels")
    t_ref: float = _param(20.0, "degC", "reference temperature of the dark current")
    doubling_temperature: float = _param(6.0, "degC", "warming that doubles the dark current")
    hot_fraction: float = _param(0.005, "1", "fraction of hot pixels")
    hot_factor_min: float = _param(30.0, "1", "smallest dark-current multiplier of a hot pixel")
    hot_factor_max: float = _param(100.0, "1", "largest dark-current multiplier of a hot pixel")
    flat_flux: float = _param(8000.0, "e-/s", "flat-field illumination at the optical centre")
    prnu_sigma: float = _param(0.01, "1", "rms photo-response non-uniformity")
    vignetting: float = _param(0.15, "1", "illumination loss at the corners: 1 - v (r/rmax)^2")
    temperature_jitter: float = _param(0.15, "degC", "rms of sensor temperature about set point")
    enclosure_temperature: float = _param(22.0, "degC", "mean enclosure (external) temperature")
    real_exposure_offset: float = _param(3.0, "us", "real minus requested exposure time")
    power_base: float = _param(2.5, "W", "power consumption at the enclosure temperature")
    power_per_degc: float = _param(0.08, "W/degC", "extra power per degC of sensor-enclosure gap")
    dark_damage: float = _param(0.05, "1/krad", "k of the dark-current multiplier 1 + k D")
    rad_hot_rate: float = _param(3e-4, "1/krad", "probability per krad that a pixel turns hot")
    rad_hot_min: float = _param(50.0, "e-/s", "least extra dark current of a radiation hot pixel")
    rad_hot_max: float = _param(500.0, "e-/s", "most extra dark current of a radiation hot pixel")
    bias_shift: float = _param(0.2, "ADC count/krad", "bias shift alpha per krad of damage")
    annealing_fraction: float = _param(0.3, "1", "fraction of the damage recovered afterwards")
    dose_rate_noise: float = _param(0.05, "1", "relative rms noise of the measured dose rate")
    radiation_background: float = _param(1e-4, "krad/s", "rms background of the dose-rate monitor")

    def __post_init__(self):
        if not 1 <= self.adc_bits <= SAMPLE_BITS:
            raise ConfigError(f"adc_bits must be within 1..{SAMPLE_BITS}, got {self.adc_bits}")
        positive = ("gain", "doubling_temperature", "read_noise", "noisy_factor", "dark_median")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"Physics.{name} must be > 0, got {getattr(self, name)}")
        for name in ("noisy_fraction", "hot_fraction", "annealing_fraction", "vignetting"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"Physics.{name} must be within 0..1, got {getattr(self, name)}")
        for low, high in (("hot_factor_min", "hot_factor_max"), ("rad_hot_min", "rad_hot_max")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(f"Physics.{low} must not exceed Physics.{high}")
        for name, value in dataclasses.asdict(self).items():
            if not math.isfinite(value) or (value < 0 and name not in ("t_ref",
                                                                          "enclosure_temperature",
                                                                          "real_exposure_offset",
                                                                          "bias_shift",
                                                                          "bias_slope")):
                raise ConfigError(f"Physics.{name} must be finite and non-negative, got {value}")

    @property
    def adu_scale(self) -> int:
        """Stored ADU per ADC count (16 for 12 bits)."""
        return adu.adu_scale(self.adc_bits)

    @classmethod
    def units(cls) -> dict[str, str]:
        """Unit of every parameter, ``{name: unit}``."""
        return {f.name: f.metadata["unit"] for f in dataclasses.fields(cls)}

    @classmethod
    def describe(cls) -> dict[str, str]:
        """One-line description of every parameter, ``{name: doc}``."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}


Physics.__doc__ += "\n    Attributes\n    ----------\n" + "".join(
    f"    {f.name} : {type(f.default).__name__}\n        {f.metadata['doc'].capitalize()}"
    f" [{f.metadata['unit']}]. Default is {f.default!r}.\n" for f in dataclasses.fields(Physics))


# ================================================================================================
# Sensor model: the per-pixel truth and the frames drawn from it (pure computation)
# ================================================================================================

@dataclass(frozen=True, eq=False)
class Sensor:
    """Per-pixel properties of one simulated sensor (float32 maps, shape ``(height, width)``).

    Attributes
    ----------
    bias_a : numpy.ndarray
        Bias at 0 degC [ADC count], row and column pattern included.
    bias_b : numpy.ndarray
        Temperature coefficient of the bias [ADC count/degC].
    read_noise : numpy.ndarray
        Gaussian read-noise sigma [ADC count].
    dark_ref : numpy.ndarray
        Dark current at ``Physics.t_ref`` before irradiation [e-/s], hot pixels included.
    hot_mask, noisy_mask : numpy.ndarray
        Boolean maps of the hot pixels and of the pixels with excess read noise.
    prnu : numpy.ndarray
        Relative photo-response (mean 1) [1].
    vignetting : numpy.ndarray
        Relative illumination, 1 at the centre [1].
    rad_hot_threshold : numpy.ndarray
        Damage dose at which the pixel turns hot [krad].
    rad_hot_amplitude : numpy.ndarray
        Extra dark current at ``t_ref`` once it has turned hot [e-/s].
    """

    bias_a: np.ndarray
    bias_b: np.ndarray
    read_noise: np.ndarray
    dark_ref: np.ndarray
    hot_mask: np.ndarray
    noisy_mask: np.ndarray
    prnu: np.ndarray
    vignetting: np.ndarray
    rad_hot_threshold: np.ndarray
    rad_hot_amplitude: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.bias_a.shape


def make_sensor(rng: np.random.Generator, width: int, height: int, physics: Physics) -> Sensor:
    """Draw the per-pixel properties of a sensor.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (consumed; pass a seeded generator).
    width, height : int
        Frame size [pixel].
    physics : Physics
        Distribution parameters.

    Returns
    -------
    Sensor
        float32 maps of shape ``(height, width)``.

    Examples
    --------
    >>> s = make_sensor(np.random.default_rng(1), 8, 6, Physics())
    >>> s.shape, bool(abs(s.bias_a.mean() - 200) < 10)
    ((6, 8), True)
    """
    shape = (height, width)
    f32 = np.float32
    bias_a = (physics.bias_level
              + physics.bias_row_sigma * rng.standard_normal((height, 1))
              + physics.bias_col_sigma * rng.standard_normal((1, width))
              + physics.bias_pixel_sigma * rng.standard_normal(shape)).astype(f32)
    bias_b = (physics.bias_slope
              + physics.bias_slope_sigma * rng.standard_normal(shape)).astype(f32)
    noisy = rng.random(shape) < physics.noisy_fraction
    read_noise = np.where(noisy, physics.read_noise * physics.noisy_factor,
                          physics.read_noise).astype(f32)
    dark = physics.dark_median * np.exp(physics.dark_sigma_ln * rng.standard_normal(shape))
    hot = rng.random(shape) < physics.hot_fraction
    dark[hot] *= rng.uniform(physics.hot_factor_min, physics.hot_factor_max, int(hot.sum()))
    prnu = (1.0 + physics.prnu_sigma * rng.standard_normal(shape)).astype(f32)
    # radial fall-off about the optical centre, normalised to the corner distance
    y, x = np.indices(shape, dtype=np.float64)
    yc, xc = (height - 1) / 2.0, (width - 1) / 2.0
    r2 = ((y - yc) ** 2 + (x - xc) ** 2) / max(yc ** 2 + xc ** 2, 1e-12)
    vignetting = (1.0 - physics.vignetting * r2).astype(f32)
    # a pixel turns hot once the damage dose passes its threshold: the hot set only grows with dose
    if physics.rad_hot_rate > 0:
        threshold = rng.exponential(1.0 / physics.rad_hot_rate, shape)
    else:
        threshold = np.full(shape, np.inf)
    amplitude = rng.uniform(physics.rad_hot_min, physics.rad_hot_max, shape)
    return Sensor(bias_a=bias_a, bias_b=bias_b, read_noise=read_noise, dark_ref=dark.astype(f32),
                  hot_mask=hot, noisy_mask=noisy, prnu=prnu, vignetting=vignetting,
                  rad_hot_threshold=threshold.astype(f32), rad_hot_amplitude=amplitude.astype(f32))


def bias_level(sensor: Sensor, physics: Physics, temperature: float,
               damage_dose: float = 0.0) -> np.ndarray:
    """Bias ``a + b T + alpha D`` [ADC count] at ``temperature`` [degC], damage dose D [krad]."""
    return sensor.bias_a + sensor.bias_b * temperature + physics.bias_shift * damage_dose


def dark_current(sensor: Sensor, physics: Physics, temperature: float,
                 damage_dose: float = 0.0) -> np.ndarray:
    """Dark current [e-/s] at ``temperature`` [degC] after ``damage_dose`` [krad].

    ``I = (I_ref (1 + k D) + I_hot,rad [D >= D_i]) * 2**((T - T_ref) / T_d)``.
    """
    rate_ref = sensor.dark_ref * (1.0 + physics.dark_damage * damage_dose)
    if damage_dose > 0:
        rate_ref = rate_ref + np.where(sensor.rad_hot_threshold <= damage_dose,
                                       sensor.rad_hot_amplitude, np.float32(0))
    return rate_ref * 2.0 ** ((temperature - physics.t_ref) / physics.doubling_temperature)


def flat_illumination(sensor: Sensor, physics: Physics) -> np.ndarray:
    """Photo-electron rate of a flat field [e-/s]: flux x PRNU x vignetting."""
    return physics.flat_flux * sensor.prnu * sensor.vignetting


def digitise(counts: np.ndarray, adc_bits: int) -> np.ndarray:
    """Round ADC counts, clip them to the ADC range and return stored uint16 samples.

    Examples
    --------
    >>> digitise(np.array([-3.0, 1.4, 5000.0]), 12).tolist()
    [0, 16, 65520]
    """
    top = 2 ** int(adc_bits) - 1
    clipped = np.clip(np.rint(counts), 0, top).astype(np.uint16)
    return clipped * np.uint16(adu.adu_scale(adc_bits))


def render_frame(rng: np.random.Generator, sensor: Sensor, physics: Physics, *, kind: str,
                 temperature: float, exposure: float, damage_dose: float = 0.0) -> np.ndarray:
    """Draw one frame as stored by the camera (uint16, ADC count x 16).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the shot and read noise.
    sensor : Sensor
        Per-pixel properties.
    physics : Physics
        Camera parameters.
    kind : {'bias', 'dark', 'flat'}
        Flats add the illumination; bias and dark differ only by ``exposure``.
    temperature : float
        Sensor temperature during the frame [degC].
    exposure : float
        Integration time [s].
    damage_dose : float, optional
        Radiation damage [krad]. Default is 0.

    Returns
    -------
    numpy.ndarray
        uint16 array of shape ``sensor.shape``.
    """
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    electrons = dark_current(sensor, physics, temperature, damage_dose) * exposure
    if kind == "flat":
        electrons = electrons + flat_illumination(sensor, physics) * exposure
    counts = bias_level(sensor, physics, temperature, damage_dose).astype(np.float64)
    counts += rng.poisson(electrons) / physics.gain
    counts += rng.standard_normal(sensor.shape) * sensor.read_noise
    return digitise(counts, physics.adc_bits)


def truth_maps(sensor: Sensor, physics: Physics) -> dict[str, np.ndarray]:
    """Per-pixel truth in the units of converted frames (stored 16-bit ADU unless stated).

    Returns
    -------
    dict
        ``bias_a`` [adu, bias at 0 degC], ``bias_b`` [adu/degC], ``read_noise``
        [adu], ``dark_ref`` [e-/s at t_ref], ``dark_ref_adu`` [adu/s at t_ref],
        ``hot_mask``, ``noisy_mask`` (bool), ``prnu`` [1], ``vignetting`` [1],
        ``flat_rate`` [adu/s, flat signal per second of exposure].
    """
    scale = np.float32(physics.adu_scale)
    per_electron = np.float32(physics.adu_scale / physics.gain)
    return {
        "bias_a": sensor.bias_a * scale,
        "bias_b": sensor.bias_b * scale,
        "read_noise": sensor.read_noise * scale,
        "dark_ref": sensor.dark_ref,
        "dark_ref_adu": sensor.dark_ref * per_electron,
        "hot_mask": sensor.hot_mask,
        "noisy_mask": sensor.noisy_mask,
        "prnu": sensor.prnu,
        "vignetting": sensor.vignetting,
        "flat_rate": (flat_illumination(sensor, physics) * per_electron).astype(np.float32),
    }


def damage_maps(sensor: Sensor, physics: Physics, labels: Sequence[str],
                doses: Sequence[float]) -> dict[str, np.ndarray]:
    """Radiation-damage truth for a list of damage states.

    Parameters
    ----------
    sensor : Sensor
        Per-pixel properties.
    physics : Physics
        Damage parameters.
    labels : sequence of str
        Name of each state, e.g. ``"10kRads"`` or ``"post"``.
    doses : sequence of float
        Damage dose of each state [krad] (after annealing for ``post``).

    Returns
    -------
    dict
        ``rad_hot_threshold`` [krad], ``rad_hot_amplitude`` [e-/s at t_ref],
        ``damage_label`` (str, n), ``damage_dose`` [krad] (n), ``damage_bias_shift``
        [adu] (n), ``damage_dark_ref`` [e-/s at t_ref] (n, H, W) and
        ``damage_hot_mask`` (bool, n, H, W, radiation-induced hot pixels).
    """
    doses = [float(d) for d in doses]
    dark = np.stack([dark_current(sensor, physics, physics.t_ref, d).astype(np.float32)
                     for d in doses]) if doses else np.zeros((0,) + sensor.shape, np.float32)
    hot = np.stack([sensor.rad_hot_threshold <= d for d in doses]) if doses else \
        np.zeros((0,) + sensor.shape, bool)
    return {
        "rad_hot_threshold": sensor.rad_hot_threshold,
        "rad_hot_amplitude": sensor.rad_hot_amplitude,
        "damage_label": np.array(list(labels), dtype=str),
        "damage_dose": np.array(doses, dtype=np.float64),
        "damage_bias_shift": np.array([physics.bias_shift * d * physics.adu_scale for d in doses]),
        "damage_dark_ref": dark,
        "damage_hot_mask": hot,
    }


_MAP_UNITS = {
    "bias_a": "adu (stored 16-bit, bias at 0 degC)", "bias_b": "adu/degC", "read_noise": "adu",
    "dark_ref": "e-/s at t_ref", "dark_ref_adu": "adu/s at t_ref", "hot_mask": "bool",
    "noisy_mask": "bool", "prnu": "1", "vignetting": "1", "flat_rate": "adu/s",
    "rad_hot_threshold": "krad", "rad_hot_amplitude": "e-/s at t_ref", "damage_label": "str",
    "damage_dose": "krad", "damage_bias_shift": "adu", "damage_dark_ref": "e-/s at t_ref",
    "damage_hot_mask": "bool",
}


# ================================================================================================
# Truth records and the campaign
# ================================================================================================

@dataclass(frozen=True)
class FrameTruth:
    """What went into one frame.

    Attributes
    ----------
    path : str
        File path relative to the campaign root (POSIX separators).
    attempt : str
        Folder holding the frame's configuration and log (raw layouts) or its FITS folder.
    kind : str
        ``bias``, ``dark`` or ``flat``.
    stage : str or None
        ``pre``, ``radiating`` or ``post``; None in the standard campaign.
    step : str or None
        Dose-step folder, e.g. ``10kRads``; None outside irradiation.
    setpoint : float
        Temperature set point [degC] (the one in folder and file names).
    temperature : float
        Recorded sensor temperature [degC]; the frame's physics used this value.
    exposure : float
        Requested exposure time [s].
    real_exposure : float
        Real exposure time reported by the camera [s]; the physics integrated this.
    dose : float
        Accumulated dose in the logs at the frame's time [krad].
    damage_dose : float
        Dose the damage physics used [krad] (lower than ``dose`` after annealing).
    frame : int
        Frame number within its attempt (``FrameNum``).
    timestamp : float
        Acquisition time, Unix time [s].
    defect : str or None
        ``truncated``, ``all_zero``, ``dead_region`` or None.
    """

    path: str
    attempt: str
    kind: str
    stage: str | None
    step: str | None
    setpoint: float
    temperature: float
    exposure: float
    real_exposure: float
    dose: float
    damage_dose: float
    frame: int
    timestamp: float
    defect: str | None = None


@dataclass(frozen=True)
class AttemptTruth:
    """How one attempt folder was written (file names and formatting variants).

    Attributes
    ----------
    path : str
        Folder relative to the campaign root.
    kind : str
        Frame kind of the attempt.
    setpoint : float
        Temperature set point [degC].
    exposure : float
        Requested exposure [s].
    frames : int
        Number of frames.
    config : str or None
        Configuration file name (``configFile.txt`` or ``config.txt``), None for FITS folders.
    config_style : str or None
        ``"KEY: value"``, ``"key=value"``, ``"KEY = value"``.
    log : str or None
        Per-frame log name.
    delimiter : str
        Log field delimiter.
    temperature_column : str
        Name of the sensor-temperature column of the log.
    """

    path: str
    kind: str
    setpoint: float
    exposure: float
    frames: int
    config: str | None
    config_style: str | None
    log: str | None
    delimiter: str = ","
    temperature_column: str = "Temperature"


@dataclass
class Campaign:
    """A simulated campaign on disk.

    Attributes
    ----------
    root : pathlib.Path
        Campaign folder (``OUT``).
    layout : str
        ``standard``, ``irradiation`` or ``dosedirs``.
    seed : int
        Seed of the generator.
    width, height : int
        Frame size [pixel].
    physics : Physics
        Parameters used.
    records : list of FrameTruth
        One record per frame file, in acquisition order.
    attempts : list of AttemptTruth
        One record per attempt (or FITS group), in acquisition order.
    truth_json, truth_npz : pathlib.Path
        The truth files.
    """

    root: Path
    layout: str
    seed: int
    width: int
    height: int
    physics: Physics
    records: list[FrameTruth]
    attempts: list[AttemptTruth]
    truth_json: Path
    truth_npz: Path

    def select(self, **criteria: Any) -> list[FrameTruth]:
        """Records matching all ``criteria``, e.g. ``select(kind="dark", defect=None)``."""
        unknown = set(criteria) - {f.name for f in dataclasses.fields(FrameTruth)}
        if unknown:
            raise ValueError(f"unknown FrameTruth fields: {sorted(unknown)}")
        return [r for r in self.records if all(getattr(r, k) == v for k, v in criteria.items())]

    def path(self, record: FrameTruth) -> Path:
        """Absolute path of a record's frame file."""
        return self.root / record.path

    def maps(self) -> dict[str, np.ndarray]:
        """Load the per-pixel truth maps (see :func:`truth_maps`, :func:`damage_maps`)."""
        with np.load(self.truth_npz, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def summary(self) -> str:
        """One line: what was written where."""
        defects = sum(r.defect is not None for r in self.records)
        return (f"{self.layout} campaign, seed {self.seed}, {self.width}x{self.height} px: "
                f"{len(self.records)} frames ({defects} defective) in {len(self.attempts)} groups "
                f"under {self.root}; truth in {self.truth_json.parent}")


def load_campaign(root: str | os.PathLike) -> Campaign:
    """Read back a simulated campaign from its ``truth/truth.json``.

    Raises
    ------
    UserError
        When ``root`` holds no truth file.
    """
    root = Path(root)
    path = root / TRUTH_DIR / TRUTH_JSON
    if not path.is_file():
        raise UserError(f"{path}: no simulation truth here; run python -m utils.simulate first")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Campaign(root=root, layout=doc["layout"], seed=doc["seed"], width=doc["width"],
                    height=doc["height"], physics=Physics(**doc["physics"]),
                    records=[FrameTruth(**r) for r in doc["frames"]],
                    attempts=[AttemptTruth(**a) for a in doc["attempts"]],
                    truth_json=path, truth_npz=root / TRUTH_DIR / TRUTH_NPZ)


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


def _plan_irradiation(frames, doses, temperature, dark_exposures,
                      flat_exposures) -> list[_Attempt]:
    """Folders of the irradiation campaign: pre, one stage per dose step, post."""
    stages = [("pre", PurePosixPath(_STAGE_DIRS["pre"]), None, 0.0)]
    stages += [("radiating", PurePosixPath(_STAGE_DIRS["radiating"], f"{_g(d)}kRads"),
                f"{_g(d)}kRads", d) for d in doses]
    stages.append(("post", PurePosixPath(_STAGE_DIRS["post"]), None, doses[-1]))
    T = f"T{_g(temperature)}"
    plan: list[_Attempt] = []
    for stage, base, step, nominal in stages:
        groups = [("bias", BIAS_EXPOSURE, base / _IRRADIATION_SECTIONS["bias"] / T / "attempt0")]
        groups += [("dark", e, base / _IRRADIATION_SECTIONS["dark"] / T / f"{_g(e)}s" / "attempt0")
                   for e in dark_exposures]
        groups += [("flat", e, base / _IRRADIATION_SECTIONS["flat"] / T / f"{_g(e)}s" / "attempt0")
                   for e in flat_exposures]
        for kind, exposure, rel in groups:
            # while the beam is on, darks and flats carry the per-attempt radiation log
            log = RADIATION_LOG if stage == "radiating" and kind != "bias" else TEMPERATURE_LOG
            plan.append(_Attempt(rel, kind, temperature, exposure, frames, 0, stage, step,
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


def _assign_doses(rng: np.random.Generator, plan: list[_Attempt], scheduled: list[list[_Frame]],
                  physics: Physics) -> None:
    """Dose of every frame: a constant-rate ramp over each dose step, annealed damage after.

    During a step the accumulated dose rises linearly in time from the previous
    step's nominal dose (at its first frame) to its own (at its last frame);
    each frame's damage is the dose at its time stamp.  Post-irradiation frames
    log the final dose but carry only ``1 - annealing_fraction`` of its damage.
    """
    steps: dict[str, list[_Frame]] = {}
    nominal: dict[str, float] = {}
    for att, frames in zip(plan, scheduled):
        if att.stage == "radiating":
            steps.setdefault(att.step, []).extend(frames)
            nominal[att.step] = att.nominal_dose
    rates: dict[str, float] = {}
    previous = 0.0
    for step, frames in steps.items():
        t0 = min(f.truth.timestamp for f in frames)
        t1 = max(f.truth.timestamp for f in frames)
        rates[step] = (nominal[step] - previous) / (t1 - t0) if t1 > t0 else 0.0
        for f in frames:
            dose = nominal[step] if t1 <= t0 else previous + rates[step] * (f.truth.timestamp - t0)
            dose = round(dose, 4)
            f.truth = dataclasses.replace(f.truth, dose=dose, damage_dose=dose)
        previous = nominal[step]
    final = previous
    for att, frames in zip(plan, scheduled):
        true_rate = rates.get(att.step, 0.0) if att.stage == "radiating" else 0.0
        for f in frames:
            if att.stage == "post":
                f.truth = dataclasses.replace(
                    f.truth, dose=final,
                    damage_dose=round(final * (1.0 - physics.annealing_fraction), 4))
            measured = (true_rate * (1.0 + physics.dose_rate_noise * rng.standard_normal())
                        + physics.radiation_background * abs(rng.standard_normal()))
            f.radiation_level = float(f"{max(measured, 0.0):.6g}")


def _place_defects(plan: list[_Attempt],
                   scheduled: list[list[_Frame]]) -> dict[tuple[int, int], str]:
    """Choose ``(attempt index, frame index)`` of each defect so that no group loses its frames.

    A slot is accepted only if its group (same kind, stage, step, set point and
    exposure) keeps at least two clean frames.
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
              ("dead_region", flats + darks))
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


def _campaign_radiation_log_text(frames: Iterable[_Frame]) -> str:
    lines = ["FrameNum,TimeStamp,Dose,RadiationLevel,Temperature"]
    for f in sorted(frames, key=lambda f: f.truth.timestamp):
        t = f.truth
        lines.append(f"{t.frame},{_num(t.timestamp, 3)},{_num(t.dose, 4)},"
                     f"{_num(f.radiation_level, 8)},{_num(t.temperature, 3)}")
    return "\n".join(lines) + "\n"


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
            data = render_frame(rng, sensor, physics, kind=t.kind, temperature=t.temperature,
                                exposure=t.real_exposure, damage_dose=t.damage_dose)
            defect = defects.get((i, k))
            if defect == "all_zero":
                data[:] = 0
            elif defect == "dead_region":
                data[_dead_region(data.shape)] = 0
            if defect:
                f.truth = dataclasses.replace(t, defect=defect)
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
              progress_bar: bool, write_extra=None, damage_states=None) -> Campaign:
    """Common driver: sensor -> schedule -> doses -> defects -> frames -> logs -> truth.

    ``write_extra(root, plan, scheduled)`` writes layout-specific files (campaign
    logs); ``damage_states(plan, scheduled)`` returns ``(labels, doses)`` of the
    damage maps to record, for layouts with radiation.
    """
    physics = Physics() if physics is None else physics
    width, height = int(width), int(height)
    root = _prepare_root(out)
    # one generator, consumed in a fixed order: sensor maps, schedule, doses, frames
    rng = np.random.default_rng(seed)
    sensor = make_sensor(rng, width, height, physics)
    scheduled = _schedule(rng, plan, physics)
    _assign_doses(rng, plan, scheduled, physics)
    placed = _place_defects(plan, scheduled) if defects else {}
    _write_frames(root, rng, sensor, physics, plan, scheduled, width, height, seed, placed,
                  progress_bar)
    if write_extra is not None:
        write_extra(root, plan, scheduled)
    maps = truth_maps(sensor, physics)
    if damage_states is not None:
        maps.update(damage_maps(sensor, physics, *damage_states(plan, scheduled)))
    extra = {"parameters": parameters,
             "defects": _defect_details(scheduled, placed, (height, width))}
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
                      progress_bar: bool = False) -> Campaign:
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
    return _simulate(out, "standard", seed, width, height, physics, plan, defects=defects,
                     parameters=parameters, progress_bar=progress_bar)


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
                         physics: Physics | None = None, progress_bar: bool = False) -> Campaign:
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

    Returns
    -------
    Campaign
        Paths and per-frame truth; ``truth.npz`` adds the damage maps of every
        dose step and of the post stage (labels ``<dose>kRads`` and ``post``).

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
    plan = _plan_irradiation(int(frames), doses, temperature, dark_exposures, flat_exposures)
    post_damage = round(doses[-1] * (1.0 - physics.annealing_fraction), 4)

    def write_extra(root, plan, scheduled):
        write_text(_campaign_radiation_log_text(f for fr in scheduled for f in fr),
                   root / CAMPAIGN_RADIATION_LOG)

    def damage_states(plan, scheduled):
        return [f"{_g(d)}kRads" for d in doses] + ["post"], list(doses) + [post_damage]

    parameters = {"frames": int(frames), "doses": doses, "temperature": temperature,
                  "dark_exposures": dark_exposures, "flat_exposures": flat_exposures,
                  "defects": defects, "post_damage_dose": post_damage,
                  "radiation_log": CAMPAIGN_RADIATION_LOG}
    return _simulate(out, "irradiation", seed, width, height, physics, plan, defects=defects,
                     parameters=parameters, progress_bar=progress_bar, write_extra=write_extra,
                     damage_states=damage_states)


def simulate_dosedirs(out: str | os.PathLike, *, seed: int = 1, width: int = 40, height: int = 24,
                      frames: int = 4, doses: Sequence[float] = (5.0, 10.0),
                      with_log: Sequence[bool] = (False, True), constant_dose_log: bool = True,
                      physics: Physics | None = None, temperature: float = 20.0,
                      dark_exposure: float = 1.0, progress_bar: bool = False) -> Campaign:
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
    plan = _plan_dosedirs(int(frames), doses, temperature, dark_exposure)

    def write_extra(root, plan, scheduled):
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
                  "dark_exposure": dark_exposure}
    return _simulate(out, "dosedirs", seed, width, height, physics, plan, defects=False,
                     parameters=parameters, progress_bar=progress_bar, write_extra=write_extra,
                     damage_states=damage_states)


# ================================================================================================
# Command line
# ================================================================================================

_LAYOUTS = {"standard": simulate_standard, "irradiation": simulate_irradiation,
            "dosedirs": simulate_dosedirs}


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "y", "true", "1"):
        return True
    if value in ("no", "n", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser; layout options left unset fall back to the layout's defaults."""
    parser = make_parser("python -m utils.simulate", __doc__)
    unset = argparse.SUPPRESS  # absent options keep the Python defaults of each layout
    parser.add_argument("layout", choices=list(_LAYOUTS), help="campaign layout to write")
    parser.add_argument("out", type=Path, help="new or empty output folder")
    parser.add_argument("--seed", type=int, default=unset, metavar="N",
                        help="seed of the random generator (default 1)")
    parser.add_argument("--width", type=int, default=unset, metavar="W",
                        help="frame width [pixel] (default 40)")
    parser.add_argument("--height", type=int, default=unset, metavar="H",
                        help="frame height [pixel] (default 24)")
    parser.add_argument("--frames", type=int, default=unset, metavar="N",
                        help="frames per attempt (default 4; irradiation 3)")
    parser.add_argument("--attempts", type=int, default=unset, metavar="N",
                        help="standard: attempts per set point (default 2)")
    parser.add_argument("--bias-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: bias set points [degC] (default -10 0 12.5 25)")
    parser.add_argument("--dark-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: dark set points [degC] (default 0 25)")
    parser.add_argument("--dark-exposures", type=float, nargs="+", default=unset, metavar="S",
                        help="standard, irradiation: dark exposures [s] "
                             "(default 0.5 2; irradiation 1)")
    parser.add_argument("--flat-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: flat set points [degC] (default 25)")
    parser.add_argument("--flat-exposures", type=float, nargs="+", default=unset, metavar="S",
                        help="standard, irradiation: flat exposures [s] (default 0.1 0.4; "
                             "irradiation 0.2)")
    parser.add_argument("--doses", type=float, nargs="+", default=unset, metavar="KRAD",
                        help="irradiation, dosedirs: increasing doses [krad] "
                             "(default 10 20; dosedirs 5 10)")
    parser.add_argument("--temperature", type=float, default=unset, metavar="T",
                        help="irradiation, dosedirs: set point [degC] (default 20)")
    parser.add_argument("--dark-exposure", type=float, default=unset, metavar="S",
                        help="dosedirs: dark exposure [s] (default 1)")
    parser.add_argument("--with-log", type=_yes_no, nargs="+", default=unset, metavar="YES|NO",
                        help="dosedirs: write radiationLogDef.csv in each folder, cycled "
                             "(default no yes)")
    parser.add_argument("--constant-dose-log", type=_yes_no, default=unset, metavar="YES|NO",
                        help="dosedirs: write the nominal dose in every log row instead of the "
                             "true ramping dose (default yes)")
    parser.add_argument("--defects", action=argparse.BooleanOptionalAction, default=unset,
                        help="plant a truncated file, an all-zero frame and a dead region "
                             "(default on for standard, off for irradiation)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a Physics parameter, e.g. --set gain=1.5 (repeatable)")
    return parser


_LAYOUT_OPTIONS = ("seed", "width", "height", "frames", "attempts", "bias_temperatures",
                   "dark_temperatures", "dark_exposures", "flat_temperatures", "flat_exposures",
                   "doses", "temperature", "dark_exposure", "with_log", "constant_dose_log",
                   "defects")


def physics_from_assignments(assignments: Sequence[str]) -> Physics:
    """Build a :class:`Physics` from ``NAME=VALUE`` strings.

    Raises
    ------
    ConfigError
        On an unknown name or a value that is not a number.

    Examples
    --------
    >>> physics_from_assignments(["gain=1.5"]).gain
    1.5
    """
    defaults = {f.name: f.default for f in dataclasses.fields(Physics)}
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                              f"{', '.join(defaults)}")
        try:
            values[name] = type(defaults[name])(text.strip())
        except ValueError as err:
            raise ConfigError(f"--set {item!r}: {err}") from err
    return Physics(**values)


def _run(args: argparse.Namespace) -> int:
    func = _LAYOUTS[args.layout]
    options = {name: getattr(args, name) for name in _LAYOUT_OPTIONS if hasattr(args, name)}
    accepted = inspect.signature(func).parameters
    wrong = ["--" + name.replace("_", "-") for name in options if name not in accepted]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} do(es) not apply to the {args.layout} layout")
    campaign = func(args.out, physics=physics_from_assignments(args.set),
                    progress_bar=not args.no_progress, **options)
    logger.info("wrote %s", campaign.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator command line; returns the exit status (0, or 2 on a user error)."""
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
