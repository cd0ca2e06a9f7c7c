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


def _parts_reference(self, pairs, leave):
    """``CrossAccumulator._parts`` before its per-stripe sums and per-pair terms were shared
    between the estimates."""
    keep = np.ones(self.n.size, bool)
    if leave is not None:
        keep[leave] = False
    n = self.n[keep].sum()
    s1 = self.s1[keep].sum(0)
    s2 = self.s2[keep].sum(0)
    t2 = self.t2[keep].sum(0)
    cnt = self.colcnt[keep].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        colmean = self.colsum[keep].sum(0) / cnt
    cols = cnt > 0
    row_ok = np.isfinite(self.rowmean).all(0)
    if leave is not None:
        row_ok &= (np.arange(self.shape[0]) // self.rows_per) != leave
    mu = s1 / n
    h_eff, w_eff = n / max(cols.sum(), 1), n / max(row_ok.sum(), 1)
    acc = {"s2": 0.0, "col": 0.0, "row": 0.0, "mean": 0.0}
    for k, j in pairs:
        cov = (s2[k, j] - n * mu[k] * mu[j]) / (n - 1)
        if k == j:
            cov -= t2[k] / n * self.noise_factors[k] ** 2
        ck, cj = colmean[k, cols], colmean[j, cols]
        rk, rj = self.rowmean[k, row_ok], self.rowmean[j, row_ok]
        acc["s2"] += cov
        acc["col"] += float(np.mean((ck - ck.mean()) * (cj - cj.mean()))) * ck.size / \
            max(ck.size - 1, 1)
        acc["row"] += float(np.mean((rk - rk.mean()) * (rj - rj.mean()))) * rk.size / \
            max(rk.size - 1, 1)
        acc["mean"] += math.sqrt(abs(mu[k] * mu[j]))
    m = {key: v / len(pairs) for key, v in acc.items()}
    pix = (m["s2"] - m["col"] - m["row"]) / (1.0 - 1.0 / h_eff - 1.0 / w_eff)
    col = m["col"] - pix / h_eff
    row = m["row"] - pix / w_eff
    return {"pix": pix, "col": col, "row": row, "total": pix + col + row,
            "mean": m["mean"], "npix": n}


@pytest.mark.parametrize("temps", [[20.0], [20.0, 20.0], [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]])
def test_prnu_cross_estimates_bit_for_bit_the_old_sums(temps, monkeypatch):
    from flat_pipeline.prnu import CrossAccumulator, cross_estimates

    rng = np.random.default_rng(len(temps))
    k, h, w = len(temps), 70, 90
    common = 1 + 0.01 * rng.standard_normal((h, w)) + 0.003 * rng.standard_normal(w)
    data = (common + 0.002 * rng.standard_normal((k, h, w))).astype(np.float32)
    err = np.full((k, h, w), 0.002, np.float32)
    valid = rng.random((h, w)) > 0.01
    valid[5] = False  # a row without valid pixels

    def estimates():
        acc = CrossAccumulator([f"m{i}" for i in range(k)], (h, w),
                               noise_factors=[1.05] * k)
        for start in range(0, h, 32):
            stop = min(h, start + 32)
            acc.add(start, data[:, start:stop], err[:, start:stop], valid[start:stop])
        return cross_estimates(acc, temps)

    got = estimates()
    monkeypatch.setattr(CrossAccumulator, "_parts", _parts_reference)
    want = estimates()
    assert got == want


def test_illumination_clustered_covariance_bit_for_bit_add_at():
    """The cluster sums by bincount are np.add.at's (same additions in the same order)."""
    from utils.models import illumination

    rng = np.random.default_rng(11)
    n, k = 4000, 6
    xs = rng.integers(0, 64, n) * 4 + 1.5
    ys = rng.integers(0, 48, n) * 4 + 1.5
    jac = rng.standard_normal((n, k))
    res = 0.01 * rng.standard_normal(n)
    bread = np.linalg.inv(jac.T @ jac)
    s2 = float(res @ res) / (n - k)

    def reference(jac, res, xs, ys, bread, s2):
        score = jac * res[:, None]

        def meat(labels):
            _, inverse = np.unique(labels, return_inverse=True)
            g = np.zeros((inverse.max() + 1, jac.shape[1]))
            np.add.at(g, inverse, score)
            n_g = g.shape[0]
            return g.T @ g * (n_g / max(n_g - 1, 1))
        m = res.size
        middle = meat(np.round(xs, 3)) + meat(np.round(ys, 3)) - score.T @ score * (m / (m - 1))
        clustered = bread @ middle @ bread
        iid = s2 * bread
        if np.any(np.linalg.eigvalsh(0.5 * (clustered + clustered.T)) < 0):
            return iid
        scale = np.sqrt(np.maximum(np.diag(clustered), np.diag(iid)) / np.diag(clustered))
        return clustered * np.outer(scale, scale)

    got = illumination._clustered_covariance(jac, res, xs, ys, bread, s2)
    np.testing.assert_array_equal(got, reference(jac, res, xs, ys, bread, s2))


@pytest.mark.parametrize("rows", [7, 8, 300, 1024, 1025])
def test_column_nanmedian_bit_for_bit_numpy(rows):
    import warnings

    from flat_pipeline.prnu import column_nanmedian

    rng = np.random.default_rng(rows)
    image = (1 + 0.01 * rng.standard_normal((rows, 60))).astype(np.float32)
    image[rng.random(image.shape) < 0.1] = np.nan
    image[:, 3] = np.nan          # a column without values
    image[: rows // 2, 4] = np.nan
    image[0, 5] = np.inf          # numpy keeps infinities in a median
    image[1, 6] = -np.inf
    image[:, 7] = 0.5             # ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(image, axis=0)
    got = column_nanmedian(image)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_master_reader_reads_uncert_only_without_a_noise_line(tmp_path, monkeypatch):
    """MasterReader.read: the same rows and errors, UNCERT read only when the header has no
    noise line (then it is the error)."""
    from astropy.io import fits

    from flat_pipeline import flat_model

    rng = np.random.default_rng(21)
    data = (1 + 0.01 * rng.standard_normal((30, 40))).astype(np.float32)
    uncert = np.full((30, 40), 0.003, np.float32)
    ncomb = np.full((30, 40), 10.0, np.float32)
    for line in (True, False):
        path = tmp_path / f"m{line}.fits"
        head = fits.Header()
        if line:
            head["NOISEA"], head["NOISEB"] = 1e-5, 2e-5
        fits.HDUList([fits.PrimaryHDU(data, head), fits.ImageHDU(uncert, name="UNCERT"),
                      fits.ImageHDU(ncomb, name="NCOMB")]).writeto(path)
        reader = flat_model.MasterReader(path)
        read = []
        real = reader.image
        monkeypatch.setattr(reader, "image", lambda name, *a: read.append(name) or real(name, *a))
        rows, err = reader.read(5, 25)
        np.testing.assert_array_equal(rows, data[5:25])
        if line:
            want = np.sqrt(np.maximum(np.float32(1e-5) + np.float32(2e-5) * data[5:25], 0)
                           / ncomb[5:25]).astype(np.float32)
            assert "UNCERT" not in read
        else:
            want = uncert[5:25]
            assert "UNCERT" in read
        np.testing.assert_array_equal(err, want)


def test_reference_errors_made_when_first_used_are_the_eager_ones(tmp_path, monkeypatch):
    """A set's bias + dark error map is made when first asked for (the frame-QC pass needs
    none): the same bytes as quadrature_sum(bias error, dark-model error) made at once, the
    dark-model error evaluated once per set, and the references and their rows unchanged."""
    import pandas as pd

    from flat_pipeline.reduction import DarkSource, reference_for_set
    from tests.flat_pipeline.test_flat_models import _write_dark_models
    from utils.models.dark_model import DarkSignalModel
    from utils.stack.grouping import GroupKey
    from utils.stack.master import quadrature_sum

    _, _, path = _write_dark_models(tmp_path)
    model = DarkSignalModel.read(path)
    calls = []
    original = DarkSignalModel.signal_err
    monkeypatch.setattr(DarkSignalModel, "signal_err",
                        lambda self, t, x: calls.append((t, x)) or original(self, t, x))
    rng = np.random.default_rng(0)
    bias = rng.normal(1000, 5, model.shape).astype(np.float32)
    stderr = np.abs(rng.normal(0, 0.3, model.shape)).astype(np.float32)

    class Bias:
        tolerance = 2.0

        def for_set(self, rows, temperature):
            return bias, stderr, {"SUBTRACT": ("bias", "")}, ["bias.fits"]

    darks = DarkSource("model", "dark model", model=model)
    rows = pd.DataFrame({"TEMP": [19.9, 20.3, 20.1], "EXPTIME": [0.5, 0.5, 0.5]})
    key = GroupKey("", math.nan, "FLAT", 20.0, 0.5)
    ref, why = reference_for_set(rows, key, Bias(), darks)
    assert why == "" and calls == []
    sub = ref.subtract(1, 0, model.shape[0])
    err = ref.err
    assert len(calls) == 1 and ref.err is err
    want = quadrature_sum(stderr, original(model, float(np.mean(rows["TEMP"])), 0.5))
    assert err.dtype == want.dtype and err.tobytes() == want.tobytes()
    again, _ = reference_for_set(rows, key, Bias(), darks)  # the same set again (masters step)
    assert again.err.tobytes() == want.tobytes() and len(calls) == 1
    assert again.subtract(1, 0, model.shape[0]).tobytes() == sub.tobytes()
    assert again.refs == ref.refs and again.cards == ref.cards
