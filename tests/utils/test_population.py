"""Population joint shape fit (utils.models.population): the fused profile kernel against its
numpy definition, the Newton minimiser against Nelder-Mead."""

from unittest import mock

import numpy as np
import pytest
from statcheck import assert_close

from utils.models import population as pop

TEMPS = np.repeat(np.linspace(-10.0, 30.0, 5), 3)        # degC
EXPS = np.tile([2.0, 10.0, 40.0], 5)                     # s
TRUTH = np.array([1.0, 0.07])                            # gamma, rate [1/degC]


def stack(rng, pixels=6000, *, shared=True):
    """Faint dark-like points ``A t^gamma exp(rate (T - 20))`` of ``pixels`` pixels with a
    bias error shared by every point of a pixel (``V = (1, T - 10)``, covariance C)."""
    z = np.column_stack([np.log(EXPS), TEMPS - 20.0])
    amp = rng.lognormal(0.0, 0.5, pixels) * 0.2
    truth = amp * np.exp(z @ TRUTH)[:, None]
    sig = np.sqrt(4.0 + np.abs(truth))
    V = np.column_stack([np.ones(len(z)), TEMPS - 10.0])
    cov = np.array([[0.8 ** 2, 0.3 * 0.8 * 0.03], [0.3 * 0.8 * 0.03, 0.03 ** 2]])
    C = np.repeat(cov[:, :, None], pixels, axis=2)
    y = truth + sig * rng.standard_normal(truth.shape)
    if shared:
        y += V @ (np.linalg.cholesky(cov) @ rng.standard_normal((2, pixels)))
        sig = np.sqrt(sig ** 2 + np.einsum("kd,dep,ke->kp", V, C, V))
        return z, y, sig, (V, C)
    return z, y, sig, None


def prepared(z, y, s, shared):
    """The weighted points and the shared-error triple as joint_shape hands them on."""
    y, w = pop._prepare(y, s)
    if shared is not None:
        V, C = shared
        shared = (V, C, np.einsum("kd,dep,ke->kp", V, C, V))
    return w * y, w, shared


def magnitude(z, wy, w, theta, shared):
    """Per-pixel size of the terms of the profile chi-square (their absolute values): the
    float rounding of any summation order is ~1e-16 of it (a value near 0 is a cancellation)."""
    f = np.exp(z @ theta)
    a = f @ np.abs(wy)
    b = (f * f) @ w
    total = a * a
    if shared is not None:
        V, C, diag = shared
        h = np.abs(V).T @ (w * f[:, None])
        total = total + np.einsum("dp,dep,ep->p", h, np.abs(C), h) \
            + ((w * f[:, None]) ** 2 * diag).sum(0)
    return np.where(b > 0, total / np.where(b > 0, b, 1.0), 0.0)


@pytest.mark.skipif(not pop.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("with_shared", [True, False])
def test_profile_kernel_is_the_numpy_profile(with_shared):
    """The fused kernel (several shapes in one pass, pixels not a multiple of its tile or
    chunk, points of weight 0, a pixel without any point) equals the numpy definition."""
    rng = np.random.default_rng(3)
    z, y, s, shared = stack(rng, 2 * pop._CHUNK + 77, shared=with_shared)
    s[rng.random(s.shape) < 0.05] = np.nan
    s[:, 5] = 0.0                                          # no usable point: b = 0
    wy, w, sh = prepared(z, y, s, shared)
    thetas = TRUTH + np.array([[0.0, 0.0], [-0.3, 0.02], [0.2, -0.05]])
    got = pop._profiles(z, wy, w, thetas, sh, workers=2)
    want = np.array([pop._profile(z, wy, w, t, sh) for t in thetas])
    assert got[:, 5].tolist() == [0.0] * 3
    scale = np.array([magnitude(z, wy, w, t, sh) for t in thetas])
    assert np.all(np.abs(got - want) <= 1e-12 * scale)
    with mock.patch.object(pop, "HAVE_NUMBA", False):     # the fallback is the definition
        np.testing.assert_array_equal(pop._profiles(z, wy, w, thetas, sh), want)


def test_newton_finds_the_nelder_mead_minimum_in_few_passes():
    """Newton from a start ~40 sigma off reaches the minimum a tightly converged Nelder-Mead
    finds (to 1e-3 of theta's error) with a handful of passes over the pixels; one shape
    parameter (the temperature rate alone) too."""
    rng = np.random.default_rng(5)
    z, y, s, shared = stack(rng)
    wy, w, sh = prepared(z, y, s, shared)
    for cols, start in (([0, 1], [0.9, 0.065]), ([1], [0.065])):
        zz = z[:, cols]
        with mock.patch.object(pop, "_profiles", wraps=pop._profiles) as calls:
            theta, converged = pop._newton(zz, wy, w, np.array(start), sh)
        assert converged and calls.call_count <= 8
        _, H = pop._derivatives(zz, wy, w, theta, sh)
        err = np.sqrt(np.diag(2 * np.linalg.inv(H)))
        assert np.all(np.abs(theta - start) > 10 * err)     # the start was far
        from scipy.optimize import minimize
        ref = minimize(lambda t: pop._total(zz, wy, w, t, sh), np.array(start),
                       method="Nelder-Mead",
                       options={"xatol": 1e-12, "fatol": 1e-9, "maxiter": 20000}).x
        assert np.all(np.abs(theta - ref) < 1e-3 * err), (theta - ref) / err


def test_failed_newton_falls_back_to_the_simplex():
    """A curvature that is not positive definite (here: forced on the first derivatives)
    hands the search to Nelder-Mead, which finds the same joint fit."""
    rng = np.random.default_rng(7)
    z, y, s, shared = stack(rng)
    fit = pop.joint_shape(z, y, s, [0.9, 0.065], shared=shared)
    real = pop._derivatives
    calls = []

    def first_indefinite(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return (out[0], -out[1]) + tuple(out[2:]) if len(calls) == 1 else out
    with mock.patch.object(pop, "_derivatives", first_indefinite), \
            mock.patch.object(pop, "_minimise_simplex", wraps=pop._minimise_simplex) as nm:
        slow = pop.joint_shape(z, y, s, [0.9, 0.065], shared=shared)
    assert nm.call_count == 1
    # Nelder-Mead stops at 1e-4 in chi-square: ~1e-2 of the error at most
    np.testing.assert_array_less(np.abs(slow.theta - fit.theta), 1e-2 * fit.errors)
    assert_close(fit.theta[1], TRUTH[1], fit.errors[1])


def test_stencil_derivatives_are_the_central_differences():
    """Gradient and Hessian from the one-pass stencil equal central differences of the numpy
    profile taken point by point (the covariance of the fit is built from them)."""
    rng = np.random.default_rng(13)
    z, y, s, shared = stack(rng, 3000)
    wy, w, sh = prepared(z, y, s, shared)
    theta = np.array([0.97, 0.071])
    grad, H = pop._derivatives(z, wy, w, theta, sh)
    h = 1e-4 * np.abs(theta)

    def at(di, dj):
        return pop._profile(z, wy, w, theta + np.array([di * h[0], dj * h[1]]), sh)
    want_grad = np.array([(at(1, 0) - at(-1, 0)) / (2 * h[0]), (at(0, 1) - at(0, -1)) / (2 * h[1])])
    want_H = np.array([
        [(at(1, 0) - 2 * at(0, 0) + at(-1, 0)).sum() / h[0] ** 2,
         (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)).sum() / (4 * h[0] * h[1])],
        [0.0, (at(0, 1) - 2 * at(0, 0) + at(0, -1)).sum() / h[1] ** 2]])
    want_H[1, 0] = want_H[0, 1]
    # differences of values ~1e2 over steps of ~1e-4: rounding ~1e-14 / 1e-4 of the value
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-8 * np.abs(want_grad).max())
    np.testing.assert_allclose(H, want_H, rtol=1e-5)


def test_joint_shape_by_pixel_blocks_equals_whole(monkeypatch):
    """darkmem3: the per-pixel sum w y^2 made by blocks of pixels (here 7) gives the joint
    fit of one whole-array block bit for bit, with bright pixels cut and shared errors; so
    does the sample handed over as a callable (made and dropped inside the fit)."""
    from utils.stack import tiles

    rng = np.random.default_rng(11)
    z, y, s, shared = stack(rng, 3000)
    y[:, :20] *= 200.0  # bright outliers: the cut of w, w y and the sums is taken
    whole = pop.joint_shape(z, y, s, [0.9, 0.06], shared=shared)
    handed = pop.joint_shape(z, lambda: (y.astype(np.float32), s.astype(np.float32), shared[1]),
                             None, [0.9, 0.06], shared=(shared[0], None))
    direct = pop.joint_shape(z, y.astype(np.float32), s.astype(np.float32), [0.9, 0.06],
                             shared=shared)
    np.testing.assert_array_equal(handed.theta, direct.theta)
    np.testing.assert_array_equal(handed.covariance, direct.covariance)
    monkeypatch.setattr(pop, "pixel_blocks", lambda n: tiles.pixel_blocks(n, 7))
    blocks = pop.joint_shape(z, y, s, [0.9, 0.06], shared=shared)
    assert whole.pixels == blocks.pixels < 3000
    np.testing.assert_array_equal(whole.theta, blocks.theta)
    np.testing.assert_array_equal(whole.covariance, blocks.covariance)
    assert whole.chi2dof == blocks.chi2dof


@pytest.mark.parametrize("with_shared", [True, False])
def test_warm_started_refit_equals_the_cold_refit_in_fewer_passes(with_shared):
    """A leave-one-temperature-out refit started from the full fit's theta (``start``) picks
    the same pixels and finds the cold refit's theta within the search's tolerance (its last
    point is within 1e-3 of the error of the minimum), with the same errors, in fewer passes
    over the pixels: a start that did nothing would pass as often as the cold fit."""
    rng = np.random.default_rng(11)
    z, y, s, shared = stack(rng, 8000, shared=with_shared)
    if not with_shared:  # the 1-D (temperature) fit: one exposure, one shape parameter
        z, y, s = z[EXPS == 10.0, 1:], y[EXPS == 10.0], s[EXPS == 10.0]
    temps = TEMPS if with_shared else TEMPS[EXPS == 10.0]
    cold0 = [0.9, 0.06] if with_shared else [0.06]
    full = pop.joint_shape(z, y, s, cold0, shared=shared)
    rest = temps != temps.min()
    part = (z[rest], y[rest], s[rest], cold0)
    sub = None if shared is None else (shared[0][rest], shared[1])
    fits, passes = [], []
    for start in (None, full.theta):
        with mock.patch.object(pop, "_profiles", wraps=pop._profiles) as calls:
            fits.append(pop.joint_shape(*part, shared=sub, start=start))
        passes.append(calls.call_count)
    cold, warm = fits
    assert warm.pixels == cold.pixels
    assert np.all(np.abs(warm.theta - cold.theta) < 2e-3 * cold.errors), \
        (warm.theta - cold.theta) / cold.errors
    np.testing.assert_allclose(warm.errors, cold.errors, rtol=1e-3)
    assert abs(warm.chi2dof - cold.chi2dof) < 1e-6
    # the refit moved: the start is not already the answer (else no search is tested)
    assert np.any(np.abs(cold.theta - full.theta) > 0.05 * cold.errors)
    assert passes[1] < passes[0], passes


def test_columns_are_the_fancy_selection_in_c_order():
    """:func:`pop._columns` selects like ``a[..., sel]`` (which is column-major for the last
    axis), in C order, for masks and indices of 2-D and 3-D arrays."""
    rng = np.random.default_rng(5)
    for a in (rng.random((7, 300)), rng.random((2, 2, 300)),
              np.asfortranarray(rng.random((7, 300)))):
        for sel in (rng.random(300) > 0.3, np.arange(0, 300, 7)):
            got = pop._columns(a, sel)
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, a[..., sel])


def _profiles_as_before(z, wy, w, thetas, shared=None, workers=None):
    """``_profiles`` before the C-order copies: the kernel on the arrays as they come (the
    column-major selections of joint_shape; numba compiles a strided variant)."""
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    F = np.exp(np.clip(thetas @ z.T, -700, 700))
    out = np.empty((thetas.shape[0], wy.shape[1]))
    if shared is None:
        V, C, diag = np.zeros((z.shape[0], 0)), np.zeros((0, 0, 0)), np.zeros((0, 0))
    else:
        V, C, diag = shared
    pop._run_chunks(lambda a, b: pop._nb_profiles(F, wy, w, V, C, diag, shared is not None,
                                                  a, b, out), wy.shape[1], pop._CHUNK, 2)
    return out


@pytest.mark.skipif(not pop.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("with_shared", [True, False])
def test_c_order_copies_give_the_strided_fit_bit_for_bit(with_shared, monkeypatch):
    """popspeed: joint_shape hands the profile kernel C-order arrays (its selections of pixels
    were column-major, where the kernel's loops along a row's pixels are strided: ~3x slower
    on the dark model's leave-one-out samples).  Same sums in the same order per pixel: the
    fit of a column-major sample (as gather_sample makes it) equals, bit for bit, the fit with
    the former plain selections and the kernel on the strided arrays."""
    rng = np.random.default_rng(17)
    z, y, s, shared = stack(rng, 9000, shared=with_shared)
    y[:, :15] *= 200.0                           # bright outliers: the cut selects pixels
    idx = np.arange(0, 9000, 2)
    ys, ss = y[:, idx], s[:, idx]                # column-major, as a one-tile sample
    assert not ys.flags.c_contiguous
    sub = None if shared is None else (shared[0], shared[1][:, :, idx])
    start = [0.9, 0.06] if with_shared else None
    if not with_shared:
        z = z[:, 1:]
    kernel, layouts = pop._nb_profiles, set()

    def recorded(F, wy, w, V, C, diag, *args):
        layouts.update(a.flags.c_contiguous for a in (wy, w, C, diag))
        return kernel(F, wy, w, V, C, diag, *args)
    monkeypatch.setattr(pop, "_nb_profiles", recorded)
    new = pop.joint_shape(z, ys, ss, [0.9, 0.06][-z.shape[1]:], shared=sub)
    warm = pop.joint_shape(z, ys, ss, [0.9, 0.06][-z.shape[1]:], shared=sub,
                           start=start or [0.06])
    assert layouts == {True}
    monkeypatch.setattr(pop, "_columns", lambda a, sel: a[..., sel])
    monkeypatch.setattr(pop, "_c_order", lambda a: a)
    monkeypatch.setattr(pop, "_profiles", _profiles_as_before)
    layouts.clear()
    old = pop.joint_shape(z, ys, ss, [0.9, 0.06][-z.shape[1]:], shared=sub)
    old_warm = pop.joint_shape(z, ys, ss, [0.9, 0.06][-z.shape[1]:], shared=sub,
                               start=start or [0.06])
    assert False in layouts                      # the strided kernel ran
    for a, b in ((new, old), (warm, old_warm)):
        assert a.pixels == b.pixels < idx.size
        np.testing.assert_array_equal(a.theta, b.theta)
        np.testing.assert_array_equal(a.covariance, b.covariance)
        assert a.chi2dof == b.chi2dof


@pytest.mark.parametrize("q", [1e-6, 1e-4, 1e-3, 0.05])
def test_chi_square_limits_are_scipy_stats_isf(q):
    """The clipping limits (scipy.special.chdtri) are scipy.stats.chi2.isf's numbers."""
    from scipy import special
    from scipy.stats import chi2

    dof = np.arange(1, 200)
    assert np.array_equal(special.chdtri(dof, q), chi2.isf(q, dof))


def test_joint_fit_does_not_import_scipy_stats():
    """The dark stage's joint fits no longer pull in scipy.stats (~0.7 s at a command's start)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from utils.models.population import joint_shape; "
            "rng = np.random.default_rng(1); z = np.array([[-10.0], [0.0], [10.0]]); "
            "y = rng.uniform(0.2, 2, 500) * np.exp(0.1 * z) + rng.standard_normal((3, 500)); "
            "fit = joint_shape(z, y, np.ones_like(y), [0.05]); "
            "print(abs(fit.theta[0] - 0.1) < 5 * fit.errors[0], 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "False"]
