"""The orchestrators' stage pipelines group and combine as their index processing did."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import run_calibration
from analysis import stage_pipelines
from analysis.masters import MasterSettings
from utils.stack.master import CombineSettings, inputs_hash


@pytest.fixture
def spied(monkeypatch):
    """Every pipeline entry point replaced by a recorder of the settings it was given."""
    seen = {}

    def record(name):
        def fake(index_path, out_dir, settings, **kwargs):
            seen.setdefault(name, []).append(settings)
            return None
        return fake

    for module, name in ((stage_pipelines.bias_pipeline, "run"),
                         (stage_pipelines.dark_pipeline, "run"),
                         (stage_pipelines.flat_pipeline, "run"),
                         (stage_pipelines.flat_pipeline, "measure_gain_only")):
        monkeypatch.setattr(module, name, record(f"{module.__name__}.{name}"))
    return seen


def _table() -> pd.DataFrame:
    return pd.DataFrame({"CALTYPE": ["BIAS", "DARK", "FLAT"], "STAGE": ["", "", ""],
                         "DOSE": [math.nan] * 3, "BADFITS": [False] * 3})


def test_master_options_reach_every_pipeline(spied, tmp_path):
    """``run_calibration.py --sigma 4 --temp-bin 0.5 ...``: the bias, dark and flat pipelines
    combine and group as index processing did (before, they kept the defaults: with any master
    option the dark model silently rested on 3-sigma masters stacked a second time)."""
    masters = MasterSettings(sigma_low=4.0, sigma_high=4.0, method="sigclip", maxiters=3,
                             temp_bin=0.5, exp_tolerance=0.02, bias_temp_tolerance=1.5,
                             dark_temp_tolerance=1.0, memory_limit=2e8, workers=1)
    run_calibration.run_pipelines("standard", _table(), tmp_path / "index.csv", tmp_path,
                                  masters=masters)
    settings = [s for calls in spied.values() for s in calls]
    assert len(settings) == 4, spied.keys()
    for s in settings:
        assert s.combine == masters.combine
        assert s.temp_bin == 0.5
    for name in ("dark_pipeline.pipeline.run", "flat_pipeline.pipeline.run"):
        (s,) = spied[name]
        assert (s.exp_tolerance, s.bias_temp_tolerance) == (0.02, 1.5)
    assert spied["flat_pipeline.pipeline.run"][0].dark_temp_tolerance == 1.0
    # the defaults stay the defaults
    spied.clear()
    run_calibration.run_pipelines("standard", _table(), tmp_path / "index.csv", tmp_path)
    assert all(s.combine == CombineSettings() for calls in spied.values() for s in calls)


def test_master_settings_hash_as_the_pipelines_combine_settings():
    """A master index processing built is found by a pipeline's INHASH only if both hash the
    same combination: ``MasterSettings.combine`` is that part."""
    masters = MasterSettings(sigma_low=4.0, sigma_high=3.5, maxiters=2, min_accepted=4)
    paths = [Path("/data/a.fits"), Path("/data/b.fits")]
    assert inputs_hash(paths, masters) == inputs_hash(paths, masters.combine)
    assert inputs_hash(paths, masters) != inputs_hash(paths, CombineSettings())


def test_warnings_name_the_group_a_pipeline_ran_for(tmp_path):
    """The stage pipelines run once per (stage, dose step) and say the same words each
    time; each collected warning now names its group (not outside a group)."""
    import logging

    from analysis.stage_pipelines import StagePipelines, _attempt
    from utils import cli

    log = logging.getLogger("qa.groups")
    result = StagePipelines()
    with cli.WarningCollector() as collector:
        for stage, dose in (("pre", float("nan")), ("radiating", 20.0)):
            _attempt(result, "flat", stage, dose, lambda: log.warning("no gain"))
        log.warning("outside")
    assert collector.distinct() == ["WARNING qa.groups: [pre] no gain",
                                    "WARNING qa.groups: [radiating_D20kR] no gain",
                                    "WARNING qa.groups: outside"]


def test_damage_measurements_name_their_group_in_warnings(monkeypatch):
    """The damage analysis measures every (stage, dose step) again: its warnings name the
    group as the stage pipelines' do, so that warnings.log counts them together."""
    import logging
    from types import SimpleNamespace

    import pandas as pd

    from analysis import stage_models
    from utils import cli

    def fake(index, stage, dose, out_dir, settings, progress_bar=False):
        logging.getLogger("dark_pipeline.rates").warning("one exposure time")
        return SimpleNamespace(rates=[], model=None)

    monkeypatch.setattr(stage_models, "measure_stage", fake)
    table = pd.DataFrame({"CALTYPE": ["DARK"] * 3, "BADFITS": [False] * 3,
                          "STAGE": ["pre", "radiating", "post"], "DOSE": [0.0, 10.0, 10.0],
                          "PATH": ["a", "b", "c"]})
    with cli.WarningCollector() as collector:
        done, failed = stage_models.measure_campaign(SimpleNamespace(table=table), None, None)
    assert len(done) == 3 and not failed
    assert collector.distinct() == [
        "WARNING dark_pipeline.rates: [pre] one exposure time",
        "WARNING dark_pipeline.rates: [radiating_D10kR] one exposure time",
        "WARNING dark_pipeline.rates: [post] one exposure time"]
