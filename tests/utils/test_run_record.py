"""summary.json is strict JSON (qamodes review)."""

import json
import math

import numpy as np

from utils.run_record import json_text, write_run_summary


def test_summary_json_writes_undefined_numbers_as_null(tmp_path):
    # the dark pipeline's 1-D model at two temperatures has no degree of freedom: its
    # population errors are NaN, and summary.json held the bare token NaN (not JSON)
    (tmp_path / "a.fits").write_text("x")
    summary = {"doubling_temperature_err_degC": float("nan"), "b": np.float32("nan"),
               "nested": {"x": [1.5, np.inf, np.int64(3)]}, "ok": np.float64(0.25),
               "flag": np.bool_(True)}
    path = write_run_summary(tmp_path, summary, [tmp_path / "a.fits"], "abc")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    record = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert record["doubling_temperature_err_degC"] is None and record["b"] is None
    assert record["nested"]["x"] == [1.5, None, 3]
    assert record["ok"] == 0.25 and record["flag"] is True
    assert record["files"] == ["a.fits", "summary.json"]


def test_json_text_keeps_finite_numbers_exactly():
    value = 0.1 + 0.2
    assert json.loads(json_text({"v": value}))["v"] == value
    assert math.isclose(json.loads(json_text({"v": np.float32(2.5)}))["v"], 2.5)
