"""Tests of the synthetic campaign simulator (utils.simulate)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from statcheck import std_error_of_std

from utils import adu, sim, simulate
from utils import headers as kw
from utils.errors import ConfigError, UserError
from utils.sim.operation import simulate_operation
from utils.sim.rts import RTSParams
from utils.sim.sequences import FlatStructure, simulate_dark_sequence, simulate_flat_sequence

W, H = 40, 24  # default size: width != height so a transposed reader fails


# --- helpers ---------------------------------------------------------------------------------

def read_raw(path: Path, width: int = W, height: int = H) -> np.ndarray:
    return np.fromfile(path, dtype="<u2").reshape(height, width)


def read_log(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    delimiter = ";" if ";" in text.splitlines()[0] else ","
    return list(csv.DictReader(text.splitlines(), delimiter=delimiter))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def bias_residual(frame: np.ndarray, maps: dict, temperature: float) -> np.ndarray:
    """Frame minus its true bias, in stored ADU."""
    return frame.astype(float) - (maps["bias_a"] + maps["bias_b"] * temperature)


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> sim.Campaign:
    return sim.simulate_standard(tmp_path_factory.mktemp("standard"))


@pytest.fixture(scope="module")
def irradiation(tmp_path_factory) -> sim.Campaign:
    return sim.simulate_irradiation(tmp_path_factory.mktemp("irradiation"))


@pytest.fixture(scope="module")
def dosedirs(tmp_path_factory) -> sim.Campaign:
    return sim.simulate_dosedirs(tmp_path_factory.mktemp("dosedirs"), doses=(5.0, 10.0, 15.0),
                                 with_log=(False, True, True), constant_dose_log=False)


# --- reproducibility -------------------------------------------------------------------------

def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    kwargs = dict(width=12, height=8, frames=2, attempts=1)
    a = files(sim.simulate_standard(tmp_path / "a", seed=5, **kwargs).root)
    b = files(sim.simulate_standard(tmp_path / "b", seed=5, **kwargs).root)
    c = files(sim.simulate_standard(tmp_path / "c", seed=6, **kwargs).root)
    assert a == b
    assert a.keys() == c.keys()
    raws = [k for k in a if k.endswith(".raw")]
    assert raws and all(a[k] != c[k] for k in raws)


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "stale.raw").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        sim.simulate_standard(tmp_path)


# --- standard layout -------------------------------------------------------------------------

def test_standard_layout(standard):
    root = standard.root
    for rel in ("TestSection1/T-10/attempt0", "TestSection1/T12.5/attempt1",
                "TestSection2/20Frames/T20/T0/0.5s/attempt0",     # nested: inner T is true
                "TestSection2/ContinuousFrames/2s/T0/attempt1",   # exposure before T
                "TestSection2/20Frames/T25/0.5s/attempt0",
                "TestSection2/20Frames/T25/2s",                   # no attempt folder
                "TestSection3/20Frames/T25/0.1s/attempt0",
                "TestSection3/20Frames/T25/0.4s"):                # no attempt folder
        folder = root / rel
        assert (folder / "frames").is_dir(), rel
        assert list(folder.glob("config*.txt")) and (folder / "temperatureLog.csv").is_file(), rel
    raws = sorted(root.rglob("*.raw"))
    assert len(raws) == 4 * 2 * (4 + 4 + 2)
    assert len(list((root / "TestSection1").rglob("*.raw"))) == 32
    nested = standard.select(attempt="TestSection2/20Frames/T20/T0/0.5s/attempt0")
    assert {r.setpoint for r in nested} == {0.0}
    assert (root / "TestSection1/T12.5/attempt0/frames/BiasT12.5_exp1.2e-05sAt0f3.raw").is_file()
    assert (root / "TestSection2/20Frames/T25/2s/frames/DarkT25_exp2sAt0f0.raw").is_file()


def test_standard_config_and_log_variants(standard):
    root = standard.root
    configs = sorted(root.rglob("config*.txt"))
    assert any(p.name == "config.txt" for p in configs)
    texts = [p.read_text() for p in configs]
    assert all("# " in t and "\n\n" in t for t in texts)
    assert any("WIDTH: 40" in t for t in texts)
    assert any("width=40" in t and "bit_depth=16" in t for t in texts)
    assert all(f"{H}" in t and "16" in t for t in texts)
    headers = [p.read_text().splitlines()[0] for p in root.rglob("temperatureLog.csv")]
    assert sum(h.count(";") > 0 for h in headers) == 1
    assert sum("CCDTemp" in h for h in headers) == 1


def test_raw_sizes_values_and_defects(standard):
    defects = {r.path: r.defect for r in standard.records if r.defect}
    assert sorted(defects.values()) == ["all_zero", "dead_region", "truncated"]
    for record in standard.records:
        path = standard.path(record)
        size = path.stat().st_size
        if record.defect == "truncated":
            assert 0 < W * H * 2 - size <= sim.TRUNCATE_BYTES
            assert record.kind in ("dark", "flat")
            continue
        assert size == W * H * 2
        data = read_raw(path)
        assert np.all(data % 16 == 0) and data.max() <= adu.saturation_level(12)
        zero_fraction = np.mean(data == 0)
        if record.defect == "all_zero":
            assert zero_fraction == 1.0
        elif record.defect == "dead_region":
            assert zero_fraction > 0.01
        else:
            assert zero_fraction == 0.0
    # every (kind, set point, exposure) group keeps clean frames
    groups = {(r.kind, r.setpoint, r.exposure) for r in standard.records}
    clean = {(r.kind, r.setpoint, r.exposure) for r in standard.records if r.defect is None}
    assert groups == clean


def test_flats_sit_at_a_fraction_of_full_scale(standard):
    longest = max(r.exposure for r in standard.select(kind="flat"))
    record = standard.select(kind="flat", exposure=longest, defect=None)[0]
    level = read_raw(standard.path(record)).mean() / adu.saturation_level(12)
    assert 0.3 <= level <= 0.5


def test_recorded_temperatures_jitter_about_the_set_point(standard):
    half = [r.temperature for r in standard.records if r.setpoint == 12.5]
    assert len(half) == 8
    # 1 degC is ~6.7 sigma of one reading (jitter 0.15 degC): a reading that far is a bug
    assert all(abs(t - 12.5) < 1.0 for t in half) and len(set(half)) > 1
    deviations = np.array([r.temperature - r.setpoint for r in standard.records])
    jitter = standard.physics.temperature_jitter
    # 80 Gaussian readings: the sample std is known to jitter / sqrt(2 n), the mean to
    # jitter / sqrt(n); 5 sigma each
    assert abs(deviations.std() - jitter) < 5 * jitter / math.sqrt(2 * deviations.size)
    assert abs(deviations.mean()) < 5 * jitter / math.sqrt(deviations.size)


def test_logs_match_records(standard):
    by_path = {r.path: r for r in standard.records}
    stamps = []
    for attempt in standard.attempts:
        rows = read_log(standard.root / attempt.path / attempt.log)
        records = [r for r in standard.records if r.attempt == attempt.path]
        assert [int(row["FrameNum"]) for row in rows] == list(range(len(records)))
        for row, record in zip(rows, records):
            assert by_path[record.path] is record
            assert float(row["TimeStamp"]) == record.timestamp
            assert float(row["ExpTime"]) == pytest.approx(record.exposure * 1e6)  # microseconds
            assert float(row["RealExpTime"]) != float(row["ExpTime"])
            assert float(row[attempt.temperature_column]) == record.temperature
        stamps.extend(float(row["TimeStamp"]) for row in rows)
    assert np.all(np.diff(stamps) > 0)  # attempts are listed in acquisition order
    assert stamps[0] == sim.CAMPAIGN_START
    assert float(read_log(standard.root / "TestSection1/T25/attempt0/temperatureLog.csv")[0]
                 ["ExpTime"]) == 12


# --- physics ---------------------------------------------------------------------------------

def test_bias_frames_match_truth(standard):
    maps = standard.maps()
    for record in standard.select(kind="bias", frame=0):
        residual = bias_residual(read_raw(standard.path(record)), maps, record.temperature)
        standard_error = residual.std() / math.sqrt(residual.size)
        assert abs(residual.mean()) < 4 * standard_error
        # the true per-pixel read noise (2 counts = 32 adu, 4x on the noisy pixels) plus
        # quantisation (16 adu steps); the error of the std from the sample's kurtosis (the
        # noisy pixels make the tails heavy)
        expected = math.sqrt(np.mean(maps["read_noise"].astype(float) ** 2) + 16.0 ** 2 / 12)
        assert abs(residual.std() - expected) < 5 * std_error_of_std(residual), \
            (residual.std(), expected)


def test_dark_signal_scales_with_exposure_and_temperature(tmp_path):
    campaign = sim.simulate_standard(tmp_path, width=64, height=48, frames=4, attempts=1,
                                     bias_temperatures=(0.0,), dark_temperatures=(13.0, 25.0),
                                     dark_exposures=(1.0, 4.0), flat_exposures=(0.1,),
                                     defects=False)
    maps = campaign.maps()
    physics = campaign.physics
    signal = {}
    for t in (13.0, 25.0):
        for e in (1.0, 4.0):
            records = campaign.select(kind="dark", setpoint=t, exposure=e)
            residuals = np.array([bias_residual(read_raw(campaign.path(r), 64, 48), maps,
                                                r.temperature) for r in records])
            expected = np.array([maps["dark_ref_adu"] * r.real_exposure
                                 * 2 ** ((r.temperature - physics.t_ref)
                                         / physics.doubling_temperature) for r in records])
            measured = residuals.mean()
            # the fixed pattern is known: only shot and read noise remain in the difference
            error = np.std(residuals - expected) / math.sqrt(residuals.size)
            assert abs(measured - expected.mean()) < 5 * error
            signal[t, e] = measured, error, expected.mean()

    def assert_ratio(num, den, nominal):
        ratio, truth = num[0] / den[0], num[2] / den[2]
        error = ratio * math.hypot(num[1] / num[0], den[1] / den[0])
        assert abs(ratio - truth) < 5 * error, (ratio, truth, error)
        # the truth departs from the nominal ratio by the 0.15 degC temperature jitter only
        # (a mean of 4 frames: ~1 % on a ratio) and the 3 us exposure offset: 3 % is ~3 sigma
        assert truth == pytest.approx(nominal, rel=0.03)

    for t in (13.0, 25.0):
        assert_ratio(signal[t, 4.0], signal[t, 1.0], 4.0)
    # 12 degC apart = two doubling temperatures
    assert_ratio(signal[25.0, 4.0], signal[13.0, 4.0], 4.0)


def test_sensor_maps_have_expected_statistics():
    physics = sim.Physics()
    sensor = sim.make_sensor(np.random.default_rng(0), 200, 150, physics)
    assert sensor.shape == (150, 200)
    n = sensor.prnu.size
    # 5 sigma each: the median of a log-normal sample is known to 1.2533 x its spread
    # (sigma_ln x median) / sqrt(n), a fraction to sqrt(p (1 - p) / n), a std to std / sqrt(2 n)
    normal = sensor.dark_ref[~sensor.hot_mask]
    se_median = 1.2533 * physics.dark_sigma_ln * physics.dark_median / math.sqrt(normal.size)
    assert abs(np.median(normal) - physics.dark_median) < 5 * se_median
    p = physics.hot_fraction
    assert abs(sensor.hot_mask.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(np.std(sensor.prnu) - physics.prnu_sigma) < 5 * physics.prnu_sigma / math.sqrt(2 * n)
    assert sensor.vignetting.max() <= 1.0
    # the corners sit at r = rmax exactly: no noise, float32 rounding only
    assert sensor.vignetting.min() == pytest.approx(1 - physics.vignetting, abs=1e-6)
    # radiation-induced hot pixels only accumulate
    low, high = (sensor.rad_hot_threshold <= 10), (sensor.rad_hot_threshold <= 40)
    assert np.all(high[low]) and high.sum() > low.sum() > 0


def test_digitise_rounds_clips_and_scales():
    out = sim.digitise(np.array([-5.0, 0.4, 0.6, 4094.6, 1e6]), 12)
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 0, 16, 65520, 65520]


def test_physics_rejects_nonsense_and_records_units():
    with pytest.raises(ConfigError):
        sim.Physics(gain=0.0)
    with pytest.raises(ConfigError):
        sim.Physics(hot_factor_min=200.0)
    units = sim.Physics.units()
    assert units["doubling_temperature"] == "degC" and set(units) == set(sim.Physics.describe())


# --- truth files ------------------------------------------------------------------------------

def test_truth_files_describe_every_frame(standard):
    doc = json.loads(standard.truth_json.read_text())
    assert doc["seed"] == 1 and doc["layout"] == "standard"
    assert (doc["width"], doc["height"]) == (W, H)
    assert doc["physics"]["gain"] == 2.0 and doc["physics_units"]["gain"] == "e-/ADC count"
    raws = {str(p.relative_to(standard.root)) for p in standard.root.rglob("*.raw")}
    assert {r["path"] for r in doc["frames"]} == raws and len(doc["frames"]) == len(raws)
    assert sum(r["defect"] is not None for r in doc["frames"]) == 3
    maps = standard.maps()
    for name in ("bias_a", "bias_b", "read_noise", "dark_ref", "hot_mask", "prnu", "vignetting"):
        assert maps[name].shape == (H, W), name
    assert maps["hot_mask"].dtype == bool
    assert 3000 < maps["bias_a"].mean() < 3400  # 200 counts x 16: stored units
    reloaded = sim.load_campaign(standard.root)
    assert reloaded.records == standard.records and reloaded.physics == standard.physics


# --- irradiation layout -----------------------------------------------------------------------

def test_irradiation_layout(irradiation):
    root = irradiation.root
    for stage in ("Preirradiation", "Irradiation/10kRads", "Irradiation/20kRads",
                  "Postirradiation"):
        assert (root / stage / "Bias/T20/attempt0/frames").is_dir()
        assert (root / stage / "Darks/T20/1s/attempt0/frames").is_dir()
        assert (root / stage / "Flats/T20/0.2s/attempt0/frames").is_dir()
    assert len(list(root.rglob("*.raw"))) == 4 * 3 * 3
    rad_logs = sorted(root.rglob("radiationLog.csv"))
    assert rad_logs and len(rad_logs) < len(irradiation.attempts)
    for path in rad_logs:
        rows = read_log(path)
        assert {"Dose", "RadiationLevel", "Temperature", "ExpTime"} <= set(rows[0])
        assert not (path.parent / "temperatureLog.csv").exists()


def test_campaign_radiation_log_is_consistent_with_frames(irradiation):
    rows = read_log(irradiation.root / sim.CAMPAIGN_RADIATION_LOG)
    assert list(rows[0]) == ["FrameNum", "TimeStamp", "Dose", "RadiationLevel", "Temperature"]
    times = np.array([float(r["TimeStamp"]) for r in rows])
    doses = np.array([float(r["Dose"]) for r in rows])
    assert np.all(np.diff(times) > 0) and np.all(np.diff(doses) >= 0)
    by_time = {r.timestamp: r for r in irradiation.records}
    assert sorted(by_time) == times.tolist()
    for row in rows:
        record = by_time[float(row["TimeStamp"])]
        assert int(row["FrameNum"]) == record.frame
        assert float(row["Dose"]) == record.dose
        if record.stage == "pre":
            assert record.dose == 0.0
        if record.stage == "post":
            assert record.dose == 20.0 and record.damage_dose < 20.0
    step = [r for r in irradiation.records if r.step == "20kRads"]
    assert step[0].dose == 10.0 and step[-1].dose == 20.0
    assert 0 <= min(float(r["RadiationLevel"]) for r in rows)


def test_irradiation_damage_matches_truth(irradiation):
    maps = irradiation.maps()
    physics = irradiation.physics
    assert maps["damage_label"].tolist() == ["10kRads", "20kRads", "post"]
    assert maps["damage_dose"].tolist() == [10.0, 20.0, 20.0 * (1 - physics.annealing_fraction)]
    assert maps["damage_dark_ref"].shape == (3, H, W)
    assert np.all(maps["damage_dark_ref"][1] >= maps["damage_dark_ref"][0])

    def dark_ref(damage):  # the documented model, at t_ref [e-/s]
        return (maps["dark_ref"] * (1 + physics.dark_damage * damage)
                + maps["rad_hot_amplitude"] * (maps["rad_hot_threshold"] <= damage))

    for index, damage in enumerate(maps["damage_dose"]):
        assert np.allclose(maps["damage_dark_ref"][index], dark_ref(damage), rtol=1e-5)
        assert maps["damage_bias_shift"][index] == pytest.approx(physics.bias_shift * damage * 16)
    levels = {}
    for stage in ("pre", "radiating", "post"):
        records = [r for r in irradiation.records if r.kind == "dark" and r.stage == stage]
        residual = np.array([bias_residual(read_raw(irradiation.path(r)), maps, r.temperature)
                             - physics.bias_shift * r.damage_dose * 16 for r in records])
        expected = np.array([dark_ref(r.damage_dose) * r.real_exposure * 16 / physics.gain
                             * 2 ** ((r.temperature - physics.t_ref)
                                     / physics.doubling_temperature) for r in records])
        error = np.std(residual - expected) / math.sqrt(residual.size)
        assert abs(residual.mean() - expected.mean()) < 5 * error, stage
        levels[stage] = np.mean([read_raw(irradiation.path(r)).mean() for r in records
                                 if r.step in (None, "20kRads")])
    assert levels["pre"] < levels["post"] and levels["pre"] < levels["radiating"]
    post = [r for r in irradiation.records if r.stage == "post"]
    assert {r.damage_dose for r in post} == {maps["damage_dose"][2]}


# --- dose directories -------------------------------------------------------------------------

def test_dosedirs_fits_and_logs(dosedirs):
    root = dosedirs.root
    assert sorted(p.name for p in root.iterdir()) == ["10kRads", "15kRads", "5kRads", "truth"]
    for dose in ("5", "10", "15"):
        paths = sorted((root / f"{dose}kRads" / "fits").glob("*.fits"))
        assert len(paths) == 8
        kinds = set()
        for path in paths:
            with fits.open(path) as hdul:
                header, data = hdul[0].header, hdul[0].data
                assert data.dtype == np.uint16 and data.shape == (H, W)
                assert np.all(data % 16 == 0)
                assert header["BZERO"] == 32768 and header[kw.BUNIT] == "adu"
                kinds.add(header[kw.IMAGETYP])
                assert kw.exptime(header) > 0 and not math.isnan(kw.sensor_temperature(header))
                assert kw.timestamp(header) > sim.CAMPAIGN_START - 1
                assert (header[kw.IMAGETYP] == "BIAS") == (kw.exptime(header) == 1.2e-05)
        assert kinds == {"BIAS", "DARK"}
    assert not (root / "5kRads" / sim.DOSEDIR_LOG).exists()
    rows = read_log(root / "15kRads" / sim.DOSEDIR_LOG)
    assert list(rows[0]) == ["FrameNum", "TimeStamp", "Dose"]
    doses = [float(r["Dose"]) for r in rows]
    assert doses[0] == 10.0 and doses[-1] == 15.0 and np.all(np.diff(doses) > 0)


def test_dosedirs_constant_log_by_default(tmp_path):
    campaign = sim.simulate_dosedirs(tmp_path, width=10, height=6, frames=2)
    rows = read_log(tmp_path / "10kRads" / sim.DOSEDIR_LOG)
    assert {float(r["Dose"]) for r in rows} == {10.0}
    # the true dose still ramps: the constant column carries no information
    assert len({r.dose for r in campaign.select(step="10kRads")}) > 1


# --- command line ------------------------------------------------------------------------------

def test_main_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        simulate.main(["--help"])
    assert info.value.code == 0
    assert "Example" in capsys.readouterr().out


def test_main_writes_a_campaign(tmp_path):
    assert simulate.main(["standard", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("*.raw"))) == 80
    assert (tmp_path / "truth" / "truth.json").is_file()


def test_main_options_and_user_errors(tmp_path):
    out = tmp_path / "irr"
    assert simulate.main(["irradiation", str(out), "--doses", "5", "--frames", "2", "--width", "8",
                     "--height", "6", "--set", "gain=1.5", "--no-progress"]) == 0
    campaign = sim.load_campaign(out)
    assert campaign.physics.gain == 1.5 and campaign.width == 8
    assert simulate.main(["irradiation", str(tmp_path / "x"), "--attempts", "3"]) == 2
    assert simulate.main(["standard", str(tmp_path / "y"), "--set", "nonsense=1"]) == 2
    assert simulate.main(["standard", str(out)]) == 2  # not empty


def test_cli_dosedirs_layout(tmp_path):
    out = tmp_path / "dd"
    assert simulate.main(["dosedirs", str(out), "--doses", "5", "10", "--frames", "2",
                          "--width", "8", "--height", "6", "--with-log", "no", "yes",
                          "--constant-dose-log", "no", "--no-progress"]) == 0
    campaign = sim.load_campaign(out)
    assert campaign.layout == "dosedirs" and (campaign.width, campaign.height) == (8, 6)
    assert sorted(p.name for p in out.iterdir() if p.name.endswith("kRads")) == \
        ["10kRads", "5kRads"]
    assert len(list((out / "5kRads" / "fits").glob("*.fits"))) == 4   # 2 bias + 2 darks
    assert not (out / "5kRads" / sim.DOSEDIR_LOG).exists()
    log = (out / "10kRads" / sim.DOSEDIR_LOG).read_text().splitlines()
    doses = [float(line.split(",")[2]) for line in log[1:]]
    # --constant-dose-log no: the log carries the true dose, ramping from 5 to 10 krad
    assert np.all(np.diff(doses) > 0) and doses[0] == 5.0 and doses[-1] == 10.0


@pytest.mark.parametrize("layout, argv, api", [
    ("operation", ["--frames", "6", "--doses", "1", "2", "--no-raw"],
     lambda out: simulate_operation(out, width=16, height=12, frames=6, doses=(1.0, 2.0),
                                    raw=False)),
    ("flatseq", ["--visits", "4", "--structure", "5", "6", "2", "0.2", "2", "--pixel-classes"],
     lambda out: simulate_flat_sequence(out, width=16, height=12, visits=4, pixel_classes=True,
                                        structure=FlatStructure(5.0, 6.0, 2.0, 0.2, 2))),
    ("darkseq", ["--frames", "20", "--doses", "10", "--rts-per-krad", "0.01"],
     lambda out: simulate_dark_sequence(out, width=16, height=12, frames=20, doses=(10.0,),
                                        rts=RTSParams(per_krad=0.01))),
])
def test_cli_writes_the_secondary_analyses_layouts(tmp_path, layout, argv, api):
    """The operation, flat-sequence and dark-sequence layouts (inputs of the operation,
    structure, outgassing and RTS analyses) could be written from Python only: a user of the
    command line had no synthetic input for four commands. Same files as the Python API."""
    out = tmp_path / "cli"
    assert simulate.main([layout, str(out), "--width", "16", "--height", "12",
                          "--no-progress", *argv]) == 0
    ref = api(tmp_path / "api")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ref.root) for p in ref.root.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (ref.root / f).read_bytes() for f in files)
    assert sim.load_campaign(out).layout == layout


def test_cli_secondary_layout_options_are_checked(tmp_path, caplog):
    assert simulate.main(["standard", str(tmp_path / "a"), "--rts-per-krad", "0.1"]) == 2
    assert "--rts-per-krad do(es) not apply to the standard layout" in caplog.text
    assert simulate.main(["flatseq", str(tmp_path / "b"), "--structure", "1", "2", "3", "0.2",
                          "2.5"]) == 2
    assert simulate.main(["flatseq", str(tmp_path / "c"), "--frames", "3"]) == 2
