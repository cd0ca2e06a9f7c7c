"""Photo-response non-uniformity (EMVA 1288) and response defects.

PRNU map of a master: ``P = master / M`` (the master over its illumination model),
normalised to median 1; the combined map of a stage is the inverse-variance weighted
mean of its masters' maps.

PRNU in % (EMVA 1288: spatial non-uniformity of the averaged image, without its temporal
noise), split into row, column and pixel parts.  With ``P = 1 + r_i + c_j + e_ij`` over the
valid, non-defect pixels, ``s2`` the spatial (co)variance, ``v_col`` and ``v_row`` those of
the column and row means (over ``H`` rows and ``W`` columns)::

    s2_pix = (s2 - v_col - v_row) / (1 - 1/H - 1/W)
    s2_col = v_col - s2_pix / H,   s2_row = v_row - s2_pix / W
    PRNU^2 = s2_pix + s2_col + s2_row

EMVA removes the temporal noise of the averaged image by subtracting its variance; the
clipped stacks' errors are a little low (:mod:`utils.stack.combine`), which would leave
a bias that grows at low signal.  With two masters or more the (co)variances are
instead *cross*-covariances between the PRNU maps of different masters (different
frames: their temporal noise is independent and drops out exactly), averaged over the
pairs: all pairs for the stage, pairs with master ``k`` for master ``k``, pairs at one
temperature for that temperature.  With a single master: its own variance minus the mean
squared noise-model error, scaled to the stack's actual scatter (a sigma-clipped mean of
few frames scatters more than its error map says: x 1.16 at 8 frames and 3 sigma, x 1.05
at the default 4 sigma, see :func:`utils.stack.error_factor.clipped_error_factor`; left as is,
at 3 sigma it biased a single master's PRNU high, 1.12 % for a true 1.02 % at 8 frames of
1600 e-).  Errors: jackknife over row
stripes of the frame.  The maps are streamed by row blocks, all masters together, so
memory does not grow with their number (:class:`CrossAccumulator`).

Defects (on the combined map, the PLATO/LSST definitions): dead pixels respond below
``dead_threshold`` (10 %) of the local smooth response (the illumination model), cold
pixels below ``cold_threshold`` (80 %); a column defect is a column whose median
response departs from 1 by more than ``column_nsigma`` robust sigma of the column
medians and ``column_min_dev``.  ``defects.fits`` is their bit mask (1 dead, 2 cold,
4 column defect), ``defects.csv`` the counts and the defective columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.io import fits

from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.io.tokens import number_text
from utils.stack.stats import MAD_TO_STD, exact_median

PRNU_FOLDER = "prnu"
DEAD, COLD, COLUMN = 1, 2, 4
MASKBITS = "1 dead, 2 cold, 4 column defect"


@dataclass
class PrnuMap:
    """A PRNU map and its error [1] (NaN where not valid); ``norm``: the median divided out."""

    tag: str
    data: np.ndarray
    err: np.ndarray
    norm: float = 1.0


def prnu_map(tag: str, master: np.ndarray, master_err: np.ndarray, model: np.ndarray
             ) -> PrnuMap:
    """``master / model`` normalised to median 1, and its error (the master's, propagated)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = master / model
        finite = ratio.ravel()[::max(1, ratio.size // 500000)]
        finite = finite[np.isfinite(finite)]
        norm = exact_median(finite) if finite.size else 1.0
        data = (ratio / norm).astype(np.float32)
        err = (np.abs(master_err / model) / norm).astype(np.float32)
    return PrnuMap(tag, data, err, norm)


def accumulate(acc: np.ndarray, wsum: np.ndarray, p: PrnuMap) -> None:
    """Add a map to the inverse-variance sums ``acc`` and ``wsum`` (in place)."""
    ok = np.isfinite(p.data) & np.isfinite(p.err) & (p.err > 0)
    err = np.where(ok, p.err, np.float32(1.0))
    w = np.where(ok, np.float32(1.0) / (err * err), np.float32(0.0))
    acc += w * np.where(ok, p.data, np.float32(0.0))
    wsum += w


def finish_combined(acc: np.ndarray, wsum: np.ndarray, tag: str) -> PrnuMap:
    """The inverse-variance weighted mean of the maps summed, renormalised to median 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        data = acc / wsum
        err = 1.0 / np.sqrt(wsum)
    finite = data[np.isfinite(data)]
    norm = exact_median(finite) if finite.size else 1.0
    return PrnuMap(tag, (data / norm).astype(np.float32), (err / norm).astype(np.float32))


def column_nanmedian(image: np.ndarray) -> np.ndarray:
    """``np.nanmedian(image, axis=0)``, the same numbers (NaN for a column without a value):
    every column sorted at once (NaN last) and its middle value, or the mean of its two
    middle values in the array's type, as numpy takes them -- not numpy's loop over the
    columns (~1000 separate medians of a frame)."""
    image = np.asarray(image)
    counts = (~np.isnan(image)).sum(0)
    ordered = np.sort(image, axis=0)
    cols = np.arange(image.shape[1])
    lo = ordered[np.maximum((counts - 1) // 2, 0), cols]
    hi = ordered[np.maximum(counts // 2, 0), cols]
    with np.errstate(invalid="ignore", over="ignore"):
        mid = np.where(counts % 2 == 1, lo, (lo + hi) / image.dtype.type(2))
    return np.where(counts > 0, mid, image.dtype.type(np.nan))


def find_defects(p: PrnuMap, *, dead_threshold: float = 0.1, cold_threshold: float = 0.8,
                 column_nsigma: float = 5.0, column_min_dev: float = 0.02) -> np.ndarray:
    """Defect bits (:data:`DEAD`, :data:`COLD`, :data:`COLUMN`) of a PRNU map (uint8)."""
    data = p.data
    bits = np.zeros(data.shape, np.uint8)
    finite = np.isfinite(data)
    bits[finite & (data < dead_threshold)] |= DEAD
    bits[finite & (data >= dead_threshold) & (data < cold_threshold)] |= COLD
    cols = column_nanmedian(np.where(bits == 0, data, np.float32(np.nan)))
    ok = np.isfinite(cols)
    if ok.sum() >= 5:
        centre = float(np.median(cols[ok]))
        spread = MAD_TO_STD * float(np.median(np.abs(cols[ok] - centre)))
        limit = max(column_nsigma * spread, column_min_dev)
        bad_cols = ok & (np.abs(cols - centre) > limit)
        bits[:, bad_cols] |= COLUMN
    return bits


def defect_table(bits: np.ndarray) -> pd.DataFrame:
    """``defects.csv``: ``DEFECT, COUNT, FRACTION, COLUMNS``."""
    columns = np.flatnonzero((bits & COLUMN).any(axis=0))
    rows = [{"DEFECT": name, "COUNT": int(((bits & bit) != 0).sum()),
             "FRACTION": float(((bits & bit) != 0).mean()),
             "COLUMNS": " ".join(str(c) for c in columns) if bit == COLUMN else ""}
            for name, bit in (("dead", DEAD), ("cold", COLD), ("column", COLUMN))]
    rows.append({"DEFECT": "any", "COUNT": int((bits != 0).sum()),
                 "FRACTION": float((bits != 0).mean()), "COLUMNS": ""})
    return pd.DataFrame(rows)


class CrossAccumulator:
    """Sums of the PRNU maps of K masters, by row stripe, for :meth:`estimate`.

    Parameters
    ----------
    tags : list of str
        The masters.
    shape : tuple of int
        ``(height, width)`` [px].
    stripes : int, optional
        Row stripes of the jackknife.
    noise_factors : list of float, optional
        Per master, its actual temporal scatter over its error map
        (:func:`utils.stack.error_factor.clipped_error_factor`); used only for a single master,
        whose own variance minus its temporal noise is the estimate.  Default 1.
    """

    def __init__(self, tags: list[str], shape: tuple[int, int], stripes: int = 16,
                 noise_factors: list[float] | None = None):
        k = len(tags)
        h, w = shape
        self.tags, self.shape = list(tags), shape
        # actual temporal scatter / error map of each master (a clipped stack's is low)
        self.noise_factors = np.ones(k) if noise_factors is None else np.asarray(noise_factors,
                                                                                  float)
        self.rows_per = max(1, -(-h // max(1, min(stripes, h // 2 or 1))))
        n_s = -(-h // self.rows_per)
        self.n = np.zeros(n_s)
        self.s1 = np.zeros((n_s, k))
        self.s2 = np.zeros((n_s, k, k))
        self.t2 = np.zeros((n_s, k))
        self.colsum = np.zeros((n_s, k, w))
        self.colcnt = np.zeros((n_s, w))
        self.rowmean = np.full((k, h), np.nan)

    def add(self, start: int, data: np.ndarray, err: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``start:start + rows`` of every map: ``data``, ``err`` (K, rows, W) and the
        common ``valid`` mask (rows, W)."""
        rows = data.shape[1]
        k = data.shape[0]
        self.__dict__.pop("_bases", None)  # sums change: the estimates' shared parts too
        a = 0
        while a < rows:  # the rows of one stripe at a time, summed as one array
            s = (start + a) // self.rows_per
            b = min(rows, (s + 1) * self.rows_per - start)
            ok = valid[a:b]
            x = np.where(ok, data[:, a:b], np.float32(0)).astype(np.float64)
            e = np.where(ok, err[:, a:b], np.float32(0)).astype(np.float64)
            count = ok.sum(1)
            self.n[s] += count.sum()
            self.s1[s] += x.sum((1, 2))
            flat = x.reshape(k, -1)
            self.s2[s] += flat @ flat.T
            self.t2[s] += (e * e).sum((1, 2))
            has = np.flatnonzero(count > 0)
            self.rowmean[:, start + a + has] = x.sum(2)[:, has] / count[has]
            self.colsum[s] += x.sum(1)
            self.colcnt[s] += ok.sum(0)
            a = b

    def _base(self, leave: int | None) -> dict:
        """The sums without row stripe ``leave`` (None: all), shared by every pair of masters
        (kept until the next :meth:`add`: each estimate asks for the same ones)."""
        cache = self.__dict__.setdefault("_bases", {})
        if leave in cache:
            return cache[leave]
        keep = np.ones(self.n.size, bool)
        if leave is not None:
            keep[leave] = False
        n = self.n[keep].sum()
        cnt = self.colcnt[keep].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            colmean = self.colsum[keep].sum(0) / cnt
        cols = cnt > 0
        row_ok = np.isfinite(self.rowmean).all(0)
        if leave is not None:
            row_ok &= (np.arange(self.shape[0]) // self.rows_per) != leave
        base = {"n": n, "s2": self.s2[keep].sum(0), "t2": self.t2[keep].sum(0),
                "mu": self.s1[keep].sum(0) / n, "colmean": colmean, "cols": cols,
                "row_ok": row_ok, "ncols": cols.sum(), "nrows": row_ok.sum(), "pairs": {}}
        cache[leave] = base
        return base

    def _pair(self, base: dict, k: int, j: int) -> tuple[float, float, float, float]:
        """Covariance, column and row terms and mean of masters ``(k, j)`` (in that order:
        the sums are not symmetric to the last bit) from the sums of :meth:`_base`."""
        if (k, j) in base["pairs"]:
            return base["pairs"][(k, j)]
        n, mu = base["n"], base["mu"]
        cov = (base["s2"][k, j] - n * mu[k] * mu[j]) / (n - 1)
        if k == j:
            # a single map: minus its temporal noise (its error map, scaled to the
            # actual scatter of the stack that made it)
            cov -= base["t2"][k] / n * self.noise_factors[k] ** 2
        cols, row_ok = base["cols"], base["row_ok"]
        ck, cj = base["colmean"][k, cols], base["colmean"][j, cols]
        rk, rj = self.rowmean[k, row_ok], self.rowmean[j, row_ok]
        terms = (cov,
                 float(np.mean((ck - ck.mean()) * (cj - cj.mean()))) * ck.size /
                 max(ck.size - 1, 1),
                 float(np.mean((rk - rk.mean()) * (rj - rj.mean()))) * rk.size /
                 max(rk.size - 1, 1),
                 math.sqrt(abs(mu[k] * mu[j])))
        base["pairs"][(k, j)] = terms
        return terms

    def _parts(self, pairs, leave: int | None) -> dict:
        base = self._base(leave)
        n = base["n"]
        h_eff, w_eff = n / max(base["ncols"], 1), n / max(base["nrows"], 1)
        acc = {"s2": 0.0, "col": 0.0, "row": 0.0, "mean": 0.0}
        for k, j in pairs:
            cov, col, row, mean = self._pair(base, k, j)
            acc["s2"] += cov
            acc["col"] += col
            acc["row"] += row
            acc["mean"] += mean
        m = {key: v / len(pairs) for key, v in acc.items()}
        pix = (m["s2"] - m["col"] - m["row"]) / (1.0 - 1.0 / h_eff - 1.0 / w_eff)
        col = m["col"] - pix / h_eff
        row = m["row"] - pix / w_eff
        return {"pix": pix, "col": col, "row": row, "total": pix + col + row,
                "mean": m["mean"], "npix": n}

    def estimate(self, pairs: list[tuple[int, int]], tag: str, method: str) -> dict:
        """PRNU [%] and its parts from the master ``pairs`` (``(k, k)``: one map, minus its
        temporal noise), with jackknife errors over the row stripes."""
        full = self._parts(pairs, None)
        used = [s for s in range(self.n.size) if self.n[s] > 0]
        jack = [self._parts(pairs, s) for s in used] if len(used) > 2 else []

        def pct(var, mean):
            return 100.0 * math.copysign(math.sqrt(abs(var)), var) / mean

        out = {"TAG": tag, "METHOD": method, "NPAIRS": len(pairs), "NPIX": int(full["npix"]),
               "MEAN": full["mean"]}
        for key, name in (("total", "PRNU"), ("pix", "PRNU_PIXEL"), ("col", "PRNU_COLUMN"),
                          ("row", "PRNU_ROW")):
            value = pct(full[key], full["mean"])
            out[f"{name}_PCT"] = value
            if jack:
                vals = np.array([pct(j[key], j["mean"]) for j in jack])
                g = len(vals)
                out[f"{name}_ERR_PCT"] = float(math.sqrt((g - 1) / g
                                                         * np.sum((vals - vals.mean()) ** 2)))
            else:
                out[f"{name}_ERR_PCT"] = math.nan
        return out


def cross_estimates(acc: CrossAccumulator, temperatures: list[float]) -> list[dict]:
    """PRNU rows: per master, per temperature bin and combined (see module notes)."""
    k = len(acc.tags)
    rows = []
    if k == 1:
        rows.append(acc.estimate([(0, 0)], acc.tags[0], "single master: own variance minus "
                                 "its temporal noise (error map x "
                                 f"{acc.noise_factors[0]:.3f})"))
        rows.append(dict(rows[0], TAG="combined"))
        return rows
    for i, tag in enumerate(acc.tags):
        pairs = [(i, j) for j in range(k) if j != i]
        rows.append(acc.estimate(pairs, tag, f"cross-covariance with {k - 1} other masters"))
    for t in sorted(set(temperatures)):
        idx = [i for i, ti in enumerate(temperatures) if ti == t]
        if len(idx) >= 2:
            pairs = [(i, j) for a, i in enumerate(idx) for j in idx[a + 1:]]
            rows.append(acc.estimate(pairs, f"T{number_text(t)}C",
                                     f"cross-covariance of {len(pairs)} pairs at this temperature"))
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    rows.append(acc.estimate(pairs, "combined", f"cross-covariance of {len(pairs)} pairs"))
    return rows


def write_prnu(p: PrnuMap, path, defects: np.ndarray, stats: dict, cards: dict) -> object:
    """A PRNU map product: ``P`` with ``UNCERT``, ``MASK`` (defects or not valid) and the
    PRNU numbers as header cards."""
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_PRNU"):
        set_card(header, key, value, comment)
    set_card(header, "PRIMARY", "master / illumination model", "normalised to median 1")
    for key, name, comment in (("PRNU", "PRNU_PCT", "[%] EMVA 1288 PRNU"),
                               ("PRNUERR", "PRNU_ERR_PCT", "[%] 1-sigma error of PRNU"),
                               ("PRNUPIX", "PRNU_PIXEL_PCT", "[%] pixel part"),
                               ("PRNUCOL", "PRNU_COLUMN_PCT", "[%] column part"),
                               ("PRNUROW", "PRNU_ROW_PCT", "[%] row part")):
        if name in stats:
            set_card(header, key, stats[name], comment)
    for key, (value, comment) in cards.items():
        set_card(header, key, value, comment)
    set_card(header, "MASKBITS", MASKBITS + ", 8 not valid", "MASK bit meanings")
    mask = defects.copy()
    mask[~np.isfinite(p.data)] |= 8
    return write_product(path, p.data, header, unit="", uncertainty=p.err, mask=mask)


def write_defects(bits: np.ndarray, path, cards: dict) -> object:
    """``defects.fits``: the defect bits as the primary image (uint8)."""
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_DEFECTS"):
        set_card(header, key, value, comment)
    set_card(header, "MASKBITS", MASKBITS, "bit meanings of the primary image")
    for name, bit in (("NDEAD", DEAD), ("NCOLD", COLD), ("NCOLDEF", COLUMN)):
        set_card(header, name, int(((bits & bit) != 0).sum()), "pixels with this bit")
    for key, (value, comment) in cards.items():
        set_card(header, key, value, comment)
    return write_product(path, bits, header, unit="")


__all__ = ["PrnuMap", "prnu_map", "accumulate", "finish_combined", "find_defects", "defect_table",
           "CrossAccumulator", "cross_estimates", "write_prnu", "write_defects", "DEAD", "COLD",
           "COLUMN", "PRNU_FOLDER"]
