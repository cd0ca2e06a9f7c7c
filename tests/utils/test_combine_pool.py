"""combine(executor=): the blocks of successive masters in one shared thread pool give the
bits of each combine in its own pool, and a block's error surfaces where the master is
finished, after every block of that master settled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from utils.errors import UnreadableFrameError
from utils.stack import combine as stacking


def _frames(tmp_path, n, seed, shape=(64, 48)):
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        image = np.round(rng.normal(3000.0, 30.0, shape) / 16.0) * 16.0
        image[rng.random(shape) < 0.002] = 65535.0  # saturated samples
        path = tmp_path / f"s{seed}_{k}.fits"
        fits.PrimaryHDU(image.astype(np.uint16)).writeto(path)
        paths.append(str(path))
    return paths


_KW = dict(saturation=65520.0, quantum=16.0, min_scale=8.0, workers=2, memory_limit=3e5)


def _same(a, b):
    for name in ("data", "noise", "stderr", "count", "flags"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert [c.image for c in a.header.cards if c.keyword != "DATE"] == \
        [c.image for c in b.header.cards if c.keyword != "DATE"]
    assert a.inputs.equals(b.inputs)


def test_shared_pool_gives_the_bits_of_own_pools(tmp_path):
    sets = [_frames(tmp_path, n, seed) for seed, n in enumerate((10, 5, 5, 7))]
    own = [stacking.combine(paths, **_KW) for paths in sets]
    with ThreadPoolExecutor(max_workers=2) as pool:
        # every master queued before the first is finished, as the masters stage does
        deferred = [stacking.combine(paths, deferred=True, executor=pool, **_KW)
                    for paths in sets]
        finished = [d.finish() for d in deferred]
        direct = stacking.combine(sets[0], executor=pool, **_KW)
    for a, b in zip(own, finished, strict=True):
        _same(a, b)
    _same(own[0], direct)
    assert (own[0].flags & stacking.FLAG_PARTSAT).any()


def test_memory_limited_plan_keeps_its_own_smaller_pool(tmp_path, monkeypatch):
    paths = _frames(tmp_path, 6, 9)
    plan = stacking.plan_blocks(6, (64, 48), 2e3, 2)
    assert plan.workers < 2  # the budget fits one thread only
    submitted = []

    class Pool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            submitted.append(args)
            return super().submit(*args, **kwargs)
    with Pool(max_workers=2) as pool:
        result = stacking.combine(paths, executor=pool, **{**_KW, "memory_limit": 2e3})
    assert not submitted
    _same(result, stacking.combine(paths, **{**_KW, "memory_limit": 2e3}))


def test_block_error_raised_by_finish_after_every_block_settled(tmp_path, monkeypatch):
    paths = _frames(tmp_path, 5, 11)
    read_bytes, reads_after = stacking._FileSource.read_bytes, []

    def failing(self, i, start, stop, buf):
        if self.fds is None:  # the inputs were closed while blocks still read them
            reads_after.append(start)
        if i == 2 and start == 0:
            raise UnreadableFrameError(self.paths[i], "short read of rows 0:8")
        return read_bytes(self, i, start, stop, buf)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", failing)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stacked = stacking.combine(paths, deferred=True, executor=pool, **_KW)
        with pytest.raises(UnreadableFrameError, match="short read"):
            stacked.finish()
        # the pool is still usable by the next master
        monkeypatch.setattr(stacking._FileSource, "read_bytes", read_bytes)
        _same(stacking.combine(paths, executor=pool, **_KW), stacking.combine(paths, **_KW))
    assert not reads_after
