"""Random-telegraph-signal (RTS) pixels: a two-level offset that switches at random times.

An RTS pixel carries an extra signal that is either 0 (low state) or
``amplitude`` (high state).  It leaves each state after an exponentially
distributed time with mean ``tau_low`` or ``tau_high`` [s] (a two-state
continuous-time Markov chain).  Frames sample the state at their start time:
between two frames ``dt`` apart the exact two-state transition probabilities
are used, so any frame spacing (a gap between attempts included) is right.

RTS pixels appear with radiation damage: each pixel has an onset dose; it
switches only once the damage dose has reached it (a fraction of pixels is RTS
from the start, others turn on at a rate per krad, like the radiation hot
pixels of :mod:`utils.sim.physics`).

Pure computation: :func:`draw_rts_population` draws the pixels,
:class:`RTSProcess` evolves their states frame by frame and returns the extra
counts for :func:`utils.sim.physics.render_frame` (``extra_counts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .physics import Sensor


@dataclass(frozen=True)
class RTSParams:
    """Parameters of the RTS-pixel population.

    Attributes
    ----------
    fraction : float
        Fraction of pixels that are RTS before any irradiation [1]. Default is 0.03.
    per_krad : float
        Probability per krad of damage that a further pixel turns RTS [1/krad]. Default is 0.
    amplitude_min, amplitude_max : float
        Range of the step, in units of the pixel's own read noise [1] (drawn uniformly).
        Defaults are 3 and 8.
    dwell_min, dwell_max : float
        Range of the mean dwell time of each state [s] (drawn log-uniformly, independently
        for the two states). Defaults are 3 and 12 s.
    """

    fraction: float = 0.03
    per_krad: float = 0.0
    amplitude_min: float = 3.0
    amplitude_max: float = 8.0
    dwell_min: float = 3.0
    dwell_max: float = 12.0

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0 or self.per_krad < 0:
            raise ConfigError("RTS fraction must be within 0..1 and per_krad >= 0")
        if not 0 < self.amplitude_min <= self.amplitude_max:
            raise ConfigError("RTS amplitudes must satisfy 0 < amplitude_min <= amplitude_max")
        if not 0 < self.dwell_min <= self.dwell_max:
            raise ConfigError("RTS dwell times must satisfy 0 < dwell_min <= dwell_max")


@dataclass(frozen=True, eq=False)
class RTSPopulation:
    """The RTS pixels of one sensor (one entry per pixel, all arrays of one length).

    Attributes
    ----------
    rows, cols : numpy.ndarray
        Pixel coordinates (int).
    amplitude : numpy.ndarray
        Step between the two levels [ADC count].
    tau_low, tau_high : numpy.ndarray
        Mean dwell time in the low and the high state [s].
    onset_dose : numpy.ndarray
        Damage dose from which the pixel switches [krad] (0: from the start).
    """

    rows: np.ndarray
    cols: np.ndarray
    amplitude: np.ndarray
    tau_low: np.ndarray
    tau_high: np.ndarray
    onset_dose: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)

    def active(self, damage_dose: float) -> np.ndarray:
        """Which pixels switch at this damage dose [krad] (bool per pixel)."""
        return self.onset_dose <= damage_dose

    def truth(self, adu_scale: float) -> dict[str, np.ndarray]:
        """Arrays for ``truth.npz`` (amplitudes in stored ADU)."""
        return {"rts_rows": self.rows, "rts_cols": self.cols,
                "rts_amplitude": self.amplitude * adu_scale,
                "rts_tau_low": self.tau_low, "rts_tau_high": self.tau_high,
                "rts_onset_dose": self.onset_dose}


#: Units of the truth arrays (``truth.json`` "maps").
RTS_UNITS = {"rts_rows": "pixel row", "rts_cols": "pixel column",
             "rts_amplitude": "adu (step between the two levels)",
             "rts_tau_low": "s (mean dwell time, low state)",
             "rts_tau_high": "s (mean dwell time, high state)",
             "rts_onset_dose": "krad (damage dose from which the pixel switches)",
             "rts_switches": "number of state changes between frames of the sequence",
             "rts_frames_high": "frames spent in the high state"}


def draw_rts_population(rng: np.random.Generator, sensor: Sensor, params: RTSParams,
                        max_dose: float = 0.0) -> RTSPopulation:
    """Draw the RTS pixels of ``sensor``.

    Noisy pixels (``sensor.noisy_mask``) and hot pixels are left out: their own
    noise, not the RTS, would dominate the truth comparison.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (use a generator of its own: the campaign streams stay unchanged).
    sensor : Sensor
        Per-pixel properties (read noise, masks).
    params : RTSParams
        Population parameters.
    max_dose : float, optional
        Largest damage dose of the campaign [krad]; pixels whose onset lies beyond it
        are not kept. Default is 0.

    Returns
    -------
    RTSPopulation

    Examples
    --------
    >>> from utils.sim.physics import Physics, make_sensor
    >>> s = make_sensor(np.random.default_rng(1), 40, 30, Physics())
    >>> pop = draw_rts_population(np.random.default_rng(2), s, RTSParams(fraction=0.05))
    >>> 30 < len(pop) < 90
    True
    """
    eligible = ~(sensor.noisy_mask | sensor.hot_mask)
    u = rng.random(sensor.shape)
    onset = np.full(sensor.shape, np.inf)
    onset[u < params.fraction] = 0.0
    if params.per_krad > 0 and max_dose > 0:
        later = rng.exponential(1.0 / params.per_krad, sensor.shape)
        onset = np.where(np.isinf(onset) & (later <= max_dose), later, onset)
    chosen = eligible & np.isfinite(onset)
    rows, cols = np.nonzero(chosen)
    n = rows.size
    factor = rng.uniform(params.amplitude_min, params.amplitude_max, n)
    lo, hi = math.log(params.dwell_min), math.log(params.dwell_max)
    tau = np.exp(rng.uniform(lo, hi, (2, n)))
    return RTSPopulation(rows=rows, cols=cols,
                         amplitude=(factor * sensor.read_noise[rows, cols]).astype(np.float64),
                         tau_low=tau[0], tau_high=tau[1], onset_dose=onset[rows, cols])


@dataclass
class RTSProcess:
    """The states of an RTS population, advanced frame by frame.

    Parameters
    ----------
    population : RTSPopulation
        The pixels.
    rng : numpy.random.Generator
        Source of the switching (initial states drawn from the stationary distribution).
    """

    population: RTSPopulation
    rng: np.random.Generator
    state: np.ndarray = field(init=False)
    switches: np.ndarray = field(init=False)
    frames_high: np.ndarray = field(init=False)

    def __post_init__(self):
        pop = self.population
        p_high = pop.tau_high / (pop.tau_low + pop.tau_high)
        self.state = self.rng.random(len(pop)) < p_high
        self.switches = np.zeros(len(pop), dtype=np.int64)
        self.frames_high = np.zeros(len(pop), dtype=np.int64)

    def advance(self, dt: float, damage_dose: float) -> None:
        """Move the states on by ``dt`` [s] (exact two-state transition probabilities).

        Only pixels active at ``damage_dose`` [krad] switch.
        """
        if dt <= 0 or len(self.population) == 0:
            return
        pop = self.population
        rate_up, rate_down = 1.0 / pop.tau_low, 1.0 / pop.tau_high
        total = rate_up + rate_down
        relax = -np.expm1(-total * dt)
        p_up = rate_up / total * relax      # low -> high within dt
        p_down = rate_down / total * relax  # high -> low within dt
        u = self.rng.random(len(pop))
        flip = np.where(self.state, u < p_down, u < p_up) & pop.active(damage_dose)
        self.state = self.state ^ flip
        self.switches += flip

    def extra_counts(self, shape: tuple[int, int], damage_dose: float) -> np.ndarray:
        """Offset map of the current states [ADC count] (0 outside RTS pixels).

        Pixels not yet active sit in their low state (no offset).
        """
        pop = self.population
        on = self.state & pop.active(damage_dose)
        self.frames_high += on
        out = np.zeros(shape, dtype=np.float64)
        out[pop.rows[on], pop.cols[on]] = pop.amplitude[on]
        return out


__all__ = ["RTSParams", "RTSPopulation", "RTSProcess", "draw_rts_population", "RTS_UNITS"]
