"""Values parsed from file and folder names (utils.io.tokens)."""

from __future__ import annotations

import math

import pytest

from utils.io.tokens import (
    file_exposure,
    file_frame_number,
    file_temperature,
    folder_dose,
    folder_exposure,
    folder_temperature,
    number_text,
    path_values,
    value_error_text,
)


@pytest.mark.parametrize("name, expected", [
    ("T-5", -5.0), ("T12.5", 12.5), ("T0", 0.0), ("t20", 20.0), ("T25C", 25.0), ("T-10degC", -10.0),
])
def test_folder_temperature_whole_token(name, expected):
    assert folder_temperature(name) == expected


@pytest.mark.parametrize("name", ["attempt0", "pytest-3", "data9s", "Test", "T20Frames", "xT5",
                                  "TestSection2", "20Frames", ""])
def test_folder_temperature_rejects_partial_tokens(name):
    assert math.isnan(folder_temperature(name))


@pytest.mark.parametrize("name, expected", [
    ("0.5s", 0.5), ("2s", 2.0), ("exp_1e-3s", 1e-3), ("10sec", 10.0), ("1.5 s", 1.5),
])
def test_folder_exposure_whole_token(name, expected):
    assert folder_exposure(name) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["data9s", "attempt0", "pytest-3", "20Frames", "-1s", "s",
                                  "ContinuousFrames"])
def test_folder_exposure_rejects(name):
    assert math.isnan(folder_exposure(name))


@pytest.mark.parametrize("name, expected", [("10kRads", 10.0), ("2.5kR", 2.5), ("1kRad", 1.0),
                                            ("20krads", 20.0)])
def test_folder_dose(name, expected):
    assert folder_dose(name) == expected


@pytest.mark.parametrize("name", ["10Rads", "kRads", "Irradiation", "10kRadsX"])
def test_folder_dose_rejects(name):
    assert math.isnan(folder_dose(name))


def test_path_values_only_below_section_root():
    # T5, data9s, 10kRads and pytest-3 are above the root: never parsed
    root = "/tmp/pytest-3/T5/data9s/10kRads/TestSection2"
    values = path_values(f"{root}/20Frames/attempt0/frames/f0.raw", root)
    assert math.isnan(values.temperature)
    assert math.isnan(values.exposure)
    assert math.isnan(values.dose)


def test_path_values_innermost_wins():
    root = "/data/TestSection2"
    values = path_values(f"{root}/20Frames/T20/T0/0.5s/attempt0/frames/DarkT0.raw", root)
    assert values.temperature == 0.0
    assert values.exposure == 0.5
    swapped = path_values(f"{root}/ContinuousFrames/2s/T25/attempt1/frames/x.raw", root)
    assert (swapped.temperature, swapped.exposure) == (25.0, 2.0)
    nested = path_values(f"{root}/T30/1s/T-5/4s/attempt0", root)  # a folder, no file suffix
    assert (nested.temperature, nested.exposure) == (-5.0, 4.0)


def test_path_values_dose_and_attempt_folders():
    root = "/c/Irradiation"
    values = path_values(f"{root}/5kRads/Darks/T20/1s/attempt0/frames/f.raw", root)
    assert (values.dose, values.temperature, values.exposure) == (5.0, 20.0, 1.0)
    # 'attempt0' right below the root is not 0 degC
    assert math.isnan(path_values(f"{root}/attempt0/frames/f.raw", root).temperature)


def test_path_values_outside_root_gives_nothing():
    values = path_values("/elsewhere/T5/1s/f.raw", "/data/TestSection1")
    assert math.isnan(values.temperature) and math.isnan(values.exposure)


@pytest.mark.parametrize("name, temp, exp, frame", [
    ("BiasT-10_exp1.2e-05sAt0f3.raw", -10.0, 1.2e-05, 3),
    ("DarkT0_exp0.5sAt1f12.raw", 0.0, 0.5, 12),
    ("FlatT12.5_exp0.1sAt0f0.raw", 12.5, 0.1, 0),
    ("dark_exp_2s_frame7.bin", math.nan, 2.0, 7),
    ("image.raw", math.nan, math.nan, None),
])
def test_file_tokens(name, temp, exp, frame):
    got_t, got_e = file_temperature(name), file_exposure(name)
    assert (math.isnan(got_t) and math.isnan(temp)) or got_t == temp
    assert (math.isnan(got_e) and math.isnan(exp)) or got_e == pytest.approx(exp)
    assert file_frame_number(name) == frame


def test_file_frame_number_needs_a_word_boundary():
    # 'f' inside a word ('Buf3', 'Half2') is not a frame number
    assert file_frame_number("Buf3.raw") is None
    assert file_frame_number("Half2.raw") is None


@pytest.mark.parametrize("value, spec, expected", [
    (-0.03, ".1f", "0.0"), (-0.0, ".1f", "0.0"), (-0.0, "g", "0"), (-0.04, "g", "-0.04"),
    (-5.0, ".1f", "-5.0"), (24.96, ".1f", "25.0"), (0.0, "g", "0"), (math.nan, ".1f", "nan"),
])
def test_number_text_has_no_negative_zero(value, spec, expected):
    """A temperature label rounding to zero prints 0 (``T0.0C``), never -0."""
    assert number_text(value, spec) == expected


@pytest.mark.parametrize("value, error, unit, expected", [
    (0.009468982, 0.020147, "", "0.009 +- 0.020"),          # read-noise slope legend
    (3355.6503, 0.16807, "adu", "3355.65 +- 0.17 adu"),     # B0 was '3.36e+03 +- 0.17 adu'
    (0.38419, 0.005956, "1", "0.3842 +- 0.0060"),           # was '0.384 +- 0.006 1'
    (0.0139435, math.nan, "", "0.01394 (no error)"),        # was '0.01394 +- nan'
    (2.0, 0.0, "adu", "2 (no error) adu"),
    (-0.0004, 0.02, "", "0.000 +- 0.020"),                  # no '-0.000'
    (65.76, 164.2, "adu/krad", "66 +- 164 adu/krad"),
])
def test_value_error_text_rounds_the_value_to_its_error(value, error, unit, expected):
    """The value to the decimal place of its two-digit error; no 'nan' error, no unit '1'."""
    assert value_error_text(value, error, unit) == expected
