"""The product side of a master: :class:`MasterResult`, its FITS header and inputs table.

:func:`utils.stack.combine.combine_many` (and :func:`~utils.stack.combine.combine`)
fills the arrays; this module turns them into the product a pipeline writes:
the combination keywords, master statistics and provenance cards
(:func:`_build_header`) and one row per input (:func:`_inputs_table`).
``MasterResult`` is re-exported by :mod:`utils.stack.combine`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import headers as kw
from ..io import fitsio
from .stats import exact_median


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------
@dataclass
class MasterResult:
    """A combined master frame and its companions.

    Attributes
    ----------
    data : numpy.ndarray
        float32 master image, in the unit of the (scaled) inputs.
    noise : numpy.ndarray
        float32 per-pixel sample standard deviation (``ddof=1``) of the accepted
        samples, same unit; NaN where fewer than 2 samples were accepted.
    stderr : numpy.ndarray
        float32 standard error of the master, ``noise / sqrt(count)``.
    count : numpy.ndarray
        int16 number of accepted samples per pixel.
    flags : numpy.ndarray
        uint8 bit plane: ``FLAG_FEW`` (1), ``FLAG_SATURATED`` (2), ``FLAG_NONFINITE`` (4),
        ``FLAG_PARTSAT`` (8: saturated in some inputs, the mean of the rest biased low).
    header : astropy.io.fits.Header
        Combination keywords, master statistics and provenance.
    inputs : pandas.DataFrame
        One row per input: ``PATH`` and, when known, ``TEMP`` [degC],
        ``EXPTIME`` [s], ``SCALE`` and ``NSAT`` (saturated samples).
    """

    data: np.ndarray
    noise: np.ndarray
    stderr: np.ndarray
    count: np.ndarray
    flags: np.ndarray
    header: fits.Header
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask, True where the master is not valid (any flag set)."""
        return self.flags != 0

    def write(self, path: str | os.PathLike, *, unit: str = "adu",
              extra_header: fits.Header | Mapping | None = None,
              extra_images: Mapping[str, tuple[np.ndarray, str]] | None = None) -> Path:
        """Write the master as a ``CCDData``-readable FITS product, atomically.

        Layout: primary = master (``BUNIT = unit``), ``UNCERT`` = ``stderr``,
        ``MASK``, image extensions ``NOISE`` (unit ``unit``), ``NCOMB`` (count)
        and ``FLAGS``, and the binary table ``INPUTS``.

        Parameters
        ----------
        path : path-like
            Destination file.
        unit : str, optional
            Physical unit of the master, e.g. ``"adu"`` or ``"adu / s"``.
        extra_header : Header or mapping, optional
            Cards added to (or overriding) :attr:`header`; mapping values may be
            ``value`` or ``(value, comment)``.
        extra_images : mapping, optional
            More image extensions, ``{EXTNAME: (array, bunit)}``.
        """
        header = self.header.copy()
        if isinstance(extra_header, fits.Header):
            extra_header = {card.keyword: (card.value, card.comment) for card in extra_header.cards}
        for key, value in (extra_header or {}).items():
            value, comment = value if isinstance(value, tuple) else (value, "")
            fitsio.set_card(header, key, value, comment)
        return fitsio.write_product(
            path, self.data, header, unit=unit, uncertainty=self.stderr, mask=self.mask,
            images={"NOISE": (self.noise, unit), "NCOMB": (self.count, ""),
                    "FLAGS": (self.flags, ""), **(extra_images or {})},
            tables={"INPUTS": self.inputs} if len(self.inputs.columns) else None)




# --------------------------------------------------------------------------------------
# header and inputs table
# --------------------------------------------------------------------------------------
def _finite_values(metadata, key):
    vals = []
    for meta in metadata or ():
        try:
            v = float(meta.get(key, math.nan))
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            vals.append(v)
    return vals


def _build_header(*, n, method, sigma_low, sigma_high, maxiters, min_accepted, scale,
                  subtract, saturation, metadata, data, flags, nreject, product,
                  min_scale=0.0, guard=False) -> fits.Header:
    header = fits.Header()
    for key, value, comment in fitsio.provenance_cards(product):
        fitsio.set_card(header, key, value, comment)
    card = lambda key, value, comment="": fitsio.set_card(header, key, value, comment)  # noqa: E731
    card(kw.NCOMBINE, n, "frames combined")
    card(kw.COMBMETH, method, "combination method")
    if method == "sigclip":
        card(kw.CLIPLO, float(sigma_low), "[sigma] lower clipping threshold")
        card(kw.CLIPHI, float(sigma_high), "[sigma] upper clipping threshold")
        card(kw.CLIPITER, int(maxiters), "max clipping iterations (0 = to convergence)")
        card(kw.CLIPCEN, "median", "clipping centre estimator")
        card(kw.CLIPDEV, "mad_std", "1.482602 x MAD (std where MAD = 0)")
        if min_scale > 0:
            card("CLIPMIN", float(min_scale), "smallest clipping scale (2 ADC steps)")
        card("CLIPGRD", bool(guard), "flags confirmed by the unflagged samples' std")
    card(kw.MINACC, int(min_accepted), "min accepted samples of a valid pixel")
    if scale is not None:
        card(kw.SCALEMTH, "per-frame factor", "frames multiplied by INPUTS.SCALE")
    if subtract is not None:
        what = ("array" if isinstance(subtract, np.ndarray)
                else f"callable {getattr(subtract, '__qualname__', type(subtract).__name__)}")
        card(kw.SUBTRACT, what, "subtracted from each frame before combining")
    if saturation is not None:
        card(kw.SATLEVEL, float(saturation), "[adu] raw samples >= this were excluded")
    valid = (flags == 0) & np.isfinite(data)
    card(kw.NMASKED, int(data.size - valid.sum()), "masked pixels (FLAGS != 0)")
    card(kw.NREJECT, int(nreject), "samples rejected by clipping")
    if valid.any():
        good = data[valid]  # float32 copy; float64 accumulators below
        card(kw.MEAN, float(good.mean(dtype=np.float64)), "mean of the master, valid pixels")
        card(kw.MEDIAN, exact_median(good), "median of the master, valid pixels")
        card(kw.STD, float(good.std(dtype=np.float64)), "std of the master, valid pixels")
    for key, (kmin, kmax, kavg), unit in ((kw.TEMP, (kw.TMIN, kw.TMAX, kw.TAVG), "degC"),
                                          (kw.EXPTIME, (kw.EMIN, kw.EMAX, kw.EAVG), "s")):
        vals = _finite_values(metadata, key)
        if vals:
            card(kmin, min(vals), f"[{unit}] min {key} of inputs")
            card(kmax, max(vals), f"[{unit}] max {key} of inputs")
            card(kavg, float(np.mean(vals)), f"[{unit}] mean {key} of inputs")
    return header


def _inputs_table(paths, metadata, scale, sat_per_frame) -> pd.DataFrame:
    table = pd.DataFrame({"PATH": [str(p) for p in paths]})
    keys: list[str] = []
    for meta in metadata or ():
        for key in meta:
            if key not in keys and key != "PATH":
                keys.append(key)
    for key in sorted(keys, key=lambda k: (k not in (kw.TEMP, kw.EXPTIME), keys.index(k))):
        values = [meta.get(key) for meta in metadata]
        if all(v is None or isinstance(v, (int, float, np.integer, np.floating, bool))
               for v in values):
            table[key] = np.array([math.nan if v is None else float(v) for v in values])
        else:
            table[key] = ["" if v is None else str(v) for v in values]
    if scale is not None:
        table["SCALE"] = scale
    if sat_per_frame is not None:
        table["NSAT"] = sat_per_frame
    return table
