"""Tests of utils.stack.combine.combine_many: several masters from one read of their frames."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from utils import headers as kw
from utils.errors import InsufficientFramesError
from utils.stack import combine as stacking

SHAPE = (40, 24)
SAT = 65520
#: a calibration set, its two attempts and an unordered overlapping subset
SETS = [list(range(10)), [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [8, 2, 3, 9]]
#: small enough for several blocks in either call, so block edges are exercised
MEMORY = 4 * 10 * SHAPE[1] * 6 * 2


# ------------------------------------------------------------------ helpers
def camera_frames(n=10, seed=3):
    """uint16 frames: multiples of 16 around 1600 ADU, cosmic rays, saturated samples."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        f = np.round(rng.normal(100 + 3 * i, 2.0, SHAPE)) * 16
        hit = rng.random(SHAPE) < 0.01  # cosmic rays
        f[hit] += rng.integers(50, 2000, hit.sum()) * 16
        f[rng.random(SHAPE) < 0.005] = SAT  # scattered saturated samples
        f[3, 5] = SAT                       # saturated in every frame: FLAG_SATURATED
        if i % 3 == 0:
            f[7, 2:6] = SAT                 # in some frames only: FLAG_PARTSAT
        frames.append(np.clip(f, 0, SAT).astype(np.uint16))
    return frames


def write_frames(folder: Path, frames) -> list[Path]:
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"m{i:03d}.fits"
        hdu = fits.PrimaryHDU(frame)
        hdu.header[kw.BUNIT] = "adu"
        hdu.writeto(path)
        paths.append(path)
    return paths


def frame_sub(rows, i, start, stop):
    """Subtraction rows of frame ``rows[i]`` (per-frame bias model stand-in)."""
    return rows[i][start:stop]


def assert_bit_identical(a, b):
    for name in ("data", "noise", "stderr", "count", "flags"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
    cards = lambda h: [(c.keyword, c.value, c.comment) for c in h.cards  # noqa: E731
                       if c.keyword != kw.DATE]
    assert cards(a.header) == cards(b.header)
    pd.testing.assert_frame_equal(a.inputs, b.inputs, check_exact=True)


def level_scales(frames, sets):
    """Per-set flat-like normalisation: each frame divided by its set's mean level."""
    out = []
    for idx in sets:
        level = np.mean([frames[i].astype(np.float64).mean() for i in idx])
        out.append(np.array([1.0 / (level + 7.0 * j) for j, _ in enumerate(idx)]))
    return out


@pytest.fixture(scope="module")
def frames():
    return camera_frames()


@pytest.fixture(scope="module")
def metadata():
    return [{kw.TEMP: 20.0 + 0.5 * i, kw.EXPTIME: 0.1 * (i + 1), "TAG": f"t{i}"}
            for i in range(10)]


# ------------------------------------------------------------------ bit identity
@pytest.mark.parametrize("method", ["sigclip", "median", "mean"])
@pytest.mark.parametrize("kind", ["fits_u16", "float"])
@pytest.mark.parametrize("sub_kind", ["callable", "array", None])
def test_each_master_equals_its_own_combine(tmp_path, frames, metadata, method, kind, sub_kind):
    rng = np.random.default_rng(11)
    if kind == "fits_u16":
        inputs = write_frames(tmp_path, frames)
    else:  # float arrays (the generic read + in-place preparation), with missing samples
        inputs = [f.astype(np.float32) for f in frames]
        for f in inputs:
            f[rng.random(SHAPE) < 0.02] = np.nan
    bias_rows = [rng.normal(50.0 + i, 3.0, SHAPE) for i in range(10)]
    scales = level_scales(frames, SETS)
    scales[3] = None  # a set without scaling among scaled ones
    common = dict(method=method, saturation=SAT, min_accepted=3, memory_limit=MEMORY,
                  workers=2, product="MASTER_TEST")

    def subtract_for(idx):
        if sub_kind == "callable":  # the same callable type in both calls: same SUBTRACT card
            return functools.partial(frame_sub, [bias_rows[i] for i in idx])
        return bias_rows[0] if sub_kind == "array" else None

    many = stacking.combine_many(inputs, SETS, scales=scales, subtract=subtract_for(range(10)),
                                 metadata=metadata, **common)
    assert len(many) == len(SETS)
    for k, idx in enumerate(SETS):
        ref = stacking.combine([inputs[i] for i in idx], scale=scales[k],
                               subtract=subtract_for(idx),
                               metadata=[metadata[i] for i in idx], **common)
        assert_bit_identical(many[k], ref)
        assert many[k].header[kw.NCOMBINE] == len(idx)
        assert list(many[k].inputs[kw.TEMP]) == [metadata[i][kw.TEMP] for i in idx]
    full = many[0]
    # the saturation bookkeeping reached the results
    assert full.flags[3, 5] & stacking.FLAG_SATURATED
    assert full.flags[7, 2] & stacking.FLAG_PARTSAT
    nsat = [int((f >= SAT).sum()) for f in (frames if kind == "fits_u16" else inputs)]
    assert list(full.inputs["NSAT"]) == nsat
    assert list(many[3].inputs["NSAT"]) == [nsat[i] for i in SETS[3]]
    # a frame normalised differently in two sets: the masters differ accordingly
    assert scales[0][0] != scales[1][0]
    np.testing.assert_allclose(many[0].inputs["SCALE"], scales[0])
    if method == "sigclip":
        assert full.header[kw.NREJECT] > 0  # the cosmic rays were clipped


@pytest.mark.skipif(not stacking.HAVE_NUMBA, reason="numba not importable")
def test_numpy_fallback_equals_its_own_combine(frames, monkeypatch):
    """The numpy path (no numba) shares the one block loop: same identity."""
    inputs = [f.astype(np.float32) for f in frames]
    monkeypatch.setattr(stacking, "HAVE_NUMBA", False)
    scales = level_scales(frames, SETS)
    many = stacking.combine_many(inputs, SETS, scales=scales, saturation=SAT,
                                 memory_limit=MEMORY, workers=2)
    for k, idx in enumerate(SETS):
        ref = stacking.combine([inputs[i] for i in idx], scale=scales[k], saturation=SAT,
                               memory_limit=MEMORY, workers=2)
        assert_bit_identical(many[k], ref)


def test_combine_is_the_one_set_case(frames):
    inputs = [f.astype(np.float32) for f in frames]
    (only,) = stacking.combine_many(inputs, [range(10)], memory_limit=MEMORY)
    assert_bit_identical(only, stacking.combine(inputs, memory_limit=MEMORY))


# ------------------------------------------------------------------ one read per block
@pytest.mark.parametrize("direct", [True, False], ids=["u16_bytes", "generic_read"])
def test_every_frame_is_read_once_per_block(tmp_path, frames, monkeypatch, direct):
    paths = write_frames(tmp_path, frames)
    sets = [[0, 1, 2, 3, 4, 5], [0, 1, 2], [2, 1, 0, 5]]  # frames 0-2 in 3 sets; 6-9 in none
    reads, subs = [], []
    lock = threading.Lock()
    orig_read, orig_bytes = stacking._FileSource.read, stacking._FileSource.read_bytes

    def read(self, i, start, stop, out):
        with lock:
            reads.append((i, start))
        return orig_read(self, i, start, stop, out)

    def read_bytes(self, i, start, stop, buf):
        with lock:
            reads.append((i, start))
        return orig_bytes(self, i, start, stop, buf)

    def sub(i, start, stop):
        with lock:
            subs.append((i, start))
        return np.full((stop - start, SHAPE[1]), 3.0)

    monkeypatch.setattr(stacking._FileSource, "read", read)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", read_bytes)
    if not direct:
        monkeypatch.setattr(stacking._FileSource, "unsigned16", property(lambda self: False))
    many = stacking.combine_many(paths, sets, subtract=sub, saturation=SAT,
                                 memory_limit=MEMORY, workers=2)
    starts = {s for _, s in reads}
    assert len(starts) > 2  # several blocks
    expected = {(i, s) for i in range(6) for s in starts}
    assert Counter(reads) == Counter(expected)  # once per (frame, block); unused never
    assert Counter(subs) == Counter(expected)   # the subtraction once too
    # and each master is still the one of its own combine
    for k, idx in enumerate(sets):
        ref = stacking.combine([paths[i] for i in idx], subtract=sub, saturation=SAT)
        np.testing.assert_array_equal(many[k].data, ref.data)
        np.testing.assert_array_equal(many[k].inputs["NSAT"], ref.inputs["NSAT"])


def test_blocks_are_planned_on_all_sample_rows(frames, monkeypatch):
    """The working blocks hold every set's samples: planned on the sum of the set sizes."""
    seen = []
    orig = stacking.plan_blocks

    def spy(n_frames, shape, memory_limit, workers, **kw):
        plan = orig(n_frames, shape, memory_limit, workers, **kw)
        seen.append((n_frames, plan))
        return plan

    monkeypatch.setattr(stacking, "plan_blocks", spy)
    inputs = [f.astype(np.float32) for f in frames]
    stacking.combine_many(inputs, SETS, memory_limit=MEMORY, workers=2)
    ((n_rows, plan),) = seen
    assert n_rows == sum(len(s) for s in SETS)
    assert plan.workers * plan.block_bytes <= MEMORY


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("sets, scales, match", [
    ([], None, "sets is empty"),
    ([[0, 1], []], None, r"sets\[1\] is empty"),
    ([[0, 10]], None, r"sets\[0\] has index 10 out of range for 10 inputs"),
    ([[0, -1]], None, r"sets\[0\] has index -1 out of range"),
    ([[0, 1], [2, 3, 2]], None, r"sets\[1\] lists input 2 more than once"),
    ([[0.0, 1.0]], None, r"sets\[0\] must hold integer indices"),
    ([[0, 1], [2, 3]], [None], "scales has 1 entries for 2 sets"),
    ([[0, 1], [2, 3]], [None, [1.0, 2.0, 3.0]], r"scales\[1\] has 3 factors for the 2 frames"),
])
def test_invalid_sets_and_scales_are_refused(frames, sets, scales, match):
    inputs = [f.astype(np.float32) for f in frames]
    with pytest.raises(ValueError, match=match):
        stacking.combine_many(inputs, sets, scales=scales)


def test_other_arguments_are_checked_as_in_combine(frames):
    inputs = [f.astype(np.float32) for f in frames]
    with pytest.raises(InsufficientFramesError):
        stacking.combine_many([], [[0]])
    with pytest.raises(ValueError, match="metadata has 3 entries for 10 inputs"):
        stacking.combine_many(inputs, [[0, 1]], metadata=[{}] * 3)
    with pytest.raises(ValueError, match="method"):
        stacking.combine_many(inputs, [[0, 1]], method="mode")
    with pytest.raises(ValueError, match="scale has 2 factors for 10 inputs"):
        stacking.combine(inputs, scale=[1.0, 2.0])


def test_master_result_still_importable_from_combine():
    from utils.stack.combine import MasterResult
    from utils.stack.master_result import MasterResult as Moved

    assert MasterResult is Moved
