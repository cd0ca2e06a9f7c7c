"""Long sequences over time: flats that change (structures, damaged pixels) and dark runs with RTS.

Two layouts of already-converted FITS frames (uint16, the converter's keywords:
``IMAGETYP``, ``FRAMENUM``, ``TIMESTMP``, ``DATE-OBS``, ``EXPTIME``, ``TEMP``,
``BUNIT`` and the ADU convention), with their ground truth:

``flatseq`` (:func:`simulate_flat_sequence`)
    ``visit<v>_T<t>/{bias,dark,flat}/*.fits``: the sensor is visited again and
    again over days, alternating between set points; each visit takes bias
    frames, darks at the flat exposure and flats.  Planted changes:

    * a *structure* (:class:`FlatStructure`): from a given visit on, the
      illumination of a disc drops by ``depth`` (a particle or a stain on the
      window); truth: its pixel mask, centroid and area;
    * *pixel classes* of the outgassing/destruction analysis (``pixel_classes``):
      ``sensor_damage`` pixels lose 30 % response from the damage visit on at
      every set point; ``likely_sensor`` pixels lose it at the first set point
      only; ``temperature`` pixels have a dark current so strong that their
      flat signal differs between set points but is stable at each one, plus
      ``glitch`` pixels bright in one single flat.

``darkseq`` (:func:`simulate_dark_sequence`)
    long runs of darks at one set point (``Darks/T<t>/<e>s/*.fits``), or one run
    per irradiation stage (``Preirradiation/Darks/...``,
    ``Irradiation/<dose>kRads/Darks/...``), with random-telegraph pixels
    (:mod:`utils.sim.rts`) whose number grows with dose; truth: every RTS
    pixel's amplitude, dwell times and onset dose, and its switches per run.

Frames are drawn one at a time from one seeded generator (the RTS switching
uses a generator of its own), so memory stays proportional to one frame.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..io.conversion import encode_frame, frame_header_bytes, write_frame_fits
from ..progress import progress
from .campaign import Campaign, FrameTruth
from .layouts import (
    _MAP_UNITS,
    _attempt_truth,
    _fits_header,
    _prepare_root,
    _truth_document,
    _write_truth,
)
from .physics import Physics, Sensor, make_sensor, render_frame, truth_maps
from .plan import (
    BIAS_EXPOSURE,
    CAMPAIGN_START,
    FRAME_JITTER,
    FRAME_OVERHEAD,
    _Attempt,
    _check_doses,
    _check_levels,
    _check_size,
    _Frame,
    _g,
)
from .rts import RTS_UNITS, RTSParams, RTSProcess, draw_rts_population

#: Time between two visits of the flat sequence [s] (one day).
VISIT_GAP = 86400.0
#: Response kept by a damaged pixel [1].
DAMAGED_RESPONSE = 0.7
#: Dark signal of a ``temperature`` pixel at the warmest set point, as a fraction of its flat
#: signal [1].
TEMPERATURE_PIXEL_DARK = 0.3
#: Extra signal of a ``glitch`` pixel in its one flat, as a fraction of the flat signal [1].
GLITCH_LEVEL = 0.5
#: Classes planted by ``pixel_classes`` and the label the outgassing analysis should give them.
PIXEL_CLASSES = {"sensor_damage": "Sensor Damage", "likely_sensor": "Likely Sensor",
                 "temperature": "Temperature", "glitch": "Temperature"}


@dataclass(frozen=True)
class FlatStructure:
    """A disc whose illumination drops from one visit on.

    Attributes
    ----------
    row, col : float
        Centre [pixel].
    radius : float
        Radius [pixel]; pixels whose centre lies within it are covered.
    depth : float
        Relative illumination loss inside the disc [1], e.g. 0.12.
    first_visit : int
        First visit (0-based) whose flats show it.
    """

    row: float
    col: float
    radius: float
    depth: float
    first_visit: int

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean map of the covered pixels."""
        y, x = np.indices(shape)
        return (y - self.row) ** 2 + (x - self.col) ** 2 <= self.radius ** 2


def _write_fits(root, truth: FrameTruth, data: np.ndarray, physics: Physics) -> None:
    """One uint16 FITS frame, written by the converter's fast path (same bytes as astropy)."""
    cards = [(c.keyword, c.value, c.comment) for c in _fits_header(truth, physics).cards]
    payload, _ = encode_frame(data)
    write_frame_fits(root / truth.path, payload, frame_header_bytes(data.shape, cards))


def _document(layout, seed, width, height, physics, plan, scheduled, extra, maps, units):
    known = [k for k in maps if k in _MAP_UNITS]
    doc = _truth_document(layout, seed, width, height, physics, plan, scheduled, extra, known)
    doc["maps"].update(units)
    return doc


def _pick_pixels(rng: np.random.Generator, shape, taken: np.ndarray, n: int,
                 margin: int = 2) -> np.ndarray:
    """``n`` distinct pixels away from the edges and from ``taken`` (flat indices)."""
    allowed = np.zeros(shape, dtype=bool)
    allowed[margin:shape[0] - margin, margin:shape[1] - margin] = True
    allowed &= ~taken
    candidates = np.flatnonzero(allowed)
    if candidates.size < n:
        raise ConfigError(f"frames of {shape[1]}x{shape[0]} px are too small for {n} pixels")
    chosen = rng.choice(candidates, n, replace=False)
    taken.flat[chosen] = True
    return chosen


def simulate_flat_sequence(out: str | os.PathLike, *, seed: int = 1, width: int = 48,
                           height: int = 40, temperatures: Sequence[float] = (0.0, 20.0),
                           visits: int = 6, flats: int = 2, exposure: float = 0.5,
                           bias_frames: int = 3, dark_frames: int = 3,
                           structure: FlatStructure | None = None,
                           pixel_classes: bool = False, damage_visit: int | None = None,
                           pixels_per_class: int = 5, physics: Physics | None = None,
                           progress_bar: bool = False) -> Campaign:
    """Write a sequence of flat-field visits over time, with planted changes and their truth.

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the random generator. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 48 and 40.
    temperatures : sequence of float, optional
        Set points visited in turn [degC]. Default is (0, 20).
    visits : int, optional
        Number of visits (one set point each, cycling). Default is 6.
    flats : int, optional
        Flats per visit. Default is 2.
    exposure : float, optional
        Exposure of the flats and darks [s]. Default is 0.5 (about half of full scale
        at the centre with the default physics, room for the planted brighter pixels).
    bias_frames, dark_frames : int, optional
        Bias frames and darks per visit. Defaults are 3 and 3.
    structure : FlatStructure, optional
        A structure appearing at ``structure.first_visit``. Default is None (stable).
    pixel_classes : bool, optional
        Plant the pixel classes of the outgassing analysis. Default is False.
    damage_visit : int, optional
        First visit with the damaged pixels. Default is ``visits // 2``.
    pixels_per_class : int, optional
        Pixels of each planted class. Default is 5.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    progress_bar : bool, optional
        Show a progress bar. Default is False.

    Returns
    -------
    Campaign
        ``truth.json`` key ``flat_sequence`` holds the visits, the structure (centroid,
        area, first time) and the planted pixels per class (``[row, col]``);
        ``truth.npz`` adds ``structure_mask``.

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).
    """
    _check_size(width, height, max(flats, 1))
    temperatures = _check_levels("temperatures", temperatures)
    if visits < 2 or flats < 1 or bias_frames < 0 or dark_frames < 0 or not exposure > 0:
        raise ConfigError("need visits >= 2, flats >= 1, bias/dark frames >= 0 and exposure > 0")
    physics = Physics() if physics is None else physics
    width, height = int(width), int(height)
    shape = (height, width)
    damage_visit = visits // 2 if damage_visit is None else int(damage_visit)
    root = _prepare_root(out)
    rng = np.random.default_rng(seed)
    sensor = make_sensor(rng, width, height, physics)
    planted: dict[str, np.ndarray] = {}
    if pixel_classes:
        taken = sensor.hot_mask | sensor.noisy_mask
        for name in PIXEL_CLASSES:
            planted[name] = _pick_pixels(rng, shape, taken, pixels_per_class)
        # temperature pixels: dark current giving TEMPERATURE_PIXEL_DARK of the flat signal at
        # the warmest set point (it halves every doubling_temperature below)
        warm = max(temperatures)
        flat_rate = physics.flat_flux * (sensor.prnu * sensor.vignetting).flat[
            planted["temperature"]]
        needed = TEMPERATURE_PIXEL_DARK * flat_rate / 2.0 ** (
            (warm - physics.t_ref) / physics.doubling_temperature)
        dark_ref = sensor.dark_ref.copy()
        dark_ref.flat[planted["temperature"]] = needed
        sensor = replace(sensor, dark_ref=dark_ref)
    struct_mask = structure.mask(shape) if structure is not None else np.zeros(shape, bool)
    # a glitch sits in the last flat of a visit after every set point was visited once, so it
    # is never in a reference flat (the earliest of its temperature bin, or of all flats)
    first_glitch = min(len(temperatures), visits - 1)
    glitch_visit = {int(p): int(rng.integers(first_glitch, visits))
                    for p in planted.get("glitch", [])}

    def sensor_for(visit: int, temperature: float) -> Sensor:
        prnu = sensor.prnu
        if structure is not None and visit >= structure.first_visit:
            prnu = prnu * np.where(struct_mask, 1.0 - structure.depth, 1.0).astype(np.float32)
        if pixel_classes and visit >= damage_visit:
            prnu = prnu.copy()
            prnu.flat[planted["sensor_damage"]] *= DAMAGED_RESPONSE
            if temperature == temperatures[0]:
                prnu.flat[planted["likely_sensor"]] *= DAMAGED_RESPONSE
        return sensor if prnu is sensor.prnu else replace(sensor, prnu=prnu)

    plan: list[_Attempt] = []
    scheduled: list[list[_Frame]] = []
    clock = CAMPAIGN_START
    visit_rows = []
    for v in range(visits):
        t_set = temperatures[v % len(temperatures)]
        base = PurePosixPath(f"visit{v}_T{_g(t_set)}")
        visit_rows.append({"visit": v, "setpoint": t_set, "start_time": clock})
        for kind, count, exp in (("bias", bias_frames, BIAS_EXPOSURE), ("dark", dark_frames,
                                                                         exposure),
                                 ("flat", flats, exposure)):
            if count == 0:
                continue
            att = _Attempt(base / kind, kind, t_set, exp, count, v, log_name=None,
                           config_index=None, fits=True)
            frames = []
            for i in range(count):
                temp = round(t_set + physics.temperature_jitter * rng.standard_normal(), 3)
                name = f"{kind}_v{v:02d}_f{i:03d}.fits"
                truth = FrameTruth(path=str(base / kind / name), attempt=str(base / kind),
                                   kind=kind, stage=None, step=None, setpoint=t_set,
                                   temperature=temp, exposure=exp, real_exposure=exp, dose=0.0,
                                   damage_dose=0.0, frame=i, timestamp=round(clock, 3))
                clock += exp + FRAME_OVERHEAD + float(rng.uniform(0.0, FRAME_JITTER))
                frames.append(_Frame(truth, physics.enclosure_temperature, t_set,
                                     physics.power_base))
            plan.append(att)
            scheduled.append(frames)
        clock = visit_rows[-1]["start_time"] + VISIT_GAP
    flat_index = 0
    for att, frames in progress(list(zip(plan, scheduled)), desc="simulating flat visits",
                                enabled=progress_bar, unit="folder"):
        visit = att.number
        for f in frames:
            t = f.truth
            extra = None
            if t.kind == "flat":
                for p, gv in glitch_visit.items():
                    if gv == visit and t.frame == flats - 1:
                        extra = np.zeros(shape) if extra is None else extra
                        extra.flat[p] += GLITCH_LEVEL * physics.flat_flux * t.real_exposure / \
                            physics.gain
                flat_index += 1
            data = render_frame(rng, sensor_for(visit, t.setpoint), physics, kind=t.kind,
                                temperature=t.temperature, exposure=t.real_exposure,
                                extra_counts=extra)
            _write_fits(root, t, data, physics)
    maps = truth_maps(sensor, physics)
    maps["structure_mask"] = struct_mask
    first_time = None
    if structure is not None:
        first_time = next((f.truth.timestamp for att, fr in zip(plan, scheduled) for f in fr
                           if f.truth.kind == "flat" and att.number == structure.first_visit),
                          None)
    rows, cols = np.nonzero(struct_mask)
    info = {
        "visits": visit_rows, "damage_visit": damage_visit if pixel_classes else None,
        "structure": None if structure is None else {
            **asdict(structure), "centroid_row": float(rows.mean()),
            "centroid_col": float(cols.mean()), "area": int(struct_mask.sum()),
            "first_time": first_time},
        "pixels": {name: [[int(i // width), int(i % width)] for i in idx]
                   for name, idx in planted.items()},
        "glitch_visits": {f"{p // width},{p % width}": gv for p, gv in glitch_visit.items()},
        "expected_class": PIXEL_CLASSES,
    }
    extra_doc = {"parameters": {"temperatures": temperatures, "visits": visits, "flats": flats,
                                "exposure": exposure, "bias_frames": bias_frames,
                                "dark_frames": dark_frames, "pixel_classes": pixel_classes},
                 "flat_sequence": info}
    document = _document("flatseq", seed, width, height, physics, plan, scheduled, extra_doc,
                         maps, {"structure_mask": "bool (pixels of the planted structure)"})
    json_path, npz_path = _write_truth(root, document, maps)
    return Campaign(root=root, layout="flatseq", seed=seed, width=width, height=height,
                    physics=physics, records=[f.truth for fr in scheduled for f in fr],
                    attempts=[_attempt_truth(a) for a in plan], truth_json=json_path,
                    truth_npz=npz_path)


def simulate_dark_sequence(out: str | os.PathLike, *, seed: int = 1, width: int = 32,
                           height: int = 32, frames: int = 1500, exposure: float = 0.1,
                           temperature: float = 20.0, interval: float = 1.0,
                           doses: Sequence[float] | None = None, rts: RTSParams | None = None,
                           physics: Physics | None = None,
                           progress_bar: bool = False) -> Campaign:
    """Write long dark runs at one set point with random-telegraph pixels, and their truth.

    Parameters
    ----------
    out : path-like
        New or empty output folder.
    seed : int, optional
        Seed of the random generators. Default is 1.
    width, height : int, optional
        Frame size [pixel]. Defaults are 32 and 32.
    frames : int, optional
        Frames per run. Default is 1500.
    exposure : float, optional
        Exposure [s]. Default is 0.1.
    temperature : float, optional
        Set point [degC]. Default is 20.
    interval : float, optional
        Time between the starts of two frames [s] (exposure and readout). Default is 1.
    doses : sequence of float, optional
        Irradiation steps [krad]: one run before irradiation
        (``Preirradiation/Darks/T<t>/<e>s/``) and one after each step
        (``Irradiation/<dose>kRads/Darks/T<t>/<e>s/``), the damage dose of a run being
        its step's dose.  Default is None: one run in ``Darks/T<t>/<e>s/``.
    rts : RTSParams, optional
        RTS population. Default is ``RTSParams()``.
    physics : Physics, optional
        Camera parameters. Default is ``Physics()``.
    progress_bar : bool, optional
        Show a progress bar. Default is False.

    Returns
    -------
    Campaign
        ``truth.npz`` adds the RTS arrays (``rts_rows``, ``rts_cols``, ``rts_amplitude``
        [adu], ``rts_tau_low``, ``rts_tau_high`` [s], ``rts_onset_dose`` [krad],
        ``rts_switches`` and ``rts_frames_high`` per run); ``truth.json`` key
        ``dark_sequence`` lists the runs (folder, stage, dose, active RTS pixels).

    Raises
    ------
    UserError
        When ``out`` is not empty, or a parameter is invalid (``ConfigError``).
    """
    _check_size(width, height, frames)
    if not interval > exposure > 0:
        raise ConfigError(f"need interval > exposure > 0 s, got {interval} and {exposure}")
    physics = Physics() if physics is None else physics
    rts = RTSParams() if rts is None else rts
    width, height, frames = int(width), int(height), int(frames)
    shape = (height, width)
    runs: list[tuple[str | None, str | None, float, PurePosixPath]] = []
    tail = PurePosixPath("Darks", f"T{_g(temperature)}", f"{_g(exposure)}s")
    if doses is None:
        runs.append((None, None, 0.0, tail))
    else:
        doses = _check_doses(doses)
        runs.append(("pre", None, 0.0, PurePosixPath("Preirradiation") / tail))
        runs += [("radiating", f"{_g(d)}kRads", d,
                  PurePosixPath("Irradiation", f"{_g(d)}kRads") / tail) for d in doses]
    root = _prepare_root(out)
    rng = np.random.default_rng(seed)
    sensor = make_sensor(rng, width, height, physics)
    population = draw_rts_population(np.random.default_rng([seed, 0x525453]), sensor, rts,
                                     max_dose=max(r[2] for r in runs))
    process = RTSProcess(population, np.random.default_rng([seed, 0x535754]))
    plan: list[_Attempt] = []
    scheduled: list[list[_Frame]] = []
    switches, high = [], []
    run_info = []
    clock = CAMPAIGN_START
    last = None
    for stage, step, dose, folder in runs:
        att = _Attempt(folder, "dark", temperature, exposure, frames, 0, stage, step, dose,
                       log_name=None, config_index=None, fits=True)
        before_switches = process.switches.copy()
        before_high = process.frames_high.copy()
        recs = []
        for i in progress(range(frames), desc=f"simulating {folder}", enabled=progress_bar):
            if last is not None:
                process.advance(clock - last, dose)
            last = clock
            temp = round(temperature + physics.temperature_jitter * rng.standard_normal(), 3)
            truth = FrameTruth(path=str(folder / f"dark_f{i:05d}.fits"), attempt=str(folder),
                               kind="dark", stage=stage, step=step, setpoint=temperature,
                               temperature=temp, exposure=exposure, real_exposure=exposure,
                               dose=dose, damage_dose=dose, frame=i, timestamp=round(clock, 3))
            data = render_frame(rng, sensor, physics, kind="dark", temperature=temp,
                                exposure=exposure, damage_dose=dose,
                                extra_counts=process.extra_counts(shape, dose))
            _write_fits(root, truth, data, physics)
            recs.append(_Frame(truth, physics.enclosure_temperature, temperature,
                               physics.power_base))
            clock += interval
        plan.append(att)
        scheduled.append(recs)
        switches.append(process.switches - before_switches)
        high.append(process.frames_high - before_high)
        run_info.append({"folder": str(folder), "stage": stage, "step": step, "dose": dose,
                         "frames": frames, "interval": interval,
                         "active_rts": int(population.active(dose).sum())})
        clock += 3600.0  # an hour between runs (the irradiation step)
    maps = truth_maps(sensor, physics)
    maps.update(population.truth(physics.adu_scale))
    maps["rts_switches"] = np.array(switches, dtype=np.int64).reshape(len(runs), len(population))
    maps["rts_frames_high"] = np.array(high, dtype=np.int64).reshape(len(runs), len(population))
    extra_doc = {"parameters": {"frames": frames, "exposure": exposure,
                                "temperature": temperature, "interval": interval,
                                "doses": None if doses is None else list(doses),
                                "rts": asdict(rts)},
                 "dark_sequence": run_info}
    document = _document("darkseq", seed, width, height, physics, plan, scheduled, extra_doc,
                         maps, RTS_UNITS)
    json_path, npz_path = _write_truth(root, document, maps)
    return Campaign(root=root, layout="darkseq", seed=seed, width=width, height=height,
                    physics=physics, records=[f.truth for fr in scheduled for f in fr],
                    attempts=[_attempt_truth(a) for a in plan], truth_json=json_path,
                    truth_npz=npz_path)


def sequence_truth(campaign: Campaign, key: str) -> dict | list:
    """A layout's own truth section (``flat_sequence`` or ``dark_sequence``) of ``truth.json``."""
    return json.loads(campaign.truth_json.read_text())[key]


__all__ = ["FlatStructure", "simulate_flat_sequence", "simulate_dark_sequence",
           "sequence_truth", "PIXEL_CLASSES"]
