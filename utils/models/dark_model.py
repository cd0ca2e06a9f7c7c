"""The dark pipeline's model products, read back: dark signal at any temperature and exposure.

The dark pipeline writes ``dark_model_2d/dark_model_2d.fits`` (``S = A t^GAMMA
exp(B (T - TREF))`` [adu], extensions ``GAMMA, B, SIGMA_A, SIGMA_GAMMA, SIGMA_B,
COV_AG, COV_AB, COV_GB, CHI2DOF, NPTS, FALLBACK``) and ``dark_model/dark_model.fits``
(rate ``DC = A exp(B (T - TREF))`` [adu/s], extensions ``B, SIGMA_A, SIGMA_B, COV_AB,
CHI2DOF, NPTS, FALLBACK, HOT``).  :func:`read_power_exponential_fit` and
:func:`read_exponential_fit` load them as the fit objects of
:mod:`utils.models.nonlinear` (the dark pipeline's own readers use them), and
:class:`DarkSignalModel` gives the dark *signal* of either at a frame's own (T, t) --
the 1-D rate times the exposure -- for subtraction while stacking, row block by row
block.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import adu
from .. import headers as kw
from ..errors import InputPathError
from .nonlinear import ExponentialFit, PowerExponentialFit

#: Extensions of the 1-D and 2-D model products.
EXTENSIONS_1D = ("B", "SIGMA_A", "SIGMA_B", "COV_AB", "CHI2DOF", "NPTS", "FALLBACK", "HOT")
EXTENSIONS_2D = ("GAMMA", "B", "SIGMA_A", "SIGMA_GAMMA", "SIGMA_B", "COV_AG", "COV_AB",
                 "COV_GB", "CHI2DOF", "NPTS", "FALLBACK")
#: MASK bit of a hot pixel in the model products.
MASK_HOT = 2


def read_model_maps(path: str | os.PathLike, names: tuple[str, ...]) -> tuple[dict, fits.Header]:
    """Images ``names`` (plus ``PRIMARY``, ``MASK`` and the ``INPUTS`` table) of a model product.

    Raises
    ------
    InputPathError
        Missing file, unreadable FITS, or a file without those extensions.
    """
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"{path}: dark model not found; run the dark pipeline (mode full "
                             "or fit_2d_model) first, or give --model-dir")
    try:
        with fits.open(path, memmap=False) as hdul:
            present = {h.name for h in hdul}
            missing = [n for n in names if n not in present]
            if missing:
                raise InputPathError(f"{path}: not a dark model of this kind (no "
                                     f"{', '.join(missing)} extension)")
            maps = {n: np.asarray(hdul[n].data) for n in names}
            maps["PRIMARY"] = np.asarray(hdul[0].data, np.float32)
            maps["MASK"] = np.asarray(hdul["MASK"].data) if "MASK" in present else \
                np.zeros(maps["PRIMARY"].shape, np.uint8)
            inputs = pd.DataFrame(np.asarray(hdul["INPUTS"].data)) if "INPUTS" in present \
                else pd.DataFrame()
            header = hdul[0].header.copy()
    except OSError as err:
        raise InputPathError(f"{path}: unreadable FITS ({err}); re-run the dark pipeline") \
            from err
    for column in inputs.columns:
        if inputs[column].dtype.kind == "S":
            inputs[column] = inputs[column].str.decode("ascii")
    return maps | {"INPUTS": inputs}, header


def read_exponential_fit(path: str | os.PathLike) -> tuple[ExponentialFit, fits.Header, dict]:
    """The 1-D model ``DC(T) = A exp(B (T - TREF))`` [adu/s]: ``(fit, header, maps)``."""
    maps, head = read_model_maps(path, EXTENSIONS_1D)
    fit = ExponentialFit(maps["PRIMARY"], maps["B"].astype(np.float32),
                         maps["SIGMA_A"].astype(np.float32), maps["SIGMA_B"].astype(np.float32),
                         maps["COV_AB"].astype(np.float32), maps["CHI2DOF"].astype(np.float32),
                         maps["NPTS"].astype(np.int16), maps["FALLBACK"] != 0,
                         kw.get_float(head, kw.TREF, 20.0), kw.get_float(head, "POPB"),
                         math.nan)
    return fit, head, maps


def read_power_exponential_fit(path: str | os.PathLike
                               ) -> tuple[PowerExponentialFit, fits.Header, dict]:
    """The 2-D model ``S(T, t) = A t^GAMMA exp(B (T - TREF))`` [adu]: ``(fit, header, maps)``."""
    m, head = read_model_maps(path, EXTENSIONS_2D)
    f32 = {k: v.astype(np.float32) for k, v in m.items() if k != "INPUTS"}
    cov = np.zeros((3, 3) + f32["B"].shape, np.float32)
    cov[0, 0], cov[1, 1], cov[2, 2] = (f32["SIGMA_A"] ** 2, f32["SIGMA_GAMMA"] ** 2,
                                       f32["SIGMA_B"] ** 2)
    cov[0, 1] = cov[1, 0] = f32["COV_AG"]
    cov[0, 2] = cov[2, 0] = f32["COV_AB"]
    cov[1, 2] = cov[2, 1] = f32["COV_GB"]
    fit = PowerExponentialFit(f32["PRIMARY"], f32["GAMMA"], f32["B"], f32["SIGMA_A"],
                              f32["SIGMA_GAMMA"], f32["SIGMA_B"], cov, f32["CHI2DOF"],
                              m["NPTS"].astype(np.int16), m["FALLBACK"] != 0,
                              kw.get_float(head, kw.TREF, 20.0), math.nan, math.nan,
                              math.nan, math.nan)
    return fit, head, m


@dataclass
class DarkSignalModel:
    """Dark signal [adu] of a dark-pipeline model at any (T, t).

    Attributes
    ----------
    path : pathlib.Path
        The model file.
    kind : str
        ``"2d"`` (signal model) or ``"1d"`` (rate model, times the exposure).
    fit : PowerExponentialFit or ExponentialFit
        The per-pixel model; pixels without a fit take the population values (median
        amplitude and exponents), counted in ``n_filled``.
    t_min, t_max : float
        [degC] range of the masters it was fitted to (NaN when unknown).
    adc_bits : int
        Converter bits of its data.
    n_filled : int
        Pixels whose parameters were missing and were filled with the population's.
    """

    path: Path
    kind: str
    fit: object
    t_min: float = math.nan
    t_max: float = math.nan
    adc_bits: int = adu.DEFAULT_ADC_BITS
    n_filled: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` [px]."""
        return self.fit.amplitude.shape

    @classmethod
    def read(cls, path: str | os.PathLike) -> DarkSignalModel:
        """Load a 2-D (``GAMMA`` extension present) or 1-D dark model product.

        Raises
        ------
        InputPathError
            Missing or unreadable file, or not a dark model.
        """
        path = Path(path)
        if not path.is_file():
            raise InputPathError(f"{path}: dark model not found; give the dark pipeline's "
                                 "dark_model_2d/dark_model_2d.fits (or dark_model/"
                                 "dark_model.fits), or leave --dark-model out to use the "
                                 "tree's dark frames")
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                names = {h.name for h in hdul}
        except OSError as err:
            raise InputPathError(f"{path}: unreadable FITS ({err})") from err
        if "GAMMA" in names:
            fit, head, maps = read_power_exponential_fit(path)
            kind = "2d"
            shape_fields = ("gamma", "rate")
        else:
            fit, head, maps = read_exponential_fit(path)
            kind = "1d"
            shape_fields = ("rate",)
        bad = ~np.isfinite(fit.amplitude)
        for name in shape_fields:
            bad |= ~np.isfinite(getattr(fit, name))
        if bad.all():
            raise InputPathError(f"{path}: the dark model has no fitted pixel")
        if bad.any():  # population values where a pixel has no fit: never NaN in a subtraction
            fit.amplitude[bad] = np.median(fit.amplitude[~bad])
            for name in shape_fields:
                getattr(fit, name)[bad] = np.median(getattr(fit, name)[~bad])
        temps = pd.to_numeric(maps["INPUTS"].get("TAVG", pd.Series(dtype=float)),
                              errors="coerce").dropna()
        return cls(path, kind, fit, float(temps.min()) if len(temps) else math.nan,
                   float(temps.max()) if len(temps) else math.nan,
                   int(kw.get_float(head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)), int(bad.sum()))

    def covers(self, temperature: float, margin: float = 0.0) -> bool:
        """True when ``temperature`` lies within the fitted range (+- ``margin`` degC), or the
        range is unknown."""
        if not (math.isfinite(self.t_min) and math.isfinite(self.t_max)):
            return True
        return self.t_min - margin <= temperature <= self.t_max + margin

    def rows(self, temperature: float, exptime: float, start: int = 0,
             stop: int | None = None) -> np.ndarray:
        """Dark signal [adu] of rows ``start:stop`` after ``exptime`` [s] at ``temperature``
        [degC], float64."""
        f = self.fit
        sl = slice(start, stop)
        amp = f.amplitude[sl].astype(np.float64)
        if self.kind == "2d":
            return amp * np.exp(f.gamma[sl].astype(np.float64) * math.log(exptime)
                                + f.rate[sl].astype(np.float64) * (temperature - f.t_ref))
        return amp * np.exp(f.rate[sl].astype(np.float64) * (temperature - f.x_ref)) * exptime

    def signal(self, temperature: float, exptime: float) -> np.ndarray:
        """Dark signal image [adu] at (``temperature`` [degC], ``exptime`` [s]), float32."""
        return self.rows(temperature, exptime).astype(np.float32)

    def signal_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`signal` [adu], float32."""
        if self.kind == "2d":
            return self.fit.predict_err(temperature, exptime)
        return (self.fit.predict_err(temperature) * exptime).astype(np.float32)


__all__ = ["DarkSignalModel", "read_model_maps", "read_exponential_fit",
           "read_power_exponential_fit", "EXTENSIONS_1D", "EXTENSIONS_2D", "MASK_HOT"]
