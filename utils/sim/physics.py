"""Physics of the simulated camera: parameters, per-pixel sensor maps, and frames drawn from them.

Pure computation (no files): :class:`Physics` holds every parameter with its
unit, :func:`make_sensor` draws the per-pixel properties of one sensor, and
:func:`render_frame` draws one stored frame (12-bit ADC counts x 16) from
them.  :func:`truth_maps` and :func:`damage_maps` give the per-pixel truth in
the units of converted frames, for tests to check recovery against.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import adu
from ..errors import ConfigError

#: Bits of each stored sample (``BIT_DEPTH`` of the configuration).
SAMPLE_BITS = adu.STORED_BITS
#: Relative photo-response of a column defect (``Physics.defect_columns``).
COLUMN_DEFECT_RESPONSE = 0.85
#: Range of the relative photo-response of a cold pixel (``Physics.cold_fraction``).
COLD_RESPONSE = (0.3, 0.7)
_KIND_NAMES = {"bias": "Bias", "dark": "Dark", "flat": "Flat"}


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
    # charge the beam deposits during an exposure (0: none, every earlier campaign unchanged):
    # one hit per pixel per krad on average (Poisson), each of a Gaussian charge, so that the
    # radiation response model's <q> and sigma_q are exactly these (see beam_charge_counts)
    beam_charge: float = _param(0.0, "ADC count", "mean charge of one beam hit (one hit per "
                                                  "pixel per krad received while exposing)")
    beam_charge_sigma: float = _param(0.0, "ADC count", "rms spread of the charge of one hit")
    # flat-field truth (defaults leave every earlier campaign unchanged, byte for byte)
    optical_centre_x: float = _param(0.5, "1", "optical-centre column / (width - 1)")
    optical_centre_y: float = _param(0.5, "1", "optical-centre row / (height - 1)")
    vignetting_r4: float = _param(0.0, "1", "quartic fall-off: 1 - v (r/rmax)^2 - v4 (r/rmax)^4")
    prnu_row_sigma: float = _param(0.0, "1", "rms of the per-row photo-response pattern")
    prnu_col_sigma: float = _param(0.0, "1", "rms of the per-column photo-response pattern")
    cold_fraction: float = _param(0.0, "1", "fraction of cold pixels (response 30-70 %)")
    dead_fraction: float = _param(0.0, "1", "fraction of dead pixels (no photo-response)")
    defect_columns: int = _param(0, "1", "columns whose response is COLUMN_DEFECT_RESPONSE")
    lamp_stability: float = _param(0.0, "1", "relative rms of the flat lamp flux, frame to frame")

    def __post_init__(self):
        if not 1 <= self.adc_bits <= SAMPLE_BITS:
            raise ConfigError(f"adc_bits must be within 1..{SAMPLE_BITS}, got {self.adc_bits}")
        positive = ("gain", "doubling_temperature", "read_noise", "noisy_factor", "dark_median")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"Physics.{name} must be > 0, got {getattr(self, name)}")
        for name in ("noisy_fraction", "hot_fraction", "annealing_fraction", "vignetting",
                     "optical_centre_x", "optical_centre_y", "vignetting_r4", "cold_fraction",
                     "dead_fraction"):
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
    response_defect : numpy.ndarray or None
        Relative photo-response of defects (cold, dead pixels, column defects), 1 elsewhere
        [1]; None when the sensor has none.
    cold_mask, dead_mask, column_defect_mask : numpy.ndarray or None
        Boolean maps of those defects (None when the sensor has none).
    prnu_row, prnu_col : numpy.ndarray or None
        Row (height,) and column (width,) parts of ``prnu`` [1] (None when absent).
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
    response_defect: np.ndarray | None = None
    cold_mask: np.ndarray | None = None
    dead_mask: np.ndarray | None = None
    column_defect_mask: np.ndarray | None = None
    prnu_row: np.ndarray | None = None
    prnu_col: np.ndarray | None = None

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
    # radial fall-off about the optical centre, normalised to the frame's half-diagonal
    y, x = np.indices(shape, dtype=np.float64)
    yc, xc = (height - 1) / 2.0, (width - 1) / 2.0
    y0, x0 = physics.optical_centre_y * (height - 1), physics.optical_centre_x * (width - 1)
    r2 = ((y - y0) ** 2 + (x - x0) ** 2) / max(yc ** 2 + xc ** 2, 1e-12)
    fall = physics.vignetting * r2
    if physics.vignetting_r4:
        fall = fall + physics.vignetting_r4 * r2 * r2
    vignetting = (1.0 - fall).astype(f32)
    if vignetting.min() <= 0:
        raise ConfigError("Physics.vignetting and vignetting_r4 leave no light in a corner; "
                          "lower them or move the optical centre")
    # a pixel turns hot once the damage dose passes its threshold: the hot set only grows with dose
    if physics.rad_hot_rate > 0:
        threshold = rng.exponential(1.0 / physics.rad_hot_rate, shape)
    else:
        threshold = np.full(shape, np.inf)
    amplitude = rng.uniform(physics.rad_hot_min, physics.rad_hot_max, shape)
    # flat-field structure: drawn only when asked for, after everything above, so campaigns
    # without it keep their random stream
    flat = _flat_structure(rng, shape, physics)
    if flat.get("prnu_row") is not None:
        prnu = (prnu + flat["prnu_row"][:, None] + flat["prnu_col"][None, :]).astype(f32)
    return Sensor(bias_a=bias_a, bias_b=bias_b, read_noise=read_noise, dark_ref=dark.astype(f32),
                  hot_mask=hot, noisy_mask=noisy, prnu=prnu, vignetting=vignetting,
                  rad_hot_threshold=threshold.astype(f32), rad_hot_amplitude=amplitude.astype(f32),
                  **flat)


def _flat_structure(rng: np.random.Generator, shape: tuple[int, int], physics: Physics) -> dict:
    """Row/column response patterns and defects (cold, dead pixels, column defects).

    Returns the optional :class:`Sensor` fields; empty when the physics asks for none.
    """
    out: dict = {}
    height, width = shape
    if physics.prnu_row_sigma > 0 or physics.prnu_col_sigma > 0:
        out["prnu_row"] = (physics.prnu_row_sigma * rng.standard_normal(height)).astype(np.float32)
        out["prnu_col"] = (physics.prnu_col_sigma * rng.standard_normal(width)).astype(np.float32)
    if physics.cold_fraction > 0 or physics.dead_fraction > 0 or physics.defect_columns > 0:
        response = np.ones(shape, np.float32)
        cold = rng.random(shape) < physics.cold_fraction
        response[cold] = rng.uniform(*COLD_RESPONSE, int(cold.sum()))
        dead = (rng.random(shape) < physics.dead_fraction) & ~cold
        response[dead] = 0.0
        columns = np.zeros(shape, bool)
        n_col = min(int(physics.defect_columns), max(width - 4, 0))
        if n_col:
            # away from the edges, where a column is hard to tell from vignetting
            picks = rng.choice(np.arange(2, width - 2), n_col, replace=False)
            columns[:, picks] = True
            response[:, picks] *= np.float32(COLUMN_DEFECT_RESPONSE)
        out.update(response_defect=response, cold_mask=cold, dead_mask=dead,
                   column_defect_mask=columns)
    return out


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
    """Photo-electron rate of a flat field [e-/s]: flux x PRNU x vignetting (x defects)."""
    rate = physics.flat_flux * sensor.prnu * sensor.vignetting
    if sensor.response_defect is not None:
        rate = rate * sensor.response_defect
    return rate


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
                 temperature: float, exposure: float, damage_dose: float = 0.0,
                 illumination: float = 1.0,
                 extra_counts: np.ndarray | None = None,
                 beam_dose: float = 0.0) -> np.ndarray:
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
    illumination : float, optional
        Flat lamp flux relative to ``Physics.flat_flux`` [1] (lamp drift). Default is 1.
    extra_counts : numpy.ndarray, optional
        Signal added before the read noise and the ADC [ADC count], e.g. the
        charge of particle hits or the offset of a random-telegraph pixel.
        Default is None (nothing added; draws and output unchanged).
    beam_dose : float, optional
        Dose received while exposing [krad] (dose rate x exposure): the beam's charge
        (:func:`beam_charge_counts`) is added. Default is 0 (nothing drawn).

    Returns
    -------
    numpy.ndarray
        uint16 array of shape ``sensor.shape``.
    """
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    electrons = dark_current(sensor, physics, temperature, damage_dose) * exposure
    if kind == "flat":
        light = flat_illumination(sensor, physics) * exposure
        electrons = electrons + (light if illumination == 1.0 else light * illumination)
    counts = bias_level(sensor, physics, temperature, damage_dose).astype(np.float64)
    counts += rng.poisson(electrons) / physics.gain
    counts += rng.standard_normal(sensor.shape) * sensor.read_noise
    if extra_counts is not None:
        counts += extra_counts
    beam = beam_charge_counts(rng, sensor.shape, physics, beam_dose)
    if beam is not None:
        counts += beam
    return digitise(counts, physics.adc_bits)


def beam_charge_counts(rng: np.random.Generator, shape: tuple[int, int], physics: Physics,
                       dose: float) -> np.ndarray | None:
    """Charge the beam deposits in each pixel during one exposure [ADC count].

    Each pixel receives ``N ~ Poisson(dose)`` hits (one per krad on average) of charge
    ``N(beam_charge, beam_charge_sigma)`` each, so the signal has mean ``<q> D`` and
    variance ``(<q>^2 + sigma_q^2) D`` with ``D = dose_rate x exposure`` [krad]: the
    radiation response model's beam terms.

    Returns
    -------
    numpy.ndarray or None
        None when there is no beam charge (nothing is drawn: campaigns without it keep
        their random stream).
    """
    if physics.beam_charge <= 0 and physics.beam_charge_sigma <= 0 or not dose > 0:
        return None
    hits = rng.poisson(dose, shape)
    return (hits * physics.beam_charge
            + np.sqrt(hits) * physics.beam_charge_sigma * rng.standard_normal(shape))


def radiation_model_truth(maps: dict[str, np.ndarray], physics: Physics,
                          pixels: np.ndarray | None = None,
                          t_ref: float | None = None) -> dict[str, float]:
    """The radiation response model's parameters of a simulated sensor, over a pixel set.

    The model (``analysis.fit_radiation_model``) describes the mean over a fixed set of
    pixels: ``B0 + alpha_D D + b_T (T - t_ref) + (DC0 + beta_D D) 2^((T - t_ref)/T_d) t +
    <q> Ddot t`` and the mean temporal variance ``sigma_read^2 + (DC0 + beta_D D) 2^(...) t
    / K + (<q>^2 + sigma_q^2) Ddot t`` (stored adu; ``K`` = gain in e- per stored adu).

    Parameters
    ----------
    maps : dict
        :func:`truth_maps` of the sensor.
    physics : Physics
        Its parameters.
    pixels : numpy.ndarray, optional
        Boolean map of the pixels averaged (default: all).
    t_ref : float, optional
        Reference temperature [degC] (default ``physics.t_ref``).

    Returns
    -------
    dict
        ``B0`` [adu at t_ref], ``alpha_D`` [adu/krad], ``b_T`` [adu/degC], ``DC0``
        [adu/s at t_ref], ``beta_D`` [adu/s/krad], ``q_mean`` [adu/krad], ``sigma_q``
        [adu/krad], ``sigma_read`` [adu, quantisation included], ``T_d`` [degC].
    """
    t_ref = physics.t_ref if t_ref is None else float(t_ref)
    sel = np.ones(maps["bias_a"].shape, bool) if pixels is None else np.asarray(pixels, bool)
    scale = physics.adu_scale
    dark = float(np.mean(maps["dark_ref_adu"][sel], dtype=np.float64)) \
        * 2.0 ** ((t_ref - physics.t_ref) / physics.doubling_temperature)
    read2 = float(np.mean(np.asarray(maps["read_noise"][sel], np.float64) ** 2))
    return {
        "B0": float(np.mean(maps["bias_a"][sel] + maps["bias_b"][sel] * t_ref,
                            dtype=np.float64)),
        "alpha_D": physics.bias_shift * scale,
        "b_T": float(np.mean(maps["bias_b"][sel], dtype=np.float64)),
        "DC0": dark,
        "beta_D": physics.dark_damage * dark,
        "q_mean": physics.beam_charge * scale,
        "sigma_q": physics.beam_charge_sigma * scale,
        "sigma_read": math.sqrt(read2 + scale ** 2 / 12.0),
        "T_d": physics.doubling_temperature,
    }


def truth_maps(sensor: Sensor, physics: Physics) -> dict[str, np.ndarray]:
    """Per-pixel truth in the units of converted frames (stored 16-bit ADU unless stated).

    Returns
    -------
    dict
        ``bias_a`` [adu, bias at 0 degC], ``bias_b`` [adu/degC], ``read_noise``
        [adu], ``dark_ref`` [e-/s at t_ref], ``dark_ref_adu`` [adu/s at t_ref],
        ``hot_mask``, ``noisy_mask`` (bool), ``prnu`` [1], ``vignetting`` [1],
        ``flat_rate`` [adu/s, flat signal per second of exposure], and the flat-field
        truth of :func:`flat_truth`.
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
        **flat_truth(sensor),
    }


def flat_truth(sensor: Sensor) -> dict[str, np.ndarray]:
    """Flat-field truth: ``response`` [1, ``prnu`` times the defects' response],
    ``cold_mask``, ``dead_mask``, ``column_defect_mask`` (bool), ``prnu_row`` [1, (height,)]
    and ``prnu_col`` [1, (width,)] (zeros / False when the sensor has none)."""
    shape = sensor.shape
    none = np.zeros(shape, bool)
    defect = sensor.response_defect
    return {
        "response": (sensor.prnu if defect is None else sensor.prnu * defect).astype(np.float32),
        "cold_mask": none if sensor.cold_mask is None else sensor.cold_mask,
        "dead_mask": none if sensor.dead_mask is None else sensor.dead_mask,
        "column_defect_mask": none if sensor.column_defect_mask is None
        else sensor.column_defect_mask,
        "prnu_row": np.zeros(shape[0], np.float32) if sensor.prnu_row is None
        else sensor.prnu_row,
        "prnu_col": np.zeros(shape[1], np.float32) if sensor.prnu_col is None
        else sensor.prnu_col,
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
    "response": "1 (prnu x defect response)", "cold_mask": "bool", "dead_mask": "bool",
    "column_defect_mask": "bool", "prnu_row": "1 (per row)", "prnu_col": "1 (per column)",
    "rad_hot_threshold": "krad", "rad_hot_amplitude": "e-/s at t_ref", "damage_label": "str",
    "damage_dose": "krad", "damage_bias_shift": "adu", "damage_dark_ref": "e-/s at t_ref",
    "damage_hot_mask": "bool",
}
