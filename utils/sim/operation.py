"""The ``operation`` layout: frame sequences taken while the sensor works under the beam.

Layout under ``OUT`` (the old toolkit's "Operation" folder)::

    <dose>kRads/                   one folder per sequence, e.g. 5kRads, 10kRads
        frames/oper_exp<t>s_f<nnnn>.raw + configFile.txt + radiationLog.csv   (raw=True)
        fits/oper_exp<t>s_f<nnnn>.fits + radiationLog.csv                     (raw=False)
        powerLog.csv               time [s], current [A], voltage [V] at its own cadence
    truth/truth.json, truth/truth.npz

Each sequence is a run of dark frames at one set point while the beam follows
a fixed on/off profile (off, full, 30 %, 70 %, full, off).  The accumulated
dose rises from the previous sequence's nominal dose to this one's over the
sequence.  Particle hits (transients) land at random positions; their number
per frame is Poisson with mean ``hit_density x pixels x dose rate x exposure``,
so it follows the dose received during the exposure; each deposits a log-normal
charge spread over a
3 x 3 neighbourhood by a Gaussian spot.  The damage physics of
:mod:`utils.sim.physics` (dark current, radiation hot pixels) uses the dose at
each frame.

``radiationLog.csv`` is the per-frame log of the raw layout (the converter takes
``TimeStamp`` and the temperature from it, plus ``Dose`` [krad] and
``RadiationLevel`` [krad/s], the monitor's noisy reading of the dose rate).  With
``raw=False`` the frames are FITS with ``TIMESTMP`` in their headers and the
radiation log is sampled at its own cadence (``log_interval`` [s]), as an
independent instrument would be, so the analysis must interpolate it.

Truth: per frame the true dose rate (its mean over the frame's exposure), the
number of hits and, in ``truth.npz``, every hit (frame, row, column,
electrons); per sequence the Pearson correlation of the hit counts with the
true dose rate (``truth_pearson_r``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import PurePosixPath
from typing import Sequence

import numpy as np
from astropy.io import fits

from .. import headers as kw
from ..errors import ConfigError
from ..io.fitsio import write_hdul, write_text
from ..progress import progress
from .campaign import Campaign, FrameTruth
from .layouts import (
    _MAP_UNITS,
    _attempt_truth,
    _config_text,
    _fits_header,
    _log_text,
    _num,
    _prepare_root,
    _truth_document,
    _write_raw,
    _write_truth,
)
from .physics import Physics, make_sensor, render_frame, truth_maps
from .plan import (
    CAMPAIGN_START,
    FRAME_OVERHEAD,
    RADIATION_LOG,
    SETTLE_GAP,
    _Attempt,
    _check_doses,
    _check_size,
    _Frame,
    _g,
    _schedule,
)

#: Power-log file name of the operation layout.
POWER_LOG = "powerLog.csv"
#: Beam profile over a sequence: (start of the segment as a fraction of the sequence, relative
#: dose rate) -- off, full, 30 %, 70 %, full, off.
BEAM_PROFILE = ((0.0, 0.0), (0.1, 1.0), (0.35, 0.3), (0.55, 0.7), (0.8, 1.0), (0.9, 0.0))
#: Cadence of the power log [s].
POWER_INTERVAL = 1.0
#: Supply current without beam [A] and its rise at full beam [A].
CURRENT_BASE, CURRENT_BEAM = 0.45, 0.02
#: Supply voltage [V].
VOLTAGE = 5.0

_UNITS = {"hit_sequence": "sequence index", "hit_frame": "frame index within its sequence",
          "hit_row": "pixel row", "hit_col": "pixel column", "hit_electrons": "e- deposited"}


def beam_fraction(u: np.ndarray) -> np.ndarray:
    """Relative dose rate of :data:`BEAM_PROFILE` at sequence fractions ``u`` (0..1)."""
    u = np.asarray(u, dtype=float)
    starts = np.array([s for s, _ in BEAM_PROFILE])
    levels = np.array([v for _, v in BEAM_PROFILE])
    return levels[np.clip(np.searchsorted(starts, u, side="right") - 1, 0, len(levels) - 1)]


def beam_integral(u: np.ndarray) -> np.ndarray:
    """Integral of :func:`beam_fraction` from 0 to ``u`` (piecewise linear in ``u``)."""
    u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
    out = np.zeros_like(u)
    bounds = [s for s, _ in BEAM_PROFILE] + [1.0]
    for (start, level), stop in zip(BEAM_PROFILE, bounds[1:]):
        out += level * np.clip(np.minimum(u, stop) - start, 0.0, None)
    return out


def _spot(rng: np.random.Generator, electrons: float) -> np.ndarray:
    """3 x 3 charge of one hit [e-]: Gaussian spot (sigma 0.3-0.7 px) at a random sub-pixel spot."""
    sigma = rng.uniform(0.3, 0.7)
    centre = rng.uniform(-0.5, 0.5, 2)
    edges = np.array([-1.5, -0.5, 0.5, 1.5])
    fractions = []
    for c in centre:
        cdf = np.array([0.5 * (1 + math.erf((e - c) / (sigma * math.sqrt(2)))) for e in edges])
        fractions.append(np.diff(cdf))
    kernel = np.outer(fractions[0], fractions[1])
    return electrons * kernel / kernel.sum()


def _hits(rng, shape, expected, physics, median_electrons, sigma_ln):
    """Draw one frame's hits: (extra counts [ADC count], rows, cols, electrons)."""
    n = int(rng.poisson(expected))
    extra = np.zeros(shape, dtype=np.float64)
    rows = rng.integers(0, shape[0], n)
    cols = rng.integers(0, shape[1], n)
    charge = median_electrons * np.exp(sigma_ln * rng.standard_normal(n))
    for r, c, q in zip(rows, cols, charge):
        spot = _spot(rng, q) / physics.gain
        r0, c0 = r - 1, c - 1
        rs, cs = slice(max(r0, 0), min(r0 + 3, shape[0])), slice(max(c0, 0), min(c0 + 3, shape[1]))
        extra[rs, cs] += spot[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    return extra, rows, cols, charge


def _power_log_text(start: float, stop: float, rate_at, peak: float,
                    rng: np.random.Generator) -> str:
    lines = ["TimeStampPwr,Amperage,Voltage"]
    for t in np.arange(start, stop + POWER_INTERVAL, POWER_INTERVAL):
        level = float(rate_at(t)) / peak if peak > 0 else 0.0
        current = CURRENT_BASE + CURRENT_BEAM * level + 0.002 * rng.standard_normal()
        voltage = VOLTAGE + 0.01 * rng.standard_normal()
        lines.append(f"{_num(t, 3)},{_num(current, 5)},{_num(voltage, 4)}")
    return "\n".join(lines) + "\n"


def _sampled_log_text(start: float, stop: float, interval: float, dose_at, rate_at,
                      physics: Physics, temperature: float, rng: np.random.Generator) -> str:
    lines = ["TimeStamp,Dose,RadiationLevel,Temperature"]
    for t in np.arange(start, stop + interval, interval):
        measured = float(rate_at(t)) * (1 + physics.dose_rate_noise * rng.standard_normal()) \
            + physics.radiation_background * abs(rng.standard_normal())
        temp = temperature + physics.temperature_jitter * rng.standard_normal()
        lines.append(f"{_num(t, 3)},{_num(float(dose_at(t)), 5)},{_num(max(measured, 0), 8)},"
                     f"{_num(temp, 3)}")
    return "\n".join(lines) + "\n"


def simulate_operation(out: str | os.PathLike, *, seed: int = 1, width: int = 96,
                       height: int = 64, frames: int = 60, doses: Sequence[float] = (5.0,),
                       temperature: float = 20.0, exposure: float = 0.5,
                       hit_density: float = 0.04, hit_electrons: float = 1500.0,
                       hit_sigma_ln: float = 0.6, raw: bool = True,
                       log_interval: float = 1.0, log_margin: float = 10.0,
                       power_log: bool = True, physics: Physics | None = None,
                       progress_bar: bool = False) -> Campaign:
    """Write operation sequences under a beam, with their transients and truth.

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the one random generator. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 96 and 64.
    frames : int, optional
        Frames per sequence. Default is 60.
    doses : sequence of float, optional
        Increasing nominal dose at the end of each sequence [krad]; one ``<dose>kRads``
        folder each. Default is (5,).
    temperature : float, optional
        Set point [degC]. Default is 20.
    exposure : float, optional
        Exposure of every frame [s]. Default is 0.5.
    hit_density : float, optional
        Expected hits per pixel per krad received during an exposure [1/krad]. Default 0.04
        (about 15 hits per frame at full beam with the other defaults: 1.5 % of the pixels
        touched, so hits rarely touch each other).
    hit_electrons, hit_sigma_ln : float, optional
        Median charge of a hit [e-] and rms of its logarithm. Defaults are 1500 and 0.6.
    raw : bool, optional
        Raw frames with a per-frame ``radiationLog.csv`` (converted by the analysis), else
        FITS frames and a radiation log sampled every ``log_interval``. Default is True.
    log_interval : float, optional
        Cadence of the sampled radiation log (``raw=False``) [s]. Default is 1 (a 1 Hz
        monitor; a log much slower than the frames smears the beam's steps over several
        frames when interpolated).
    log_margin : float, optional
        How long the sampled log starts before the first frame and ends after the last [s].
        Negative values make a log that does not cover the sequence. Default is 10.
    power_log : bool, optional
        Write ``powerLog.csv``. Default is True.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    progress_bar : bool, optional
        Show a progress bar. Default is False.

    Returns
    -------
    Campaign
        Per-frame truth (``kind`` ``'oper'``); ``truth.json`` key ``operation`` holds per
        sequence the true dose rate and hit count of every frame and ``truth_pearson_r``.

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).

    Examples
    --------
    >>> import tempfile
    >>> c = simulate_operation(tempfile.mkdtemp(), frames=5, width=16, height=12)
    >>> len(c.records), c.records[0].kind
    (5, 'oper')
    """
    _check_size(width, height, frames)
    doses = _check_doses(doses)
    if not exposure > 0 or not hit_density >= 0 or not hit_electrons > 0 or not log_interval > 0:
        raise ConfigError("exposure, hit_electrons and log_interval must be > 0 and "
                          "hit_density >= 0")
    physics = Physics() if physics is None else physics
    width, height, frames = int(width), int(height), int(frames)
    shape = (height, width)
    root = _prepare_root(out)
    rng = np.random.default_rng(seed)
    sensor = make_sensor(rng, width, height, physics)
    plan: list[_Attempt] = []
    scheduled: list[list[_Frame]] = []
    sequences: list[dict] = []
    hits: dict[str, list] = {k: [] for k in _UNITS}
    clock = CAMPAIGN_START
    previous = 0.0
    for s, dose in enumerate(doses):
        label = f"{_g(dose)}kRads"
        folder = PurePosixPath(label)
        att = _Attempt(folder, "oper", temperature, exposure, frames, 0, "radiating", label,
                       dose, log_name=RADIATION_LOG if raw else None, config_index=0 if raw
                       else None, fits=not raw)
        if s:
            clock += SETTLE_GAP
        # times, temperatures and log values as for any attempt; the frames are then named,
        # typed and dosed as operation frames
        (recs,) = _schedule(rng, [_Attempt(folder, "dark", temperature, exposure, frames)],
                            physics, start=clock)
        times = np.array([f.truth.timestamp for f in recs])
        t0 = float(times[0])
        t1 = clock = float(times[-1] + exposure + FRAME_OVERHEAD)
        span = t1 - t0
        total = beam_integral(np.array([1.0]))[0]
        peak = (dose - previous) / (span * total)

        def rate_at(t, t0=t0, span=span, peak=peak):
            return peak * beam_fraction((np.asarray(t, float) - t0) / span) * \
                ((np.asarray(t, float) >= t0) & (np.asarray(t, float) < t0 + span))

        def dose_at(t, t0=t0, span=span, peak=peak, start=previous):
            return start + peak * span * beam_integral((np.asarray(t, float) - t0) / span)

        # what a frame receives is the dose during its exposure: the hits follow it, and the
        # true rate of a frame is its mean over the exposure (a step of the beam may fall
        # inside one)
        exposures = np.array([f.truth.real_exposure for f in recs])
        rates = (dose_at(times + exposures) - dose_at(times)) / exposures
        doses_at = np.round(dose_at(times), 5)
        counts = []
        for i, f in enumerate(recs):
            name = f"oper_exp{_g(exposure)}s_f{i:04d}"
            rel = folder / ("frames" if raw else "fits") / (name + (".raw" if raw else ".fits"))
            f.truth = dataclasses.replace(f.truth, path=str(rel), attempt=str(folder),
                                          kind="oper", stage="radiating", step=label,
                                          dose=float(doses_at[i]),
                                          damage_dose=float(doses_at[i]))
            measured = rates[i] * (1 + physics.dose_rate_noise * rng.standard_normal()) \
                + physics.radiation_background * abs(rng.standard_normal())
            f.radiation_level = float(f"{max(measured, 0.0):.6g}")
        plan.append(att)
        scheduled.append(recs)
        if raw:
            write_text(_config_text(att, width, height, seed), root / folder / "configFile.txt")
            write_text(_log_text(att, recs), root / folder / RADIATION_LOG)
        else:
            write_text(_sampled_log_text(t0 - log_margin, t1 + log_margin, log_interval, dose_at,
                                         rate_at, physics, temperature, rng),
                       root / folder / RADIATION_LOG)
        if power_log:
            write_text(_power_log_text(t0 - 5.0, t1 + 5.0, rate_at, peak, rng),
                       root / folder / POWER_LOG)
        for i, f in enumerate(progress(recs, desc=f"simulating {label}", enabled=progress_bar)):
            t = f.truth
            expected = hit_density * width * height * rates[i] * exposures[i]
            extra, rows, cols, charge = _hits(rng, shape, expected, physics, hit_electrons,
                                              hit_sigma_ln)
            counts.append(int(rows.size))
            hits["hit_sequence"] += [s] * rows.size
            hits["hit_frame"] += [i] * rows.size
            hits["hit_row"] += rows.tolist()
            hits["hit_col"] += cols.tolist()
            hits["hit_electrons"] += charge.tolist()
            data = render_frame(rng, sensor, physics, kind="dark", temperature=t.temperature,
                                exposure=t.real_exposure, damage_dose=t.damage_dose,
                                extra_counts=extra)
            if raw:
                _write_raw(root / t.path, data)
            else:
                header = _oper_header(t, physics)
                write_hdul(fits.HDUList([fits.PrimaryHDU(data, header)]), root / t.path)
        counts_arr = np.asarray(counts, dtype=float)
        r = float(np.corrcoef(counts_arr, rates)[0, 1]) if counts_arr.std() > 0 and \
            rates.std() > 0 else math.nan
        sequences.append({"folder": label, "nominal_dose": dose, "start_dose": previous,
                          "peak_dose_rate": peak, "start_time": t0, "stop_time": t1,
                          "dose_rate": rates.tolist(), "hits": counts,
                          "truth_pearson_r": r})
        previous = dose
    maps = truth_maps(sensor, physics)
    arrays = {k: np.asarray(v, dtype=float if k == "hit_electrons" else np.int64)
              for k, v in hits.items()}
    extra_doc = {"parameters": {"frames": frames, "doses": doses, "temperature": temperature,
                                "exposure": exposure, "hit_density": hit_density,
                                "hit_electrons": hit_electrons, "hit_sigma_ln": hit_sigma_ln,
                                "raw": raw, "log_interval": log_interval,
                                "log_margin": log_margin, "power_log": power_log,
                                "beam_profile": [list(p) for p in BEAM_PROFILE]},
                 "operation": sequences}
    document = _truth_document("operation", seed, width, height, physics, plan, scheduled,
                               extra_doc, [k for k in maps if k in _MAP_UNITS])
    document["maps"].update(_UNITS)
    json_path, npz_path = _write_truth(root, document, {**maps, **arrays})
    return Campaign(root=root, layout="operation", seed=seed, width=width, height=height,
                    physics=physics, records=[f.truth for fr in scheduled for f in fr],
                    attempts=[_attempt_truth(a) for a in plan], truth_json=json_path,
                    truth_npz=npz_path)


def _oper_header(truth: FrameTruth, physics: Physics) -> fits.Header:
    """FITS header of an already-converted operation frame (the converter's keywords)."""
    header = _fits_header(truth, physics)
    header[kw.CALTYPE] = ("OPER", "calibration type (operation sequence)")
    return header


def operation_truth(campaign: Campaign) -> list[dict]:
    """Per-sequence truth of an operation campaign (``truth.json`` key ``operation``)."""
    return json.loads(campaign.truth_json.read_text())["operation"]


__all__ = ["simulate_operation", "operation_truth", "beam_fraction", "beam_integral",
           "POWER_LOG", "BEAM_PROFILE"]
