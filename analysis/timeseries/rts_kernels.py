"""Per-pixel kernels of the RTS search: a K-level hidden Markov fit by Viterbi training.

For one pixel's time series ``x`` (N samples) and K levels (2 or 3), with
Gaussian noise of one sigma for every level:

1. start from levels at the series' quantiles and a sigma;
2. Viterbi: the most probable state sequence given the levels, the sigma and
   the transition probabilities;
3. re-estimate the levels (mean per state), the sigma (rms residual about
   them) and the transition probabilities (counts, plus one);
4. repeat until the states stop changing (at most ``max_iter`` times).

Returned per pixel: levels (ascending), sigma, log-likelihood of the state
path, transition counts between states and the number of samples in each
state.  The kernels are compiled with numba (``nogil``) when it is
available; the same Python code runs without it (slowly).
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency, but the code runs (slower) without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

#: Largest number of levels fitted.
MAX_LEVELS = 3
_LOG_2PI = math.log(2.0 * math.pi)


def _viterbi_fit_py(x, k, max_iter, levels, trans, counts, out, bw_iter, ptrans, etrans,
                    occupancy):
    """Fit ``k`` levels to ``x``; fills ``levels[k]``, ``trans[k, k]``, ``counts[k]``.

    ``out`` receives ``[sigma, logL, iterations, valid]`` (logL of the Viterbi path);
    with ``bw_iter > 0`` the levels and sigma are then refined by Baum-Welch, which
    fills ``ptrans``, ``etrans`` and ``occupancy``.  Returns the Viterbi states.
    """
    n = x.size
    xs = np.sort(x)
    for j in range(k):
        q = (j + 0.5) / k
        levels[j] = xs[min(n - 1, int(q * n))]
    # initial sigma: robust spread of successive differences
    d = np.empty(n - 1)
    for t in range(n - 1):
        d[t] = abs(x[t + 1] - x[t])
    sigma = 1.482602218505602 * np.median(d) / math.sqrt(2.0) + 1e-12
    logA = np.full((k, k), math.log(0.1 / max(k - 1, 1)))
    for j in range(k):
        logA[j, j] = math.log(0.9)
    states = np.zeros(n, dtype=np.int64)
    previous = np.full(n, -1, dtype=np.int64)
    delta = np.empty(k)
    newdelta = np.empty(k)
    psi = np.zeros((n, k), dtype=np.int64)
    iterations = 0
    logL = -np.inf
    valid = 1
    for it in range(max_iter):
        iterations = it + 1
        inv2 = 1.0 / (2.0 * sigma * sigma)
        for j in range(k):
            r = x[0] - levels[j]
            delta[j] = -math.log(k) - r * r * inv2
        for t in range(1, n):
            for j in range(k):
                best = -np.inf
                arg = 0
                for i in range(k):
                    v = delta[i] + logA[i, j]
                    if v > best:
                        best = v
                        arg = i
                r = x[t] - levels[j]
                newdelta[j] = best - r * r * inv2
                psi[t, j] = arg
            for j in range(k):
                delta[j] = newdelta[j]
        last = 0
        for j in range(1, k):
            if delta[j] > delta[last]:
                last = j
        states[n - 1] = last
        for t in range(n - 1, 0, -1):
            states[t - 1] = psi[t, states[t]]
        # re-estimate levels, sigma, transitions
        for j in range(k):
            counts[j] = 0
            levels[j] = 0.0
            for i in range(k):
                trans[j, i] = 0
        for t in range(n):
            s = states[t]
            counts[s] += 1
            levels[s] += x[t]
            if t > 0:
                trans[states[t - 1], s] += 1
        empty = False
        for j in range(k):
            if counts[j] == 0:
                empty = True
            else:
                levels[j] /= counts[j]
        if empty:
            valid = 0
            break
        ss = 0.0
        for t in range(n):
            r = x[t] - levels[states[t]]
            ss += r * r
        sigma = math.sqrt(ss / n) + 1e-12
        for i in range(k):
            row = 0
            for j in range(k):
                row += trans[i, j]
            for j in range(k):
                logA[i, j] = math.log((trans[i, j] + 1.0) / (row + k))
        same = True
        for t in range(n):
            if states[t] != previous[t]:
                same = False
            previous[t] = states[t]
        if same:
            break
    # log-likelihood of the final path (emissions + transitions)
    if valid:
        logL = -n * (math.log(sigma) + 0.5 * _LOG_2PI) - 0.5 * n - math.log(k)
        for t in range(1, n):
            logL += logA[states[t - 1], states[t]]
    out[0] = sigma
    out[1] = logL
    out[2] = iterations
    out[3] = valid
    if valid and bw_iter > 0:
        sigma = _baum_welch(x, k, bw_iter, levels, sigma, logA, ptrans, etrans, occupancy)
        out[0] = sigma
    return states


def _baum_welch_py(x, k, iters, levels, sigma, logA, ptrans, etrans, occupancy):
    """Maximum-likelihood refinement (Baum-Welch EM) of levels, sigma and transitions.

    Viterbi training decodes the single most probable path, which drops short
    excursions when the step is only a few sigma and so biases the dwell times
    upwards; the expected transition counts of the forward-backward pass do
    not.  Fills ``ptrans`` (transition probabilities), ``etrans`` (expected
    transition counts) and ``occupancy`` (expected samples per level); returns sigma.
    """
    n = x.size
    a = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            a[i, j] = math.exp(logA[i, j])
    alpha = np.empty((n, k))
    beta = np.empty((n, k))
    em = np.empty((n, k))
    scale = np.empty(n)
    prev_ll = -np.inf
    for _ in range(iters):
        inv2 = 1.0 / (2.0 * sigma * sigma)
        for t in range(n):
            for j in range(k):
                r = x[t] - levels[j]
                em[t, j] = math.exp(-r * r * inv2)
        c = 0.0
        for j in range(k):
            alpha[0, j] = em[0, j] / k
            c += alpha[0, j]
        c = max(c, 1e-300)
        scale[0] = c
        for j in range(k):
            alpha[0, j] /= c
        for t in range(1, n):
            c = 0.0
            for j in range(k):
                acc = 0.0
                for i in range(k):
                    acc += alpha[t - 1, i] * a[i, j]
                alpha[t, j] = acc * em[t, j]
                c += alpha[t, j]
            c = max(c, 1e-300)
            scale[t] = c
            for j in range(k):
                alpha[t, j] /= c
        for j in range(k):
            beta[n - 1, j] = 1.0
        for t in range(n - 2, -1, -1):
            for i in range(k):
                acc = 0.0
                for j in range(k):
                    acc += a[i, j] * em[t + 1, j] * beta[t + 1, j]
                beta[t, i] = acc / scale[t + 1]
        ll = 0.0
        for t in range(n):
            ll += math.log(scale[t])
        for i in range(k):
            occupancy[i] = 0.0
            for j in range(k):
                etrans[i, j] = 0.0
        num = np.zeros(k)
        for t in range(n):
            for j in range(k):
                g = alpha[t, j] * beta[t, j]
                occupancy[j] += g
                num[j] += g * x[t]
            if t < n - 1:
                for i in range(k):
                    for j in range(k):
                        etrans[i, j] += (alpha[t, i] * a[i, j] * em[t + 1, j] * beta[t + 1, j]
                                         / scale[t + 1])
        ss = 0.0
        for j in range(k):
            levels[j] = num[j] / max(occupancy[j], 1e-300)
        for t in range(n):
            for j in range(k):
                g = alpha[t, j] * beta[t, j]
                r = x[t] - levels[j]
                ss += g * r * r
        sigma = math.sqrt(ss / n) + 1e-12
        for i in range(k):
            row = 0.0
            for j in range(k):
                row += etrans[i, j]
            for j in range(k):
                a[i, j] = etrans[i, j] / row if row > 0 else 1.0 / k
        if ll - prev_ll < 1e-7 * n:
            break
        prev_ll = ll
    for i in range(k):
        for j in range(k):
            ptrans[i, j] = a[i, j]
    return sigma


def _fit_many_py(series, k, max_iter, bw_iter, levels, trans, counts, out, ptrans, etrans,
                 occupancy):
    """Fit every column of ``series`` (N, M); outputs have a leading M axis."""
    m = series.shape[1]
    for p in range(m):
        x = series[:, p].astype(np.float64)
        _viterbi_fit(x, k, max_iter, levels[p], trans[p], counts[p], out[p], bw_iter,
                     ptrans[p], etrans[p], occupancy[p])


if HAVE_NUMBA:
    _baum_welch = njit(nogil=True, cache=True)(_baum_welch_py)
    _viterbi_fit = njit(nogil=True, cache=True)(_viterbi_fit_py)
    _fit_many = njit(nogil=True, cache=True)(_fit_many_py)
else:  # pragma: no cover
    _baum_welch = _baum_welch_py
    _viterbi_fit = _viterbi_fit_py
    _fit_many = _fit_many_py


def fit_levels(series: np.ndarray, k: int, max_iter: int = 12, bw_iter: int = 30) -> dict:
    """Fit ``k`` levels to every column of ``series`` (``(N, M)``, N samples of M pixels).

    Viterbi training first (robust start, the decoded path and its likelihood), then up to
    ``bw_iter`` Baum-Welch iterations (maximum likelihood over all paths).

    Returns
    -------
    dict
        ``levels`` (M, k) ascending and ``sigma`` (M,) (Baum-Welch when ``bw_iter`` > 0),
        ``logL`` (M,) of the Viterbi path, ``trans`` (M, k, k) transition counts of the
        Viterbi path (from row level to column level), ``counts`` (M, k) samples per level
        on that path, ``ptrans`` (M, k, k) maximum-likelihood transition probabilities
        per frame, ``etrans`` (M, k, k) expected transition counts, ``occupancy`` (M, k)
        expected samples per level, ``valid`` (M,) False where a level came out empty.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> s = (rng.random(400) < 0.5).repeat(5)[:2000]      # dwell ~5 samples
    >>> x = 10.0 * s + rng.normal(0, 1, s.size)
    >>> res = fit_levels(x[:, None], 2)
    >>> np.round(res["levels"][0]).tolist(), bool(abs(res["sigma"][0] - 1) < 0.1)
    ([0.0, 10.0], True)
    """
    if not 1 <= k <= MAX_LEVELS:
        raise ValueError(f"k must be within 1..{MAX_LEVELS}")
    series = np.ascontiguousarray(series, dtype=np.float64)
    n, m = series.shape
    levels = np.zeros((m, k))
    trans = np.zeros((m, k, k), dtype=np.int64)
    counts = np.zeros((m, k), dtype=np.int64)
    out = np.zeros((m, 4))
    ptrans = np.full((m, k, k), np.nan)
    etrans = np.zeros((m, k, k))
    occupancy = np.zeros((m, k))
    if m:
        _fit_many(series, k, max_iter, bw_iter, levels, trans, counts, out, ptrans, etrans,
                  occupancy)
    order = np.argsort(levels, axis=1)
    rows = np.arange(m)[:, None]
    cube = (np.arange(m)[:, None, None], order[:, :, None], order[:, None, :])
    return {"levels": levels[rows, order], "sigma": out[:, 0], "logL": out[:, 1],
            "trans": trans[cube], "counts": counts[rows, order], "ptrans": ptrans[cube],
            "etrans": etrans[cube], "occupancy": occupancy[rows, order],
            "valid": out[:, 3].astype(bool)}


__all__ = ["fit_levels", "HAVE_NUMBA", "MAX_LEVELS"]
