"""The radiation response model's pixel work by row tiles (analysis.radiation_tiles): the tile
height changes no number, the numbers are those of the old whole-frame code (every master in
memory), and the working memory does not grow with the number of masters."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from analysis import radiation_tiles as rt
from utils.models import radiation_response as rr
from utils.stack.stats import mad_std
from utils.stack.tiles import ArrayRows

SETTINGS = rr.ModelSettings(t_ref=20.0, adu_per_e=0.5)


def _campaign(n_doses: int, shape=(40, 30), seed=3):
    """Masters of ``n_doses`` dose steps (a bias and darks of 5 and 20 s each, dark current
    10 adu/s rising 2 %/krad, a few hot and masked pixels): ``(masters, images)`` with
    ``images`` the ``{name: (K, H, W)}`` arrays of ``rt.MASTER_IMAGES``."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(1000.0, 20.0, shape)
    rate = rng.gamma(20.0, 0.5, shape)
    hot = rng.random(shape) < 0.01
    masters, planes = [], {name: [] for name in rt.MASTER_IMAGES}
    for step in range(n_doses):
        dose = 10.0 * step
        tag = f"D{step}"
        for caltype, t in (("BIAS", 0.0), ("DARK", 5.0), ("DARK", 20.0)):
            count = np.full(shape, 4.0)
            count[rng.random(shape) < 0.01] = 1.0      # one frame: no temporal variance
            noise = rng.normal(5.0, 0.3, shape) + 0.1 * t
            signal = pattern + 0.5 * dose + rate * (1 + 0.02 * dose) * t + 300.0 * hot * t
            data = signal + noise / np.sqrt(count) * rng.normal(size=shape)
            mask = (rng.random(shape) < 0.005).astype(np.float32)
            name = f"master_{caltype.lower()}_{int(t)}.fits"
            key = SimpleNamespace(caltype=caltype, stage="radiating", stage_dir=tag,
                                  temperature=20.0)
            point = {"TAG": tag, "STAGE": "radiating", "CALTYPE": caltype, "MASTER": name,
                     "DOSE": dose, "RATE": 0.0, "EXPTIME": t, "TEMP": 20.0}
            masters.append(SimpleNamespace(key=key, path=Path(tag) / name, point=point))
            for img, value in zip(rt.MASTER_IMAGES,
                                  (data, mask, noise, count, noise / np.sqrt(count))):
                planes[img].append(np.asarray(value, np.float32))
    return masters, {name: np.stack(v) for name, v in planes.items()}


def _write(images: dict, folder: Path) -> list[Path]:
    paths = []
    for k in range(images["PRIMARY"].shape[0]):
        hdus = [fits.PrimaryHDU(images["PRIMARY"][k])]
        hdus += [fits.ImageHDU(images[name][k], name=name) for name in rt.MASTER_IMAGES[1:]]
        paths.append(folder / f"m{k}.fits")
        fits.HDUList(hdus).writeto(paths[-1])
    return paths


def _model(masters, rows):
    pixels = rt.select_pixels(masters, rows)
    points = rt.measure_points(masters, rows, pixels)
    fit = rr.fit_response(points, SETTINGS)
    read_var = rt.read_variance(masters, rows)
    inputs = rt.dark_map_inputs(masters, points, fit, ("radiating",))
    return pixels, points, fit, read_var, rt.dark_maps(masters, rows, inputs, fit, read_var)


def _warm_up():
    masters, images = _campaign(2, shape=(8, 6))
    return masters, rt.MasterRows(ArrayRows(images), 1e12)


MAP_FIELDS = ("coef", "err", "covariance", "chi2", "npoints")


def test_one_row_tiles_equal_one_tile_and_the_whole_frame_code(tmp_path):
    masters, images = _campaign(3)
    tiled = rt.MasterRows.of_paths(_write(images, tmp_path), memory_limit=1)  # 1-row tiles
    whole = rt.MasterRows(ArrayRows(images), memory_limit=1e12)                # one tile
    assert len(list(tiled.tiles(len(masters)))) == images["PRIMARY"].shape[1]
    assert len(list(whole.tiles(len(masters)))) == 1
    a, b = _model(masters, tiled), _model(masters, whole)
    np.testing.assert_array_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1], check_exact=True)   # per-row sums: exact
    np.testing.assert_array_equal(a[3], b[3])
    for name in MAP_FIELDS:
        np.testing.assert_array_equal(getattr(a[4], name), getattr(b[4], name), err_msg=name)

    # the old code: every master's images in memory, whole-frame formulas
    data = images["PRIMARY"].copy()
    data[images["MASK"] != 0] = np.nan
    noise, count = images["NOISE"], images["NCOMB"]
    good = np.all(np.isfinite(data) & np.isfinite(noise) & (count >= 2), axis=0)
    for k, m in enumerate(masters):
        if m.key.caltype == "DARK":
            diff = data[k] - data[k - (1 if m.point["EXPTIME"] == 5 else 2)]
            ok = np.isfinite(diff)
            excess = diff - np.median(diff[ok])
            scale = float(mad_std(diff[ok]))
            good &= ~((excess > rt.HOT_NSIGMA * scale) & (excess > 3 * noise[k]))
    np.testing.assert_array_equal(a[0], good)
    assert 0.8 * good.size < good.sum() < good.size          # hot and masked pixels left out
    n = good.sum()
    for k, (_, p) in enumerate(a[1].iterrows()):
        n2 = noise[k][good].astype(np.float64) ** 2
        c = count[k][good].astype(np.float64)
        scatter = float(np.std(n2, ddof=1)) / math.sqrt(n)
        expected = {"MEAN": float(np.mean(data[k][good], dtype=np.float64)),
                    "MEAN_ERR": math.sqrt(float(np.sum(n2 / c))) / n,
                    "VAR": float(np.mean(n2)),
                    "VAR_ERR": max(math.sqrt(float(np.sum(2 * n2 ** 2 / (c + 1)))) / n, scatter)}
        for col, value in expected.items():
            # float64 sums taken per row, then over rows: rounding only
            assert p[col] == pytest.approx(value, rel=1e-12, abs=0), (k, col)
    read_var = rr.pooled_read_variance(noise[::3], count[::3])
    np.testing.assert_array_equal(a[3], read_var)
    fit = a[2]
    darks, errs, rows = [], [], []
    for k, m in enumerate(masters):
        if m.key.caltype == "DARK":
            kb = k - (1 if m.point["EXPTIME"] == 5 else 2)
            darks.append(data[k] - data[kb] - 0.0)  # one temperature and dose: no shift
            errs.append(np.sqrt(
                rr.master_variance(m.point, fit, read_var, count[k], images["UNCERT"][k])
                + rr.master_variance(masters[kb].point, fit, read_var, count[kb],
                                     images["UNCERT"][kb])))
            rows.append(m.point)
    ref = rr.pixel_dark_maps(np.array(darks), np.array(errs), pd.DataFrame(rows), SETTINGS,
                             fit.coef["q_mean"] if math.isfinite(fit.coef["q_mean"]) else 0.0)
    for name in MAP_FIELDS:  # per pixel: bit for bit
        np.testing.assert_array_equal(getattr(a[4], name), getattr(ref, name), err_msg=name)
    beta = a[4].coef[a[4].term("beta_D")][good]
    assert np.median(beta) == pytest.approx(0.2, rel=0.1)   # 10 adu/s x 2 %/krad


def _peak(n_doses: int, memory_limit: float) -> int:
    """tracemalloc peak [byte] of the model's pixel work on ``n_doses`` steps of 256 x 200
    (after a warm-up: numba's kernels and pandas' first calls allocate once)."""
    _model(*_warm_up())
    masters, images = _campaign(n_doses, shape=(256, 200), seed=5)
    rows = rt.MasterRows(ArrayRows(images), memory_limit)
    tracemalloc.start()
    try:
        _model(masters, rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_working_memory_does_not_grow_with_the_number_of_masters():
    """8 and 16 dose steps (24 and 48 masters of 256 x 200, 5 float32 images each): the same
    tracemalloc peak within 15 % under an 8 MB budget (measured: the same to ~1 %), while one
    tile of every master (what holding them all costs) doubles it (measured 35 -> 68 MB)."""
    small, large = _peak(8, 8e6), _peak(16, 8e6)
    assert large < 1.15 * small, (small, large)
    one_small, one_large = _peak(8, 1e12), _peak(16, 1e12)
    assert one_large > 1.7 * one_small and one_small > 2 * small, (one_small, one_large, small)
