"""An irradiation campaign: the flat pipeline runs per (stage, dose step), never across them."""

from __future__ import annotations

import json
import math

import numpy as np
from astropy.io import fits

from flat_pipeline import run_pipeline
from utils.stack.grouping import GroupKey

STAGE_FOLDERS = {"pre": "Preirradiation", "post": "Postirradiation"}


def _folder(stage: str, dose: float = math.nan) -> str:
    return GroupKey(stage, dose, "FLAT", math.nan).stage_dir


def test_each_stage_and_dose_step_apart(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    out = tmp_path / "flat"
    assert run_pipeline.main(["--basepath", str(campaign.root), "--output-dir", str(out),
                              "--no-progress", "--no-save-plots"]) == 0
    groups = {"pre": _folder("pre"), "post": _folder("post"),
              10.0: _folder("radiating", 10.0), 20.0: _folder("radiating", 20.0)}
    top = json.loads((out / "summary.json").read_text())
    assert sorted(g["folder"] for g in top["groups"]) == sorted(groups.values())
    for label, folder in groups.items():
        (master,) = (out / folder / "master_flat").glob("master_flat_*.fits")
        with fits.open(master) as hdul:
            inputs = [str(p) for p in hdul["INPUTS"].data["PATH"]]
            head = hdul[0].header
        # every frame of a master comes from its own stage (and dose step)
        if label in STAGE_FOLDERS:
            assert all(f"/{STAGE_FOLDERS[label]}/" in p for p in inputs), inputs
        else:
            assert all(f"/{label:g}kRads/" in p for p in inputs), inputs
            assert head["DOSE"] == label
        assert len(inputs) == 3 and head["SUBTRACT"] == "bias+dark"
        summary = json.loads((out / folder / "summary.json").read_text())
        # one flat level per stage: no photon-transfer gain (said), no model in T and t
        assert summary["photon_transfer"]["gain_e_per_adc"] is None
        assert "needs two masters" in summary["flat_model"]["note"]
        assert math.isfinite(summary["prnu"]["combined"]["PRNU_PCT"])
    # the damage does not change the response in the simulation: the pre and post maps
    # share their pattern, and correlate as their noise allows (3 frames of ~1600 e-: 1.4 %
    # temporal noise per pixel against a 1 % PRNU); 960 pixels: +-0.03 sampling error
    maps, noise = [], []
    for stage in ("pre", "post"):
        with fits.open(out / groups[stage] / "prnu" / "prnu_map.fits") as hdul:
            maps.append(np.asarray(hdul[0].data))
            noise.append(np.asarray(hdul["UNCERT"].data))
    ok = np.isfinite(maps[0]) & np.isfinite(maps[1])
    s2 = campaign.physics.prnu_sigma ** 2
    t1, t2 = (float(np.mean(n[ok] ** 2)) for n in noise)
    expected = s2 / math.sqrt((s2 + t1) * (s2 + t2))
    assert abs(np.corrcoef(maps[0][ok], maps[1][ok])[0, 1] - expected) < 0.1


def test_one_stage_and_one_dose_step(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    out = tmp_path / "flat"
    assert run_pipeline.main(["--basepath", str(campaign.root), "--output-dir", str(out),
                              "--stage", "during", "--dose", "20", "--mode", "make_master",
                              "--no-progress"]) == 0
    # a single group: its products directly in the output folder
    (master,) = (out / "master_flat").glob("master_flat_*.fits")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group"] == _folder("radiating", 20.0) and summary["dose_krad"] == 20.0
    assert fits.getheader(master)["DOSE"] == 20.0
