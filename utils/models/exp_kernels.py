"""numba kernels of the per-pixel exponential fits (see :mod:`utils.models.nonlinear`).

The same algorithm as the numpy path of :mod:`utils.models.nonlinear`, fused
and run on tiles of pixels held in cache; the notes below say what it took to
vectorise it.  Also the exact population medians (radix selection).
"""

from __future__ import annotations

import math

import numpy as np

from ._parallel import HAVE_NUMBA, _nb_moment, njit

#: numba caches this file's kernels keyed by this file alone, but they inline ``_nb_moment``
#: from ``_parallel.py``: the file's hash here (checked by tests/utils/test_numba_cache.py)
#: makes every change there change this file too, which invalidates the cached kernels.
NUMBA_DEPENDS = {"_parallel.py": "8b686c8afe861f94"}

_LAMBDA0 = 1e-3            # initial damping (relative to diag N)
_LAMBDA_MAX = 1e12         # damping beyond which a pixel is declared stuck (not converged)
_EXP_MAX = 700.0           # |exponent| clip: keeps exp finite for absurd trial steps

# status of a pixel after _lm
_FAILED, _CONVERGED, _PENDING = 0, 1, 2


# ---------------------------------------------------------------------------
# numba kernel of the nonlinear fits: the same algorithm, fused, on pixel tiles
# ---------------------------------------------------------------------------
#
# The numpy path above spends its time on (n, B) float64 temporaries in
# memory and on Python bookkeeping.  The kernel below runs the same steps on a
# tile of pixels held in cache, every loop running over the tile's pixels
# (innermost, so that LLVM vectorises it): weights, candidates, the weighted
# log-linear start, then damped Newton in lockstep (all pixels of a tile are
# at the same iteration, so no deferral is needed); pixels that leave are
# dropped from the tile when they are half of it.  What it took to vectorise
# (a per-pixel scalar version ran at ~1 us per pixel):
# * loops touch few arrays: a loop writing many rows exceeds LLVM's budget of
#   run-time alias checks and stays scalar (moments are one loop per row);
# * exp and log are polynomial / series implementations (~1 ulp) without
#   tables: table lookups become AVX gathers, slow on this kind of CPU; libm
#   calls do not vectorise;
# * no ``a[k, t0 + i]`` indexing with an offset (numba's negative-index
#   wraparound makes gathers of it): slices instead;
# * the hot lane loops (Newton step, sums, model shape) are compiled as their
#   own functions: inlined into the large kernel they stayed scalar.
# With a factorisable design (few distinct values per column, e.g. 5 T x 4 t)
# the model shape needs one exp per distinct value and pixel, not per point.
# Results agree with the numpy path to rounding (FMA contraction, summation
# order); population medians are exact (radix selection).

_INV_LN2 = 1.0 / math.log(2.0)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # Cody-Waite
_SQRT2 = math.sqrt(2.0)
_TINY = 2.2250738585072014e-308                     # smallest normal float64
_MANT_BITS, _ONE_BITS = 0x000FFFFFFFFFFFFF, 0x3FF0000000000000
_NL_TILE = 128        # pixels iterated together (their points stay in L1 / L2)
_NL_CHUNK = 1 << 14  # pixels per thread-pool task
# rows of the per-pixel state of a tile: theta, amplitude, chi^2, the moments
# sum S (1, z0, z1, z0 z0, z0 z1, z1 z1) and sum u (same), damping, iteration limit
_TH0, _TH1, _AMP, _CHI, _MOM = 0, 1, 2, 3, 4
_LAM, _LIM = _MOM + 12, _MOM + 13
_NROW = _MOM + 14


def _exp_parts_py(x):
    """exp(x) = poly * 2^k for |x| <= _EXP_MAX (callers clip): returns poly and the
    bits of the float64 2^k, which the caller multiplies in through an int64 view.

    Branch- and table-free (a table would need gathers, slow here), so that
    loops calling it vectorise; ~1 ulp.  NaN gives NaN (k is clamped).
    """
    kf = math.floor(x * _INV_LN2 + 0.5)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO  # |r| <= ln2 / 2
    poly = 1 / 6227020800                     # Taylor series to r^13 (Horner)
    poly = 1 / 479001600 + r * poly
    poly = 1 / 39916800 + r * poly
    poly = 1 / 3628800 + r * poly
    poly = 1 / 362880 + r * poly
    poly = 1 / 40320 + r * poly
    poly = 1 / 5040 + r * poly
    poly = 1 / 720 + r * poly
    poly = 1 / 120 + r * poly
    poly = 1 / 24 + r * poly
    poly = 1 / 6 + r * poly
    poly = 0.5 + r * poly
    poly = 1.0 + r * poly
    poly = 1.0 + r * poly
    k = min(max(kf, -1022), 1023)
    return poly, (k + 1023) << 52


def _log_mantissa_py(m, e):
    """log(m 2^e) for m in [1, 2) to a few ulp (series of 2 atanh((m - 1) / (m + 1)))."""
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.172
    s2 = s * s
    tail = s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (
        1 / 11 + s2 * (1 / 13 + s2 * (1 / 15 + s2 * (1 / 17 + s2 * (1 / 19 + s2 * (
            1 / 21 + s2 * (1 / 23)))))))))))
    return e * _LN2_HI + ((2.0 * s + 2.0 * s * tail) + e * _LN2_LO)


def _sym_inv_py(p, a, b, c, d, e, f):
    """Inverse (upper triangle 00 01 02 11 12 22) and determinant of a symmetric 2x2
    ((a b) (b d); c, e, f ignored) or 3x3 matrix, by cofactors as :func:`_sym_inverse`
    (times the reciprocal determinant: divisions dominated the Newton step)."""
    if p == 2:
        det = a * d - b * b
        r = 1.0 / det
        return d * r, -b * r, 0.0, a * r, 0.0, 0.0, det
    c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
    c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * c00 + b * c01 + c * c02
    r = 1.0 / det
    return c00 * r, c01 * r, c02 * r, c11 * r, c12 * r, c22 * r, det


def _matvec_py(p, i00, i01, i02, i11, i12, i22, g0, g1, g2):
    """Symmetric (upper triangle) matrix times vector, summed as :func:`_matvec`."""
    if p == 2:
        return i00 * g0 + i01 * g1, i01 * g0 + i11 * g1, 0.0
    return (i00 * g0 + i01 * g1 + i02 * g2, i01 * g0 + i11 * g1 + i12 * g2,
            i02 * g0 + i12 * g1 + i22 * g2)


def _posdef_py(p, a, b, c, d, e, f):
    """Sylvester's criterion as :func:`_positive_definite` (branch-free)."""
    third = a * (d * f - e * e) + b * (c * e - b * f) + c * (b * e - c * d) > 0
    return (a > 0) & (a * d - b * b > 0) & ((p == 2) | third)


def _support_py(a, W, F, i, gid, p):
    """:func:`_spans` of the points where the model of lane ``i`` reaches 1 sigma,
    ``a sqrt(w f^2) >= 1`` (as ``a > 0`` and ``a^2 w f^2 >= 1``): at least p of them and
    two distinct values in every design column (``gid`` (q, n): value index per point).
    One scalar pass: it runs once per pixel, on convergence."""
    q, n = gid.shape
    a2 = a * a
    cnt = 0
    first0 = first1 = -1
    two0 = False
    two1 = q == 1
    for k in range(n):
        if (a > 0) & (a2 * W[k, i] * F[k, i] * F[k, i] >= 1.0):
            cnt += 1
            g = gid[0, k]
            if first0 < 0:
                first0 = g
            elif g != first0:
                two0 = True
            if q == 2:
                g = gid[1, k]
                if first1 < 0:
                    first1 = g
                elif g != first1:
                    two1 = True
    return (cnt >= p) & two0 & two1


def _shape_py(na, act, q, z, gid, uz, ngrp, umax, fact, X, F, EF, sbits, scale):
    """Model shape f = exp(clip(z . theta)) (n, lanes) for lanes ``:na``, theta from rows
    ``_TH0``, ``_TH1`` of ``X`` (loops over lanes: they vectorise).  ``sbits`` and
    ``scale`` are an int64 work row and its float64 view."""
    n = F.shape[0]
    if fact:  # one exp per distinct value when no lane can need the clip
        for i in range(na):
            if act[i] and not (abs(X[_TH0, i]) * umax[0] + abs(X[_TH1, i]) * umax[1]
                               <= _EXP_MAX):
                fact = False
                break
    if fact:
        for j in range(q):
            for v in range(ngrp[j]):
                u = uz[j, v]
                for i in range(na):
                    EF[j, v, i], sbits[i] = _nb_exp_parts(u * X[_TH0 + j, i])
                for i in range(na):
                    EF[j, v, i] *= scale[i]
        for k in range(n):
            g0, g1 = gid[0, k], gid[1, k]
            for i in range(na):
                F[k, i] = EF[0, g0, i] * EF[1, g1, i]
    else:
        for k in range(n):
            z0 = z[k, 0]
            z1 = z[k, 1] if q == 2 else 0.0
            for i in range(na):
                t = z0 * X[_TH0, i]
                if q == 2:
                    t += z1 * X[_TH1, i]
                t = _EXP_MAX if t > _EXP_MAX else (-_EXP_MAX if t < -_EXP_MAX else t)
                F[k, i], sbits[i] = _nb_exp_parts(t)
            for i in range(na):
                F[k, i] *= scale[i]


def _sums_py(na, feats, phi, Y, W, F, S, U, X):
    """:meth:`_Design.profile` and the moments of :meth:`_Design.normal` for lanes ``:na``.

    Writes the best amplitude, chi^2 and the moments sum(S phi_j), sum(u phi_j)
    (S = w f^2, u = w f r; ``phi`` (6, n): 1, z0, z1, z0 z0, z0 z1, z1 z1, of
    which ``feats`` are used) into the rows of ``X``; ``S``, ``U`` are work.
    """
    n = Y.shape[0]
    for i in range(na):
        X[_AMP, i] = 0.0
        X[_CHI, i] = 0.0
    for k in range(n):  # sum w f y and sum w f^2 in the rows of A and chi
        for i in range(na):
            wf = W[k, i] * F[k, i]
            X[_AMP, i] += wf * Y[k, i]
            X[_CHI, i] += wf * F[k, i]
    for i in range(na):
        X[_AMP, i] = X[_AMP, i] / X[_CHI, i]
        X[_CHI, i] = 0.0
    for k in range(n):
        for i in range(na):
            S[k, i] = W[k, i] * F[k, i] * F[k, i]
        for i in range(na):
            U[k, i] = W[k, i] * (Y[k, i] - X[_AMP, i] * F[k, i]) * F[k, i]
        for i in range(na):
            r = Y[k, i] - X[_AMP, i] * F[k, i]
            X[_CHI, i] += W[k, i] * r * r
    for j in feats:
        _nb_moment(X, _MOM + j, S, phi[j], n, na)
        _nb_moment(X, _MOM + 6 + j, U, phi[j], n, na)


def _newton_py(na, p, q, L, V, tol, it):
    """Newton decrement, stop / leave flags and the damped step of lanes ``:na`` at
    iteration ``it``, as :func:`_lm`.

    Writes rows of the flat ``V`` (row r of lane i at ``r * _NL_TILE + i``): 0 the
    flag (0 stays, 1 leaves, 3 stops), 1-2 the trial theta, 3-8 the inverse normal
    matrix (upper triangle).  Compiled on its own and with compile-time row offsets
    (no run-time alias checks between them), the loop vectorises.
    """
    T = _NL_TILE
    for i in range(na):
        a = L[_AMP, i]
        a2 = a * a
        n00, n01, n02 = L[_MOM, i], a * L[_MOM + 1, i], a * L[_MOM + 2, i]
        n11, n12, n22 = a2 * L[_MOM + 3, i], a2 * L[_MOM + 4, i], a2 * L[_MOM + 5, i]
        g1, g2 = L[_MOM + 7, i], L[_MOM + 8, i]
        G0, G1, G2 = L[_MOM + 6, i], g1 * a, g2 * a
        i00, i01, i02, i11, i12, i22, _ = _nb_sym_inv(p, n00, n01, n02, n11, n12, n22)
        v0, v1, v2 = _nb_matvec(p, i00, i01, i02, i11, i12, i22, G0, G1, G2)
        dec = G0 * v0 + G1 * v1
        if p == 3:
            dec += G2 * v2
        usable = _nb_posdef(p, n00, n01, n02, n11, n12, n22) & math.isfinite(dec)
        st = usable & (dec < tol)
        lam = L[_LAM, i]
        leave = st | (not usable) | (lam > _LAMBDA_MAX) | \
            (not math.isfinite(L[_CHI, i])) | (it >= L[_LIM, i])
        V[i] = 2.0 * st + leave
        V[3 * T + i] = i00
        V[4 * T + i] = i01
        V[5 * T + i] = i02
        V[6 * T + i] = i11
        V[7 * T + i] = i12
        V[8 * T + i] = i22
        H01, H02 = n01 - g1, n02 - g2
        H11 = n11 - a * L[_MOM + 9, i]
        H12 = n12 - a * L[_MOM + 10, i]
        H22 = n22 - a * L[_MOM + 11, i]
        hess = _nb_posdef(p, n00, H01, H02, H11, H12, H22)
        M01 = H01 if hess else n01
        M02 = H02 if hess else n02
        M11 = (H11 if hess else n11) + lam * n11
        M12 = H12 if hess else n12
        M22 = (H22 if hess else n22) + lam * n22
        M00 = n00 + lam * n00
        j00, j01, j02, j11, j12, j22, _ = _nb_sym_inv(p, M00, M01, M02, M11, M12, M22)
        _, d1, d2 = _nb_matvec(p, j00, j01, j02, j11, j12, j22, G0, G1, G2)
        V[T + i] = L[_TH0, i] + d1
        V[2 * T + i] = L[_TH1, i] + d2 if q == 2 else L[_TH1, i]


def _nl_kernel_py(y2, s2, a0, a1, z, zz, gid, uz, ngrp, umax, fact, min_snr, max_iter, tol,
                  A_out, th_out, cov_out, chi_out, npts_out, st_out, chi2_out, err_out):
    """First pass of the nonlinear fit on pixels ``a0:a1`` of ``y2``, ``s2`` (n, P).

    The steps of :func:`_fit_block` and :func:`_lm` on tiles of pixels:
    weights, candidates, weighted log-linear start, damped Newton.  Writes
    points used and status of every pixel and, of the converged ones,
    amplitude, theta, inverse normal matrix, chi^2, reduced chi^2 and errors
    (the other pixels' are left for the fallback pass).
    """
    n, q = z.shape
    p = q + 1
    T = _NL_TILE
    Y = np.empty((n, T))
    Ybits = Y.view(np.int64)
    W = np.empty((n, T))
    F = np.empty((n, T))
    Ft = np.empty((n, T))
    S = np.empty((n, T))
    U = np.empty((n, T))
    G = np.empty((n, T))
    EF = np.ones((2, uz.shape[1], T))
    L = np.zeros((_NROW, T))   # state of the tile's lanes
    Lt = np.zeros((_NROW, T))  # trial state
    V = np.empty((10, T))      # work rows: counts, start moments
    VN = np.empty(9 * T)       # Newton flags, step, inverse (flat: see _newton_py)
    H = np.empty((uz.shape[1], T))
    ebuf = np.empty(T)
    mbuf = np.empty(T, np.int64)
    mant = mbuf.view(np.float64)
    pix = np.empty(T, np.int64)
    act = np.empty(T, np.bool_)
    min_snr2 = min_snr * min_snr
    phi = np.zeros((6, n))     # point features 1, z0, z1, z0 z0, z0 z1, z1 z1
    for k in range(n):
        phi[0, k] = 1.0
        phi[1, k] = z[k, 0]
        phi[3, k] = zz[k, 0]
        if q == 2:
            phi[2, k] = z[k, 1]
            phi[4, k] = zz[k, 1]
            phi[5, k] = zz[k, 2]
    feats = np.array([0, 1, 3]) if q == 1 else np.arange(6)
    for t0 in range(a0, a1, T):
        m = min(a1, t0 + T) - t0
        for k in range(n):  # gather the tile's points, as _weights
            yrow = y2[k, t0:t0 + m]  # (a slice: t0 + i indices would compile to gathers)
            srow = s2[k, t0:t0 + m]
            for i in range(m):
                yv = np.float64(yrow[i])
                sv = np.float64(srow[i])
                wv = 1.0 / (sv * sv)
                ok = (sv > 0) & math.isfinite(wv) & (wv > 0) & math.isfinite(yv)
                Y[k, i] = yv if ok else 0.0
                W[k, i] = wv if ok else 0.0
        for i in range(m):
            V[0, i] = 0.0  # points used
            V[1, i] = 0.0  # good points
        tiny = False
        for k in range(n):  # good: y / sigma >= min_snr, as y > 0 and y^2 w >= min_snr^2
            for i in range(m):
                V[0, i] += W[k, i] != 0
            for i in range(m):
                good = (Y[k, i] > 0) & (Y[k, i] * Y[k, i] * W[k, i] >= min_snr2)
                G[k, i] = 1.0 if good else 0.0
                tiny |= good & (Y[k, i] < _TINY)
            for i in range(m):
                V[1, i] += G[k, i]
        # Only the converged pixels' maps are written here: the fallback pass writes
        # every other pixel's.
        for i in range(m):
            j = t0 + i
            pix[i] = j
            npts_out[j] = V[0, i]
            st_out[j] = _FAILED
            act[i] = V[1, i] >= p
        for j in range(q):  # candidates (_spans): good points at two values of every column
            for v in range(ngrp[j]):
                for i in range(m):
                    H[v, i] = 0.0
            for k in range(n):
                v = gid[j, k]
                for i in range(m):
                    H[v, i] = max(H[v, i], G[k, i])
            for i in range(m):
                V[2, i] = 0.0
            for v in range(ngrp[j]):
                for i in range(m):
                    V[2, i] += H[v, i]
            for i in range(m):
                act[i] &= V[2, i] >= 2
        # log-linear start: ln y = ln A + z . theta on the good points, weights (y / sigma)^2
        for k in range(n):
            for i in range(m):  # exponent and mantissa bits of y
                bits = Ybits[k, i]
                ebuf[i] = np.float64((bits >> 52) - 1023)
                mbuf[i] = (bits & _MANT_BITS) | _ONE_BITS
            for i in range(m):
                S[k, i] = Y[k, i] * Y[k, i] * W[k, i] if G[k, i] != 0 else 0.0
            for i in range(m):
                U[k, i] = S[k, i] * _nb_log_mantissa(mant[i], ebuf[i])
            if tiny:  # subnormal y (only with an absurdly small min_snr): libm
                for i in range(m):
                    if (G[k, i] != 0) & (Y[k, i] < _TINY):
                        U[k, i] = S[k, i] * math.log(Y[k, i])
        for j in feats:
            _nb_moment(V, j, S, phi[j], n, m)
        _nb_moment(V, 6, U, phi[0], n, m)
        _nb_moment(V, 7, U, phi[1], n, m)
        _nb_moment(V, 8, U, phi[2], n, m)
        for i in range(m):
            s0, s1, s2_, s11, s12, s22 = V[0, i], V[1, i], V[2, i], V[3, i], V[4, i], V[5, i]
            i00, i01, i02, i11, i12, i22, det = _nb_sym_inv(p, s0, s1, s2_, s11, s12, s22)
            dprod = s0 * s11 * s22 if q == 2 else s0 * s11
            _, th0, th1 = _nb_matvec(p, i00, i01, i02, i11, i12, i22, V[6, i], V[7, i],
                                     V[8, i])
            ok = (det > 1e-10 * dprod) & math.isfinite(th0) & math.isfinite(th1)
            L[_TH0, i] = th0 if ok else 0.0
            L[_TH1, i] = th1 if ok else 0.0
            L[_LAM, i] = _LAMBDA0
            L[_LIM, i] = max_iter if ok else -1.0
        nact = 0
        for i in range(m):
            nact += act[i]
        if nact == 0:
            continue
        # damped Newton, as _lm, in lockstep
        na = m
        _nb_shape(na, act, q, z, gid, uz, ngrp, umax, fact, L, F, EF, mbuf, mant)
        _nb_sums(na, feats, phi, Y, W, F, S, U, L)
        it = 0
        while True:
            _nb_newton(na, p, q, L, VN, tol, it)
            for i in range(na):
                if not (act[i] and VN[i] != 0):
                    continue
                act[i] = False
                nact -= 1
                if VN[i] != 3:
                    continue
                a = L[_AMP, i]
                if not _nb_support(a, W, F, i, gid, p):
                    continue
                j = pix[i]
                A_out[j] = a
                chi_out[j] = L[_CHI, i]
                st_out[j] = _CONVERGED
                th_out[0, j] = L[_TH0, i]
                if q == 2:
                    th_out[1, j] = L[_TH1, i]
                cov_out[0, 0, j] = VN[3 * T + i]
                cov_out[0, 1, j] = cov_out[1, 0, j] = VN[4 * T + i]
                cov_out[1, 1, j] = VN[6 * T + i]
                if p == 3:
                    cov_out[0, 2, j] = cov_out[2, 0, j] = VN[5 * T + i]
                    cov_out[1, 2, j] = cov_out[2, 1, j] = VN[7 * T + i]
                    cov_out[2, 2, j] = VN[8 * T + i]
                # reduced chi^2 and errors as the numpy path computes them from float32 maps
                if npts_out[j] > p:
                    chi2_out[j] = np.float32(chi_out[j]) / np.float32(npts_out[j] - p)
                else:  # no degree of freedom (the output is np.empty: never leave it unset)
                    chi2_out[j] = np.nan
                for r in range(p):
                    err_out[r, j] = np.sqrt(cov_out[r, r, j])
            if nact == 0:
                break
            if 2 * nact <= na:  # drop the lanes that left
                c = 0
                for i in range(na):
                    if act[i]:
                        mbuf[c] = i
                        c += 1
                for rows in (Y, W, F, L):
                    for r in range(rows.shape[0]):
                        row = rows[r]
                        for jj in range(nact):
                            row[jj] = row[mbuf[jj]]
                for jj in range(nact):
                    VN[T + jj] = VN[T + mbuf[jj]]
                    VN[2 * T + jj] = VN[2 * T + mbuf[jj]]
                for jj in range(nact):
                    pix[jj] = pix[mbuf[jj]]
                    act[jj] = True
                na = nact
            for i in range(na):
                Lt[_TH0, i] = VN[T + i]
                Lt[_TH1, i] = VN[2 * T + i]
            _nb_shape(na, act, q, z, gid, uz, ngrp, umax, fact, Lt, Ft, EF, mbuf, mant)
            _nb_sums(na, feats, phi, Y, W, Ft, S, U, Lt)
            # adopt the trial points (swap the buffers), put back the refused ones
            for i in range(na):
                la = L[_LAM, i] * 0.1
                Lt[_LIM, i] = L[_LIM, i]
                if Lt[_CHI, i] <= L[_CHI, i]:  # NaN is refused
                    Lt[_LAM, i] = la
                else:
                    for r in range(_LAM):
                        Lt[r, i] = L[r, i]
                    Lt[_LAM, i] = la * 100.0
                    for k in range(n):
                        Ft[k, i] = F[k, i]
            L, Lt = Lt, L
            F, Ft = Ft, F
            it += 1


def _fallback_kernel_py(y2, s2, a0, a1, status, npts, f, pop_theta, spread2, A_out, th_out,
                        cov_out, chi2_out, err_out):
    """Fallback pass on the pixels ``a0:a1`` that did not converge, as in the numpy path:
    the amplitude linear at the fixed shape ``f`` (n,) (:func:`_fallback_block`), its
    error and chi^2, theta set to ``pop_theta`` with variance ``spread2``, and the error
    maps ``err_out`` (p, P) = sqrt(diagonal of the float32 covariance)."""
    n = f.size
    q = pop_theta.size
    for pix in range(a0, a1):
        if status[pix] == _CONVERGED:
            continue
        swff = 0.0
        swyf = 0.0
        for k in range(n):
            yv = np.float64(y2[k, pix])
            sv = np.float64(s2[k, pix])
            wv = 1.0 / (sv * sv)
            if sv > 0 and math.isfinite(wv) and wv > 0 and math.isfinite(yv):
                swff += wv * (f[k] * f[k])
                swyf += wv * yv * f[k]
        A = swyf / swff
        chi = 0.0
        for k in range(n):
            yv = np.float64(y2[k, pix])
            sv = np.float64(s2[k, pix])
            wv = 1.0 / (sv * sv)
            if sv > 0 and math.isfinite(wv) and wv > 0 and math.isfinite(yv):
                r = yv - A * f[k]
                chi += wv * r * r
        err = 1.0 / math.sqrt(swff)
        A_out[pix] = A
        cnt = npts[pix]
        chi2_out[pix] = chi / (cnt - 1) if cnt > 1 else np.nan
        for r in range(q + 1):
            for c in range(q + 1):
                cov_out[r, c, pix] = 0.0
        cov_out[0, 0, pix] = err * err
        err_out[0, pix] = np.sqrt(cov_out[0, 0, pix])
        for j in range(q):
            th_out[j, pix] = pop_theta[j]
            cov_out[j + 1, j + 1, pix] = spread2[j]
            err_out[j + 1, pix] = np.sqrt(cov_out[j + 1, j + 1, pix])


def _radix_select_py(keys, m, k, hist):
    """The k-th smallest (0-based) of the int64 order keys ``keys[:m]``, exactly: radix
    selection on 16-bit digits from the top.  Reorders ``keys``."""
    for shift in (48, 32, 16, 0):
        off = 32768 if shift == 48 else 0
        for b in range(65536):
            hist[b] = 0
        for i in range(m):
            hist[((keys[i] >> shift) + off) & 0xFFFF] += 1
        b = 0
        while hist[b] <= k:
            k -= hist[b]
            b += 1
        if hist[b] == m:
            continue
        j = 0
        for i in range(m):
            if ((keys[i] >> shift) + off) & 0xFFFF == b:
                keys[j] = keys[i]
                j += 1
        m = j
    return keys[0]


def _radix_median_py(values, mask, center, absdev):
    """:func:`_masked_median_py` by radix selection on all the values (any data)."""
    m = 0
    for i in range(values.size):
        m += mask[i] & math.isfinite(values[i])
    keys = np.empty(m, np.int64)
    work = np.empty(m, np.int64)
    fbuf = np.empty(m)
    j = 0
    for i in range(values.size):
        if mask[i] & math.isfinite(values[i]):
            x = np.float64(values[i])
            fbuf[j] = abs(x - center) if absdev else x
            j += 1
    bits = fbuf.view(np.int64)
    for i in range(m):  # order-preserving integer keys of the floats
        keys[i] = bits[i] ^ ((bits[i] >> 63) & 0x7FFFFFFFFFFFFFFF)
        work[i] = keys[i]
    k = (m - 1) // 2
    a = _nb_radix_select(work, m, k, np.empty(65536, np.int64))
    b = a
    if m % 2 == 0:  # the next order statistic: a again, or the smallest key above it
        n_le = 0
        above = np.iinfo(np.int64).max
        for i in range(m):
            n_le += keys[i] <= a
            if keys[i] > a and keys[i] < above:
                above = keys[i]
        b = a if n_le >= k + 2 else above
    ibuf = fbuf.view(np.int64)
    ibuf[0] = a ^ ((a >> 63) & 0x7FFFFFFFFFFFFFFF)
    ibuf[1] = b ^ ((b >> 63) & 0x7FFFFFFFFFFFFFFF)
    return fbuf[0] if m % 2 else (fbuf[0] + fbuf[1]) / 2


def _masked_median_py(values, mask, center, absdev):
    """np.median of x = values[i] (or |values[i] - center| with ``absdev``) over the finite
    values where ``mask`` (at least one), exactly, in linear time, without copying them.

    A sorted sample brackets the median; one pass counts the values, those
    below the bracket, and collects those inside it (a few thousand), which
    are sorted.  Should the bracket miss (an unlucky sample), radix selection
    on all of them.  The pass is branch-free: a test of x against the median
    is a coin flip for the branch predictor.
    """
    size = values.size
    step = max(1, size // 32768)
    sample = np.empty(size // step + 1)
    ns = 0
    for i in range(0, size, step):
        x = np.float64(values[i])
        sample[ns] = abs(x - center) if absdev else x
        ns += mask[i] & math.isfinite(values[i])
    if ns == 0:
        return _nb_radix_median(values, mask, center, absdev)
    sample = np.sort(sample[:ns])
    margin = 2 * int(math.sqrt(ns)) + 16  # > 4 sigma of the sample rank of the median
    lo = sample[max(ns // 2 - margin, 0)]
    hi = sample[min(ns // 2 + margin, ns - 1)]
    bracket = np.empty(size + 1)  # only its first entries are written (and paged in)
    m = 0
    below = 0
    inside = 0
    for i in range(size):
        x = np.float64(values[i])
        x = abs(x - center) if absdev else x
        ok = mask[i] & math.isfinite(values[i])
        m += ok
        below += ok & (x < lo)
        bracket[inside] = x
        inside += ok & (x >= lo) & (x <= hi)
    k = (m - 1) // 2
    k1 = k + 1 if m % 2 == 0 else k
    if not (below <= k and k1 < below + inside):
        return _nb_radix_median(values, mask, center, absdev)
    inner = np.sort(bracket[:inside])
    a, b = inner[k - below], inner[k1 - below]
    return a if m % 2 else (a + b) / 2


def _population_py(values, mask):
    """:func:`population_value` (median and MAD of the finite ``values[mask]``) exactly,
    in linear time; NaN, NaN when there is none."""
    found = False
    for i in range(values.size):
        if mask[i] and math.isfinite(values[i]):
            found = True
            break
    if not found:
        return np.nan, np.nan
    med = _nb_masked_median(values, mask, 0.0, False)
    return med, _nb_masked_median(values, mask, med, True)


if HAVE_NUMBA:
    _jit = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    # the per-pixel helpers are inlined at numba-IR level (tuple returns)
    _inline = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"},
                   inline="always")
    _nb_exp_parts = _inline(_exp_parts_py)
    _nb_log_mantissa = _inline(_log_mantissa_py)
    _nb_sym_inv = _inline(_sym_inv_py)
    _nb_matvec = _inline(_matvec_py)
    _nb_posdef = _inline(_posdef_py)
    _nb_support = _inline(_support_py)
    _nb_shape = _jit(_shape_py)
    _nb_newton = _jit(_newton_py)
    _nb_sums = _jit(_sums_py)
    _nb_nl_kernel = _jit(_nl_kernel_py)
    _nb_fallback = _jit(_fallback_kernel_py)
    _nb_radix_select = _jit(_radix_select_py)
    _nb_radix_median = _jit(_radix_median_py)
    _nb_masked_median = _jit(_masked_median_py)
    _nb_population = _jit(_population_py)
else:  # pragma: no cover
    _nb_nl_kernel = _nb_fallback = None
