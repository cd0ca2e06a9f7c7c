"""Connected regions of significant pixels (hysteresis), with area, centroid and amplitude.

A region starts at a *seed* pixel whose significance ``|z|`` passes the seed
threshold and grows over touching pixels (8-connectivity) of the same sign
that pass the lower *grow* threshold, so the whole extent of a structure is
measured, not only its brightest pixels.  Positive and negative changes are
separate regions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One connected region.

    Attributes
    ----------
    label : int
        Label in the map returned with it (1-based).
    sign : int
        +1 (brighter than the reference) or -1 (darker).
    area : int
        Pixels [pixel].
    row, col : float
        Centroid (unweighted mean of the pixel coordinates) [pixel].
    row_err, col_err : float
        Standard errors of the centroid, ``rms spread / sqrt(area)`` [pixel].
    amplitude : float
        Mean value of the region (e.g. relative flat change) [unit of the values].
    amplitude_err : float
        Its standard error from the per-pixel noise, ``sqrt(sum sigma^2) / area``.
    peak_z : float
        Largest ``|z|`` in the region [sigma].
    significance : float
        ``|sum z| / sqrt(area)`` [sigma]: significance of the region as a whole.
    bbox : tuple of int
        ``(row_min, row_max, col_min, col_max)``, inclusive.
    """

    label: int
    sign: int
    area: int
    row: float
    col: float
    row_err: float
    col_err: float
    amplitude: float
    amplitude_err: float
    peak_z: float
    significance: float
    bbox: tuple

    def as_dict(self) -> dict:
        """Plain dict (a table row), bbox split into four columns."""
        d = asdict(self)
        r0, r1, c0, c1 = d.pop("bbox")
        d.update(row_min=r0, row_max=r1, col_min=c0, col_max=c1)
        return d


def find_regions(z: np.ndarray, values: np.ndarray, sigma: np.ndarray, *, seed: float,
                 grow: float, min_area: int = 1) -> tuple[list[Region], np.ndarray]:
    """Hysteresis regions of ``|z|``: seeds above ``seed``, grown over pixels above ``grow``.

    Parameters
    ----------
    z : numpy.ndarray
        Significance map [sigma] (NaN = not valid).
    values, sigma : numpy.ndarray
        The measured change and its one-sigma noise (for amplitudes).
    seed, grow : float
        Thresholds [sigma], ``grow <= seed``.
    min_area : int, optional
        Smallest region kept [pixel].

    Returns
    -------
    (list of Region, numpy.ndarray)
        Regions sorted by decreasing significance, and the int32 label map (0 = none).

    Examples
    --------
    >>> z = np.zeros((8, 8)); z[2:5, 2:5] = 4.0; z[3, 3] = 9.0; z[7, 7] = 4.0
    >>> regions, labels = find_regions(z, z, np.ones_like(z), seed=5, grow=3)
    >>> [(r.area, r.row, r.col) for r in regions]
    [(9, 3.0, 3.0)]
    """
    z = np.where(np.isfinite(z), z, 0.0)
    labels_out = np.zeros(z.shape, dtype=np.int32)
    regions: list[Region] = []
    rows, cols = np.indices(z.shape)
    for sign in (1, -1):
        s = sign * z
        low = s > grow
        if not low.any():
            continue
        labels, n = ndimage.label(low, structure=_EIGHT)
        index = np.arange(1, n + 1)
        peak = ndimage.maximum(s, labels, index)
        area = ndimage.sum(low, labels, index)
        keep = (np.asarray(peak) > seed) & (np.asarray(area) >= min_area)
        boxes = ndimage.find_objects(labels)
        for lab in index[keep]:
            box = boxes[lab - 1]
            where = labels[box] == lab
            rr, cc = rows[box][where], cols[box][where]
            n_pix = int(where.sum())
            zs = z[box][where]
            vals = values[box][where]
            sig = sigma[box][where]
            new_label = len(regions) + 1
            labels_out[box][where] = new_label
            spread_r = rr.std() if n_pix > 1 else 0.5
            spread_c = cc.std() if n_pix > 1 else 0.5
            regions.append(Region(
                label=new_label, sign=sign, area=n_pix, row=float(rr.mean()),
                col=float(cc.mean()), row_err=float(max(spread_r, 0.29) / math.sqrt(n_pix)),
                col_err=float(max(spread_c, 0.29) / math.sqrt(n_pix)),
                amplitude=float(np.nanmean(vals)),
                amplitude_err=float(math.sqrt(np.nansum(sig.astype(np.float64) ** 2)) / n_pix),
                peak_z=float(np.abs(zs).max()),
                significance=float(abs(zs.sum()) / math.sqrt(n_pix)),
                bbox=(int(rr.min()), int(rr.max()), int(cc.min()), int(cc.max()))))
    order = sorted(range(len(regions)), key=lambda i: -regions[i].significance)
    relabel = np.zeros(len(regions) + 1, dtype=np.int32)
    out = []
    for new, i in enumerate(order, start=1):
        relabel[regions[i].label] = new
        out.append(Region(**{**asdict(regions[i]), "label": new}))
    return out, relabel[labels_out]


__all__ = ["Region", "find_regions"]
