"""Figures of the bias pipeline as a reader sees them."""

from __future__ import annotations

import numpy as np

from bias_pipeline.plots import plot_read_noise
from utils.models.read_noise import ReadNoise


def test_read_noise_map_shows_the_normal_pixels():
    """2 % of pixels at 4x the noise set the top of a 1-99 % colour scale and every normal
    pixel showed in one colour; the scale is now the typical pixel's chi-square range.  The
    title's error shows two significant digits (was '+- 0.00')."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    n = 40
    variance = 32.0 ** 2 * rng.chisquare(n, (128, 128)) / n
    variance[rng.random((128, 128)) < 0.02] *= 16.0
    rn = ReadNoise(variance=variance.astype(np.float32), npairs=n, median=32.35,
                   median_err=0.0035, rms=float(np.sqrt(variance.mean())))
    ax = plot_read_noise(rn)
    lo, hi = ax.images[0].get_clim()
    assert 0.5 * 32 < lo < 32 < hi < 1.5 * 32
    assert "32.3500 +- 0.0035 adu" in ax.get_title()
    plt.close(ax.figure)
