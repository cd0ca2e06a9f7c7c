"""Raw frames and camera configuration (utils.io.raw)."""

from __future__ import annotations

import numpy as np
import pytest

from utils.errors import FrameError, RawSizeError, UnreadableFrameError
from utils.io.raw import (
    DEFAULT_BIT_DEPTH,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    CameraConfig,
    parse_config_text,
    read_camera_config,
    read_raw,
)


def test_parse_config_both_separators_comments_and_blanks():
    text = ("# camera configuration\n"
            "WIDTH: 64\n"
            "height = 48\n"
            "\n"
            "; another comment\n"
            "// and another\n"
            "SensorModel=SIM: v2\n"        # first separator wins, the rest is the value
            "TIME = 12:30\n"
            "garbage line\n")
    entries, problems = parse_config_text(text)
    assert entries == {"WIDTH": "64", "height": "48", "SensorModel": "SIM: v2", "TIME": "12:30"}
    assert problems == ["line 9: no '=' or ':' in 'garbage line'"]


@pytest.mark.parametrize("name, text", [
    ("configFile.txt", "WIDTH: 40\nHEIGHT: 24\nBIT_DEPTH: 16\n"),
    ("configFile.txt", "width=40\nheight=24\nbit_depth=16\n"),
    ("configFile.txt", "Width = 40\nHeight = 24\nBit Depth = 16\n"),
    ("config.txt", "IMAGE_WIDTH: 40\nImageHeight: 24\nbits: 16\n"),
])
def test_read_camera_config_any_case_and_style(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    config = read_camera_config(tmp_path)
    assert (config.width, config.height, config.bit_depth) == (40, 24, 16)
    assert config.path == tmp_path / name
    assert config.problems == ()
    assert config.frame_bytes == 40 * 24 * 2
    assert config.byteorder == "<" and config.dtype_name == "uint16le"


def test_config_file_preferred_over_config_txt(tmp_path):
    (tmp_path / "configFile.txt").write_text("WIDTH=8\nHEIGHT=4\nBIT_DEPTH=16\n")
    (tmp_path / "config.txt").write_text("WIDTH=99\nHEIGHT=99\nBIT_DEPTH=16\n")
    config = read_camera_config(tmp_path)
    assert (config.width, config.height) == (8, 4)
    assert config.path.name == "configFile.txt"


def test_missing_config_gives_defaults_and_a_problem(tmp_path):
    config = read_camera_config(tmp_path)
    assert (config.width, config.height, config.bit_depth) == (DEFAULT_WIDTH, DEFAULT_HEIGHT,
                                                               DEFAULT_BIT_DEPTH)
    assert config.path is None
    assert len(config.problems) == 1
    assert "configFile.txt" in config.problems[0] and "2048" in config.problems[0]


def test_bad_geometry_values_fall_back_with_problems(tmp_path):
    (tmp_path / "configFile.txt").write_text("WIDTH=forty\nHEIGHT=-3\n")
    config = read_camera_config(tmp_path)
    assert (config.width, config.height, config.bit_depth) == (2048, 2048, 16)
    joined = " | ".join(config.problems)
    assert "WIDTH='forty' is not a whole number" in joined
    assert "HEIGHT='-3' is out of range" in joined
    assert "no BIT_DEPTH key" in joined


@pytest.mark.parametrize("text, problem", [
    ("WIDTH=64.7\nHEIGHT=2\nBIT_DEPTH=16\n", "WIDTH='64.7' is not a whole number"),
    ("WIDTH=inf\nHEIGHT=2\nBIT_DEPTH=16\n", "WIDTH='inf' is not a whole number"),
    ("WIDTH=4\nHEIGHT=2\nbit_depth=32\n", "bit_depth='32' is out of range (1..16)"),
    ("Width=4\nHEIGHT=2\nBIT_DEPTH=16\nWidth=8\n", "Width given again ('4' on line 1, now '8')"),
])
def test_config_values_never_silently_wrong(tmp_path, text, problem):
    """A fractional, infinite or out-of-range value is said (by the file's own key), not
    truncated; a key given twice is said."""
    (tmp_path / "configFile.txt").write_text(text)
    config = read_camera_config(tmp_path)
    assert any(problem in p for p in config.problems), config.problems


@pytest.mark.parametrize("word, order", [("big", ">"), ("BE", ">"), ("little", "<"), ("LE", "<")])
def test_byte_order_key(tmp_path, word, order):
    (tmp_path / "configFile.txt").write_text(
        f"WIDTH=4\nHEIGHT=2\nBIT_DEPTH=16\nBYTE_ORDER={word}\n")
    assert read_camera_config(tmp_path).byteorder == order


def test_byte_order_default_passed_through_and_unknown_word(tmp_path):
    (tmp_path / "configFile.txt").write_text("WIDTH=4\nHEIGHT=2\nBIT_DEPTH=16\n")
    assert read_camera_config(tmp_path, byteorder=">").byteorder == ">"
    (tmp_path / "configFile.txt").write_text("WIDTH=4\nHEIGHT=2\nBIT_DEPTH=16\nENDIANNESS=middle\n")
    config = read_camera_config(tmp_path, byteorder=">")
    assert config.byteorder == ">"                  # the user's default, not a silent '<'
    assert any("ENDIANNESS='middle' not understood" in p for p in config.problems)


def test_read_raw_little_endian_values_and_shape(tmp_path):
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 4096, (5, 7)) * 16).astype(np.uint16)
    path = tmp_path / "f0.raw"
    path.write_bytes(data.astype("<u2").tobytes())
    out = read_raw(path, CameraConfig(width=7, height=5))
    assert out.shape == (5, 7)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_read_raw_big_endian_option(tmp_path):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4) * 4097
    path = tmp_path / "f0.raw"
    path.write_bytes(data.astype(">u2").tobytes())
    big = CameraConfig(width=4, height=3, byteorder=">")
    assert big.dtype_name == "uint16be"
    out = read_raw(path, big)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, data)
    # read as little-endian the same bytes are byte-swapped: the option matters
    assert not np.array_equal(read_raw(path, CameraConfig(width=4, height=3)), data)


def test_read_raw_8_bit(tmp_path):
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "f.raw"
    path.write_bytes(data.tobytes())
    config = CameraConfig(width=3, height=2, bit_depth=8)
    assert config.frame_bytes == 6 and config.dtype_name == "uint8"
    np.testing.assert_array_equal(read_raw(path, config), data)


@pytest.mark.parametrize("size", [0, 7 * 5 * 2 - 1, 7 * 5 * 2 + 2, 7 * 5])
def test_read_raw_wrong_size_raises(tmp_path, size):
    path = tmp_path / "short.raw"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(RawSizeError) as info:
        read_raw(path, CameraConfig(width=7, height=5))
    assert isinstance(info.value, FrameError)
    assert info.value.path == str(path)
    assert f"size {size} bytes, expected 70" in info.value.reason
    assert path.stat().st_size == size          # never padded or truncated


def test_read_raw_missing_file(tmp_path):
    with pytest.raises(UnreadableFrameError):
        read_raw(tmp_path / "nope.raw", CameraConfig(width=2, height=2))
