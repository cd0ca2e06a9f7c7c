"""The bias model fitted by row blocks: the block size does not change it, and its
leave-one-temperature-out evaluation by the deletion formula equals refits without each master;
its error maps made by pixel blocks equal the whole-frame formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.models.bias_model import BiasModel, MasterStack, fit_bias_model, pooled_errors
from utils.models.linear import fit_line_per_pixel
from utils.stack.combine import combine

TEMPS = (-5.0, 0.0, 7.5, 15.0, 30.0)


@pytest.fixture(scope="module")
def bias_masters(tmp_path_factory):
    """Five bias masters of 24 x 20 pixels (bias 1600 + 8 adu/degC), a few pixels masked."""
    root = tmp_path_factory.mktemp("biasmasters")
    rng = np.random.default_rng(15)
    slope = rng.normal(8.0, 0.5, (24, 20))
    paths = []
    for k, t in enumerate(TEMPS):
        frames = [(1600 + slope * t + rng.normal(0, 6.0, (24, 20))).astype(np.float32)
                  for _ in range(12)]
        frames[0][k, k] = np.nan  # a pixel missing in one master: one master fewer there
        master = combine(frames, method="mean", min_accepted=12)
        paths.append(master.write(root / f"master_bias_{k}.fits"))
    return MasterStack(paths, np.array(TEMPS))


def test_row_blocks_do_not_change_the_fit(bias_masters):
    whole, cv_whole = fit_bias_model(bias_masters, memory_limit=1e12)
    rows, cv_rows = fit_bias_model(bias_masters, memory_limit=1)  # one row per block
    for name in ("a", "b", "sigma_a", "sigma_b", "cov_ab", "chi2dof", "npts", "mask"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(rows, name), err_msg=name)
    assert whole.err_scale == rows.err_scale
    for k in range(len(TEMPS)):
        for a, b in zip(cv_whole.held_out(k), cv_rows.held_out(k)):
            np.testing.assert_array_equal(a, b)


def test_deletion_formula_equals_refits_without_each_master(bias_masters):
    model, cv = fit_bias_model(bias_masters, t_ref=0.0)
    data, noise, count = bias_masters.read_block(0, 24)
    sigma = pooled_errors(noise, count)
    sigma = np.where(np.isfinite(data), sigma, np.nan)
    temps = np.array(TEMPS)
    for k in range(len(TEMPS)):
        keep = np.arange(len(TEMPS)) != k
        part = fit_line_per_pixel(temps[keep], data[keep], sigma[keep], x_ref=0.0)
        res_refit = data[k] - part.predict(temps[k])
        sig_refit = np.sqrt(sigma[k] ** 2 + part.predict_err(temps[k]) ** 2) * model.err_scale
        residual, sig, master = cv.held_out(k)
        np.testing.assert_array_equal(np.isnan(residual), np.isnan(res_refit))
        assert np.isnan(residual).sum() == 1  # the pixel this master misses
        # float32 maps of the full fit against a float32 refit: rounding of ~1600 adu
        np.testing.assert_allclose(residual, res_refit, rtol=0, atol=2e-3)
        np.testing.assert_allclose(sig, sig_refit, rtol=1e-4, equal_nan=True)
        np.testing.assert_array_equal(master, data[k])
    table = cv.summary(model.mask == 0)
    assert len(table) == len(TEMPS) and table["PULL_STD"].between(0.5, 1.5).all()


def test_error_maps_by_blocks_equal_whole_frame_formulas():
    """BiasModel.predict_err, quadrature_sum and the bias reference's error cache work by
    pixel blocks (more than one block of utils.stack.tiles.PIXEL_BLOCK here, the last one
    ragged) and give the whole-frame float64 formulas bit for bit."""
    from utils.stack.master import quadrature_sum
    from utils.stack.references import ERROR_MAPS_KEPT, BiasReference
    from utils.stack.tiles import PIXEL_BLOCK

    rng = np.random.default_rng(7)
    shape = (601, 500)
    assert shape[0] * shape[1] > PIXEL_BLOCK
    sa, sb = (rng.uniform(0.1, 2.0, shape).astype(np.float32) for _ in range(2))
    cov = (rng.uniform(-0.9, 0.9, shape) * sa * sb).astype(np.float32)
    zeros = np.zeros(shape, np.float32)
    model = BiasModel(a=zeros + 1600, b=zeros + 8, sigma_a=sa, sigma_b=sb, cov_ab=cov,
                      chi2dof=zeros, npts=np.full(shape, 5, np.int16),
                      mask=np.zeros(shape, np.uint8), t_ref=0.0, t_min=-10.0, t_max=30.0)
    for t in (-7.5, 0.0, 22.25):
        d = np.float64(t)
        whole = np.sqrt(np.maximum(sa.astype(np.float64) ** 2 + d * d * sb.astype(np.float64) ** 2
                                   + 2 * d * cov, 0)).astype(np.float32)
        np.testing.assert_array_equal(model.predict_err(t), whole)

    for other in (rng.uniform(0, 3, shape), rng.uniform(0, 3, shape).astype(np.float32)):
        err = rng.uniform(0, 3, shape).astype(np.float32)
        whole = np.sqrt(err.astype(np.float64) ** 2
                        + np.asarray(other, np.float64) ** 2).astype(np.float32)
        np.testing.assert_array_equal(quadrature_sum(err, other, block=97), whole)
        out = quadrature_sum(err, other, out=err)
        assert out is err  # in place
        np.testing.assert_array_equal(out, whole)
    strided = rng.uniform(0, 3, (601, 1000)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(
        quadrature_sum(strided, sa),
        np.sqrt(strided.astype(np.float64) ** 2 + sa.astype(np.float64) ** 2).astype(np.float32))
    with pytest.raises(ValueError):
        quadrature_sum(sa, sb, out=strided)

    # the reference keeps the last few error maps only, and hands the same numbers back
    ref = BiasReference(model, [], 2.0, "bias_model.fits")
    for t in (0.0, 5.0, 10.0, 15.0, 0.0):
        rows = pd.DataFrame({"TEMP": [t - 0.05, t + 0.05]})
        _, err, _, _ = ref.model_terms(rows)
        np.testing.assert_array_equal(err, model.predict_err(t))
        assert len(ref._errors) <= ERROR_MAPS_KEPT
    assert list(ref._errors) == [15.0, 0.0]


def test_header_bmedian_is_the_summarys_median_of_unmasked_pixels():
    """bias_model.fits BMEDIAN was the median over every pixel, masked ones included, and
    disagreed with summary.json's b_median_adu_per_degC (unmasked pixels; 7.98833 vs
    7.98841 adu/degC in a standard campaign); both are the unmasked pixels' median now."""
    from utils.stack.stats import median_with_error

    rng = np.random.default_rng(4)
    shape = (20, 30)
    zeros = np.zeros(shape, np.float32)
    b = rng.normal(8.0, 0.5, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[:4] = 1                      # nonlinear pixels, with slopes far off the rest
    b[:4] += 30.0
    model = BiasModel(a=zeros + 3000, b=b, sigma_a=zeros + 1, sigma_b=zeros + 0.1,
                      cov_ab=zeros, chi2dof=zeros + 1, npts=np.full(shape, 4, np.int16),
                      mask=mask)
    expected, _ = median_with_error(b[mask == 0])
    assert model.header()["BMEDIAN"] == pytest.approx(expected, rel=1e-7)
