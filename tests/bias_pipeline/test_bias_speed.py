"""Speed changes of the bias step give the numbers of the code they replaced (bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from utils.io.fitsio import read_image
from utils.models.read_noise import ReadNoiseAccumulator, read_noise


@pytest.mark.parametrize("kind", ["uint16", "int16", "float32", "int32", "float64"])
def test_read_noise_of_files_bit_for_bit_astropy_reads(tmp_path, kind):
    rng = np.random.default_rng(5)
    paths = []
    for k in range(4):
        data = 3000 + rng.normal(0, 30, (24, 40))
        if kind == "float32":
            data = data.astype(np.float32)
        elif kind == "float64":
            data = data + 1e-7 * k  # not float32-exact: read through astropy
        else:
            data = np.round(data).astype(kind)
        path = tmp_path / f"b{k}.fits"
        fits.PrimaryHDU(data).writeto(path)
        paths.append(str(path))
    pairs = [(paths[0], paths[1]), (paths[2], paths[3])]
    want = ReadNoiseAccumulator()
    for a, b in pairs:  # the old reader: astropy, whatever dtype it gives
        want.add(read_image(a)[0], read_image(b)[0])
    got = read_noise(pairs)
    assert got.npairs == want.npairs == 2
    np.testing.assert_array_equal(got.sum_sq, want.sum_sq)


def test_model_medians_bit_for_bit_numpy(tmp_path):
    """The model's and the summary's medians (now by exact_median) are numpy's numbers, the
    spread of the slopes in float32 as before."""
    import math

    import pandas as pd

    from bias_pipeline.pipeline import BiasMaster, BiasSettings, _summary
    from utils.models.bias_model import BiasModel

    rng = np.random.default_rng(9)
    shape = (600, 500)  # 300 000 pixels: exact_median's fast path
    f = {name: rng.normal(loc, scale, shape).astype(np.float32) for name, loc, scale in
         (("a", 3000, 20), ("b", 8, 0.5), ("sa", 1, 0.1), ("sb", 0.05, 0.01), ("cov", 0, 0.01),
          ("chi2", 1, 0.3))}
    f["chi2"][::7, ::3] = np.nan
    mask = (rng.random(shape) < 0.01).astype(np.uint8)
    model = BiasModel(a=f["a"], b=f["b"], sigma_a=f["sa"], sigma_b=f["sb"], cov_ab=f["cov"],
                      chi2dof=f["chi2"], npts=np.full(shape, 10, np.int16), mask=mask)
    head = model.header()
    finite = np.isfinite(model.chi2dof) & (mask == 0)
    usable = np.isfinite(model.b) & (mask == 0)
    assert head["CHI2MED"] == float(np.median(model.chi2dof[finite]))
    assert head["BMEDIAN"] == float(np.median(model.b[usable]))
    masters = [BiasMaster(t, t, tmp_path / f"m{t}.fits", 10, False) for t in (10.0, 20.0)]
    s = _summary(pd.DataFrame({"PATH": ["x"] * 20}), masters, model, None, None,
                 BiasSettings(), 12, tmp_path)
    valid = (mask == 0) & np.isfinite(model.b)
    b = model.b[valid]
    assert s["b_spread_adu_per_degC"] == float(1.4826 * np.median(np.abs(b - np.median(b))))
    assert s["sigma_b_median_adu_per_degC"] == float(np.median(model.sigma_b[valid]))
    want = float(np.nanmedian(model.chi2dof[valid]))
    assert s["chi2dof_median"] == want and not math.isnan(want)


def test_held_out_kernel_bit_for_bit_the_array_path(monkeypatch):
    """The leave-one-out residuals and errors of the numba pass are the array path's."""
    from utils.models import bias_model

    if not bias_model.HAVE_NUMBA:
        pytest.skip("numba not installed: the array path is the only one")
    rng = np.random.default_rng(13)
    m, shape = 5, (70, 90)
    temps = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    data = (3000 + 8 * temps[:, None, None] + rng.normal(0, 3, (m,) + shape)).astype(np.float32)
    data[1, 3, 4] = np.nan
    count = np.full((m,) + shape, 12, np.float32)
    count[2, 5, 6] = 0
    count[3, 7, 8] = 1

    class Stack:
        def __init__(self):
            self.shape = shape

        def read_planes(self, start, stop, planes=None):
            idx = list(range(m)) if planes is None else list(planes)
            return data[idx, start:stop], None, count[idx, start:stop]

    fit = {name: rng.normal(loc, sc, shape).astype(np.float32) for name, loc, sc in
           (("a", 3000, 1), ("b", 8, 0.1), ("sa", 0.5, 0.05), ("sb", 0.02, 0.002),
            ("cov", -0.005, 0.001))}
    fit["sa"][10, 10] = np.nan
    fit["npts"] = np.full(shape, m, np.int16)
    fit["npts"][11, 11] = 2
    noise_pool = rng.uniform(2, 4, shape)
    noise_pool[12, 12] = np.nan
    cv = bias_model.CrossValidation(temps, Stack(), 20.0, fit, noise_pool, 1.07,
                                    np.ones(m, bool))
    got = [cv.held_out(k) for k in range(m)]
    monkeypatch.setattr(bias_model, "HAVE_NUMBA", False)
    want = [cv.held_out(k) for k in range(m)]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)
    assert np.isnan(got[1][0][3, 4]) and np.isfinite(got[0][0]).sum() > 1000


def test_chdtrc_is_chi2_sf_bit_for_bit():
    """The non-linearity p-values: scipy.special.chdtrc gives scipy.stats.chi2.sf's numbers
    for the arguments the bias fit passes (x >= 0, 0 included; dof >= 1)."""
    from scipy import special
    from scipy import stats as sps

    rng = np.random.default_rng(17)
    dof = rng.integers(1, 40, 200000).astype(float)
    x = (rng.chisquare(dof) * rng.uniform(0.2, 3, dof.size)).astype(np.float32) * dof
    x[:100] = 0.0
    np.testing.assert_array_equal(special.chdtrc(dof, x), sps.chi2.sf(x, dof))


def test_read_noise_chi2_without_scipy_stats_bit_for_bit():
    """The read noise's (and its figure's) chi-square quantiles and CDF come from
    scipy.special, not from scipy.stats (~0.7 s of every command's start): the same
    numbers and type, and a result whose median is the formula's with scipy.stats."""
    import math
    import subprocess
    import sys

    from scipy import stats as sps

    from utils.models.read_noise import chi2_cdf, chi2_ppf

    for n in range(1, 300):
        a = sps.chi2.ppf(0.999, n)
        assert chi2_ppf(0.999, n) == a and type(chi2_ppf(0.999, n)) is type(a)
        np.testing.assert_array_equal(chi2_ppf([0.001, 0.999], n),
                                      sps.chi2.ppf([0.001, 0.999], n), strict=True)
        assert chi2_cdf(a, n + 2) == sps.chi2.cdf(a, n + 2)
    rng = np.random.default_rng(3)
    acc = ReadNoiseAccumulator()
    for _ in range(5):
        acc.add(rng.normal(0, 5, (64, 80)), rng.normal(0, 5, (64, 80)))
    rn = acc.result()
    from utils.stack.stats import chi2_median_ratio, exact_median

    finite = rn.variance[np.isfinite(rn.variance)].astype(np.float64)
    cut = exact_median(finite) / chi2_median_ratio(5) * sps.chi2.ppf(0.999, 5) / 5
    core = finite[finite <= cut]
    centre = float(np.mean(core)) * 0.999 / sps.chi2.cdf(sps.chi2.ppf(0.999, 5), 7)
    assert rn.median == math.sqrt(centre)
    # and the commands' modules do not import scipy.stats
    code = ("import sys, run_calibration, bias_pipeline.plots, flat_pipeline.plots; "
            "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("pvalue", [1e-3, 0.5, 1e-12])
def test_nonlinear_flags_are_those_of_every_p_value(pvalue):
    """The non-linear flags by the threshold of each dof (p-values only near it) are the
    flags of comparing every pixel's chdtrc p-value, also at the threshold itself, one float32
    step either side of it and across the band where the p-values are evaluated."""
    from scipy import special

    from utils.models.bias_model import _nonlinear

    rng = np.random.default_rng(11)
    n = 200_000
    dof = rng.integers(-1, 9, n).astype(float)
    chi2 = (rng.chisquare(np.maximum(dof, 1)) / np.maximum(dof, 1)).astype(np.float32)
    chi2 *= rng.choice([1, 1, 1, 3, 30], n).astype(np.float32)
    for d in range(1, 9):
        xc = special.chdtri(d, pvalue)
        idx = np.flatnonzero(dof == d)[:60]
        chi2[idx[:50]] = (xc * (1 + np.linspace(-2e-4, 2e-4, 50)) / d).astype(np.float32)
        at = np.float32(xc / d)
        chi2[idx[50:]] = [at, at, np.nextafter(at, np.float32(9)), np.nextafter(at, np.float32(0)),
                          at, at, at, at, at, at]
    chi2[::997] = np.nan
    good = np.isfinite(chi2) & (dof > 0)
    with np.errstate(invalid="ignore"):
        want = np.where(good, special.chdtrc(np.maximum(dof, 1), chi2 * dof), 1.0) < pvalue
    got = _nonlinear(chi2, dof, good, pvalue)
    assert want.any() and np.array_equal(got, want)
    assert not _nonlinear(chi2, dof, np.zeros(n, bool), pvalue).any()


def test_noise_pool_is_the_nansum_pool():
    """The pooled noise by a plain sum is the NaN-summed one (no NaN term can occur), bit
    for bit, with NaN, inf, one-sample and empty masters."""
    from utils.models.bias_model import _errors_of_pool, _noise_pool, pooled_errors

    rng = np.random.default_rng(2)
    noise = rng.gamma(4.0, 2.0, (7, 30, 40)).astype(np.float32)
    count = rng.integers(0, 12, (7, 30, 40))
    noise[rng.random(noise.shape) < 0.05] = np.nan
    noise[0, 0, :3] = np.inf
    count[:, 1, :5] = 1
    dof = np.where(np.isfinite(noise) & (count > 1), count - 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.sqrt(np.nansum(dof * np.where(dof > 0, noise, 0.0) ** 2, axis=0)
                       / dof.sum(axis=0))
        np.testing.assert_array_equal(_noise_pool(noise, count), want, strict=True)
        np.testing.assert_array_equal(
            pooled_errors(noise, count), want[None] / np.sqrt(np.where(count > 0, count, np.nan)),
            strict=True)
        np.testing.assert_array_equal(_errors_of_pool(want, count), pooled_errors(noise, count))


def test_read_noise_kernels_bit_for_bit_the_array_path(monkeypatch):
    """The compiled difference and squared-sum passes give the sums of numpy's casting
    subtract, median removal, square and add (float32 frames, float64, mixed)."""
    import utils.models.read_noise as rn

    rng = np.random.default_rng(8)
    frames = [np.round(3000 + rng.normal(0, 20, (48, 70))).astype(np.float32) for _ in range(4)]
    frames += [rng.normal(0, 1, (48, 70)), rng.normal(0, 1, (48, 70)).astype(np.float32)]
    pairs = [(frames[0], frames[1]), (frames[2], frames[3]), (frames[4], frames[5]),
             (frames[5], frames[4])]
    got = rn.ReadNoiseAccumulator()
    for a, b in pairs:
        got.add(a, b)
    monkeypatch.setattr(rn, "_difference", None)
    want = rn.ReadNoiseAccumulator()
    for a, b in pairs:
        want.add(a, b)
    np.testing.assert_array_equal(got.sum_sq, want.sum_sq, strict=True)
