"""One calibration set, one name: index processing and the pipelines label a set alike.

Index processing (analysis.masters.build_masters) groups every index row, bad frames
included (they are dropped from the stack afterwards); the bias, dark and flat pipelines
group the usable rows only (utils.stack.references.select_frames).  The temperature label
of a set must not depend on that: it is the median of the bin's usable readings
(utils.stack.grouping.temperature_label), so both name the master of the same frames alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.masters import MasterSettings, master_path
from bias_pipeline.pipeline import master_file as bias_master_file
from bias_pipeline.pipeline import temperature_sets
from dark_pipeline.masters import dark_sets
from dark_pipeline.masters import master_file as dark_master_file
from flat_pipeline.reduction import flat_sets
from utils.stack.grouping import calibration_groups, temperature_label


def _index(seed: int = 15) -> pd.DataFrame:
    """Seeded index rows of one dose step at a 25 degC set point whose readings sit off the
    bin centre (mean 25.035 degC, sd 0.03), with hot bad frames (25.4 degC, BADFITS) in
    every type: those move the all-rows median of the bin above 25.05 degC."""
    rng = np.random.default_rng(seed)
    rows = []
    for caltype, exposures in (("BIAS", [np.nan]), ("DARK", [0.5, 2.0]), ("FLAT", [0.1])):
        for exptime in exposures:
            for i in range(8):
                rows.append({"CALTYPE": caltype, "EXPTIME": exptime, "BADFITS": False,
                             "TEMP": 25.035 + rng.normal(0, 0.03)})
            for i in range(3):
                rows.append({"CALTYPE": caltype, "EXPTIME": exptime, "BADFITS": True,
                             "TEMP": 25.4 + rng.normal(0, 0.005)})
    table = pd.DataFrame(rows)
    table["STAGE"] = "radiating"
    table["DOSE"] = 10.0
    table["ATTEMPT"] = "attempt0"
    table["PATH"] = [f"f{i}.fits" for i in range(len(table))]
    return table


def test_index_and_pipeline_masters_of_a_set_have_one_name(tmp_path):
    index = _index()
    good = index[~index["BADFITS"]]
    # precondition (seed 15): a plain median over all rows labels each bin 25.1 degC (the old
    # index-processing name), over the usable rows 25.0 degC (the pipelines' name)
    for caltype in ("BIAS", "DARK", "FLAT"):
        assert round(float(np.median(index.loc[index.CALTYPE == caltype, "TEMP"])), 1) == 25.1
        assert round(float(np.median(good.loc[good.CALTYPE == caltype, "TEMP"])), 1) == 25.0

    settings = MasterSettings()
    by_index = {(k.caltype, k.exptime if k.exptime == k.exptime else None):
                (k, rows[~rows["BADFITS"]]) for k, rows in
                calibration_groups(index, temp_width=settings.temp_bin,
                                   exp_tolerance=settings.exp_tolerance)}
    pipeline = (temperature_sets(good[good.CALTYPE == "BIAS"], settings.temp_bin)
                + dark_sets(good[good.CALTYPE == "DARK"], settings.temp_bin,
                            settings.exp_tolerance)
                + flat_sets(good[good.CALTYPE == "FLAT"], settings.temp_bin,
                            settings.exp_tolerance))
    assert len(pipeline) == len(by_index) == 4
    for key, rows in pipeline:
        ikey, irows = by_index[(key.caltype, key.exptime if key.exptime == key.exptime
                                else None)]
        assert sorted(irows["PATH"]) == sorted(rows["PATH"])  # the same set ...
        assert ikey.temperature == key.temperature == 25.0  # ... one label
        assert ikey.tag == key.tag
    dark = [k for k, _ in pipeline if k.caltype == "DARK" and k.exptime == 0.5][0]
    assert master_path(tmp_path, dark).name == "master_dark_T25.0C_E0.5s.fits"
    assert dark_master_file(tmp_path, dark.temperature, dark.exptime).name \
        == master_path(tmp_path, dark).name
    bias = [k for k, _ in pipeline if k.caltype == "BIAS"][0]
    assert master_path(tmp_path, bias).name == "master_bias_T25.0C.fits"
    assert bias_master_file(tmp_path, bias.temperature).name == "master_bias_25.0C.fits"


def test_temperature_label_falls_back_to_all_rows_and_has_no_negative_zero():
    rows = pd.DataFrame({"TEMP": [-0.04, -0.02, 0.3], "BADFITS": [True, True, True]})
    assert temperature_label(rows) == 0.0
    assert str(temperature_label(rows)) == "0.0"
    assert temperature_label(rows[["TEMP"]]) == 0.0


def test_flats_without_exposure_time_do_not_move_the_label():
    """Flats without a (positive) exposure time belong to no set; the flat pipeline drops
    them before grouping, index processing groups them: they must not move the name."""
    index = _index()
    flats = index[index.CALTYPE == "FLAT"]
    extra = flats.iloc[:6].assign(BADFITS=False, EXPTIME=[np.nan, np.nan, np.nan, 0.0, 0.0, -1],
                                  TEMP=25.4, PATH=[f"x{i}.fits" for i in range(6)])
    index = pd.concat([flats[~flats["BADFITS"]], extra], ignore_index=True)
    usable = index[~index["BADFITS"] & index["TEMP"].notna() & (index["EXPTIME"] > 0)]
    assert round(float(np.median(index["TEMP"])), 1) == 25.1  # precondition
    by_index = [k for k, _ in calibration_groups(index) if k.exptime == 0.1]
    by_pipeline = [k for k, _ in flat_sets(usable, 1.0, 0.01)]
    assert len(by_index) == len(by_pipeline) == 1
    assert by_index[0].tag == by_pipeline[0].tag == "T25.0C_E0.1s"
