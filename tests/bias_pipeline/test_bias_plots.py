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


def test_histogram_medians_are_numpys():
    """The slope and PRNU histograms mark numpy's median (np.median / np.nanmedian of the
    float32 values) with the same label, now by one exact selection."""
    import matplotlib.pyplot as plt

    from bias_pipeline.plots import plot_slope_histogram
    from flat_pipeline.plots import plot_prnu_histogram
    from utils.models.bias_model import BiasModel

    rng = np.random.default_rng(4)
    shape = (120, 90)
    b = rng.normal(2.0, 0.3, shape).astype(np.float32)
    b[::7, ::5] = np.nan
    mask = (rng.random(shape) < 0.05).astype(np.uint8)
    zeros = np.zeros(shape, np.float32)
    model = BiasModel(zeros + 3000, b, zeros + 1, zeros + 0.1, zeros, zeros,
                      np.full(shape, 5, np.int16), mask, t_ref=20.0, t_min=10.0, t_max=30.0)
    ax = plot_slope_histogram(model)
    values = b[(mask == 0) & np.isfinite(b)]
    want = {f"median {np.median(values):.3f}": float(np.median(values))}
    lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax.get_lines()}
    assert lines == want
    plt.close(ax.figure)

    class Prnu:
        data = (1 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    Prnu.data[::11] = np.nan
    ax = plot_prnu_histogram(Prnu, {"PRNU_PCT": 1.0, "PRNU_ERR_PCT": 0.01})
    values = 100.0 * (Prnu.data - 1.0)
    lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax.get_lines()}
    assert lines == {"median": float(np.nanmedian(values))}
    plt.close(ax.figure)
