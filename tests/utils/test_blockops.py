"""The one-pass block work around the combine kernel (utils.stack.blockops) gives the bits of
the numpy formulas it replaced: flags and standard errors, and the bias-model rows."""

from __future__ import annotations

import numpy as np
import pytest

from utils.models.bias_model import BiasModel
from utils.stack import blockops
from utils.stack import combine as stacking

needs_numba = pytest.mark.skipif(not blockops.HAVE_NUMBA, reason="numba not importable")


def _block(rng, npix, n_frames):
    """A combined block with every case: NaN/inf values, counts 0..n, saturation 0..n."""
    data = rng.normal(1000.0, 30.0, npix).astype(np.float32)
    data[rng.random(npix) < 0.05] = np.nan
    data[rng.random(npix) < 0.02] = np.inf
    data[rng.random(npix) < 0.02] = -np.inf
    count = rng.integers(0, n_frames + 1, npix).astype(np.int16)
    noise = np.abs(rng.normal(10.0, 3.0, npix)).astype(np.float32)
    noise[count < 2] = np.nan
    nsat = rng.integers(0, n_frames + 1, npix).astype(np.int16)
    nsat[rng.random(npix) < 0.7] = 0
    return data, noise, count, nsat


@needs_numba
@pytest.mark.parametrize("n_frames", [1, 4, 5, 10])
@pytest.mark.parametrize("median", [False, True])
@pytest.mark.parametrize("with_nsat", [False, True])
def test_fused_finish_equals_numpy_formula(n_frames, median, with_nsat):
    rng = np.random.default_rng(n_frames + 10 * median + 100 * with_nsat)
    data, noise, count, nsat = _block(rng, 20_011, n_frames)
    if not with_nsat:
        nsat = np.empty(0, np.int16)
    outs = []
    for finish in (blockops._finish_block, blockops._finish_block_numpy):
        flags, stderr = np.full(data.size, 255, np.uint8), np.full(data.size, -1, np.float32)
        finish(data, noise, count, nsat, n_frames, 3, median, flags, stderr)
        outs.append((flags, stderr))
    (f_fast, e_fast), (f_ref, e_ref) = outs
    np.testing.assert_array_equal(f_fast, f_ref)
    assert e_fast.tobytes() == e_ref.tobytes()  # bit for bit, NaN included
    # every flag bit (and both saturation cases) occurred, so each branch was compared
    seen = np.bitwise_or.reduce(f_ref)
    assert seen & stacking.FLAG_FEW and seen & stacking.FLAG_NONFINITE
    if with_nsat and n_frames > 1:
        assert seen & stacking.FLAG_SATURATED and seen & stacking.FLAG_PARTSAT


def _model(shape=(24, 40), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(3000.0, 40.0, shape).astype(np.float32)
    b = rng.normal(-2.0, 30.0, shape).astype(np.float32)
    zeros = np.zeros(shape, np.float32)
    return BiasModel(a=a, b=b, sigma_a=zeros, sigma_b=zeros, cov_ab=zeros, chi2dof=zeros,
                     npts=np.full(shape, 5, np.int16), mask=np.zeros(shape, np.uint8),
                     t_ref=20.0, t_min=-10.0, t_max=30.0)


def test_linear_rows_call_is_the_closure_formula():
    model = _model()
    temps = np.array([-9.87, 0.013, 24.9, 31.2])
    rows = model.subtractor(temps)
    dark = np.random.default_rng(1).normal(7.0, 3.0, model.shape).astype(np.float32)
    for i, t in enumerate(temps):
        expected = model.a[3:11] + model.b[3:11] * np.float32(t - model.t_ref)
        got = rows(i, 3, 11)
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
        assert rows.plus(dark)(i, 3, 11).tobytes() == (expected + dark[3:11]).tobytes()
    with pytest.raises(ValueError, match="finite temperature"):
        model.subtractor([1.0, np.nan])


@needs_numba
def test_linear_rows_evaluate_equals_call_bit_for_bit():
    model = _model(shape=(16, 50))
    model.a[0, :4] = [np.inf, np.nan, 3e38, -3e38]  # overflow and non-finite propagate alike
    model.b[0, :4] = [1.0, 2.0, 3e38, 3e38]
    dark = np.random.default_rng(2).normal(5.0, 100.0, model.shape).astype(np.float32)
    rng = np.random.default_rng(3)
    out = np.empty(model.a.size)
    for rows in (model.subtractor(rng.normal(0.0, 20.0, 6)),
                 model.subtractor(rng.normal(0.0, 20.0, 6)).plus(dark)):
        assert rows.fusable(model.shape) and not rows.fusable((16, 51))
        for i in range(6):
            expected = np.ascontiguousarray(rows(i, 2, 13), dtype=np.float64).reshape(-1)
            assert rows.evaluate(i, 2, 13, out).tobytes() == expected.tobytes()
    as_f64 = blockops.LinearRows(model.a.astype(np.float64), model.b, [1.0])
    assert not as_f64.fusable(model.shape)  # other types are called, not fused


@pytest.mark.parametrize("numba_path", [True, False])
def test_combine_with_linear_rows_equals_the_callable(numba_path, monkeypatch):
    """A master subtracting the fused bias model (+ dark) has the bits of one subtracting the
    same rows through a plain callable, on the numba and the numpy path."""
    if numba_path and not stacking.HAVE_NUMBA:
        pytest.skip("numba not importable")
    monkeypatch.setattr(stacking, "HAVE_NUMBA", numba_path and stacking.HAVE_NUMBA)
    model = _model(shape=(37, 29), seed=4)
    rng = np.random.default_rng(5)
    frames = [(model.a + rng.normal(40.0, 6.0, model.shape)).astype(np.float32)
              for _ in range(6)]
    frames[2][3, :] = 65520.0
    temps = rng.normal(20.0, 0.2, 6)
    dark = rng.normal(3.0, 1.0, model.shape).astype(np.float32)
    kwargs = dict(saturation=65520.0, scale=np.linspace(0.9, 1.1, 6), workers=2,
                  memory_limit=2e5)
    for rows in (model.subtractor(temps), model.subtractor(temps).plus(dark)):
        fused = stacking.combine(frames, subtract=rows, **kwargs)
        called = stacking.combine(frames, subtract=lambda i, s, e, r=rows: r(i, s, e), **kwargs)
        for name in ("data", "noise", "stderr", "count", "flags"):
            assert getattr(fused, name).tobytes() == getattr(called, name).tobytes(), name
        assert fused.header[stacking.kw.NREJECT] == called.header[stacking.kw.NREJECT]
        assert (fused.flags & stacking.FLAG_PARTSAT).any()


@pytest.mark.parametrize("numba_path", [True, False])
def test_valid_values_is_the_boolean_selection(numba_path, monkeypatch):
    if numba_path and not blockops.HAVE_NUMBA:
        pytest.skip("numba not importable")
    monkeypatch.setattr(blockops, "HAVE_NUMBA", numba_path and blockops.HAVE_NUMBA)
    rng = np.random.default_rng(6)
    data, _, count, _ = _block(rng, 30_000, 5)
    data, flags = data.reshape(150, 200), (count < 2).astype(np.uint8).reshape(150, 200)
    got = blockops.valid_values(data, flags)
    want = data[(flags == 0) & np.isfinite(data)]
    assert got.dtype == np.float32 and 0 < got.size < data.size
    assert got.tobytes() == want.tobytes()
    # the header statistics taken from it are numpy's on the boolean selection
    assert got.mean(dtype=np.float64) == want.mean(dtype=np.float64)
    assert got.std(dtype=np.float64) == want.std(dtype=np.float64)
    assert blockops.valid_values(data, np.ones_like(flags)).size == 0
