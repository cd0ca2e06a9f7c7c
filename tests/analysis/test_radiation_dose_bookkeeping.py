"""Dose bookkeeping on simulated truth: DOSE step, FRAMEDOSE, DOSERATE, BEAM and TANNEAL of every
frame, joined by time stamp; the old dose-folder rule; logs that cannot be used."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.errors import TableError
from utils.io.dose import assign_doses, dose_rate_at
from utils.io.index import DatasetIndex, build_index
from utils.sim import simulate_dosedirs

#: The campaign logs write doses with 4 decimals: 1e-4 krad resolution.
DOSE_TOL = 0.01   # krad, the acceptance tolerance (the join is exact to the log's rounding)


def _fits_path(campaign, record) -> Path:
    path = campaign.path(record)
    if path.suffix == ".raw":
        path = path.parent.parent / "fits" / (path.stem + ".fits")
    return path.resolve()


def _rows(campaign, table):
    by_path = {str(Path(p).resolve()): r for p, r in zip(table["PATH"], table.to_dict("records"))}
    return [(rec, by_path[str(_fits_path(campaign, rec))]) for rec in campaign.records]


def test_ramp_campaign_every_frame_against_truth(converted_irradiation):
    # the beam on while the step's frames are taken: doses ramp within a step; FrameNum
    # restarts in every attempt, so only a join by time can give every frame its dose
    campaign, _ = converted_irradiation
    table = build_index(discover=[campaign.root])
    pairs = _rows(campaign, table)
    assert len(pairs) == len(campaign.records) == len(table)
    final = max(r.dose for r in campaign.records)
    for rec, row in pairs:
        assert abs(row["FRAMEDOSE"] - rec.dose) < DOSE_TOL, rec.path
        expected_step = 0.0 if rec.stage == "pre" else final if rec.stage == "post" else \
            float(rec.step.replace("kRads", ""))
        assert row["DOSE"] == expected_step, rec.path
        assert row["BEAM"] == ("on" if rec.beam else "off"), rec.path
        # the log's doses have 4 decimals over ~1 s between frames: rate to 2e-4 krad/s
        assert abs(row["DOSERATE"] / 1000 - rec.dose_rate) < 2e-4, rec.path
        if rec.since_beam_off is None:
            assert math.isnan(row["TANNEAL"])
        else:
            assert row["TANNEAL"] == pytest.approx(rec.since_beam_off, abs=0.01)
        assert row["DOSEFLAG"] == "" and row["DOSESRC"].startswith("campaign log")
    post = table[table["STAGE"] == "post"]
    assert (post["TANNEAL"] > 0).all() and (post["DOSE"] == final).all()


def test_beam_off_campaign_against_truth(rad_campaign):
    campaign, index = rad_campaign
    table = DatasetIndex.from_csv(index).table
    for rec, row in _rows(campaign, table):
        assert abs(row["FRAMEDOSE"] - rec.dose) < DOSE_TOL
        assert row["BEAM"] == "off" and row["DOSERATE"] == pytest.approx(0.0, abs=1e-6)
        if rec.since_beam_off is None:
            assert math.isnan(row["TANNEAL"])
        else:
            assert row["TANNEAL"] == pytest.approx(rec.since_beam_off, abs=0.01)
    # the dose of every step is delivered before its frames: constant within the step
    steps = table[table["STAGE"] == "radiating"].groupby("DOSE")["FRAMEDOSE"]
    assert (steps.nunique() == 1).all()


@pytest.fixture(scope="module")
def dosedirs(tmp_path_factory):
    """Dose folders: 5 (no log), 10 (log), 15 (log made constant below), 20 (log); the beam
    off during frames with an equal increment before each (the old rule's acquisition)."""
    root = tmp_path_factory.mktemp("dd") / "dd"
    campaign = simulate_dosedirs(root, seed=5, frames=3, doses=(5, 10, 15, 20),
                                 with_log=(False, True, True, True), constant_dose_log=False,
                                 dose_profile="increments")
    log = root / "15kRads" / "radiationLogDef.csv"
    lines = log.read_text().splitlines()
    lines = [lines[0]] + [",".join(line.split(",")[:2] + ["15"]) for line in lines[1:]]
    log.write_text("\n".join(lines) + "\n")   # a constant Dose column carries no information
    return campaign


def test_dose_folders_missing_and_constant_logs(dosedirs):
    table = build_index(discover=[dosedirs.root])
    for rec, row in _rows(dosedirs, table):
        assert abs(row["FRAMEDOSE"] - rec.dose) < DOSE_TOL, rec.path
        folder = rec.step
        if folder in ("5kRads", "15kRads"):
            assert row["DOSESRC"].startswith("spread over the dose folder")
            reason = "no radiation log" if folder == "5kRads" else "constant"
            assert "estimated" in row["DOSEFLAG"] and reason in row["DOSEFLAG"]
        else:
            assert row["DOSESRC"].startswith("log ") and row["DOSEFLAG"] == ""


def test_old_dose_folder_example(tmp_path):
    # the old rule: 5kRads, 4 frames, no log, previous 0 -> 1.25, 2.5, 3.75, 5.0
    simulate_dosedirs(tmp_path / "c", frames=2, doses=(5.0,), with_log=(False,))
    table = build_index(discover=[tmp_path / "c"]).sort_values("TIMESTAMP")
    assert table["FRAMEDOSE"].tolist() == [1.25, 2.5, 3.75, 5.0]


def test_frames_the_log_does_not_cover_are_flagged(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    log = pd.read_csv(campaign.root / "radiationLogCompleto.csv")
    stop = log["TimeStamp"].quantile(0.5)
    part = tmp_path / "partial.csv"
    log[log["TimeStamp"] <= stop].to_csv(part, index=False)
    table = build_index(discover=[campaign.root], radiation_log=part)
    late = table["TIMESTAMP"] > stop + 5
    radiating_late = late & (table["STAGE"] == "radiating")
    assert radiating_late.any()
    # per-attempt radiationLog.csv still covers the darks and flats of the steps; the bias
    # frames of the later steps have nothing: NaN with the reason, never 0
    bare = radiating_late & (table["CALTYPE"] == "BIAS")
    assert bare.any() and table.loc[bare, "FRAMEDOSE"].isna().all()
    assert table.loc[bare, "DOSEFLAG"].str.contains("no radiation log covers").all()
    covered = radiating_late & (table["CALTYPE"] == "DARK")
    assert table.loc[covered, "DOSESRC"].str.contains("radiationLog.csv").all()
    post = late & (table["STAGE"] == "post")
    assert post.any() and table.loc[post, "DOSEFLAG"].str.contains("after the log").all()


def test_unusable_logs_raise_one_clear_error(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    table = build_index(discover=[campaign.root])
    with pytest.raises(TableError, match="cannot read"):
        assign_doses(table, radiation_log=tmp_path / "missing.csv")
    log = pd.read_csv(campaign.root / "radiationLogCompleto.csv")
    shuffled = tmp_path / "shuffled.csv"
    log.iloc[[1, 0] + list(range(2, len(log)))].to_csv(shuffled, index=False)
    with pytest.raises(TableError, match="time goes backwards"):
        assign_doses(table, radiation_log=shuffled)
    elsewhere = tmp_path / "other_campaign.csv"
    log.assign(TimeStamp=log["TimeStamp"] + 1e7).to_csv(elsewhere, index=False)
    with pytest.raises(TableError, match="covers none"):
        assign_doses(table, radiation_log=elsewhere)


def test_dose_rate_is_the_interval_the_exposure_starts_in():
    t, d = np.array([0.0, 10.0, 20.0, 30.0]), np.array([0.0, 1.0, 1.0, 1.0])
    assert dose_rate_at(np.array([0.0, 5.0, 10.0, 25.0, 40.0]), t, d).tolist() == \
        [0.1, 0.1, 0.0, 0.0, 0.0]
    # the beam on in the last interval: nothing says what came after
    assert math.isnan(dose_rate_at(np.array([40.0]), t[:2], d[:2])[0])


def test_index_dataset_cli_takes_the_log(converted_irradiation, tmp_path):
    from utils.index_dataset import main

    campaign, _ = converted_irradiation
    copy = tmp_path / "log.csv"
    shutil.copy(campaign.root / "radiationLogCompleto.csv", copy)
    out = tmp_path / "index.csv"
    assert main(["--discover", str(campaign.root), "--radiation-log", str(copy), str(out),
                 "--no-progress"]) == 0
    table = DatasetIndex.from_csv(out).table
    assert table["FRAMEDOSE"].notna().all() and (table["DOSESRC"] != "").all()
    assert set(table["BEAM"]) <= {"on", "off"}


@pytest.mark.parametrize("table", [pd.DataFrame({"PATH": ["a.fits"]}),
                                   pd.DataFrame({"PATH": ["a.fits"], "DOSE": [np.nan]}),
                                   pd.DataFrame({"PATH": ["a.fits"], "DOSE": ["none"]})],
                         ids=["no DOSE column", "DOSE empty", "DOSE not a number"])
def test_require_doses_refuses_an_index_without_dose_steps(table):
    from utils.errors import UserError
    from utils.io.dose import require_doses

    with pytest.raises(UserError, match="no frame has a dose step"):
        require_doses(table, "test")
    require_doses(pd.DataFrame({"DOSE": [np.nan, 10.0]}), "test")  # one step is enough


@pytest.mark.parametrize("fixture", ["dosedirs", "converted_irradiation"])
def test_dose_lookups_per_folder_are_those_per_frame(fixture, request, monkeypatch):
    """The dose-step folder and the local logs of a frame are looked up once per folder of
    frames: the same table as looking them up for every frame."""
    import os
    import types

    from utils.io import dose

    campaign = request.getfixturevalue(fixture)
    root = campaign[0].root if isinstance(campaign, tuple) else campaign.root
    table = build_index(discover=[root])
    got, _ = assign_doses(table, root=root)
    per_frame = types.SimpleNamespace(path=types.SimpleNamespace(dirname=lambda p: p),
                                      fspath=os.fspath)  # every frame its own "folder"
    monkeypatch.setattr(dose, "os", per_frame)
    want, _ = assign_doses(table, root=root)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got["DOSE"].notna().any()
