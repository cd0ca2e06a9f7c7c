"""The shared models the flat pipeline adds to utils, on in-memory data with known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from utils.models import linear
from utils.models.dark_model import DarkSignalModel
from utils.models.illumination import fit_illumination
from utils.models.photon_transfer import fit_photon_transfer, pair_statistics
from utils.sim import Physics, make_sensor, render_frame

T = np.array([10.0, 10.0, 20.0, 20.0, 30.0, 30.0, 25.0])
X = np.array([0.1, 0.4, 0.1, 0.4, 0.2, 0.6, 0.3])
DESIGN = np.stack([np.ones(7), T - 20, X - 0.3], axis=1)


def _linear_data(seed=0, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    coef = np.stack([1 + 0.01 * rng.standard_normal(shape), np.full(shape, 1e-3),
                     np.full(shape, -0.02)])
    sigma = 0.002 * (1 + rng.random((7,) + shape))
    y = np.einsum("kp,phw->khw", DESIGN, coef) + sigma * rng.standard_normal((7,) + shape)
    return coef, y.astype(np.float32), sigma.astype(np.float32)


def test_multi_linear_fit_pulls_and_paths_agree():
    coef, y, sigma = _linear_data()
    y[2, 0, 0] = np.nan
    fit = linear.fit_linear_per_pixel(DESIGN, y, sigma, names=["A", "B", "C"])
    pull = ((fit.coef - coef) / fit.err).reshape(3, -1)
    # 2000 pixels: the pull mean is known to 0.02, its std to 0.016
    assert np.all(np.abs(pull.mean(1)) < 0.08) and np.all(np.abs(pull.std(1) - 1) < 0.06)
    assert np.median(fit.chi2) == pytest.approx(linear_median_chi2(4), rel=0.1)
    assert fit.npoints[0, 0] == 6 and fit.npoints[1, 1] == 7
    # the same as an explicit weighted least squares, and as the numpy path
    w = 1 / sigma[:, 3, 4].astype(float)
    ref = np.linalg.lstsq(DESIGN * w[:, None], y[:, 3, 4] * w, rcond=None)[0]
    assert np.allclose(fit.coef[:, 3, 4], ref, rtol=1e-5, atol=1e-8)
    n = y.shape[0]
    out = (np.empty((3, 2000), np.float32), np.empty((3, 3, 2000), np.float32),
           np.empty(2000, np.float32), np.empty(2000, np.int16))
    linear._multi_numpy(DESIGN, y.reshape(n, -1), sigma.reshape(n, -1), *out)
    assert np.allclose(out[0], fit.coef.reshape(3, -1), rtol=1e-5, atol=1e-7, equal_nan=True)
    assert np.allclose(out[1], fit.covariance.reshape(3, 3, -1), rtol=1e-4, equal_nan=True)
    # predict / predict_err use the covariance
    x = [1.0, 5.0, 0.1]
    assert np.allclose(fit.predict(x), np.einsum("p,phw->hw", x, fit.coef), atol=1e-6)
    var = np.einsum("p,q,pqhw->hw", x, x, fit.covariance)
    assert np.allclose(fit.predict_err(x), np.sqrt(var), rtol=1e-4)


def linear_median_chi2(dof: int) -> float:
    from utils.models.bias_model import chi2_median_ratio

    return chi2_median_ratio(dof)


def test_unconstrained_terms_are_dropped_and_reported():
    _, y, sigma = _linear_data(1)
    one_t = DESIGN.copy()
    one_t[:, 1] = 0.0
    fit = linear.fit_linear_per_pixel(one_t, y, sigma, names=["A", "B", "C"])
    assert fit.fitted == (True, False, True) and set(fit.dropped) == {"B"}
    assert not np.any(fit.coef[1]) and not np.any(fit.err[1])
    unweighted = linear.fit_linear_per_pixel(DESIGN, y)
    assert np.isfinite(unweighted.err).all() and (unweighted.err > 0).all()
    with pytest.raises(ValueError):
        linear.fit_linear_per_pixel(DESIGN[:, :1] * 0, y)


def test_leave_one_out_pull_identity_matches_refits():
    """The evaluation's closed-form held-out pull equals the pull of an explicit refit."""
    _, y, sigma = _linear_data(2, shape=(6, 7))
    fit = linear.fit_linear_per_pixel(DESIGN, y, sigma)
    for k in (0, 3, 6):
        keep = np.arange(7) != k
        held = linear.fit_linear_per_pixel(DESIGN[keep], y[keep], sigma[keep])
        pred, var = held.predict(DESIGN[k]), held.predict_err(DESIGN[k]) ** 2
        explicit = (y[k] - pred) / np.sqrt(sigma[k] ** 2 + var)
        w = 1.0 / sigma[k].astype(float) ** 2
        quad = np.einsum("p,q,pqhw->hw", DESIGN[k], DESIGN[k], fit.covariance)
        resid = y[k] - fit.predict(DESIGN[k])
        closed = resid * np.sqrt(w) / np.sqrt(1 - w * quad)
        assert np.allclose(closed, explicit, rtol=2e-3, atol=2e-3)


def test_illumination_centre_and_errors_with_row_column_pattern():
    """Optical centre and fall-off of a quartic vignetting under 1 % PRNU with row and column
    patterns: accurate, and pulls of the clustered errors near 1 over 30 realisations (their
    std is known to ~13 %: 0.7-1.45)."""
    rng = np.random.default_rng(3)
    h, w = 64, 96
    y, x = np.indices((h, w), dtype=float)
    x0, y0 = 55.1, 26.46
    r2 = ((x - x0) ** 2 + (y - y0) ** 2) / (31.5 ** 2 + 47.5 ** 2)
    v = 1 - 0.15 * r2 - 0.05 * r2 ** 2
    pulls = []
    for _ in range(30):
        prnu = (1 + 0.01 * rng.standard_normal((h, w)) + 0.002 * rng.standard_normal((h, 1))
                + 0.003 * rng.standard_normal((1, w)))
        model = fit_illumination(1.3 * v * prnu)
        pulls.append([(model.value("x0") - x0) / model.error("x0"),
                      (model.value("y0") - y0) / model.error("y0")])
        rel = model.evaluate(relative=True)
        assert np.sqrt(np.mean(((rel - v) / v) ** 2)) < 0.002
        assert model.value("c0") == pytest.approx(1.3, rel=0.01)
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls.mean(0)) < 0.6) and np.all((pulls.std(0) > 0.7)
                                                          & (pulls.std(0) < 1.45))
    assert model.corner_falloff()[0] == pytest.approx(
        100 * (1 - np.mean([v[0, 0], v[0, -1], v[-1, 0], v[-1, -1]])), abs=0.5)
    tilted = fit_illumination(1.3 * v * prnu * (1 + 0.02 * (x - 48) / 57), tilt=True)
    assert tilted.tilt and tilted.value("tx") == pytest.approx(0.02 * 57 / 57, abs=0.01)


def test_photon_transfer_gain_pulls_over_40_campaigns():
    """Gain from pairs of simulated flats (Poisson, read noise, 12-bit quantisation x 16,
    PRNU, lamp flicker): unbiased, and its error calibrated.  40 campaigns: the pull mean is
    known to 0.16 and the std to ~11 %."""
    physics = Physics(lamp_stability=0.002, vignetting=0.1)
    pulls, reads = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sensor = make_sensor(rng, 32, 24, physics)
        bias = (sensor.bias_a + sensor.bias_b * 20.0) * 16
        rows, bias_rows = [], []
        for t in (0.05, 0.15, 0.25, 0.35, 0.7, 1.2):
            for _ in range(4):
                a, b = (render_frame(rng, sensor, physics, kind="flat", temperature=20.0,
                                     exposure=t, illumination=1 + 0.002 * rng.standard_normal())
                        .astype(float) for _ in range(2))
                sat = ((a >= 65520) | (b >= 65520)).mean()
                rows.append(pair_statistics(a - bias, b - bias) | {
                    "TBIN": 20.0, "EXPTIME": t, "SATFRACTION": float(sat)})
        for _ in range(4):
            a, b = (render_frame(rng, sensor, physics, kind="bias", temperature=20.0,
                                 exposure=1e-5).astype(float) for _ in range(2))
            bias_rows.append(pair_statistics(a, b, match_levels=False, clip=10))
        result = fit_photon_transfer(pd.DataFrame(rows), bias_pairs=pd.DataFrame(bias_rows))
        assert result.measured and math.isfinite(result.saturation_adu)
        assert result.saturation_adu < result.saturation_next_adu
        # the table's model curve is the fitted line: variance = intercept + mean x 16 / gain
        # (stored 16-bit adu), at every level
        levels = result.levels
        np.testing.assert_allclose(levels["MODEL"], result.intercept
                                   + levels["MEAN"] * 16 / result.gain, rtol=1e-9)
        pulls.append((result.gain - physics.gain) / result.gain_err)
        reads.append(result.read_noise_adu / 16)
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 0.5 and 0.75 < pulls.std() < 1.3
    expected = math.sqrt(0.99 * 4 + 0.01 * 64 + 1 / 12)  # rms read noise and quantisation
    # the mean of 40 campaigns' read noise is known to their spread / sqrt(40) (0.5 %, it
    # includes each sensor's own share of noisy pixels); 5 sigma
    se = np.std(reads) / math.sqrt(len(reads))
    assert abs(np.mean(reads) - expected) < 5 * se, (np.mean(reads), expected, se)


def test_photon_transfer_without_two_levels_says_why():
    one = pd.DataFrame([{"TBIN": 20.0, "EXPTIME": 0.2, "MEAN": 1000.0, "VAR": 600.0,
                         "NPIX": 500, "SATFRACTION": 0.0}] * 3)
    result = fit_photon_transfer(one)
    assert not result.measured and "at least two" in result.note
    assert result.summary()["gain_e_per_adc"] is None


def _write_dark_models(tmp_path, shape=(6, 8)):
    from dark_pipeline.model_2d import DarkModel2D
    from dark_pipeline.temperature_model import DarkModel1D
    from utils.models.nonlinear import ExponentialFit, PowerExponentialFit

    rng = np.random.default_rng(4)
    amp = (50 + 5 * rng.standard_normal(shape)).astype(np.float32)
    amp[0, 0] = np.nan  # a pixel without a fit
    b = np.full(shape, 0.1155, np.float32)
    zeros = np.zeros(shape, np.float32)
    fit2 = PowerExponentialFit(amp, zeros + 1.0, b, zeros + 1, zeros + 0.01, zeros + 0.001,
                               np.zeros((3, 3) + shape, np.float32), zeros,
                               np.full(shape, 6, np.int16), np.zeros(shape, bool), 20.0, 1.0,
                               0.1155, 0.0, 0.0)
    p2 = DarkModel2D(fit2, inputs=pd.DataFrame({"TAVG": [10.0, 30.0]})).write(
        tmp_path / "d2.fits")
    fit1 = ExponentialFit(amp, b, zeros + 1, zeros + 0.001, zeros, zeros,
                          np.full(shape, 3, np.int16), np.zeros(shape, bool), 20.0, 0.1155,
                          0.0)
    p1 = DarkModel1D(fit1, inputs=pd.DataFrame({"TAVG": [12.0, 28.0]})).write(
        tmp_path / "d1.fits")
    return amp, p1, p2


def test_dark_signal_model_reads_both_dark_pipeline_models(tmp_path):
    amp, p1, p2 = _write_dark_models(tmp_path)
    two, one = DarkSignalModel.read(p2), DarkSignalModel.read(p1)
    assert two.kind == "2d" and one.kind == "1d" and two.n_filled == 1
    assert (two.t_min, two.t_max) == (10.0, 30.0) and one.covers(30.0, 2.0)
    assert not one.covers(31.0, 2.0)
    expected = amp[2, 3] * 2.5 * math.exp(0.1155 * 6.0)
    assert two.signal(26.0, 2.5)[2, 3] == pytest.approx(expected, rel=1e-5)
    assert one.signal(26.0, 2.5)[2, 3] == pytest.approx(expected, rel=1e-5)  # rate x t
    assert np.isfinite(two.signal(26.0, 2.5)).all()  # the pixel without a fit: population
    assert np.allclose(two.rows(26.0, 2.5, 2, 4), two.signal(26.0, 2.5)[2:4])
    assert (two.signal_err(20.0, 1.0) > 0).all()
    from utils.errors import InputPathError

    with pytest.raises(InputPathError, match="not found"):
        DarkSignalModel.read(tmp_path / "missing.fits")


def test_level_of_a_large_region_is_its_median():
    # more values than max_samples: the median of a regular subsample, within the spread of
    # a median of that many samples (0.7 = 5.6 sigma)
    from flat_pipeline.quality import level_of

    values = np.random.default_rng(4).normal(1000.0, 10.0, 100_000)
    assert level_of(values, "median", max_samples=10_000) == pytest.approx(1000.0, abs=0.7)


def test_noise_line_does_not_depend_on_the_units_of_the_flat():
    """The noise line ``NOISE^2 = a + b F`` of a normalised master (F ~ 1, spread 0.5 %:
    sum((F - mean)^2) ~ 0.25 over 10^4 pixels) is the line of the same master in adu scaled
    by the level: a / L^2, b / L (least squares is scale-free; only a degenerate F with no
    spread at all has no slope)."""
    from flat_pipeline.master import noise_line

    rng = np.random.default_rng(6)
    n, frames, level = 10_000, 10, 20_000.0
    flat = 1 + 0.005 * rng.standard_normal(n)
    var = (2e-6 + 4e-4 * flat) * rng.chisquare(frames - 1, n) / (frames - 1)
    count = np.full(n, frames, np.int16)
    assert ((flat - flat.mean()) ** 2).sum() < 1
    a_n, b_n = noise_line(flat, np.sqrt(var), count)
    a_adu, b_adu = noise_line(flat * level, np.sqrt(var) * level, count)
    assert b_n == pytest.approx(b_adu / level, rel=1e-6)
    assert a_n == pytest.approx(a_adu / level ** 2, rel=1e-6)
    # and it is the line: the slope within 5 of its least-squares errors of the truth
    sxx = ((flat - flat.mean()) ** 2).sum()
    s_b = math.sqrt(2 / (frames - 1)) * (2e-6 + 4e-4) / math.sqrt(sxx)
    assert abs(b_n - 4e-4) < 5 * s_b


def test_usable_pairs_drops_the_pairs_with_a_frame_excluded_from_the_ptc():
    from flat_pipeline.photon_transfer import usable_pairs

    pairs = pd.DataFrame({"PATH_A": ["a", "c", "e"], "PATH_B": ["b", "d", "f"],
                          "TBIN": 20.0, "EXPTIME": [0.1, 0.2, 0.3], "MEAN": [1e3, 2e3, 3e3],
                          "VAR": [70.0, 130.0, 190.0], "NPIX": 500, "SATFRACTION": 0.0})
    qc = pd.DataFrame({"PATH": list("abcdef"), "PTC": [1, 1, 1, 0, 1, 1]})
    pd.testing.assert_frame_equal(usable_pairs(pairs, qc), pairs.iloc[[0, 2]]
                                  .reset_index(drop=True))
    assert usable_pairs(pairs.iloc[:0], qc).empty


def test_illumination_residual_rms_is_the_prnu_in_percent():
    """``RESIDUAL_RMS_PCT`` (and ``BINNED_RESIDUAL_RMS_PCT``) of ``illumination.csv`` are 100 x
    the robust rms of master / model - 1 (of the binned image), here the 1 % pixel PRNU
    (MAD-based std of n values: relative error 1.17 / sqrt(n))."""
    from flat_pipeline.illumination import fit_master

    rng = np.random.default_rng(7)
    h, w = 128, 192
    y, x = np.indices((h, w), dtype=float)
    r2 = ((x - 100.0) ** 2 + (y - 60.0) ** 2) / (63.5 ** 2 + 95.5 ** 2)
    ill = fit_master("t", (1.3 * (1 - 0.15 * r2 - 0.05 * r2 ** 2)
                           * (1 + 0.01 * rng.standard_normal((h, w)))).astype(np.float32))
    row = ill.row()
    assert row["RESIDUAL_RMS_PCT"] == pytest.approx(100 * ill.residual_rms, rel=1e-12)
    assert abs(ill.residual_rms - 0.01) < 5 * 0.01 * 1.17 / math.sqrt(h * w)
    # the model's own, on the binned image (no binning at this size): the same PRNU
    model = ill.model
    assert row["BINNED_RESIDUAL_RMS_PCT"] == pytest.approx(100 * model.residual_rms, rel=1e-12)
    assert model.binning == row["BINNING"] == 1
    assert abs(model.residual_rms - 0.01) < 5 * 0.01 * 1.17 / math.sqrt(model.n_points)


def test_photon_transfer_read_noise_error_matches_its_scatter():
    """The read noise from bias pairs and its stated error: over 400 draws of 4 pairs of 2000
    pixels (true 30 adu), the read noise scatters as the error says (the std of 400 values is
    known to 1/sqrt(800) = 3.5 %: 5 sigma) and is unbiased."""
    one = pd.DataFrame([{"TBIN": 20.0, "EXPTIME": 0.2, "MEAN": 1000.0, "VAR": 600.0,
                         "NPIX": 500, "SATFRACTION": 0.0}] * 3)
    rng = np.random.default_rng(4)
    values, errors = [], []
    for _ in range(400):
        bias_rows = [{"VAR": float(np.var(rng.normal(0.0, 30.0, 2000), ddof=1)), "NPIX": 2000}
                     for _ in range(4)]
        result = fit_photon_transfer(one, bias_pairs=pd.DataFrame(bias_rows))
        values.append(result.read_noise_adu)
        errors.append(result.read_noise_adu_err)
    ratio = np.std(values, ddof=1) / np.median(errors)
    assert abs(ratio - 1) < 5 / math.sqrt(800), ratio
    assert abs(np.mean(values) - 30.0) < 5 * np.median(errors) / math.sqrt(400)


def test_block_paths_equal_whole_frame_formulas(tmp_path, monkeypatch):
    # the flat pipeline evaluates the dark model, the bias model's error and the error of
    # what a set subtracts by blocks read from the model files; with blocks of one row (and
    # of 3 pixels) they give the whole-frame formulas' numbers bit for bit
    import hashlib

    from dark_pipeline.model_2d import DarkModel2D
    from utils.models import bias_model, dark_model
    from utils.models.bias_model import BiasLineModel, BiasModel
    from utils.models.nonlinear import PowerExponentialFit
    from utils.stack.master import quadrature_sum
    from utils.stack.references import BiasReference

    shape = (7, 8)
    rng = np.random.default_rng(11)

    def image(loc, scale):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    amp, gamma, rate = image(50, 5), image(1.0, 0.02), image(0.1155, 0.005)
    amp[0, 0], gamma[3, 4] = np.nan, np.nan          # pixels without a fit
    errs = [np.abs(image(0, s)) for s in (1.0, 0.01, 0.001)]
    cov = np.zeros((3, 3) + shape, np.float32)
    for (i, j), s in (((0, 1), 0.003), ((0, 2), 0.0004), ((1, 2), 2e-6)):
        cov[i, j] = cov[j, i] = image(0, s)
    for i in range(3):
        cov[i, i] = errs[i] ** 2
    errs[0][5, 5] = np.nan                           # a non-finite error at a fitted pixel
    fit = PowerExponentialFit(amp, gamma, rate, *errs, cov, np.zeros(shape, np.float32),
                              np.full(shape, 6, np.int16), np.zeros(shape, bool), 20.0, 1.0,
                              0.1155, 0.0, 0.0)
    path = DarkModel2D(fit, inputs=pd.DataFrame({"TAVG": [10.0, 30.0]})).write(
        tmp_path / "d2.fits")
    # the whole-frame formulas (the model as it was evaluated with every map in memory)
    maps, _ = dark_model.read_model_maps(path, dark_model.EXTENSIONS_2D)
    m = {k: np.asarray(v, np.float32) for k, v in maps.items() if k != "INPUTS"}
    bad = ~np.isfinite(m["PRIMARY"]) | ~np.isfinite(m["B"]) | ~np.isfinite(m["GAMMA"])
    for name in ("PRIMARY", "GAMMA", "B"):
        m[name][bad] = np.median(m[name][~bad])
    for name in ("SIGMA_A", "SIGMA_GAMMA", "SIGMA_B", "COV_AG", "COV_AB", "COV_GB"):
        m[name][bad & ~np.isfinite(m[name])] = 0.0
    t, x = 23.7, 0.35
    dt, lnt = np.float32(t - 20.0), np.float32(math.log(x))
    signal = m["PRIMARY"] * np.exp(m["GAMMA"] * lnt + m["B"] * dt)
    inv_a = np.where(m["PRIMARY"] != 0, 1.0 / m["PRIMARY"], 0.0).astype(np.float32)
    var = (inv_a * m["SIGMA_A"]) ** 2 + (dt * m["SIGMA_B"]) ** 2 + 2 * inv_a * dt * m["COV_AB"]
    var += (lnt * m["SIGMA_GAMMA"]) ** 2 + 2 * inv_a * lnt * m["COV_AG"] \
        + 2 * lnt * dt * m["COV_GB"]
    whole = [signal, signal * m["B"], signal * m["GAMMA"] / np.float32(x),
             (np.abs(signal) * np.sqrt(np.maximum(var, 0))).astype(np.float32)]

    monkeypatch.setattr(dark_model, "PIXEL_BLOCK", 5)    # one-row blocks
    monkeypatch.setattr(bias_model, "PIXEL_BLOCK", 5)
    model = DarkSignalModel.read(path)
    assert model.n_filled == int(bad.sum()) == 2
    blocks = [*model.linearised(t, x), model.signal_err(t, x)]
    for got, want in zip(blocks, whole):
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    digest = hashlib.sha1()
    model.digest_into(digest)
    assert digest.digest() == hashlib.sha1(m["PRIMARY"].tobytes()).digest()

    # the bias line: its error by row blocks of the file == BiasModel's whole-frame one
    zeros = np.zeros(shape, np.float32)
    bias = BiasModel(image(3000, 20), image(2.0, 0.1), np.abs(image(0, 1.0)),
                     np.abs(image(0, 0.05)), image(0, 0.01), zeros, np.full(shape, 5, np.int16),
                     np.zeros(shape, np.uint8), t_ref=20.0, t_min=10.0, t_max=30.0)
    bias_path = bias.write(tmp_path / "bias_model.fits")
    full, line = BiasModel.read(bias_path), BiasLineModel.read(bias_path)
    for temperature in (12.3, 20.0, 31.0):
        assert line.predict_err(temperature).tobytes() == \
            full.predict_err(temperature).tobytes()
    rows = pd.DataFrame({"TEMP": [19.9, 20.4]})
    refs = [BiasReference(mod, [], 2.0, str(bias_path)) for mod in (full, line)]
    assert refs[0].fingerprint == refs[1].fingerprint
    terms = [ref.model_terms(rows) for ref in refs]
    assert terms[0][0](1, 2, 5).tobytes() == terms[1][0](1, 2, 5).tobytes()
    assert terms[0][1].tobytes() == terms[1][1].tobytes()

    # the error of bias + dark under a set
    a, b = whole[3], terms[0][1]
    want = np.sqrt(np.asarray(a, np.float64) ** 2 + np.asarray(b, np.float64) ** 2) \
        .astype(np.float32)
    assert quadrature_sum(a, b, block=3).tobytes() == want.tobytes()


def test_photon_transfer_summary_gives_the_intercept_error():
    """summary.json and gain.json wrote the photon-transfer intercept (the variance at zero
    signal) without its error; with two levels (the standard campaign) it is an
    extrapolation of ~1300 adu^2 error, and a value of -1495 adu^2 (true +1224) read as a
    defect.  The error is written now and covers the truth (12 campaigns of two levels:
    pull std ~1)."""
    physics = Physics()
    pulls = []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        sensor = make_sensor(rng, 32, 24, physics)
        bias = (sensor.bias_a + sensor.bias_b * 20.0) * 16
        rows = []
        for t in (0.1, 0.4):
            for _ in range(4):
                a, b = (render_frame(rng, sensor, physics, kind="flat", temperature=20.0,
                                     exposure=t).astype(float) for _ in range(2))
                rows.append(pair_statistics(a - bias, b - bias) | {
                    "TBIN": 20.0, "EXPTIME": t, "SATFRACTION": 0.0})
        summary = fit_photon_transfer(pd.DataFrame(rows)).summary()
        err = summary["intercept_err_adu2"]
        assert err is not None and err > 0
        truth = float(np.mean((sensor.read_noise * 16.0) ** 2)) + 16.0 ** 2 / 12
        pulls.append((summary["intercept_adu2"] - truth) / err)
    pulls = np.array(pulls)
    # 12 pulls: mean known to 0.3, std to ~20 %
    assert abs(pulls.mean()) < 1.0 and 0.5 < pulls.std() < 1.6, pulls


def test_bias_pair_read_noise_error_covers_the_noisy_pixels():
    """The photon-transfer read noise from bias pairs is the rms over the region's pixels,
    1 % of them with 4 x the noise (the simulator's default): a heavy-tailed population,
    whose sample variance scatters more than the Gaussian error var sqrt(2 / N) said
    (standard campaign, seed 3: pull -2.0 against the region's true rms).  100 sensors:
    pulls std 1.53 before, 1.05 with the error 2 mean(s_p^4) / N estimated from the
    differences' fourth moment; the clip at 10 robust sigma removes a little of the noisy
    pixels' tails (mean pull -0.7, about -0.2 adu)."""
    physics = Physics()
    pulls = []
    for seed in range(100):
        rng = np.random.default_rng(200 + seed)
        sensor = make_sensor(rng, 64, 48, physics)
        rows = []
        for _ in range(8):
            a, b = (render_frame(rng, sensor, physics, kind="bias", temperature=20.0,
                                 exposure=0.0).astype(float) for _ in range(2))
            rows.append(pair_statistics(a, b, match_levels=False, clip=10))
        flats = pd.DataFrame([{"TBIN": 20.0, "EXPTIME": 1.0, "MEAN": 1000.0, "VAR": 900.0,
                               "NPIX": 500, "SATFRACTION": 0.0}] * 2)
        result = fit_photon_transfer(flats, bias_pairs=pd.DataFrame(rows))
        truth = math.sqrt(float(np.mean((sensor.read_noise * 16.0) ** 2)) + 16.0 ** 2 / 12)
        pulls.append((result.read_noise_adu - truth) / result.read_noise_adu_err)
    pulls = np.array(pulls)
    # 100 pulls: std known to ~7 %, mean to 0.1
    assert 0.8 < pulls.std() < 1.25 and abs(pulls.mean()) < 1.2, (pulls.mean(), pulls.std())
