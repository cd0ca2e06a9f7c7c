"""The radiation response model's pixel work, row tile by row tile: memory set by the budget.

:mod:`analysis.fit_radiation_model` needs, from every master of the campaign, the pixel set
(measured everywhere, hot in no dark master), each master's mean and mean temporal variance
over that set, the per-pixel read variance pooled over the bias masters and the per-pixel
dark maps fitted on the dark masters.  Holding the masters for that (five float32 images
each, plus the ``(n, H, W)`` float32 and float64 stacks of the dark-map fit) grew with the
number of masters: ~44 bytes per pixel per master, 571 MB at 512^2 with 30 masters.

Here every pass reads rows ``r0:r1`` of the masters it needs with the stacking engine's
block reader (:class:`utils.stack.tiles.ProductRows`, ``os.pread`` of the data sections),
``r1 - r0`` chosen by :func:`utils.stack.tiles.tile_rows` from the run's ``--memory-limit``
(:data:`utils.stack.tiles.TILE_SHARE` of it), and writes per-pixel results into
preallocated full-frame 2-D maps (one value per pixel, whatever the number of masters):

* pixel set: finite and >= 2 frames in every master (per tile); the hot-pixel cut of each
  dark master needs the median and robust sigma of its bias-subtracted frame, computed on
  one full-frame difference map at a time (the same numbers as before, whatever the tile);
* points: per image row, each master's sums over the set's pixels (value, squared errors,
  variance, Gaussian variance error, and the variances' squared deviations from the row's
  mean); rows are combined at the end (Chan's pairwise update for the scatter), so the
  points do not depend on the tile height.  They differ from the old ``np.mean`` over all
  set pixels at once by float64 rounding only (relative ~1e-16; tested: 1e-12);
* read variance and dark maps: per pixel, so tiled maps equal untiled ones bit for bit.

Example
-------
>>> from utils.stack.tiles import ArrayRows
>>> imgs = {"PRIMARY": np.ones((2, 3, 4), np.float32), "NOISE": np.ones((2, 3, 4), np.float32),
...         "NCOMB": np.full((2, 3, 4), 3.0, np.float32)}
>>> rows = MasterRows(ArrayRows(imgs), memory_limit=1)
>>> [t for t in rows.tiles(2)]
[(0, 1), (1, 2), (2, 3)]
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from utils.models import radiation_response as rr
from utils.models.linear import MultiLinearFit
from utils.stack.stats import mad_std
from utils.stack.tiles import TILE_SHARE, ProductRows, row_tiles, tile_rows

logger = logging.getLogger(__name__)

#: Robust sigma above the population of a bias-subtracted dark master that makes a pixel hot.
HOT_NSIGMA = 5.0

#: Images of a master the model reads.
MASTER_IMAGES = ("PRIMARY", "MASK", "NOISE", "NCOMB", "UNCERT")


class MasterRows:
    """Rows of every model master, read on demand within a memory budget.

    Parameters
    ----------
    rows : utils.stack.tiles.ProductRows or utils.stack.tiles.ArrayRows
        The masters' images (:data:`MASTER_IMAGES`), one plane per master.
    memory_limit : float
        Working-memory budget of one tile [byte] (e.g. :data:`TILE_SHARE` of the run's
        ``--memory-limit``).
    """

    def __init__(self, rows, memory_limit: float):
        self.rows = rows
        self.shape = tuple(rows.shape)
        self.memory_limit = memory_limit

    @classmethod
    def of_paths(cls, paths: Sequence, memory_limit: float) -> MasterRows:
        """The masters at ``paths``; tiles take :data:`TILE_SHARE` of ``memory_limit`` [byte]."""
        return cls(ProductRows(paths, MASTER_IMAGES), memory_limit * TILE_SHARE)

    def __len__(self) -> int:
        return len(self.rows)

    def tiles(self, n_planes: int, images: int = 3) -> Iterator[tuple[int, int]]:
        """``(r0, r1)`` row tiles for ``images`` stacks of ``n_planes`` masters."""
        return row_tiles(self.shape[0], tile_rows(n_planes, self.shape, self.memory_limit,
                                                  images=images))

    def data(self, r0: int, r1: int, planes=None) -> np.ndarray:
        """Master values [adu], masked pixels NaN, ``(K, r1 - r0, W)`` float32."""
        data = self.rows.read("PRIMARY", r0, r1, planes=planes)
        data[self.rows.read("MASK", r0, r1, fill=0.0, planes=planes) != 0] = np.nan
        return data

    def noise(self, r0: int, r1: int, planes=None) -> np.ndarray:
        """Per-pixel sample standard deviation of the frames [adu] (NaN when absent)."""
        return self.rows.read("NOISE", r0, r1, planes=planes)

    def count(self, r0: int, r1: int, planes=None) -> np.ndarray:
        """Frames combined per pixel (1 when absent)."""
        return self.rows.read("NCOMB", r0, r1, fill=1.0, planes=planes)

    def stderr(self, r0: int, r1: int, planes=None) -> np.ndarray:
        """The master's standard error [adu] (NaN when absent)."""
        return self.rows.read("UNCERT", r0, r1, planes=planes)


def nearest_bias(masters: list, m):
    """The bias master of ``m``'s (stage, dose step) nearest its temperature, or None."""
    same = [b for b in masters if b.key.caltype == "BIAS" and b.key.stage_dir == m.key.stage_dir]
    return min(same, key=lambda b: abs(b.key.temperature - m.key.temperature)) if same else None


def select_pixels(masters: list, rows: MasterRows) -> np.ndarray:
    """Pixels measured in every master and hot in no dark master (bias subtracted).

    A pixel is hot in a dark master when its excess over the median of the bias-subtracted
    master is above :data:`HOT_NSIGMA` robust sigma *and* above 3 times its own temporal
    noise (a pixel the beam hit once is high on average but as noisy as its excess:
    leaving those out would select the pixels the beam missed and bias <q> low).

    Parameters
    ----------
    masters : list of ModelMaster
        The masters, in the planes' order of ``rows``.
    rows : MasterRows
        Their images.

    Returns
    -------
    numpy.ndarray of bool, shape (H, W)
    """
    n = len(masters)
    good = np.ones(rows.shape, bool)
    for r0, r1 in rows.tiles(n):
        data, noise, count = rows.data(r0, r1), rows.noise(r0, r1), rows.count(r0, r1)
        for k in range(n):
            good[r0:r1] &= np.isfinite(data[k]) & np.isfinite(noise[k]) & (count[k] >= 2)
        del data, noise, count
    plane = {id(m): k for k, m in enumerate(masters)}
    for m in masters:
        bias = nearest_bias(masters, m) if m.key.caltype == "DARK" else None
        if bias is None:
            continue
        pair = [plane[id(m)], plane[id(bias)]]
        # the centre and scale are frame-wide: one difference map at a time
        diff = np.empty(rows.shape, np.float32)
        for r0, r1 in rows.tiles(2):
            block = rows.data(r0, r1, pair)
            np.subtract(block[0], block[1], out=diff[r0:r1])
        ok = np.isfinite(diff)
        centre = np.median(diff[ok])
        scale = float(mad_std(diff[ok])) or float(np.std(diff[ok]))
        del ok
        for r0, r1 in rows.tiles(1):
            excess = diff[r0:r1] - centre
            noise = rows.noise(r0, r1, pair[:1])[0]
            good[r0:r1] &= ~((excess > HOT_NSIGMA * scale) & (excess > 3 * noise))
        del diff
    return good


def measure_points(masters: list, rows: MasterRows, pixels: np.ndarray) -> pd.DataFrame:
    """Mean and mean temporal variance of each master over ``pixels``, with their errors.

    Per master: ``MEAN`` [adu] (error from the temporal standard errors
    ``sqrt(sum s^2/n) / N``), ``VAR`` [adu^2] the mean per-pixel sample variance ``s^2``
    and ``VAR_ERR`` the larger of the Gaussian sampling error
    (``sqrt(sum 2 s^4/(n + 1)) / N``) and the pixels' own scatter of ``s^2`` over
    ``sqrt(N)`` (beam hits make ``s^2`` heavy-tailed, which the Gaussian formula
    underestimates; the scatter also holds the pixels' true differences, so it errs on the
    safe side), ``NPIX`` = ``N``.  Sums are taken per image row and combined over rows, so
    they do not depend on the tiles.

    Parameters
    ----------
    masters : list of ModelMaster
        The masters (``point`` holds each one's key columns), in the planes' order.
    rows : MasterRows
        Their images.
    pixels : numpy.ndarray of bool, shape (H, W)
        The model's pixel set.

    Returns
    -------
    pandas.DataFrame
        One row per master: its ``point`` plus ``MEAN, MEAN_ERR, VAR, VAR_ERR, NPIX``.
    """
    n = len(masters)
    height = rows.shape[0]
    per_row = pixels.sum(axis=1).astype(np.float64)          # set pixels of each row
    names = ("data", "se2", "noise2", "gauss", "m2")
    sums = {name: np.zeros((n, height)) for name in names}
    for r0, r1 in rows.tiles(n):
        sel = pixels[r0:r1]
        nr = per_row[r0:r1]
        data, noise, count = rows.data(r0, r1), rows.noise(r0, r1), rows.count(r0, r1)
        row_n = np.where(nr > 0, nr, 1.0)
        for k in range(n):
            # pixels outside the set (masked, one frame) may divide by 0: summed as 0
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                c = count[k].astype(np.float64)
                noise2 = noise[k].astype(np.float64) ** 2
                sums["data"][k, r0:r1] = _row_sum(data[k].astype(np.float64), sel)
                sums["se2"][k, r0:r1] = _row_sum(noise2 / c, sel)
                s = sums["noise2"][k, r0:r1] = _row_sum(noise2, sel)
                sums["gauss"][k, r0:r1] = _row_sum(2 * noise2 ** 2 / (c + 1), sel)
                sums["m2"][k, r0:r1] = _row_sum((noise2 - (s / row_n)[:, None]) ** 2, sel)
        del data, noise, count
    n_pix = int(pixels.sum())
    out = []
    for k, m in enumerate(masters):
        point = dict(m.point)
        point.update(_point(n_pix, per_row, {name: v[k] for name, v in sums.items()}),
                     NPIX=n_pix)
        out.append(point)
    return pd.DataFrame(out)


def _row_sum(x: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Sum over each row of ``x`` (float64) of the pixels ``sel``."""
    return np.sum(np.where(sel, x, 0.0), axis=1)


def _point(n_pix: int, per_row: np.ndarray, rowsum: dict) -> dict:
    """A master's point from its per-row sums (see :func:`measure_points`)."""
    if n_pix == 0:
        return dict(MEAN=math.nan, MEAN_ERR=math.nan, VAR=math.nan, VAR_ERR=math.nan)
    var = float(np.sum(rowsum["noise2"])) / n_pix
    gaussian = math.sqrt(float(np.sum(rowsum["gauss"]))) / n_pix
    scatter = math.nan
    if n_pix > 1:
        # Chan et al.: squared deviations about the mean from those about each row's mean
        used = per_row > 0
        row_mean = rowsum["noise2"][used] / per_row[used]
        m2 = float(np.sum(rowsum["m2"])) + float(np.sum(per_row[used] * (row_mean - var) ** 2))
        scatter = math.sqrt(m2 / (n_pix - 1)) / math.sqrt(n_pix)
    return dict(MEAN=float(np.sum(rowsum["data"])) / n_pix,
                MEAN_ERR=math.sqrt(float(np.sum(rowsum["se2"]))) / n_pix, VAR=var,
                VAR_ERR=max(gaussian, scatter) if math.isfinite(scatter) else gaussian)


def read_variance(masters: list, rows: MasterRows) -> np.ndarray | None:
    """Per-pixel read variance [adu^2] pooled over every bias master
    (:func:`utils.models.radiation_response.pooled_read_variance`, tile by tile); None
    without a bias master."""
    planes = [k for k, m in enumerate(masters) if m.key.caltype == "BIAS"]
    if not planes:
        return None
    out = np.empty(rows.shape, np.float64)
    for r0, r1 in rows.tiles(len(planes), images=2):
        noise, count = rows.noise(r0, r1, planes), rows.count(r0, r1, planes)
        out[r0:r1] = rr.pooled_read_variance(list(noise), list(count))
    return out


def dark_map_inputs(masters: list, points: pd.DataFrame, fit: rr.ResponseFit,
                    fit_stages: Sequence[str]) -> list[tuple]:
    """``(dark, bias, shift, point row)`` of every fitted dark master with a bias master.

    ``shift`` [adu] brings the bias to the dark's temperature (``b_T``) and dose
    (``alpha_D``: with the beam on while measuring, the darks received more dose than the
    bias frames before them).
    """
    out = []
    for m in masters:
        if m.key.caltype != "DARK" or m.key.stage not in fit_stages:
            continue
        bias = nearest_bias(masters, m)
        if bias is None:
            continue
        b_t = fit.coef.get("b_T", math.nan)
        shift = (b_t if math.isfinite(b_t) else 0.0) * (m.point["TEMP"] - bias.point["TEMP"])
        alpha = fit.coef.get("alpha_D", math.nan)
        dose_gap = m.point["DOSE"] - bias.point["DOSE"]
        if math.isfinite(alpha) and math.isfinite(dose_gap):
            shift += alpha * dose_gap
        row = points[(points["MASTER"] == m.path.name) & (points["TAG"] == m.key.stage_dir)]
        out.append((m, bias, shift, row.iloc[0]))
    return out


def dark_maps(masters: list, rows: MasterRows, inputs: list[tuple], fit: rr.ResponseFit,
              read_var: np.ndarray | None) -> MultiLinearFit:
    """Per-pixel DC0 and beta_D (:func:`utils.models.radiation_response.pixel_dark_maps`),
    fitted tile by tile into full-frame maps.

    Each point is the dark master minus its bias master and ``shift`` (float32, as the
    masters), weighted by the variance the model expects of the dark and of the bias
    (``rr.master_variance`` from the pixel's pooled read variance ``read_var``): the
    pixel's own sample variance grows with the beam hits it got, and a fit weighted by it
    leans away from the hit pixels' points (mean reconstruction residual +72 +- 6 adu on a
    40 krad step of 20 s darks).

    Parameters
    ----------
    masters : list of ModelMaster
        Every master, in the planes' order of ``rows``.
    rows : MasterRows
        Their images.
    inputs : list of tuple
        :func:`dark_map_inputs` (at least one).
    fit : ResponseFit
        The joint fit (``q_mean`` removed from each dark, the variances' model terms).
    read_var : numpy.ndarray or None
        :func:`read_variance`.

    Returns
    -------
    utils.models.linear.MultiLinearFit
        Full-frame maps, the same numbers as one fit on the whole ``(n, H, W)`` stacks.

    Raises
    ------
    ValueError
        No term of the per-pixel fit is constrained by the dark masters.
    """
    plane = {id(m): k for k, m in enumerate(masters)}
    need = sorted({plane[id(m)] for d, b, _, _ in inputs for m in (d, b)})
    at = {k: j for j, k in enumerate(need)}
    table = pd.DataFrame([r for *_, r in inputs])
    q = fit.coef.get("q_mean", math.nan)
    q = q if math.isfinite(q) else 0.0
    maps = None
    for r0, r1 in rows.tiles(len(need)):
        data = rows.data(r0, r1, need)
        count, stderr = rows.count(r0, r1, need), rows.stderr(r0, r1, need)
        rv = None if read_var is None else read_var[r0:r1]
        darks, errs = [], []
        for d, b, shift, _ in inputs:
            jd, jb = at[plane[id(d)]], at[plane[id(b)]]
            darks.append(data[jd] - data[jb] - shift)
            errs.append(rr.dark_point_error(d.point, b.point, fit, rv, count[jd], stderr[jd],
                                            count[jb], stderr[jb]))
        del data, count, stderr
        part = rr.pixel_dark_maps(np.array(darks), np.array(errs), table, fit.settings, q)
        del darks, errs
        if maps is None:
            maps = _empty_like_tile(part, rows.shape)
        for name in ("coef", "err"):
            getattr(maps, name)[:, r0:r1] = getattr(part, name)
        maps.covariance[:, :, r0:r1] = part.covariance
        maps.chi2[r0:r1], maps.npoints[r0:r1] = part.chi2, part.npoints
    return maps


def _empty_like_tile(part: MultiLinearFit, shape: tuple) -> MultiLinearFit:
    """Full-frame maps of the dtypes of a tile's fit, to be filled tile by tile."""
    p = len(part.names)
    return MultiLinearFit(part.names, part.fitted,
                          np.empty((p, *shape), part.coef.dtype),
                          np.empty((p, *shape), part.err.dtype),
                          np.empty((p, p, *shape), part.covariance.dtype),
                          np.empty(shape, part.chi2.dtype), np.empty(shape, part.npoints.dtype),
                          part.dropped)


__all__ = ["MasterRows", "MASTER_IMAGES", "HOT_NSIGMA", "nearest_bias", "select_pixels",
           "measure_points", "read_variance", "dark_map_inputs", "dark_maps"]
