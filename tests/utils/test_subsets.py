"""combine_subsets: the masters of a set and of disjoint subsets of it from one read of the
frames are the masters combine() makes of each alone, bit for bit (float and 16-bit key
paths, median and sigma clipping, bias model (+ dark) subtraction and scales), and a frame
unreadable while stacked fails only the masters that contain it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from utils.errors import UnreadableFrameError
from utils.stack import combine as stacking
from utils.stack import subsets
from utils.stack.blockops import LinearRows

SHAPE = (40, 48)


def _frames(tmp_path, n, seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        image = np.round(rng.normal(3000.0 + 20 * k, 30.0, shape) / 16.0) * 16.0
        image[rng.random(shape) < 0.003] = 65535.0  # saturated samples
        image[rng.random(shape) < 0.003] = 9000.0   # outliers to clip
        path = tmp_path / f"f{seed}_{k}.fits"
        fits.PrimaryHDU(image.astype(np.uint16)).writeto(path)
        paths.append(str(path))
    return paths


def _same(a, b):
    for name in ("data", "noise", "stderr", "count", "flags"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert [c.image for c in a.header.cards if c.keyword != "DATE"] == \
        [c.image for c in b.header.cards if c.keyword != "DATE"]
    assert a.inputs.equals(b.inputs)


def _requests(paths, parts, method, *, model=None, coef=None, scale=None, offset=None):
    base = dict(method=method, saturation=65520.0, workers=2, memory_limit=2e5,
                min_accepted=3)
    out = []
    for k, index in enumerate(parts):
        r = dict(base, inputs=[paths[i] for i in index], quantum=16.0 + k, min_scale=8.0 + k,
                 metadata=[{"TEMP": float(i), "EXPTIME": 1.0} for i in index],
                 product=f"MASTER_{k}")
        if model is not None:
            rows = LinearRows(model[0], model[1], [coef[i] for i in index])
            r["subtract"] = rows if offset is None else rows.plus(offset)
        if scale is not None:
            r["scale"] = [scale[i] for i in index]
        out.append(r)
    return out


def _check(requests, pool=None):
    own = [stacking.combine(**r) for r in requests]
    shared = subsets.combine_subsets(requests, executor=pool)
    assert shared is not None
    for a, b in zip(own, [s.finish() for s in shared], strict=True):
        _same(a, b)
    return own


@pytest.mark.parametrize("method", ["sigclip", "median"])
@pytest.mark.parametrize("terms", ["none", "model", "model+dark+scale"])
def test_float_path_subsets_equal_separate_combines(tmp_path, monkeypatch, method, terms):
    monkeypatch.setattr(subsets, "PIECE_BYTES", 5 * 48 * 4 * 3)  # 3-row pieces: several a block
    paths = _frames(tmp_path, 10, 1)
    rng = np.random.default_rng(5)
    kw = {}
    if terms != "none":
        a = rng.normal(2990.0, 5.0, SHAPE).astype(np.float32)
        b = rng.normal(1.5, 0.2, SHAPE).astype(np.float32)
        kw = dict(model=(a, b), coef=[np.float32(t) for t in rng.normal(0.0, 0.3, 10)])
    if terms == "model+dark+scale":
        kw.update(offset=rng.normal(4.0, 1.0, SHAPE).astype(np.float32),
                  scale=list(1.0 / rng.uniform(900.0, 1100.0, 10)))
    # the attempts of a set (contiguous) and interleaved subsets, in a shared pool and not
    for parts, pool in (([range(10), range(5), range(5, 10)], None),
                        ([range(10), [0, 2, 4, 6, 8], [1, 3, 9]], 2)):
        if pool:
            with ThreadPoolExecutor(max_workers=2) as ex:
                own = _check(_requests(paths, parts, method, **kw), ex)
        else:
            own = _check(_requests(paths, parts, method, **kw))
        assert (own[0].flags & stacking.FLAG_PARTSAT).any()


@pytest.mark.parametrize("method", ["sigclip", "median"])
def test_key_path_subsets_equal_separate_combines(tmp_path, monkeypatch, method):
    monkeypatch.setattr(subsets, "PIECE_BYTES", 12 * 48 * 4 * 2)
    paths = _frames(tmp_path, 26, 2)
    # the whole set and a 12-frame subset by the keys, a 5-frame subset by float samples
    # made from the keys; two frames in no subset
    parts = [range(26), range(12), range(13, 18)]
    requests = _requests(paths, parts, method)
    shared = subsets._Shared(stacking._FileSource(requests[0]["inputs"]), requests,
                             [np.arange(26), np.arange(12), np.arange(13, 18)], None)
    assert shared.keyed == [True, True, False]
    with ThreadPoolExecutor(max_workers=2) as ex:
        _check(requests, ex)
    # and against the float path of each (the keys change no number)
    monkeypatch.setattr(stacking, "KEY_SORT", False)
    for a, s in zip([stacking.combine(**r) for r in requests],
                    subsets.combine_subsets(requests), strict=True):
        _same(a, s.finish())


def test_unreadable_frame_fails_only_the_masters_holding_it(tmp_path, monkeypatch):
    paths = _frames(tmp_path, 10, 3)
    requests = _requests(paths, [range(10), range(5), range(5, 10)], "sigclip")
    alone = stacking.combine(**requests[1])
    read_bytes = stacking._FileSource.read_bytes

    def failing(self, i, start, stop, buf):
        if self.paths[i] == paths[7] and start == 0:
            raise UnreadableFrameError(self.paths[i], f"short read of rows {start}:{stop}")
        return read_bytes(self, i, start, stop, buf)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", failing)
    with ThreadPoolExecutor(max_workers=2) as ex:
        whole, first, second = subsets.combine_subsets(requests, executor=ex)
        for master in (whole, second):
            with pytest.raises(UnreadableFrameError, match=f"{paths[7]}.*short read of rows 0:"):
                master.finish()
        _same(first.finish(), alone)


def test_sets_prepared_differently_are_not_shared(tmp_path):
    paths = _frames(tmp_path, 6, 4)
    a = np.full(SHAPE, 2990.0, np.float32)
    b = np.full(SHAPE, 1.0, np.float32)
    coef = [np.float32(c) for c in np.linspace(-1.0, 1.0, 6)]
    requests = _requests(paths, [range(6), range(3)], "sigclip", model=(a, b), coef=coef)
    assert subsets.combine_subsets(requests) is not None
    other = dict(requests[1], subtract=LinearRows(a, b, [c + np.float32(0.5) for c in coef[:3]]))
    assert subsets.combine_subsets([requests[0], other]) is None  # another temperature
    scaled = _requests(paths, [range(6), range(3)], "sigclip", scale=[1.0] * 6)
    scaled[1]["scale"] = [1.0, 1.0, 0.5]
    assert subsets.combine_subsets(scaled) is None  # flats normalised by another level
    overlapping = _requests(paths, [range(6), range(3), range(2, 5)], "sigclip")
    assert subsets.combine_subsets(overlapping) is None
    assert subsets.combine_subsets(_requests(paths, [range(6), [3, 1]], "sigclip")) is None
    sigma = _requests(paths, [range(6), range(3)], "sigclip")
    sigma[1]["sigma_low"] = 3.0
    assert subsets.combine_subsets(sigma) is None
