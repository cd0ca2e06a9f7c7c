"""The converter's encoding kernel and buffered raw reads equal their plain references."""

from __future__ import annotations

import numpy as np
import pytest

from utils.errors import RawSizeError, UnreadableFrameError
from utils.io.conversion import _encode_numpy, _Scratch, encode_frame
from utils.io.raw import CameraConfig, read_raw


def _frames():
    rng = np.random.default_rng(35)
    yield rng.integers(0, 1 << 16, (64, 96), dtype=np.uint16)            # every value
    yield np.full((32, 33), 65520, dtype=np.uint16)                        # one value only
    yield rng.integers(1000, 1004, (57, 31), dtype=np.uint16)              # few, repeated
    yield np.repeat(rng.integers(0, 1 << 12, 300, dtype=np.uint16), 7).reshape(35, 60)  # runs
    yield np.array([[0, 1, 32767, 32768, 65535]], dtype=np.uint16)         # edges, odd size
    yield rng.integers(0, 256, (9, 11), dtype=np.uint8)                    # 8-bit samples


@pytest.mark.parametrize("index", range(6))
def test_encode_frame_equals_numpy_reference(index):
    data = list(_frames())[index]
    start = np.random.default_rng(index).integers(0, 5, 1 << 16).astype(np.int64)
    ref_hist = start.copy()
    ref_payload, ref_bits = _encode_numpy(data.astype(np.uint16), ref_hist)
    for out in (None, np.full(data.size, 7, dtype=np.uint16)):
        hist = start.copy()   # counts are added to what the histogram holds
        payload, bits = encode_frame(data, hist, out)
        assert payload.dtype == np.dtype(">u2") and payload.shape == data.shape
        assert payload.tobytes() == ref_payload.tobytes()
        assert bits == ref_bits
        np.testing.assert_array_equal(hist, ref_hist)
        if out is not None:
            assert np.shares_memory(payload, out)


def test_encode_frame_rejects_a_wrong_output_buffer():
    data = np.zeros((4, 5), dtype=np.uint16)
    strided = np.zeros((5, 8), np.uint16)[:, ::2]
    for out in (np.zeros(19, np.uint16), np.zeros(20, np.int16), strided):
        with pytest.raises(ValueError):
            encode_frame(data, None, out)


@pytest.mark.parametrize("order,bits", [("<", 16), (">", 16), ("<", 8)])
def test_read_raw_into_a_buffer_equals_a_fresh_read(tmp_path, order, bits):
    config = CameraConfig(width=7, height=5, bit_depth=bits, byteorder=order)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1 << bits, (5, 7)).astype(config.dtype)
    path = tmp_path / "f.raw"
    data.tofile(path)
    buffer = np.full(config.frame_bytes, 255, dtype=np.uint8)
    out = read_raw(path, config, buffer)
    np.testing.assert_array_equal(out, read_raw(path, config))
    assert out.dtype.isnative and out.shape == (5, 7)
    if config.dtype.isnative:
        assert np.shares_memory(out, buffer)
    with pytest.raises(ValueError):
        read_raw(path, config, np.zeros(config.frame_bytes + 1, np.uint8))
    path.write_bytes(b"\0" * 3)
    with pytest.raises(RawSizeError):
        read_raw(path, config, buffer)
    with pytest.raises(UnreadableFrameError):
        read_raw(tmp_path / "missing.raw", config, buffer)


def test_scratch_buffers_are_reused_and_the_histogram_zeroed():
    scratch = _Scratch()
    config = CameraConfig(width=4, height=3)
    with scratch.buffers(config) as (raw, encoded, hist):
        hist[5] = 9
        first = raw
        assert raw.nbytes == config.frame_bytes and encoded.size == 12
    with scratch.buffers(config) as (raw, encoded, hist):
        assert raw is first and not hist.any()
        with scratch.buffers(config) as (raw2, _, _):   # a second thread gets its own
            assert raw2 is not raw
    with scratch.buffers(CameraConfig(width=5, height=3)) as (raw, _, _):
        assert raw.nbytes == 30
