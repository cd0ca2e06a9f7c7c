"""The gain product: round trip, command-line forms, bad files."""

from __future__ import annotations

import math

import pytest

from utils.errors import ConfigError, InputPathError
from utils.models.gain import Gain, read_gain, resolve_gain, write_gain


def test_round_trip_keeps_value_error_and_units(tmp_path):
    path = write_gain(Gain(1.93, 0.021, 12, "photon transfer (EMVA 1288)", "flat", 3.9,
                           {"saturation_adu": 60000.0}), tmp_path)
    assert path.name == "gain.json"
    back = read_gain(tmp_path)
    assert (back.gain, back.gain_err, back.adc_bits, back.read_noise_e) == (1.93, 0.021, 12, 3.9)
    assert back.extra == {"saturation_adu": 60000.0}
    assert back.e_per_adu == pytest.approx(1.93 / 16)
    cards = dict((k, v) for k, v, _ in back.cards())
    assert cards["GAINUSED"] == 1.93 and "photon transfer" in cards["GAINSRC"]


def test_unmeasured_error_is_nan_not_zero(tmp_path):
    write_gain(Gain(2.0), tmp_path / "g.json")
    assert math.isnan(read_gain(tmp_path / "g.json").gain_err)


def test_resolve_number_path_and_none(tmp_path):
    assert resolve_gain("2.5").gain == 2.5
    write_gain(Gain(1.5), tmp_path)
    assert resolve_gain(str(tmp_path / "gain.json")).gain == 1.5
    assert resolve_gain(None) is None


@pytest.mark.parametrize("text", ["{", '{"gain": -1}', '{"nothing": 1}'])
def test_bad_files_are_user_errors(tmp_path, text):
    (tmp_path / "gain.json").write_text(text)
    with pytest.raises(InputPathError, match="gain.json"):
        read_gain(tmp_path)
    with pytest.raises(InputPathError):
        read_gain(tmp_path / "missing.json")


def test_non_positive_gain_refused():
    with pytest.raises(ConfigError):
        Gain(0.0)
