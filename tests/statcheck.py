"""Tolerances from statistics: checks whose bounds come from the error of what they measure.

A science test compares an estimate with the simulator's truth.  Its bound must
come from the statistical error of that comparison (a few sigma), never from a
generous guess: a wrong result 2 % off, or errors reported 20 % too large, has
to fail.  These helpers derive the bounds from the sample itself:

* :func:`assert_pulls` checks both the bias (mean of the pulls) and the error
  calibration (their standard deviation) of a map against its truth;
* :func:`assert_close` checks one number against truth within ``k`` of its
  stated error.

The default ``k = 5`` keeps a seeded test far from flaky (5-sigma: 6e-7 per
check) while a 20 % error miscalibration over a thousand pixels sits at ~25
sigma and a 0.35 degC bias-subtraction error at ~6 sigma.
"""

from __future__ import annotations

import math

import numpy as np

from utils.stack.combine import DEFAULT_CLIP_SIGMA
from utils.stack.error_factor import clipped_error_factor

#: Default width of a bound, in standard errors of the checked statistic.
K_SIGMA = 5.0


def clipped_factor(n_frames: int, sigma: float = DEFAULT_CLIP_SIGMA) -> float:
    """Actual scatter / reported error of a sigma-clipped master of ``n_frames`` frames,
    clipped at ``sigma`` both sides (:func:`utils.stack.error_factor.clipped_error_factor`)."""
    return clipped_error_factor(n_frames, sigma_low=sigma, sigma_high=sigma)


def std_error_of_std(values: np.ndarray) -> float:
    """Standard error of the sample standard deviation, from the sample's own kurtosis.

    ``se(s) = s sqrt((kurtosis - 1) / (4 n))``: ``s / sqrt(2 n)`` for Gaussian values,
    larger for heavy tails (a few outlying pixels), so bounds stay honest.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    s = v.std()
    if n < 4 or s == 0:
        return math.inf
    kurt = np.mean((v - v.mean()) ** 4) / s ** 4
    return float(s * math.sqrt(max(kurt - 1.0, 2.0) / (4 * n)))


def assert_pulls(z, *, expected_std: float = 1.0, k: float = K_SIGMA, what: str = "pulls",
                 check_mean: bool = True) -> tuple[float, float]:
    """Assert pulls ``z = (estimate - truth) / reported error`` are unbiased and calibrated.

    Mean within ``k / sqrt(n)`` (times the std) of 0, and standard deviation within ``k``
    standard errors of ``expected_std`` (1 for calibrated errors; a documented known
    factor otherwise).  Non-finite pulls are ignored (they are the masked pixels).

    Returns
    -------
    (mean, std)
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    z = z[np.isfinite(z)]
    assert z.size >= 30, f"{what}: only {z.size} finite pulls"
    mean, std = float(z.mean()), float(z.std())
    if check_mean:
        tol = k * max(std, expected_std) / math.sqrt(z.size)
        assert abs(mean) < tol, f"{what}: mean {mean:.4f} beyond {k:g} sigma ({tol:.4f}), " \
                                f"n={z.size}"
    se = std_error_of_std(z)
    assert abs(std - expected_std) < k * se, \
        f"{what}: std {std:.4f}, expected {expected_std:.4f} +- {k:g} x {se:.4f}, n={z.size}"
    return mean, std


def assert_close(value: float, truth: float, error: float, *, k: float = K_SIGMA,
                 what: str = "value") -> float:
    """Assert ``|value - truth| < k * error`` and return the pull."""
    assert error > 0 and math.isfinite(error), f"{what}: error {error!r} is not usable"
    pull = (value - truth) / error
    assert abs(pull) < k, f"{what}: {value:.6g} vs truth {truth:.6g}, pull {pull:.2f} " \
                          f"(error {error:.3g}, bound {k:g} sigma)"
    return pull
