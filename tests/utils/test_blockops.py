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


def _finish_reference(data, noise, count, nsat, n_frames, min_accepted, median, flags, stderr,
                      noise_floor):
    """What combine's blocks did before the noise floor moved into the finish: the numpy
    floor of tied samples, then the finish without it."""
    if noise_floor > 0:
        tied = (noise == 0) & (count >= 2)
        if tied.any():
            noise[tied] = noise_floor
    blockops._finish_block_numpy(data, noise, count, nsat, n_frames, min_accepted, median,
                                 flags, stderr, 0.0)


@needs_numba
@pytest.mark.parametrize("n_frames", [1, 4, 5, 10])
@pytest.mark.parametrize("median", [False, True])
@pytest.mark.parametrize("with_nsat", [False, True])
@pytest.mark.parametrize("noise_floor", [0.0, 4.6188])
def test_fused_finish_equals_numpy_formula(n_frames, median, with_nsat, noise_floor):
    rng = np.random.default_rng(n_frames + 10 * median + 100 * with_nsat)
    data, noise, count, nsat = _block(rng, 20_011, n_frames)
    noise[rng.random(noise.size) < 0.1] = 0.0  # identical quantised samples (any count)
    noise[rng.random(noise.size) < 0.01] = -0.0
    if not with_nsat:
        nsat = np.empty(0, np.int16)
    floor = np.float32(noise_floor)
    outs = []
    for finish in (blockops._finish_block, blockops._finish_block_numpy, _finish_reference):
        flags, stderr = np.full(data.size, 255, np.uint8), np.full(data.size, -1, np.float32)
        out_noise = noise.copy()
        finish(data, out_noise, count, nsat, n_frames, 3, median, flags, stderr, floor)
        outs.append((flags, stderr, out_noise))
    (f_fast, e_fast, n_fast), (f_np, e_np, n_np), (f_ref, e_ref, n_ref) = outs
    np.testing.assert_array_equal(f_fast, f_ref)
    np.testing.assert_array_equal(f_np, f_ref)
    # bit for bit, NaN included
    assert e_fast.tobytes() == e_ref.tobytes() and e_np.tobytes() == e_ref.tobytes()
    assert n_fast.tobytes() == n_ref.tobytes() and n_np.tobytes() == n_ref.tobytes()
    floored = (noise == 0) & (count >= 2)
    assert floored.any() == (n_frames >= 2)
    assert (n_ref[floored] == (floor if noise_floor else 0)).all()
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


@needs_numba
def test_prepare_u16_linear_equals_evaluate_then_prepare():
    """The fused preparation (stored bytes - bias model rows [+ dark], scaled) has the bits
    of the two passes it replaced: LinearRows.evaluate into float64 rows, then _prepare_u16."""
    from utils.stack import kernels

    model = _model(shape=(12, 53), seed=7)
    model.a[0, :4] = [np.inf, np.nan, 3e38, -3e38]  # non-finite and overflowing rows
    model.b[0, :4] = [1.0, 2.0, 3e38, 3e38]
    rng = np.random.default_rng(8)
    dark = rng.normal(5.0, 100.0, model.shape).astype(np.float32)
    values = rng.integers(0, 65536, model.a.size).astype(np.uint16)
    start, stop = 3, 11
    first = start * model.shape[1]
    values[first:first + 6] = [0, 65535, 65520, 65519, 32768, 1]
    raw = (values ^ np.uint16(0x8000)).astype(">u2").view(np.uint8)  # FITS BZERO 32768
    npix = (stop - start) * model.shape[1]
    raw_rows = raw[2 * start * model.shape[1]: 2 * stop * model.shape[1]]
    temps = rng.normal(0.0, 20.0, 4)
    for rows in (model.subtractor(temps), model.subtractor(temps).plus(dark)):
        for scale in (1.0, 0.37, 1e38):
            for saturation in (np.inf, 65520.0):
                for i in range(len(temps)):
                    want, got = np.empty(npix, np.float32), np.empty(npix, np.float32)
                    nsat_w, nsat_g = np.full(npix, 2, np.int16), np.full(npix, 2, np.int16)
                    sub = rows.evaluate(i, start, stop, np.empty(npix))
                    n_w = kernels._prepare_u16(raw_rows, want, sub, scale, saturation, nsat_w)
                    n_g = rows.prepare_u16(i, start, stop, raw_rows, got, scale, saturation,
                                           nsat_g)
                    assert got.tobytes() == want.tobytes()
                    assert n_g == n_w and nsat_g.tobytes() == nsat_w.tobytes()
                    assert (n_w > 0) == (saturation < np.inf)


def _write_u16(path, image):
    from astropy.io import fits

    fits.PrimaryHDU(image.astype(np.uint16)).writeto(path)  # stored int16, BZERO 32768
    return str(path)


@needs_numba
@pytest.mark.parametrize("quantum", [0.0, 16.0])
def test_combine_u16_files_with_linear_rows_equals_the_callable(tmp_path, quantum):
    """Unsigned 16-bit FITS inputs minus the bias model (+ dark), fused into the preparation
    of the stored bytes: the bits of the same rows subtracted through a plain callable (the
    unfused path), saturation, scale and the quantised noise floor included."""
    model = _model(shape=(41, 33), seed=9)
    rng = np.random.default_rng(10)
    frames = []
    for k in range(7):
        image = np.round((model.a + rng.normal(60.0, 8.0, model.shape)) / 16.0) * 16.0
        image[k, :5] = 65535.0  # saturated samples
        frames.append(_write_u16(tmp_path / f"f{k}.fits", image))
    temps = rng.normal(20.0, 0.3, len(frames))
    dark = rng.normal(3.0, 1.0, model.shape).astype(np.float32)
    kwargs = dict(saturation=65520.0, scale=np.linspace(0.9, 1.1, len(frames)), workers=2,
                  memory_limit=2e5, quantum=quantum, min_scale=quantum / 2)
    for rows in (model.subtractor(temps), model.subtractor(temps).plus(dark)):
        fused = stacking.combine(frames, subtract=rows, **kwargs)
        called = stacking.combine(frames, subtract=lambda i, s, e, r=rows: r(i, s, e), **kwargs)
        for name in ("data", "noise", "stderr", "count", "flags"):
            assert getattr(fused, name).tobytes() == getattr(called, name).tobytes(), name
        assert fused.header[stacking.kw.NREJECT] == called.header[stacking.kw.NREJECT]
        assert fused.inputs["NSAT"].tolist() == called.inputs["NSAT"].tolist()
        assert (fused.flags & stacking.FLAG_PARTSAT).any()


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


_MASKED_STORES = """
import re
from numba.core.registry import CPUDispatcher
from utils.stack import blockops
blockops.warmup()
store = re.compile(r"vmaskmovp[sd]\\s+%[xy]mm\\d+,\\s*%[xy]mm\\d+,\\s*\\S*\\(")
for name, obj in sorted(vars(blockops).items()):
    if isinstance(obj, CPUDispatcher) and obj.signatures:
        print(name, len(store.findall("".join(obj.inspect_asm().values()))))
"""


@needs_numba
def test_compiled_blockops_have_no_masked_stores(tmp_path):
    """As the stacking kernels (tests/utils/test_stacking.py): no ``vmaskmovps/pd`` store,
    which AMD Zen microcodes, in the compiled block work -- the finish writes the floored
    noise back over the value it loaded.  Compiled afresh in a subprocess (empty cache)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _MASKED_STORES], capture_output=True,
                         text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    counts = {name: int(n) for name, n in (line.split() for line in out.stdout.splitlines())}
    assert {"_finish_block", "_prepare_u16_linear", "_linear_rows"} <= set(counts)
    assert not any(counts.values()), counts
