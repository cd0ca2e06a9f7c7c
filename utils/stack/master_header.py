"""Header and inputs table of a combined master (:func:`utils.stack.combine.combine`): the
combination keywords, the master's statistics over its valid pixels (``MEAN``, ``MEDIAN``,
``STD``) and the inputs' temperature and exposure ranges; one row per input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import headers as kw
from ..io import fitsio
from .blockops import valid_values
from .stats import exact_median


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
                  min_scale=0.0, guard=False, noise_floor=0.0,
                  pooled_floor=False) -> fits.Header:
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
        card("CLIPPOOL", bool(pooled_floor), "scale >= pooled scale of the image row")
    card(kw.MINACC, int(min_accepted), "min accepted samples of a valid pixel")
    if noise_floor > 0:
        card(kw.NOISEMIN, noise_floor, "NOISE where accepted samples all equal (step/sqrt12)")
    if scale is not None:
        card(kw.SCALEMTH, "per-frame factor", "frames multiplied by INPUTS.SCALE")
    if subtract is not None:
        what = ("array" if isinstance(subtract, np.ndarray)
                else f"callable {getattr(subtract, '__qualname__', type(subtract).__name__)}")
        card(kw.SUBTRACT, what, "subtracted from each frame before combining")
    if saturation is not None:
        card(kw.SATLEVEL, float(saturation), "[adu] raw samples >= this were excluded")
    good = valid_values(data, flags)  # float32 copy; float64 accumulators below
    card(kw.NMASKED, int(data.size - good.size), "masked pixels (FLAGS != 0)")
    card(kw.NREJECT, int(nreject), "samples rejected by clipping")
    if good.size:
        card(kw.MEAN, float(good.mean(dtype=np.float64)), "mean of the master, valid pixels")
        card(kw.MEDIAN, exact_median(good), "median of the master, valid pixels")
        card(kw.STD, float(good.std(dtype=np.float64)), "std of the master, valid pixels")
    for key, (kmin, kmax, kavg), unit in ((kw.TEMP, (kw.TMIN, kw.TMAX, kw.TAVG), "degC"),
                                          (kw.EXPTIME, (kw.EMIN, kw.EMAX, kw.EAVG), "s")):
        vals = _finite_values(metadata, key)
        if vals:
            low, high = min(vals), max(vals)
            # equal inputs give their value (np.mean of ten 0.15 s is 0.14999999999999997,
            # which the tables then showed); else the correctly rounded sum over n
            avg = low if low == high else min(high, max(low, math.fsum(vals) / len(vals)))
            card(kmin, low, f"[{unit}] min {key} of inputs")
            card(kmax, high, f"[{unit}] max {key} of inputs")
            card(kavg, avg, f"[{unit}] mean {key} of inputs")
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
