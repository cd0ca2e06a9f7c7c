"""Operation analysis on simulated sequences under a beam, checked against the simulator's truth.

Two module-scoped runs of the real command: a raw sequence (converted by the
analysis, per-frame radiation log) and a FITS sequence whose radiation log is
sampled on its own clock, starting 10 s before the first frame (so a log put
on its own zero point, the old bug, would be visibly shifted).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from analysis import operation_analysis
from analysis.timeseries.radiation import radiation_at_frames
from analysis.timeseries.sequence import FrameSequence, read_sequence
from utils.io.conversion import ConversionSettings, convert_folder
from utils.io.radiation_log import read_radiation_log
from utils.models.correlation import fit_line, pearson
from utils.sim.operation import operation_truth, simulate_operation

ROOT = Path(__file__).resolve().parents[2]
OLD_NAMES = ["frames.gif", "outliers.gif", "cumulative_outliers.png", "cumulative_outliers.fits",
             "metrics.png", "rad_vs_outliers.png", "intensity_stats.png", "first_last.png"]
ARGS = ["--no-progress", "--animation-frames", "40"]


def _run(campaign_root: Path, out: Path, *extra) -> int:
    return operation_analysis.main([str(campaign_root), str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory, checksums):
    """Raw frames with a per-frame radiationLog.csv: 70 frames, analysed once."""
    root = tmp_path_factory.mktemp("oper_raw")
    campaign = simulate_operation(root / "Operation", seed=5, frames=70, doses=(5.0,))
    before = checksums(campaign.root)
    out = root / "out"
    assert _run(campaign.root, out) == 0
    return campaign, out, before


@pytest.fixture(scope="module")
def fits_run(tmp_path_factory):
    """FITS frames, radiation log sampled every 1 s from 10 s before the first frame."""
    root = tmp_path_factory.mktemp("oper_fits")
    campaign = simulate_operation(root / "Operation", seed=8, frames=70, doses=(4.0,),
                                  raw=False, log_interval=1.0, log_margin=10.0)
    out = root / "out"
    assert _run(campaign.root, out) == 0
    return campaign, out


def _frames(out, name):
    return pd.read_csv(out / name / "frame_metrics.csv")


@pytest.mark.parametrize("which", ["raw_run", "fits_run"])
def test_transient_counts_correlate_with_the_dose_rate_like_the_truth(which, request):
    campaign, out = request.getfixturevalue(which)[:2]
    (truth,) = operation_truth(campaign)
    corr = pd.read_csv(out / truth["folder"] / "correlation.csv").set_index("COUNT")
    r = corr.loc["transients", "R"]
    # acceptance: within 0.05 of the truth correlation (hits vs true dose rate).  Both share
    # the same hits; the difference comes only from the monitor's 5 % noise and from hits
    # that touch (counted as one event), so it is far below r's own error (~0.04 at n = 70)
    assert abs(r - truth["truth_pearson_r"]) < 0.05, (r, truth["truth_pearson_r"])
    assert corr.loc["transients", "R_CI95_LOW"] < r < corr.loc["transients", "R_CI95_HIGH"]
    assert corr.loc["transients", "P_VALUE"] < 1e-6 and corr.loc["transients", "R_ERR"] > 0
    # the transients recover the planted hits frame by frame (radiation hot pixels that
    # switch on during the sequence are events in every later frame, transients once)
    frames = _frames(out, truth["folder"])
    hits = np.asarray(truth["hits"])
    # losses on these small, busy frames (up to 20 hits on 6144 px): touching hits make one
    # event (~2 %), and a hit whose peak pixel is an outlier in a neighbouring frame is
    # taken for a persistent pixel (~2 x the 1.5 % outlier occupancy at full beam)
    assert 0.9 * hits.sum() <= frames["N_TRANSIENTS"].sum() <= 1.01 * hits.sum()
    assert np.corrcoef(frames["N_TRANSIENTS"], hits)[0, 1] > 0.97
    assert np.all(frames["N_TRANSIENTS"] <= hits + 1)    # touching hits merge, never split
    assert (frames.loc[hits == 0, "N_TRANSIENTS"] == 0).mean() > 0.9  # no beam, no transient
    assert (frames["N_EVENTS"] >= frames["N_TRANSIENTS"]).all()


def test_fit_slope_matches_the_planted_hit_rate(raw_run):
    campaign, out, _ = raw_run
    (truth,) = operation_truth(campaign)
    params = json.loads(campaign.truth_json.read_text())["parameters"]
    frames = _frames(out, truth["folder"])
    corr = pd.read_csv(out / truth["folder"] / "correlation.csv").set_index("COUNT")
    # expected events per frame per krad/s: hit density x pixels x exposure, times the
    # fraction of hits that stay separate events (measured from the truth hit counts)
    per_rate = params["hit_density"] * campaign.width * campaign.height * \
        campaign.records[0].real_exposure
    kept = frames["N_TRANSIENTS"].sum() / sum(truth["hits"])
    fit = corr.loc["transients"]
    pull = (fit["SLOPE"] - per_rate * kept) / fit["SLOPE_ERR"]
    assert abs(pull) < 3, pull
    assert fit["FIT_METHOD"] == "least squares"


def test_frame_times_are_relative_to_the_first_frame(raw_run):
    campaign, out, _ = raw_run
    frames = _frames(out, "5kRads")
    stamps = np.array([r.timestamp for r in campaign.records])
    assert frames["TIME"].iloc[0] == 0.0
    np.testing.assert_allclose(frames["TIME"], stamps - stamps[0], atol=2e-3)
    assert frames["TIME"].max() < 1e4                      # not the absolute clock (old bug)
    assert frames["RAD_COVERED"].all()                     # the per-frame log covers them all
    assert frames["INDEX"].tolist() == list(range(len(frames)))
    # the frame numbers are written whole ('0.0', '1.0' ... before)
    text = (out / "5kRads" / "frame_metrics.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in text[1:4]] == ["0", "1", "2"]


def test_sampled_log_is_interpolated_on_the_frames_zero_point(fits_run):
    campaign, out = fits_run
    (truth,) = operation_truth(campaign)
    frames = _frames(out, truth["folder"])
    true_rate = np.asarray(truth["dose_rate"])
    peak = truth["peak_dose_rate"]
    bad = np.abs(frames["RADIATION"] - true_rate) > 0.25 * peak
    # only frames within one log interval (1 s, < 1 frame) of the 5 beam steps may differ;
    # with the log on its own zero point (10 s earlier) ~7 frames per step would
    assert bad.sum() <= 2 * 5, frames.loc[bad, ["TIME", "RADIATION"]]
    assert frames["RAD_COVERED"].all()


def test_products_have_the_old_names_and_verify(raw_run, fitsverify):
    campaign, out, _ = raw_run
    folder = out / "5kRads"
    for name in OLD_NAMES + ["frame_metrics.csv", "correlation.csv"]:
        assert (folder / name).is_file(), name
    errors, report = fitsverify(folder / "cumulative_outliers.fits")
    assert errors == 0, report
    with fits.open(folder / "cumulative_outliers.fits") as hdul:
        union = hdul[0].data
        assert union.dtype == np.uint8 and set(np.unique(union)) <= {0, 1}
        assert [h.name for h in hdul[1:]] == ["NOUTLIER", "TMEAN", "TSIGMA", "NACCEPT",
                                              "INPUTS"]
        assert len(hdul["INPUTS"].data) == 70 and hdul["INPUTS"].data["TIME"][0] == 0.0
        assert np.array_equal(union == 1, hdul["NOUTLIER"].data > 0)
        assert hdul[0].header["THRESH"] == 5.0
    with Image.open(folder / "frames.gif") as gif:
        assert gif.n_frames == 40
    summary = pd.read_csv(out / "operation_summary.csv")
    assert summary["STATUS"].tolist() == ["analysed"] and summary["N_FRAMES"].tolist() == [70]
    assert (out / "config_used.json").is_file()
    assert not (folder / "frames.mp4").exists() or shutil.which("ffmpeg")


def test_cumulative_map_holds_the_hits(raw_run):
    campaign, out, _ = raw_run
    maps = campaign.maps()
    with fits.open(out / "5kRads" / "cumulative_outliers.fits") as hdul:
        union = hdul[0].data.astype(bool)
        sigma = hdul["TSIGMA"].data
    # a hit's centre pixel gets at least 30 % of its charge: those above 10 temporal sigma
    charge = maps["hit_electrons"] * 0.3 / campaign.physics.gain * campaign.physics.adu_scale
    rows, cols = maps["hit_row"], maps["hit_col"]
    strong = charge > 10 * sigma[rows, cols]
    assert strong.sum() > 100
    assert union[rows[strong], cols[strong]].mean() > 0.97


def test_inputs_unchanged_and_converted_once(raw_run, checksums):
    campaign, out, before = raw_run
    after = checksums(campaign.root)
    assert all(after[k] == v for k, v in before.items())        # nothing modified
    added = set(after) - set(before)
    assert added and all(k.startswith("5kRads/fits/") or k == "5kRads/fits_index.csv"
                         for k in added)
    with fits.open(next((campaign.root / "5kRads" / "fits").glob("*.fits"))) as hdul:
        assert hdul[0].header["CALTYPE"] == "OPER" and "TIMESTMP" in hdul[0].header


def test_rerun_keeps_unchanged_products(raw_run, caplog):
    campaign, out, _ = raw_run
    stamp = (out / "5kRads" / "metrics.png").stat().st_mtime_ns
    assert _run(campaign.root, out) == 0
    assert (out / "5kRads" / "metrics.png").stat().st_mtime_ns == stamp
    assert any("unchanged since the last run" in r.getMessage() for r in caplog.records)


def test_converter_hook_takes_raw_files_without_frames_folder(raw_run, tmp_path):
    campaign = raw_run[0]
    folder = tmp_path / "3kRads"
    folder.mkdir()
    for name in ("configFile.txt", "radiationLog.csv"):
        shutil.copy(campaign.root / "5kRads" / name, folder / name)
    for raw in sorted((campaign.root / "5kRads" / "frames").glob("*.raw"))[:4]:
        shutil.copy(raw, folder / raw.name)
    report = convert_folder(folder, "OPER", ConversionSettings())
    assert report.count("converted") == 4
    converted = sorted((folder / "fits").glob("*.fits"))
    assert len(converted) == 4 and (folder / "fits_index.csv").is_file()
    seq = read_sequence(converted)
    assert seq.order_source == "file name" and seq.times[0] == 0.0
    with fits.open(converted[1]) as hdul:
        assert hdul[0].header["CALTYPE"] == "OPER"
        assert hdul[0].header["FRAMENUM"] == 1


# --- bad input -----------------------------------------------------------------------------------

def test_empty_input_folder(tmp_path, caplog, capsys, one_line_error):
    empty = tmp_path / "Operation"
    empty.mkdir()
    assert _run(empty, tmp_path / "out") == 2
    one_line_error(caplog, capsys, empty, "no <x>kRads sub-folders")
    assert not (tmp_path / "out").exists()


def test_missing_named_dataset(raw_run, tmp_path, caplog, capsys, one_line_error):
    campaign = raw_run[0]
    assert _run(campaign.root, tmp_path / "out", "--datasets", "99kRads") == 2
    one_line_error(caplog, capsys, "99kRads", "--datasets")


def test_one_frame_only(tmp_path, caplog, capsys, one_line_error, checksums):
    campaign = simulate_operation(tmp_path / "Operation", seed=2, frames=1, width=16, height=12)
    before = checksums(campaign.root)
    assert _run(campaign.root, tmp_path / "out") == 2
    one_line_error(caplog, capsys, "1 frame: need at least 3")
    assert not (tmp_path / "out").exists()             # nothing written, not even the config
    assert checksums(campaign.root) == before          # not converted either


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory):
    """Two FITS sequences: one without its log, one whose log misses every frame."""
    root = tmp_path_factory.mktemp("oper_bad")
    campaign = simulate_operation(root / "Operation", seed=4, frames=12, width=24, height=16,
                                  doses=(1.0, 2.0), raw=False, hit_density=0.3)
    (campaign.root / "1kRads" / "radiationLog.csv").unlink()
    log = campaign.root / "2kRads" / "radiationLog.csv"
    table = pd.read_csv(log)
    table["TimeStamp"] += 1e4                            # the log of another day
    table.to_csv(log, index=False)
    out = root / "out"
    status = operation_analysis.main([str(campaign.root), str(out), "--no-progress",
                                      "--animation-frames", "4"])
    return status, out


def test_missing_or_non_covering_log_is_a_flagged_row(flagged_run):
    status, out = flagged_run
    assert status == 0
    summary = pd.read_csv(out / "operation_summary.csv").set_index("DATASET")
    assert summary.loc["1kRads", "REASON"] == "no radiation log"
    assert "covers none of the 12 frames" in summary.loc["2kRads", "REASON"]
    assert summary.loc["2kRads", "N_COVERED"] == 0
    for name in ("1kRads", "2kRads"):
        assert math.isnan(summary.loc[name, "R_TRANSIENTS"])
        # no radiation value at any frame: no figure of three empty panels
        assert not (out / name / "rad_vs_outliers.png").exists()
        assert (out / name / "metrics.png").is_file()
        corr = pd.read_csv(out / name / "correlation.csv")
        assert corr["FIT_METHOD"].str.startswith("fallback").all()
        assert corr["NOTE"].notna().all()
        assert (out / name / "cumulative_outliers.fits").is_file()   # outliers still analysed
    assert (summary["STATUS"] == "analysed").all()


# --- units ---------------------------------------------------------------------------------------

def test_correlation_and_fit_fallbacks():
    assert pearson([1, 2], [3, 4]).reason.startswith("2 finite pairs")
    f = fit_line([1.0], [7.0])
    assert f.is_fallback and f.intercept == 7.0 and f.slope == 0.0
    f = fit_line([3, 3, 3, 3], [1, 2, 3, 6])
    assert f.method == "fallback: x is constant" and f.intercept == 3.0
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 400)
    pulls = []
    for _ in range(200):
        y = 2.0 + 3.0 * x + rng.normal(0, 0.5, x.size)
        g = fit_line(x, y)
        pulls.append((g.slope - 3.0) / g.slope_err)
    assert abs(np.std(pulls) - 1) < 0.15 and abs(np.mean(pulls)) < 0.25   # 200 fits: ~5 % and ~0.07


def _sequence(stamps) -> FrameSequence:
    n = len(stamps)
    return FrameSequence([Path(f"f{i}.fits") for i in range(n)], np.arange(n, dtype=float),
                         np.asarray(stamps, dtype=float), np.zeros(n), np.ones(n), 12, 65520.0,
                         (2, 2), "file name")


def test_time_zero_is_a_time_and_clocks_must_match(tmp_path):
    seq = _sequence([0.0, 1.5, 3.0])
    assert seq.times.tolist() == [0.0, 1.5, 3.0] and seq.clock == "relative"
    log_path = tmp_path / "radiationLog.csv"
    log_path.write_text("TimeStamp,Dose\n1.7e9,0\n1.7e9+10,1\n".replace("1.7e9+10", "1700000010"))
    series = radiation_at_frames(read_radiation_log(log_path), seq)
    assert "no common zero point" in series.problem and np.isnan(series.values).all()
    log_path.write_text("TimeStamp,Dose\n-1,0\n5,3\n")
    series = radiation_at_frames(read_radiation_log(log_path), seq)      # rate from Dose
    assert series.name == "dose rate from Dose" and series.problem == ""
    np.testing.assert_allclose(series.values, 0.5)
    np.testing.assert_allclose(series.dose, [0.5, 1.25, 2.0])


@pytest.mark.parametrize("command,how", [
    ("operation_analysis", "file"), ("structure_analysis", "file"),
    ("outgassing_analysis", "file"), ("rts_analysis", "file"), ("operation_analysis", "module")])
def test_commands_run_as_file_and_as_module(command, how):
    cmd = [sys.executable, f"analysis/{command}.py", "--help"] if how == "file" else \
        [sys.executable, "-m", f"analysis.{command}", "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout and "--verbose" in proc.stdout


def test_correlation_figure_legend_writes_values_to_their_errors():
    """The line fit's legend read 'fit: (64.4 ± 5.9) x + (-0.4 ± 0.57)': the intercept to one
    decimal place less than its error, and the slope without its unit."""
    import matplotlib.pyplot as plt

    from analysis.timeseries.plots_operation import plot_rad_vs_outliers
    from utils.models.correlation import fit_line, pearson

    rng = np.random.default_rng(5)
    x = np.repeat([0.0, 0.04, 0.09, 0.14], 10)
    y = rng.poisson(64.0 * x).astype(float)
    fit, corr = fit_line(x, y), pearson(x, y)
    axes = plot_rad_vs_outliers(x, {"transients": y}, {"transients": corr},
                                {"transients": fit},
                                xlabel="RadiationLevel at frame time [krad/s]")
    label = [t.get_text() for t in axes[0].get_legend().get_texts()][1]
    from utils.io.tokens import value_error_text

    assert label == (f"line fit: slope {value_error_text(fit.slope, fit.slope_err)} per krad/s, "
                     f"intercept {value_error_text(fit.intercept, fit.intercept_err)}"), label
    # the long legend gets room above the points; the title (r, n, p) is on its own line
    low, high = axes[0].get_ylim()
    assert y.max() <= low + (high - low) / 1.3 + 1e-9
    assert axes[0].get_title().split("\n")[1].startswith("Pearson r = ")
    plt.close(axes[0].figure)


def test_run_log_and_summary_with_a_folder_without_frames(tmp_path, caplog, monkeypatch):
    """Without ffmpeg the run said 'no ffmpeg executable: ... skipped' twice per sequence; a
    folder without frames was also warned for having no radiation log; and next to its empty
    row the summary wrote every sequence's N_FRAMES as 40.0."""
    import logging

    from analysis.timeseries import animation

    monkeypatch.setattr(animation, "ffmpeg_available", lambda: False)
    campaign = simulate_operation(tmp_path / "Operation", seed=6, frames=8, width=24, height=16,
                                  doses=(1.0, 2.0), raw=False)
    (campaign.root / "3kRads" / "fits").mkdir(parents=True)
    with caplog.at_level(logging.INFO):
        assert operation_analysis.main([str(campaign.root), str(tmp_path / "out"),
                                        "--no-progress", "--animation-frames", "4"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert sum("ffmpeg" in m for m in said) == 1, said
    about_empty = [m for m in said if "3kRads" in m and r"kRads:" in m and "analysis:" not in m]
    assert len(about_empty) == 1 and "no frames" in about_empty[0], about_empty
    text = (tmp_path / "out" / "operation_summary.csv").read_text().splitlines()
    summary = pd.read_csv(tmp_path / "out" / "operation_summary.csv")
    assert summary["STATUS"].tolist() == ["analysed", "analysed", "failed"]
    assert text[1].split(",")[3] == "8" and text[2].split(",")[3] == "8", text[1:3]
    # the summary line: the analysed sequences, then the flagged one, each list once
    last = said[-1]
    assert last.startswith("operation analysis: 2 sequence(s) analysed (1kRads: 8 frames"), last
    assert "; 1 flagged (3kRads: no frames" in last and last.count(") (") == 0, last


def test_cumulative_outlier_figure_counts_frames_in_whole_numbers():
    """Its colour bar read 'outlier in [frames]' with ticks 0.5, 1.0, 1.5 ... for a count."""
    import matplotlib.pyplot as plt

    from analysis.timeseries.plots_operation import plot_cumulative_outliers

    counts = np.zeros((16, 24), np.int32)
    counts[3, 4], counts[10, 12], counts[5, 20] = 1, 4, 2
    ax = plot_cumulative_outliers(counts, 40)
    colorbar = ax.images[0].colorbar
    ax.figure.canvas.draw()
    ticks = [t for t in colorbar.get_ticks() if 0 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert colorbar.ax.get_ylabel() == "frames with the pixel an outlier [count]"
    assert ax.get_title() == "cumulative outliers: 3 pixels in 40 frames"
    plt.close(ax.figure)


def test_outlier_animation_scale_shows_the_typical_hit():
    """The outlier animation's colour scale ran to the brightest |z| of the run (850 sigma on the
    64 x 48 campaign), so the typical hit of 10-100 sigma was drawn nearly black."""
    from analysis.timeseries.operation import outlier_colour_limit

    rng = np.random.default_rng(2)
    z = np.zeros((40, 16, 24))
    hits = rng.random(z.shape) < 0.01
    z[hits] = rng.lognormal(np.log(40.0), 0.6, hits.sum())
    z[0, 0, 0] = 850.0
    top = outlier_colour_limit(z, 5.0)
    assert np.percentile(z[hits], 50) < top < 200
    assert outlier_colour_limit(np.zeros((2, 3, 3)), 5.0) == 10.0   # nothing: 2 x threshold


def test_metrics_figure_draws_only_series_with_data():
    """metrics.png had six panels whatever the logs: without a power log (or a radiation log)
    two (or four) of them were empty but for 'no power log'; the radiation panels' legends
    read 'Radiation (Dose)' and 'Sensor Rad'."""
    import matplotlib.pyplot as plt

    from analysis.timeseries.plots_operation import plot_metrics
    from analysis.timeseries.radiation import RadiationSeries

    frames = pd.DataFrame({"TIME": [0.0, 1.5, 3.0], "TEMP": [20.0, 20.1, 19.9],
                           "N_OUTLIERS": [0, 5, 1], "N_EVENTS": [0, 2, 1],
                           "N_TRANSIENTS": [0, 2, 1]})
    axes = plot_metrics(frames, RadiationSeries(), None)
    assert len(axes) == 2                        # temperature and the counts, nothing empty
    assert axes[0].get_title() == ("operation metrics vs time (no dose log, no radiation log, "
                                   "no power log)")
    assert all(ax.lines for ax in axes)
    plt.close(axes[0].figure)
    log = RadiationSeries(name="RadiationLevel", unit="krad/s",
                          log_time=np.array([-1.0, 0.0, 1.0, 2.0, 3.0]),
                          log_values=np.array([0.0, 0.1, 0.1, 0.1, 0.0]),
                          log_dose=np.array([0.0, 0.0, 0.1, 0.2, 0.3]))
    power = pd.DataFrame({"TIME": [0.0, 1.0, 2.0], "CURRENT": [0.45, 0.47, 0.45],
                          "VOLTAGE": [5.0, 5.01, 5.0]})
    axes = plot_metrics(frames, log, power)
    assert len(axes) == 6 and axes[0].get_title() == "operation metrics vs time"
    legends = [ax.get_legend().get_texts()[0].get_text() for ax in axes[:2]]
    assert legends == ["dose (radiation log)", "RadiationLevel (radiation log)"]
    # legends right of their panels, never over the points (they sat upper left on the data)
    axes[0].figure.canvas.draw()
    for ax in axes:
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    plt.close(axes[0].figure)


def test_animation_colour_bar_says_values_beyond_its_end(tmp_path, monkeypatch):
    """With the outlier scale ending at the 90th percentile, the brightest hits are drawn in the
    end colour: the colour bar must say so (an arrow, extend='max'), as must the frames' 1-99 %
    scale at both ends."""
    import matplotlib.figure

    from analysis.timeseries.animation import write_animation

    seen = []
    original = matplotlib.figure.Figure.colorbar

    def spy(self, mappable, *args, **kwargs):
        seen.append(kwargs.get("extend"))
        return original(self, mappable, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", spy)
    images = np.zeros((3, 8, 10), np.float32)
    images[1, 2, 3] = 850.0
    write_animation(images, ["a", "b", "c"], tmp_path / "o.gif", fps=4, unit="sigma",
                    label="|z|", title="t", vmin=0.0, vmax=150.0)
    images[2, 0, 0] = -5.0
    write_animation(images, ["a", "b", "c"], tmp_path / "f.gif", fps=4, unit="adu",
                    label="signal", title="t", vmin=0.0, vmax=150.0)
    write_animation(np.ones((2, 4, 4)), ["a", "b"], tmp_path / "n.gif", fps=4, unit="adu",
                    label="signal", title="t", vmin=0.0, vmax=2.0)
    assert seen == ["max", "both", "neither"]


def test_line_fit_through_constant_counts_has_unknown_errors():
    """No transient in any frame (beam off, or hits below threshold): the line through the
    zero counts had slope 0.0 +- 0.0 in correlation.csv, an exact slope claimed from no
    scatter at all."""
    fit = fit_line(np.linspace(0.0, 0.14, 20), np.zeros(20))
    assert fit.slope == 0.0 and fit.method == "least squares"
    assert math.isnan(fit.slope_err) and math.isnan(fit.intercept_err)
    noisy = fit_line(np.linspace(0.0, 0.14, 20), np.arange(20) % 3)
    assert noisy.slope_err > 0                           # ordinary scatter: errors as before
