"""The dark pipeline's rewritten numba kernels against the loops they replaced (kept here as
the reference, compiled the same way): the same numbers, bit for bit, on random tiles with
NaN, infinite, zero and single-sample values."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from dark_pipeline import model_2d, noise_model  # noqa: E402


def _reference_pooled_errors(S, noise, count, v0, amp, shape, other, gain, out):
    """The per-pixel ``if`` loop of ``_pooled_errors_py`` before it was vectorised."""
    k_n, npix = S.shape
    for k in range(k_n):
        row = other[k]
        vrow = 1 - row if v0.shape[0] == 2 else 0
        for p in range(npix):
            s = np.float64(S[k, p])
            nz = np.float64(noise[k, p])
            c = np.float64(count[k, p])
            if np.isfinite(s) and np.isfinite(nz * nz) and c > 1:
                q = np.float64(amp[row, p]) * shape[k]
                if np.isfinite(q):
                    s = q
                out[k, p] = np.sqrt((v0[vrow, p] + gain * max(s, 0.0)) / max(c, 1.0))
            else:
                out[k, p] = np.nan



def _reference_correlated(a, g, b, lnt, dT, sig, design, cd, ok_in, out, gv_out):
    """The loop of ``_correlated_kernel_py`` before its sums over the points were interleaved."""
    k_n = lnt.shape[0]
    n_d = design.shape[1]
    jac = np.empty((3, k_n))
    wj = np.empty((3, k_n))
    gain = np.empty((3, k_n))
    gv = np.empty((3, n_d))
    var_k = np.empty(k_n)
    nrm = np.empty((3, 3))
    inv = np.empty((3, 3))
    for p in range(a.shape[0]):
        if not ok_in[p]:
            continue
        for k in range(k_n):
            f = a[p] * np.exp(g[p] * lnt[k] + b[p] * dT[k])
            s = sig[k, p]
            w = 1.0 / (s * s) if s > 0 and np.isfinite(s) else 0.0
            jac[0, k] = f / a[p]
            jac[1, k] = f * lnt[k]
            jac[2, k] = f * dT[k]
            for i in range(3):
                wj[i, k] = w * jac[i, k]
        for i in range(3):
            for j in range(3):
                acc = 0.0
                for k in range(k_n):
                    acc += wj[i, k] * jac[j, k]
                nrm[i, j] = acc
        c00 = nrm[1, 1] * nrm[2, 2] - nrm[1, 2] * nrm[2, 1]
        c01 = nrm[1, 2] * nrm[2, 0] - nrm[1, 0] * nrm[2, 2]
        c02 = nrm[1, 0] * nrm[2, 1] - nrm[1, 1] * nrm[2, 0]
        det = nrm[0, 0] * c00 + nrm[0, 1] * c01 + nrm[0, 2] * c02
        if not (det != 0 and np.isfinite(det)):
            continue
        inv[0, 0] = c00 / det
        inv[0, 1] = (nrm[0, 2] * nrm[2, 1] - nrm[0, 1] * nrm[2, 2]) / det
        inv[0, 2] = (nrm[0, 1] * nrm[1, 2] - nrm[0, 2] * nrm[1, 1]) / det
        inv[1, 0] = c01 / det
        inv[1, 1] = (nrm[0, 0] * nrm[2, 2] - nrm[0, 2] * nrm[2, 0]) / det
        inv[1, 2] = (nrm[0, 2] * nrm[1, 0] - nrm[0, 0] * nrm[1, 2]) / det
        inv[2, 0] = c02 / det
        inv[2, 1] = (nrm[0, 1] * nrm[2, 0] - nrm[0, 0] * nrm[2, 1]) / det
        inv[2, 2] = (nrm[0, 0] * nrm[1, 1] - nrm[0, 1] * nrm[1, 0]) / det
        for i in range(3):
            for k in range(k_n):
                acc = 0.0
                for j in range(3):
                    acc += inv[i, j] * wj[j, k]
                gain[i, k] = acc
            for d in range(n_d):
                acc = 0.0
                for k in range(k_n):
                    acc += gain[i, k] * design[k, d]
                gv[i, d] = acc
                if gv_out.shape[2] > 0:
                    gv_out[i, d, p] = acc
        for k in range(k_n):
            acc = 0.0
            for d in range(n_d):
                for e in range(n_d):
                    acc += design[k, d] * cd[d, e, p] * design[k, e]
            var_k[k] = acc
        for i in range(3):
            for j in range(i, 3):
                full = 0.0
                for d in range(n_d):
                    for e in range(n_d):
                        full += gv[i, d] * cd[d, e, p] * gv[j, e]
                diag = 0.0
                for k in range(k_n):
                    diag += gain[i, k] * gain[j, k] * var_k[k]
                out[i, j, p] = full - diag
                out[j, i, p] = full - diag


def _reference_read_variance(S, noise, count, gain, amp, shape, other, out):
    """The loop over k per pixel of ``_read_variance_py`` before it was vectorised."""
    k_n, npix = S.shape
    predicted = amp.shape[1] > 0
    for h in range(out.shape[0]):
        for p in range(npix):
            num = 0.0
            den = 0.0
            for k in range(k_n):
                s = np.float64(S[k, p])
                nz = np.float64(noise[k, p])
                c = np.float64(count[k, p])
                n2 = nz * nz
                if np.isfinite(s) and np.isfinite(n2) and c > 1:
                    if predicted and 1 - other[k] == h:
                        q = np.float64(amp[other[k], p]) * shape[k]
                        if np.isfinite(q):
                            s = q
                    w = c - 1.0
                    num += w * (n2 - gain * max(s, 0.0))
                    den += w
            out[h, p] = num / den if den != 0 else np.nan


_pooled_ref = numba.njit(nogil=True)(_reference_pooled_errors)
_correlated_ref = numba.njit(nogil=True)(_reference_correlated)
_read_variance_ref = numba.njit(nogil=True)(_reference_read_variance)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


def _pooled_tile(halves):
    rng = np.random.default_rng(7)
    k_n, npix = 12, 20011
    S = rng.normal(20, 40, (k_n, npix)).astype(np.float32)
    S[:, ::37] = np.nan
    S[1, ::5] = -0.0
    noise = rng.uniform(3, 15, (k_n, npix)).astype(np.float32)
    noise[2, ::11] = np.inf
    noise[4, ::13] = np.nan
    noise[5, ::17] = 3e30  # its square overflows: not usable
    count = rng.integers(0, 6, (k_n, npix)).astype(np.float32)
    if halves:
        v0 = rng.uniform(20, 40, (2, npix))
        amp = rng.normal(1, 0.5, (2, npix)).astype(np.float32)
        amp[:, ::7] = np.nan
        shape = rng.uniform(-5, 100, k_n)
        shape[3] = np.nan
        other = (np.arange(k_n) % 2).astype(np.intp)
    else:
        v0 = rng.uniform(20, 40, (1, npix))
        amp = np.full((1, npix), np.nan, np.float32)
        shape = np.ones(k_n)
        other = np.zeros(k_n, np.intp)
    return S, noise, count, v0, amp, shape, other


@pytest.mark.parametrize("halves", [True, False])
def test_pooled_errors_kernel_matches_reference(halves):
    S, noise, count, v0, amp, shape, other = _pooled_tile(halves)
    k_n, npix = S.shape
    got = np.empty((k_n, npix), np.float32)
    want = np.empty((k_n, npix), np.float32)
    noise_model._pooled_kernel(S, noise, count, v0, amp, shape, other, 3.7, got)
    _pooled_ref(S, noise, count, v0, amp, shape, other, 3.7, want)
    assert np.isnan(want).any() and np.isfinite(want).any()
    assert _same(got, want)


@pytest.mark.parametrize("n_d", [2, 5])
@pytest.mark.parametrize("keep_gain", [True, False])
def test_correlated_kernel_matches_reference(n_d, keep_gain):
    rng = np.random.default_rng(11 + n_d)
    k_n, npix = 20, 4001
    a = rng.uniform(0.5, 10, npix)
    g = rng.uniform(0.8, 1.2, npix)
    b = rng.uniform(0.03, 0.09, npix)
    a[5::101] = np.nan
    g[7::131] = np.inf
    a[::97] = 0.0
    ok = (rng.random(npix) > 0.05) & np.isfinite(a) & (a != 0)  # as the caller's
    exps = np.tile([1.0, 2.0, 4.0, 8.0], k_n // 4)
    temps = np.repeat(np.arange(k_n // 4) * 5.0 - 10, 4)
    lnt, d_t = np.log(exps), temps - 20.0
    sig = rng.uniform(2, 10, (k_n, npix))
    sig[3, ::7] = np.nan
    sig[:, ::1009] = 0.0  # no weight anywhere: singular normal matrix
    sig[5, ::13] = -1.0
    if n_d == 2:
        design = np.stack([np.ones(k_n), temps - 20.0], axis=1)
    else:
        design = (np.arange(k_n)[:, None] % n_d == np.arange(n_d)[None]).astype(float)
    cd = rng.uniform(0.1, 1.0, (n_d, n_d, npix))
    results = []
    for kernel in (model_2d._correlated_kernel, _correlated_ref):
        out = np.full((3, 3, npix), 0.25)
        gv = np.full((3, n_d, npix if keep_gain else 0), 0.5)
        kernel(a, g, b, lnt, d_t, sig, design, cd, ok, out, gv)
        results.append((out, gv))
    assert np.count_nonzero(results[1][0] != 0.25) > npix  # the reference wrote most pixels
    assert _same(results[0][0], results[1][0])
    assert _same(results[0][1], results[1][1])


@pytest.mark.parametrize("halves", [True, False])
def test_read_variance_kernel_matches_reference(halves):
    S, noise, count, _, amp, shape, other = _pooled_tile(halves)
    count[:, ::29] = 1.0  # pixels without a usable master: NaN
    if not halves:
        amp = np.empty((2, 0), np.float32)
    rows = 2 if halves else 1
    got = np.empty((rows, S.shape[1]))
    want = np.empty((rows, S.shape[1]))
    noise_model._read_variance_kernel(S, noise, count, 3.7, amp, shape, other, got)
    _read_variance_ref(S, noise, count, 3.7, amp, shape, other, want)
    assert np.isnan(want).any() and np.isfinite(want).any()
    assert _same(got, want)
