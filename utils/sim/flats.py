"""Flat-field extras of the simulated campaigns: the lamp flux of each flat and flat defects.

* Lamp: every flat frame is lit with ``Physics.flat_flux`` times a factor, 1 unless
  ``Physics.lamp_stability`` (relative rms, frame to frame) is set or the frame carries
  the ``lamp_drift`` defect (:data:`LAMP_DRIFT_FACTOR`).  The factor is recorded in
  the frame's truth (``FrameTruth.illumination``).
* ``zero_band``: a band of rows across the middle of one flat reads 0 (a readout
  glitch); :func:`zero_band` gives its rows.

Random numbers are drawn only for the features a campaign asks for, so campaigns
without them keep their random stream (and files) unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from .physics import Physics

#: Lamp flux of the ``lamp_drift`` defect relative to the normal one [1].
LAMP_DRIFT_FACTOR = 0.9
#: Rows of the ``zero_band`` defect, as a fraction of the frame height.
ZERO_BAND_FRACTION = 0.02
#: Defect names planted among flats by ``simulate_standard(flat_defects=True)``.
FLAT_DEFECTS = ("zero_band", "lamp_drift")


def zero_band(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows (about :data:`ZERO_BAND_FRACTION` of the height, at least one) in the middle,
    every column."""
    h, _ = shape
    rows = max(1, math.ceil(h * ZERO_BAND_FRACTION))
    start = (h - rows) // 2
    return slice(start, start + rows), slice(None)


def lamp_factor(rng: np.random.Generator, physics: Physics, defect: str | None) -> float:
    """Lamp flux of one flat relative to ``physics.flat_flux`` [1]."""
    factor = 1.0
    if physics.lamp_stability > 0:
        factor = 1.0 + physics.lamp_stability * float(rng.standard_normal())
    if defect == "lamp_drift":
        factor *= LAMP_DRIFT_FACTOR
    return factor


__all__ = ["LAMP_DRIFT_FACTOR", "ZERO_BAND_FRACTION", "FLAT_DEFECTS", "zero_band",
           "lamp_factor"]
