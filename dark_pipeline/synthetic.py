"""Synthetic darks from the models: rate maps and full frames at any (T, t), with uncertainty.

A *rate map* is the 1-D model's ``DC(T)`` [adu/s].  A *synthetic dark frame*
is what the camera would record: ``bias(T) + signal(T, t)`` [adu], the signal
being ``DC(T) t`` (1-D model) or ``A t^gamma exp(B (T - TREF))`` (2-D model);
its ``UNCERT`` is the model errors in quadrature (bias model and dark model
are fitted from different frames, so their errors are independent).  Without
a bias model the frame holds the dark signal only, and says so
(``BIASINCL = F``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.errors import UserError
from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.models.bias_model import BiasModel

from .model_2d import DarkModel2D
from .temperature_model import DarkModel1D

logger = logging.getLogger(__name__)


def _tag(value: float) -> str:
    return f"{value:.2f}"


def _header(product: str, temperature: float, exptime: float | None, model: str,
            adc_bits: int) -> fits.Header:
    header = fits.Header()
    for key, value, comment in provenance_cards(product):
        set_card(header, key, value, comment)
    set_card(header, kw.TEMP, float(temperature), "[degC] temperature of the synthetic dark")
    if exptime is not None:
        set_card(header, kw.EXPTIME, float(exptime), "[s] exposure of the synthetic dark")
    set_card(header, "DARKMODL", model, "dark model used")
    for key, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, key, value, comment)
    return header


def write_rate_map(model: DarkModel1D, temperature: float, folder: Path) -> Path:
    """``synthetic_dark_rate_T<T>.fits``: DC(T) [adu/s] with its uncertainty."""
    header = _header("SYNTHETIC_DARK_RATE", temperature, None, "1-D", model.adc_bits)
    return write_product(Path(folder) / f"synthetic_dark_rate_T{_tag(temperature)}.fits",
                         model.rate(temperature), header, unit=adu.RATE_UNIT,
                         uncertainty=model.rate_err(temperature), mask=model.mask() != 0)


def synthetic_frame(model: DarkModel1D | DarkModel2D, bias: BiasModel | None,
                    temperature: float, exptime: float) -> tuple[np.ndarray, np.ndarray]:
    """``(frame, uncertainty)`` [adu] at ``temperature`` [degC] after ``exptime`` [s]."""
    if not (math.isfinite(temperature) and exptime > 0):
        raise UserError(f"a synthetic dark needs a finite temperature and an exposure > 0 s, "
                        f"got {temperature} degC, {exptime} s")
    if isinstance(model, DarkModel2D):
        signal = model.signal(temperature, exptime).astype(np.float64)
        err = model.signal_err(temperature, exptime).astype(np.float64)
    else:
        signal = model.rate(temperature).astype(np.float64) * exptime
        err = model.rate_err(temperature).astype(np.float64) * exptime
    if bias is not None:
        if bias.shape != signal.shape:
            raise UserError(f"bias model is {bias.shape[1]}x{bias.shape[0]} but the dark model "
                            f"is {signal.shape[1]}x{signal.shape[0]}")
        signal = signal + bias.predict(temperature)
        err = np.sqrt(err ** 2 + bias.predict_err(temperature).astype(np.float64) ** 2)
    return signal.astype(np.float32), err.astype(np.float32)


def write_synthetic_frame(model: DarkModel1D | DarkModel2D, bias: BiasModel | None,
                          temperature: float, exptime: float, path: Path) -> Path:
    """Write :func:`synthetic_frame` as a CCDData-readable product at ``path``."""
    frame, err = synthetic_frame(model, bias, temperature, exptime)
    kind = "2-D" if isinstance(model, DarkModel2D) else "1-D"
    header = _header("SYNTHETIC_DARK", temperature, exptime, kind, model.adc_bits)
    set_card(header, "BIASINCL", bias is not None, "bias model(T) included")
    set_card(header, kw.IMAGETYP, "DARK", "synthetic dark frame")
    if bias is None:
        logger.warning("no bias model: synthetic dark at %.2f degC %.2f s holds the dark signal "
                       "only", temperature, exptime)
    extra = model.mask() if isinstance(model, DarkModel1D) else None
    mask = ~np.isfinite(frame) if extra is None else (extra != 0) | ~np.isfinite(frame)
    return write_product(path, frame, header, unit=adu.UNIT, uncertainty=err, mask=mask)


def single_path(folder: Path, temperature: float, exptime: float) -> Path:
    """``synthetic_2d_dark_T<T>_E<E>.fits`` (the old ``synthetic_2d_single`` name)."""
    return Path(folder) / f"synthetic_2d_dark_T{_tag(temperature)}_E{_tag(exptime)}.fits"


def grid_path(folder: Path, temperature: float, exptime: float, kind: str = "2d") -> Path:
    """``synthetic_<kind>_exp_<E>/synthetic_<kind>_dark_t<T>_e<E>.fits`` (old layout)."""
    return (Path(folder) / f"synthetic_{kind}_exp_{_tag(exptime)}"
            / f"synthetic_{kind}_dark_t{_tag(temperature)}_e{_tag(exptime)}.fits")


__all__ = ["write_rate_map", "synthetic_frame", "write_synthetic_frame", "single_path",
           "grid_path"]
