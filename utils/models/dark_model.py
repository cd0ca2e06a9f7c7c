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
from ..io import fitsio
from ..stack.tiles import PIXEL_BLOCK, row_tiles
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
                         math.nan, kw.get_float(head, "POPBERR"))
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
                              kw.get_float(head, kw.TREF, 20.0), kw.get_float(head, "POPGAMMA"),
                              kw.get_float(head, "POPB"), math.nan, math.nan,
                              kw.get_float(head, "POPGERR"), kw.get_float(head, "POPBERR"))
    return fit, head, m


@dataclass
class DarkSignalModel:
    """Dark signal [adu] of a dark-pipeline model at any (T, t), lean in memory.

    The model's maps stay in the file: what a flat set subtracts (:meth:`linearised`,
    :meth:`signal_err`) is evaluated row block by row block from rows read straight from
    the file's data sections (:func:`utils.io.fitsio.read_rows`), so the 6 (1-D) or 9
    (2-D) float32 maps of the model (151 MB at 2048^2) are never all in memory.  The maps
    used: ``PRIMARY`` (amplitude), ``GAMMA`` (2-D; the 1-D rate model's signal is the rate
    times ``t``), ``B`` [1/degC], and the parameter errors and covariances
    ``SIGMA_A, SIGMA_GAMMA, SIGMA_B, COV_AG, COV_AB, COV_GB`` (the gamma terms absent in
    1-D).  Pixels without a fit (``bad``) take the population values (median amplitude and
    exponents, ``fill``), counted in ``n_filled``; their non-finite errors are 0.

    Attributes
    ----------
    path : pathlib.Path
        The model file.
    kind : str
        ``"2d"`` (signal model) or ``"1d"`` (rate model).
    layouts : dict
        ``{map name: utils.io.fitsio.FitsLayout}`` of the maps used.
    fill : dict
        ``{"PRIMARY" | "GAMMA" | "B": float32}`` population value of pixels without a fit.
    bad : numpy.ndarray or None
        bool ``(H, W)``: pixels without a fit (None when every pixel has one).
    t_ref : float
        [degC] reference temperature.
    t_min, t_max : float
        [degC] range of the masters it was fitted to (NaN when unknown).
    adc_bits : int
        Converter bits of its data.
    """

    path: Path
    kind: str
    layouts: dict
    fill: dict
    bad: np.ndarray | None
    t_ref: float
    t_min: float = math.nan
    t_max: float = math.nan
    adc_bits: int = adu.DEFAULT_ADC_BITS
    n_filled: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` [px]."""
        return self.layouts["PRIMARY"].shape

    @property
    def error_names(self) -> tuple[str, ...]:
        """The error and covariance maps of the model's kind."""
        return ("SIGMA_A", "SIGMA_GAMMA", "SIGMA_B", "COV_AG", "COV_AB", "COV_GB") \
            if self.kind == "2d" else ("SIGMA_A", "SIGMA_B", "COV_AB")

    @staticmethod
    def check(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
        """``(kind, (height, width))`` of a dark model file, from its headers only.

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
                head = hdul[0].header
                shape = (int(head.get("NAXIS2", 0)), int(head.get("NAXIS1", 0)))
        except OSError as err:
            raise InputPathError(f"{path}: unreadable FITS ({err})") from err
        kind = "2d" if "GAMMA" in names else "1d"
        needed = EXTENSIONS_2D if kind == "2d" else EXTENSIONS_1D
        missing = [n for n in needed if n not in names]
        if missing:
            raise InputPathError(f"{path}: not a dark model (no {', '.join(missing)} "
                                 "extension); give the dark pipeline's dark_model_2d.fits")
        return kind, shape

    @classmethod
    def read(cls, path: str | os.PathLike) -> DarkSignalModel:
        """Open a 2-D (``GAMMA`` extension present) or 1-D dark model product: its headers,
        the pixels without a fit and the population values (one map in memory at a time).

        Raises
        ------
        InputPathError
            Missing or unreadable file, or not a dark model.
        """
        path = Path(path)
        kind, _ = cls.check(path)
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            head = hdul[0].header.copy()
            index = {("PRIMARY" if i == 0 else h.name): i for i, h in enumerate(hdul)}
            inputs = pd.DataFrame(np.asarray(hdul["INPUTS"].data)) if "INPUTS" in index \
                else pd.DataFrame()
        shaped = ("PRIMARY", "GAMMA", "B") if kind == "2d" else ("PRIMARY", "B")
        err_names = ("SIGMA_A", "SIGMA_GAMMA", "SIGMA_B", "COV_AG", "COV_AB", "COV_GB") \
            if kind == "2d" else ("SIGMA_A", "SIGMA_B", "COV_AB")
        layouts = {n: fitsio.fits_layout(path, index[n]) for n in shaped + err_names}

        def image(name):
            # straight from the data section into native float32: no second copy in memory
            lay = layouts[name]
            return fitsio.read_rows(lay, 0, lay.shape[0])
        bad = None
        for name in shaped:
            finite = np.isfinite(image(name))
            bad = ~finite if bad is None else bad | ~finite
        if bad.all():
            raise InputPathError(f"{path}: the dark model has no fitted pixel")
        fill = {}
        if bad.any():  # population values where a pixel has no fit: never NaN in a subtraction
            for name in shaped:
                fill[name] = np.median(image(name)[~bad])
        else:
            bad = None
        temps = pd.to_numeric(inputs.get("TAVG", pd.Series(dtype=float)),
                              errors="coerce").dropna()
        return cls(path, kind, layouts, fill, bad, kw.get_float(head, kw.TREF, 20.0),
                   float(temps.min()) if len(temps) else math.nan,
                   float(temps.max()) if len(temps) else math.nan,
                   int(kw.get_float(head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)),
                   0 if bad is None else int(bad.sum()))

    def maps(self, names, start: int = 0, stop: int | None = None) -> dict:
        """Rows ``start:stop`` of the maps ``names`` (float32), population values filled in
        (amplitude and exponents) and non-finite errors 0 where a pixel has no fit.

        ``GAMMA`` of a 1-D model is None.
        """
        stop = self.shape[0] if stop is None else stop
        bad = None if self.bad is None else self.bad[start:stop]
        out = {}
        for name in names:
            if name not in self.layouts:
                out[name] = None
                continue
            block = fitsio.read_rows(self.layouts[name], start, stop)
            if bad is not None:
                if name in self.fill:
                    block[bad] = self.fill[name]
                else:
                    block[bad & ~np.isfinite(block)] = 0.0
            out[name] = block
        return out

    def _tiles(self):
        """Row ranges of the blocks the maps are evaluated by (``PIXEL_BLOCK`` pixels)."""
        height, width = self.shape
        return row_tiles(height, max(1, PIXEL_BLOCK // width))

    def digest_into(self, digest) -> None:
        """Feed the bytes of the filled amplitude map (native float32, C order) into the
        ``hashlib`` object ``digest``, block by block: the model's content, as the whole
        map's bytes would."""
        for r0, r1 in self._tiles():
            digest.update(np.ascontiguousarray(self.maps(("PRIMARY",), r0, r1)["PRIMARY"])
                          .tobytes())

    def covers(self, temperature: float, margin: float = 0.0) -> bool:
        """True when ``temperature`` lies within the fitted range (+- ``margin`` degC), or the
        range is unknown."""
        if not (math.isfinite(self.t_min) and math.isfinite(self.t_max)):
            return True
        return self.t_min - margin <= temperature <= self.t_max + margin

    def _signal(self, m: dict, temperature: float, exptime: float) -> np.ndarray:
        """The signal of :meth:`rows` from the maps ``m`` of some rows."""
        dt = np.float32(temperature - self.t_ref)
        if self.kind == "2d":
            expo = m["GAMMA"] * np.float32(math.log(exptime)) + m["B"] * dt
            return m["PRIMARY"] * np.exp(expo)
        return m["PRIMARY"] * np.exp(m["B"] * dt) * np.float32(exptime)

    def rows(self, temperature: float, exptime: float, start: int = 0,
             stop: int | None = None) -> np.ndarray:
        """Dark signal [adu] of rows ``start:stop`` after ``exptime`` [s] at ``temperature``
        [degC], float32."""
        return self._signal(self.maps(("PRIMARY", "GAMMA", "B"), start, stop), temperature,
                            exptime)

    def signal(self, temperature: float, exptime: float) -> np.ndarray:
        """Dark signal image [adu] at (``temperature`` [degC], ``exptime`` [s]), float32."""
        return self.rows(temperature, exptime)

    def linearised(self, temperature: float, exptime: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(S, dS/dT, dS/dt)`` at (``temperature``, ``exptime``) [adu, adu/degC, adu/s]:
        the signal of nearby (T, t) to first order, two multiply-adds per pixel instead of an
        exponential (the frames of one set differ by ~0.1 degC and a few us).  Evaluated
        by row blocks (elementwise: the numbers of one whole-frame evaluation)."""
        out = tuple(np.empty(self.shape, np.float32) for _ in range(3))
        for r0, r1 in self._tiles():
            m = self.maps(("PRIMARY", "GAMMA", "B"), r0, r1)
            signal = self._signal(m, temperature, exptime)
            out[0][r0:r1] = signal
            out[1][r0:r1] = signal * m["B"]
            out[2][r0:r1] = signal * (m["GAMMA"] if m["GAMMA"] is not None
                                      else np.float32(1.0)) / np.float32(exptime)
        return out

    def signal_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`signal` [adu], float32: ``S sqrt(u^T C u)`` with
        ``u = (1/A, ln t, T - TREF)`` (``(1/A, T - TREF)`` for 1-D); by row blocks."""
        out = np.empty(self.shape, np.float32)
        dt = np.float32(temperature - self.t_ref)
        for r0, r1 in self._tiles():
            e = self.maps(("PRIMARY", "GAMMA", "B") + self.error_names, r0, r1)
            signal = self._signal(e, temperature, exptime)
            amplitude = e["PRIMARY"]
            with np.errstate(divide="ignore", invalid="ignore"):
                inv_a = np.where(amplitude != 0, 1.0 / amplitude, 0.0).astype(np.float32)
            var = (inv_a * e["SIGMA_A"]) ** 2 + (dt * e["SIGMA_B"]) ** 2 \
                + 2 * inv_a * dt * e["COV_AB"]
            if self.kind == "2d":
                lnt = np.float32(math.log(exptime))
                var += (lnt * e["SIGMA_GAMMA"]) ** 2 + 2 * inv_a * lnt * e["COV_AG"] \
                    + 2 * lnt * dt * e["COV_GB"]
            out[r0:r1] = np.abs(signal) * np.sqrt(np.maximum(var, 0))
        return out


__all__ = ["DarkSignalModel", "read_model_maps", "read_exponential_fit",
           "read_power_exponential_fit", "EXTENSIONS_1D", "EXTENSIONS_2D", "MASK_HOT"]
