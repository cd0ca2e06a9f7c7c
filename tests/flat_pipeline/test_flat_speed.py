"""Speed changes of the flat, gain and bias steps give the numbers of the code they replaced
(bit for bit): each old algorithm is kept here as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.models.photon_transfer import pair_statistics
from utils.stack.stats import MAD_TO_STD


def _pair_statistics_reference(a, b, *, clip=5.0, valid=None, match_levels=True):
    """``pair_statistics`` before its medians went to ``exact_median`` and its copies of
    unclipped differences were dropped."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        ok &= np.asarray(valid, bool).ravel()
    a, b = a[ok], b[ok]
    if a.size < 10:
        return {"MEAN": math.nan, "VAR": math.nan, "NPIX": int(a.size), "RATIO": math.nan,
                "NCLIP": 0}
    ma, mb = float(a.mean()), float(b.mean())
    ratio = ma / mb if match_levels and mb != 0 else 1.0
    d = a - ratio * b
    sample = d[::max(1, d.size // 200000)]
    centre = float(np.median(sample))
    spread = MAD_TO_STD * float(np.median(np.abs(sample - centre)))
    keep = np.abs(d - centre) <= clip * spread if spread > 0 else np.ones(d.size, bool)
    for _ in range(3):
        centre = float(d[keep].mean())
        new = np.abs(d - centre) <= clip * float(d[keep].std()) if spread > 0 else keep
        if np.array_equal(new, keep):
            break
        keep = new
    dk = d[keep]
    var = float(dk.var(ddof=1)) / (1.0 + ratio * ratio)
    c4 = float(np.mean((dk - dk.mean()) ** 4))
    var_err = math.sqrt(2.0 / 3.0 * c4 / dk.size) / (1.0 + ratio * ratio)
    return {"MEAN": 0.5 * (float(a[keep].mean()) + float(b[keep].mean())), "VAR": var,
            "VAR_ERR": var_err, "NPIX": int(keep.sum()), "RATIO": ratio,
            "NCLIP": int((~keep).sum())}


@pytest.mark.parametrize("shape", [(64, 80), (512, 512), (600, 520)])
@pytest.mark.parametrize("case", ["clean", "nan", "hits", "valid", "bias", "constant"])
def test_pair_statistics_bit_for_bit_the_old_algorithm(shape, case):
    rng = np.random.default_rng(hash((shape, case)) % 2**32)
    level = 0.0 if case == "bias" else 3000.0
    a = (level + rng.normal(0, 40, shape)).astype(np.float32)
    b = (level * 1.001 + rng.normal(0, 40, shape)).astype(np.float32)
    kwargs = {"match_levels": False, "clip": 10.0} if case == "bias" else {}
    if case == "nan":
        a[rng.random(shape) < 0.01] = np.nan
    if case in ("hits", "bias"):
        b[rng.random(shape) < 0.002] += 5000
    if case == "valid":
        kwargs["valid"] = rng.random(shape) > 0.05
    if case == "constant":
        a[:] = 7.0
        b[:] = 7.0
    got = pair_statistics(a, b, **kwargs)
    want = _pair_statistics_reference(a, b, **kwargs)
    assert got.keys() == want.keys()
    for key in want:  # identical numbers (NaN where both are NaN)
        assert got[key] == want[key] or (math.isnan(got[key]) and math.isnan(want[key])), key


def _flat_files(folder, n=5, shape=(40, 48), seed=3):
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        path = folder / f"flat_{k}.fits"
        data = (1000 + 3000 * (1 + 0.01 * k) + rng.normal(0, 60, shape)).astype(np.uint16)
        fits.PrimaryHDU(data).writeto(path)
        paths.append(str(path))
    return paths


def test_flat_pairs_measured_once_per_process_same_numbers(tmp_path, monkeypatch):
    """The gain step and the full run measure the same pairs on the same bias-subtracted
    frames: the second takes the first's statistics, and they are the numbers it would
    measure; another bias (or a rewritten frame) is measured again."""
    import pandas as pd

    from flat_pipeline import quality
    from flat_pipeline.reduction import Reference
    from utils.stack.grouping import GroupKey

    paths = _flat_files(tmp_path)
    rows = pd.DataFrame({"PATH": paths, "TEMP": 20.0, "EXPTIME": 0.5, "FRAMENUM": range(5)})
    bias = np.full((40, 48), 1000.0, np.float32)

    def reference(bias_refs, dark=None):
        return Reference(lambda i, a, b: bias[a:b], dark, "", np.zeros_like(bias), {}, (),
                         bias_refs)

    class Dark:  # a dark that changes the levels but not the pairs (bias only)
        def rows(self, i, a, b):
            return np.full((b - a, 48), 5.0 * (i + 1))

    key = GroupKey("", math.nan, "FLAT", 20.0, 0.5)
    kwargs = dict(norm_method="median", central_fraction=0.5, adc_bits=16)
    quality._PAIRS.clear()
    frames1, pairs1 = quality.measure_frames(
        [quality.SetToMeasure(key, rows, reference(("model-a",)))], (40, 48), **kwargs)
    assert len(pairs1) == 2 and len(quality._PAIRS) == 2

    def fail(*args, **kw):
        raise AssertionError("pair measured again")
    monkeypatch.setattr(quality, "pair_statistics", fail)
    frames2, pairs2 = quality.measure_frames(
        [quality.SetToMeasure(key, rows, reference(("model-a",), Dark()))], (40, 48), **kwargs)
    pd.testing.assert_frame_equal(pairs1, pairs2)
    assert (frames2["LEVEL"] < frames1["LEVEL"]).all()  # the dark is subtracted from levels
    monkeypatch.undo()
    # the same numbers as measured afresh
    quality._PAIRS.clear()
    _, fresh = quality.measure_frames(
        [quality.SetToMeasure(key, rows, reference(("model-a",), Dark()))], (40, 48), **kwargs)
    pd.testing.assert_frame_equal(pairs1, fresh)
    # another bias: measured again
    calls = []
    real = quality.pair_statistics
    monkeypatch.setattr(quality, "pair_statistics", lambda *a, **k: calls.append(1) or real(*a))
    quality.measure_frames([quality.SetToMeasure(key, rows, reference(("model-b",)))],
                           (40, 48), **kwargs)
    assert len(calls) == 2
    quality._PAIRS.clear()
