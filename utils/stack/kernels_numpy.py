"""The stacking kernels' numpy fallback (see :mod:`utils.stack.kernels`): the same maths
vectorised over pixels, used without numba and as the compiled kernels' test oracle."""

from __future__ import annotations

import numpy as np

from .kernels import MAD_TO_STD


def _prepare_numpy(row, sub, scale, saturation, nsat):
    sat = row >= saturation
    if nsat.shape[0] == row.shape[0]:
        nsat += sat
    v = row.astype(np.float64)
    if sub.shape[0] == row.shape[0]:
        v -= sub
    v *= scale
    with np.errstate(over="ignore", invalid="ignore"):
        out = v.astype(np.float32)
    out[sat | ~np.isfinite(out)] = np.inf
    row[:] = out
    return int(sat.sum())


def _take_median(s, lo, cnt):
    """Median of the sorted columns ``s[lo:lo+cnt, p]`` (float64; NaN where cnt == 0)."""
    cols = np.arange(s.shape[1])
    ok = cnt > 0
    a = s[np.where(ok, lo + (cnt - 1) // 2, 0), cols].astype(np.float64)
    b = s[np.where(ok, lo + cnt // 2, 0), cols].astype(np.float64)
    return np.where(ok, 0.5 * (a + b), np.nan)


def _combine_numpy(x, method, sig_lo, sig_hi, maxiters, out_data, out_noise, out_count,
                   min_scale=0.0, guard=False, floor=None):
    """Vectorised equivalent of the numba kernel (numpy sorts instead of a network)."""
    if floor is not None and np.shape(floor)[0] > 0:
        min_scale = np.maximum(np.float64(min_scale), floor)
    n, npix = x.shape
    if method != 0:
        x.sort(axis=0)  # +inf (missing) sorts last
    finite = x < np.inf
    m = finite.sum(axis=0)
    lo = np.zeros(npix, dtype=np.int64)
    hi = m.astype(np.int64)
    nrej = 0
    if method == 2:
        rank = np.arange(n)[:, None]
        it = 0
        active = hi > lo
        while active.any() and (maxiters <= 0 or it < maxiters):
            cnt = hi - lo
            c = _take_median(x, lo, cnt)
            inside = (rank >= lo) & (rank < hi)
            with np.errstate(invalid="ignore"):
                dev = np.where(inside, np.abs(x - c), np.inf)
            dev.sort(axis=0)
            std = _take_median(dev, np.zeros_like(lo), cnt) * MAD_TO_STD
            cols = np.arange(npix)
            first = x[np.minimum(lo, n - 1), cols]
            last = x[np.maximum(hi - 1, 0), cols]
            degenerate = (std == 0) & (cnt > 0) & (first != last)
            if degenerate.any():  # zero MAD on differing samples: use their std
                vals = np.where(inside, x, 0).astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = vals.sum(axis=0) / cnt
                    d = np.where(inside, vals - mean, 0.0)
                    range_std = np.sqrt((d * d).sum(axis=0) / cnt)
                std = np.where(degenerate, range_std, std)
            std = np.maximum(std, min_scale)
            lower = c - std * sig_lo
            upper = c + std * sig_hi
            with np.errstate(invalid="ignore"):
                keep = inside & (x >= lower) & (x <= upper)
            if guard:  # confirm flags against the unflagged samples' std (see the kernel)
                k_in = keep.sum(axis=0)
                vals = np.where(keep, x, 0).astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean_in = vals.sum(axis=0) / k_in
                    d = np.where(keep, vals - mean_in, 0.0)
                    s_in = np.sqrt((d * d).sum(axis=0) / (k_in - 1))
                s_in = np.maximum(np.where(k_in >= 2, s_in, 0.0), min_scale)
                flagged = (k_in < cnt) & (k_in >= 2) & (s_in > std)
                wide = np.where(flagged, s_in, std)
                with np.errstate(invalid="ignore"):
                    keep = inside & (x >= c - wide * sig_lo) & (x <= c + wide * sig_hi)
            new_cnt = keep.sum(axis=0)
            changed = (new_cnt != cnt) & active
            # keep is a contiguous range of sorted samples: its first index is lo
            new_lo = np.where(new_cnt > 0, np.argmax(keep, axis=0), lo)
            lo = np.where(changed, new_lo, lo)
            hi = np.where(changed, new_lo + new_cnt, hi)
            active = changed
            it += 1
        nrej = int((m - (hi - lo)).sum())
    rank = np.arange(n)[:, None]
    # unsorted (mean) blocks select by value, sorted ones by rank range
    inside = finite if method == 0 else (rank >= lo) & (rank < hi)
    cnt = hi - lo
    vals = np.where(inside, x, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = vals.sum(axis=0) / cnt
        dev = np.where(inside, vals - mean, 0.0)
        noise = np.sqrt((dev * dev).sum(axis=0) / (cnt - 1))
    noise[cnt < 2] = np.nan
    if method == 1:
        data = _take_median(x, lo, cnt)
    else:
        data = mean
    out_data[:] = data
    out_noise[:] = noise
    out_count[:] = cnt
    return nrej
