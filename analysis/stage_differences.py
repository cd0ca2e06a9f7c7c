"""Difference of two masters (target - reference) with its error and significance.

Used by the radiation analysis (every stage pair) and the dose analysis (first
dose step vs pre, post vs last step).  Errors add in quadrature from the two
masters' ``UNCERT``; the significance map is ``diff / error``; the relative map
is ``100 diff / reference mean`` [%] (the old heat maps' scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.plotting import draw_image
from utils.stack.master import read_master


@dataclass
class Difference:
    """``target - reference`` per pixel.

    Attributes
    ----------
    diff, error, significance, relative : numpy.ndarray
        [adu], [adu], [sigma], [%] of the reference mean.
    mean_diff, mean_diff_err : float
        Mean of the difference over pixels valid in both and its error [adu].
    reference_mean : float
        [adu] mean of the reference master.
    target, reference : str
        Names of the two masters.
    """

    diff: np.ndarray
    error: np.ndarray
    significance: np.ndarray
    relative: np.ndarray
    mean_diff: float
    mean_diff_err: float
    reference_mean: float
    target: str
    reference: str


def difference(target: str | Path, reference: str | Path) -> Difference:
    """Difference of two master files (see module notes)."""
    t, r = read_master(target), read_master(reference)
    if t.data.shape != r.data.shape:
        raise ValueError(f"{Path(target).name} is {t.data.shape} but {Path(reference).name} "
                         f"is {r.data.shape}")
    diff = t.data.astype(np.float64) - r.data
    err = np.sqrt(t.stderr.astype(np.float64) ** 2 + r.stderr.astype(np.float64) ** 2)
    ok = np.isfinite(diff) & np.isfinite(err)
    ref_mean = float(np.nanmean(r.data)) if np.isfinite(r.data).any() else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = np.where(err > 0, diff / err, np.nan)
        rel = 100.0 * diff / ref_mean if ref_mean else diff
    mean = float(diff[ok].mean()) if ok.any() else math.nan
    mean_err = float(np.sqrt(np.sum(err[ok] ** 2)) / ok.sum()) if ok.any() else math.nan
    return Difference(diff.astype(np.float32), err.astype(np.float32), sig.astype(np.float32),
                      np.asarray(rel, np.float32), mean, mean_err, ref_mean, Path(target).name,
                      Path(reference).name)


def write_difference(path: str | Path, d: Difference, cards: list | None = None) -> Path:
    """FITS product: primary = difference [adu] with ``UNCERT`` and ``MASK``, and a
    ``SIGNIF`` (diff / error) and ``RELATIVE`` [%] extension."""
    header = fits.Header()
    for key, value, comment in provenance_cards("STAGE_DIFFERENCE"):
        set_card(header, key, value, comment)
    for key, value, comment in [("TARGET", d.target[:60], "master minuend"),
                                ("REFERENC", d.reference[:60], "master subtrahend"),
                                ("MEANDIFF", d.mean_diff, "[adu] mean difference"),
                                ("MEANDERR", d.mean_diff_err, "[adu] its error"),
                                ("REFMEAN", d.reference_mean, "[adu] mean of the reference")]\
            + list(cards or []):
        set_card(header, key, value if not (isinstance(value, float) and not math.isfinite(value))
                 else "NAN", comment)
    return write_product(path, d.diff, header, unit="adu", uncertainty=d.error,
                         mask=~np.isfinite(d.diff),
                         images={"SIGNIF": (d.significance, ""), "RELATIVE": (d.relative, "%")})


def plot_difference(image: np.ndarray, *, title: str, unit: str, log: bool = False, ax=None):
    """Diverging heat map; ``log`` gives a symmetric-log scale (linear within 1 % of the
    largest |value|), the old ``_log`` figures."""
    from utils.plotting import new_axes

    ax = new_axes(ax, figsize=(6.4, 4.8))
    v = np.asarray(image, dtype=float)
    finite = v[np.isfinite(v)]
    top = float(np.max(np.abs(finite))) if finite.size else 1.0
    top = top or 1.0
    ticks = None
    if log:
        from matplotlib.colors import SymLogNorm

        linthresh = 0.01 * top + 1e-9
        norm = SymLogNorm(linthresh=linthresh, vmin=-top, vmax=top)
        im = draw_image(ax, v, cmap="RdBu_r", norm=norm)  # limits above from every pixel
        ticks = symlog_ticks(linthresh, top)
    else:
        im = draw_image(ax, v, cmap="RdBu_r", vmin=-top, vmax=top)
    ax.set_title(title)
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    bar = ax.figure.colorbar(im, ax=ax, label=f"difference [{unit}]", shrink=0.85)
    if ticks is not None:
        bar.set_ticks(ticks)
    return ax


def symlog_ticks(linthresh: float, top: float) -> list[float]:
    """Colour-bar ticks of a symmetric-log scale: 0 and the decades from ``linthresh`` to
    ``top`` on either side.  Matplotlib's own put decades inside the linear part too, where
    they crowd 0 ('10^-2', '0' and '-10^-2' printed over each other).

    Examples
    --------
    >>> symlog_ticks(0.05, 5.0)
    [-1.0, -0.1, 0.0, 0.1, 1.0]
    """
    first = math.ceil(math.log10(linthresh))
    last = math.floor(math.log10(top))
    decades = [10.0 ** k for k in range(first, last + 1)]
    if not decades:
        return [-top, 0.0, top]
    return [-d for d in reversed(decades)] + [0.0] + decades


__all__ = ["Difference", "difference", "write_difference", "plot_difference", "symlog_ticks"]
