"""Shared machinery of the per-pixel fit kernels: numba availability, thread-pool chunks."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is a hard dependency, but keep a working (slower) path without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_NUMBA
    HAVE_NUMBA = False
    njit = None


def _float_array(a) -> np.ndarray:
    """``a`` as a native-endian float32 or float64 array (no copy when it already is one)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    return a.astype(np.float64)


def _default_workers() -> int:
    """Threads for the fits without a ``workers`` argument: the usable CPUs, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _run_chunks(func, total: int, chunk: int, workers: int) -> None:
    """Call ``func(a, b)`` on ``[a, b)`` chunks of ``range(total)``, on ``workers`` threads."""
    starts = range(0, total, chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            list(pool.map(lambda a: func(a, min(total, a + chunk)), starts))
    else:
        for a in starts:
            func(a, min(total, a + chunk))


def _moment_py(X, r, Z, c, n, na):
    """X[r, :na] = sum_k Z[k, :na] c[k]; one output per loop and four points per pass, so
    that the loop vectorises (a loop writing many rows exceeds LLVM's alias-check budget)."""
    for i in range(na):
        X[r, i] = 0.0
    k = 0
    while k + 4 <= n:
        c0, c1, c2, c3 = c[k], c[k + 1], c[k + 2], c[k + 3]
        for i in range(na):
            X[r, i] += (Z[k, i] * c0 + Z[k + 1, i] * c1) + (Z[k + 2, i] * c2 + Z[k + 3, i] * c3)
        k += 4
    while k < n:
        ck = c[k]
        for i in range(na):
            X[r, i] += Z[k, i] * ck
        k += 1


if HAVE_NUMBA:
    # inlined at numba-IR level into the line and exponential kernels
    _nb_moment = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"},
                      inline="always")(_moment_py)
else:  # pragma: no cover
    _nb_moment = None
