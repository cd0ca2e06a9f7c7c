"""A long dark scaled down to a short flat must not blank the flat master where the dark
is saturated (hot pixels): the index processing and the shared scaled-dark helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from analysis import process_index
from utils.sim import simulate_standard
from utils.stack.references import scaled_dark, scaled_dark_files


def test_scaled_dark_fills_holes_from_other_exposures_then_the_population():
    nan = np.nan
    short = np.array([[1.0, 2.0, nan, 3.0]])
    long = np.array([[4.0, nan, nan, 12.0]])
    err = np.full((1, 4), 0.5)
    out = scaled_dark([(4.0, long, err), (1.0, short, err)], 2.0)
    # nearest exposure in ratio: 1 s and 4 s are both 2x away; the first sorted wins, the
    # other fills its hole; the pixel missing in both gets the median rate x 2 s
    assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(out.err))
    assert out.n_population == 1 and out.n_other == 1 and out.source == 4.0
    assert out.data[0, 1] == pytest.approx(4.0) and out.data[0, 0] == pytest.approx(2.0)
    rates = np.array([1.0, 3.0, 1.0, 2.0, 3.0])
    assert out.data[0, 2] == pytest.approx(2.0 * np.median(rates))
    exact = scaled_dark([(2.0, long, err), (0.5, short, err)], 2.0)
    assert exact.scale == 1.0 and exact.data[0, 0] == 4.0


def test_scaled_dark_from_files_equals_the_whole_frame_formula(tmp_path):
    """Masters read one at a time and scaled by pixel blocks (more than one block of
    utils.stack.tiles.PIXEL_BLOCK, the last ragged) give the whole-frame float64 formula of
    scaled_dark bit for bit, holes filled from the next exposure, then the population."""
    rng = np.random.default_rng(3)
    shape = (601, 500)
    masters, arrays = [], []
    for t_d in (1.0, 4.0, 16.0):
        data = (rng.uniform(5, 50, shape) * t_d).astype(np.float32)
        err = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        mask = np.zeros(shape, np.uint8)
        mask[rng.random(shape) < (0.002 if t_d < 16 else 0.01)] = 1
        mask[:3, :3] = 1  # flagged in every master: the population's median rate
        path = tmp_path / f"dark_{t_d:g}s.fits"
        fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(err, name="UNCERT"),
                      fits.ImageHDU(mask, name="MASK")]).writeto(path)
        masters.append((t_d, path))
        arrays.append((t_d, np.where(mask != 0, np.nan, data), err))
    out = scaled_dark_files(masters, 3.0)
    # the former whole-frame formula
    t0, d0, e0 = arrays[1]  # 4 s is nearest in ratio to 3 s
    data, err = d0.astype(np.float64) * (3.0 / t0), e0.astype(np.float64) * (3.0 / t0)
    missing = ~np.isfinite(data)
    for t_d, d, e in (arrays[0], arrays[2]):
        fill = missing & np.isfinite(d)
        data[fill], err[fill] = d.astype(np.float64)[fill] * (3.0 / t_d), e[fill] * (3.0 / t_d)
        missing &= ~fill
    rates = np.concatenate([d[np.isfinite(d)].astype(np.float64) / t_d
                            for t_d, d, _ in (arrays[1], arrays[0], arrays[2])])
    data[missing], err[missing] = np.median(rates) * 3.0, np.std(rates) * 3.0
    assert out.source == 4.0 and out.n_population == 9 and out.n_other > 100
    np.testing.assert_array_equal(out.data, data.astype(np.float32))
    np.testing.assert_array_equal(out.err, err.astype(np.float32))
    same = scaled_dark(arrays, 3.0)
    np.testing.assert_array_equal(same.data, out.data)
    np.testing.assert_array_equal(same.err, out.err)


@pytest.fixture(scope="module")
def long_dark_campaign(tmp_path_factory):
    """Darks only at 40 s (every hot pixel saturates), flats at 0.4 s."""
    from conftest import convert_campaign

    campaign = simulate_standard(tmp_path_factory.mktemp("longdark") / "c", seed=21, width=48,
                                 height=32, frames=4, attempts=1,
                                 bias_temperatures=(15.0, 25.0, 35.0),
                                 dark_temperatures=(25.0,), dark_exposures=(40.0,),
                                 flat_temperatures=(25.0,), flat_exposures=(0.4,),
                                 defects=False)
    convert_campaign(campaign)
    return campaign


def test_process_index_flat_master_has_no_hole_under_saturated_dark(long_dark_campaign,
                                                                   tmp_path):
    from utils.io.index import build_index, write_index

    campaign = long_dark_campaign
    index = tmp_path / "index.csv"
    write_index(build_index(discover=[campaign.root]), index)
    out = tmp_path / "out"
    process_index.run(index, out, process_index.MasterSettings(per_attempt=False))
    summary = pd.read_csv(out / "masters_summary.csv")
    dark_path = summary.loc[summary["CALTYPE"] == "DARK", "PATH"].iloc[0]
    with fits.open(dark_path) as hdul:
        dark_masked = np.asarray(hdul["MASK"].data) != 0
    hot = campaign.maps()["hot_mask"]
    assert hot.sum() >= 3 and dark_masked[hot].mean() > 0.9  # the hot pixels saturate at 40 s
    flat_path = summary.loc[summary["CALTYPE"] == "FLAT", "PATH"].iloc[0]
    with fits.open(flat_path) as hdul:
        flat = np.asarray(hdul[0].data)
        header = hdul[0].header
    assert np.isfinite(flat).all()
    assert header["DARKFILL"] == int(dark_masked.sum()) and header["DARKEXP"] == 40.0
    # the filled pixels had the population's median dark rate subtracted: their own excess
    # dark current (3-11 % of the flat signal at 0.4 s) stays in, and nothing else
    truth = campaign.maps()
    shape = truth["prnu"] * truth["vignetting"]
    ratio = flat / (shape / np.median(shape))
    dark = truth["dark_ref_adu"] * 2 ** ((25.0 - campaign.physics.t_ref)
                                         / campaign.physics.doubling_temperature)
    expected = 1 + (dark - np.median(dark)) / truth["flat_rate"]
    # one pixel of 4 frames at ~3200 e-: 0.9 % shot noise; 0.03 is 3.4 sigma
    assert np.abs(ratio - expected)[hot].max() < 0.03


def test_flat_pipeline_master_has_no_hole_under_saturated_dark(long_dark_campaign, tmp_path):
    from flat_pipeline import run_pipeline

    campaign = long_dark_campaign
    out = tmp_path / "flat"
    assert run_pipeline.main(["--mode", "make_master", "--basepath", str(campaign.root),
                              "--output-dir", str(out), "--no-progress"]) == 0
    (master,) = (out / "master_flat").glob("master_flat_*.fits")
    with fits.open(master) as hdul:
        data, mask, header = hdul[0].data, hdul["MASK"].data, hdul[0].header
    truth = campaign.maps()
    hot = truth["hot_mask"]
    # every pixel has a value (4 frames: a few pixels keep 2 after clipping and are flagged
    # FEW in MASK, hot or not: 6 % of them, as elsewhere)
    assert np.isfinite(data).all() and mask[hot].mean() < 0.3
    assert header["DARKSRC"] == "masters" and header["DARKEXP"] == 40.0
    assert header["DARKFILL"] >= hot.sum() and header["DARKSCL"] == pytest.approx(0.01)
    # as in the index processing: the hot pixels keep only their own excess dark current
    shape = truth["prnu"] * truth["vignetting"]
    ratio = data / shape
    ratio /= np.median(ratio)
    dark = truth["dark_ref_adu"] * 2 ** ((25.0 - campaign.physics.t_ref)
                                         / campaign.physics.doubling_temperature)
    expected = 1 + (dark - np.median(dark)) / truth["flat_rate"]
    assert np.abs(ratio - expected)[hot].max() < 0.03  # 0.9 % shot noise per pixel
