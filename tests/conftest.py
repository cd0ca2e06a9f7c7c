"""Shared fixtures: small seeded synthetic campaigns, simulated once per session.

Session-scoped campaigns (``standard_campaign``, ``irradiation_campaign``,
``dosedirs_campaign``) must never be modified by a test; tests that write into a
campaign (converting, editing logs, planting defects) take the function-scoped
``*_copy`` fixtures, which copy the session campaign into ``tmp_path``.
``converted_standard`` / ``converted_irradiation`` are session-scoped copies that
have been converted to FITS once (read-only too).

Helpers are exposed as fixtures (``checksums``, ``fitsverify``) so test modules
need not import this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from utils.io.conversion import ConversionSettings, convert_sections
from utils.io.discovery import campaign_sections
from utils.sim import (
    Campaign,
    load_campaign,
    simulate_dosedirs,
    simulate_irradiation,
    simulate_standard,
)

#: Seed of every simulated campaign of the suite.
SEED = 11


# --- helpers ------------------------------------------------------------------------------------

def sha256_tree(root: str | os.PathLike) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of every file below ``root`` (recursively)."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


#: Files whose fitsverify check could not run (binary missing), reported at the end of the run.
_UNVERIFIED: list[str] = []


def run_fitsverify(path: str | os.PathLike) -> tuple[int, str]:
    """Run ``fitsverify -q -e`` on one file; return ``(number of errors, output)``.

    Without the ``fitsverify`` binary only this check is skipped (returns 0 errors), not the
    calling test, whose other checks have nothing to do with it; the end of the run says how
    many files went unverified.
    """
    exe = shutil.which("fitsverify")
    if exe is None:
        _UNVERIFIED.append(str(path))
        return 0, "fitsverify not installed: not checked"
    proc = subprocess.run([exe, "-q", "-e", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if "verification OK" in output:
        return 0, output
    match = re.search(r"(\d+)\s+error", output)
    return (int(match.group(1)) if match else max(proc.returncode, 1)), output


def strict_json_files(root: str | os.PathLike) -> list[Path]:
    """Every ``*.json`` below ``root``, each parsed as strict JSON (a bare ``NaN``,
    ``Infinity`` or ``-Infinity`` token fails with the file's name)."""
    def refuse(token):
        raise AssertionError(f"{path}: non-JSON token {token}")

    paths = sorted(Path(root).rglob("*.json"))
    for path in paths:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    return paths


def convert_campaign(campaign: Campaign, **settings) -> list:
    """Convert every stage of a standard or irradiation campaign; return the reports."""
    reports = []
    for stage in campaign_sections(campaign.root, campaign.layout):
        sections = {cal: str(path) for cal, path in stage.sections.items()}
        reports.append(convert_sections(sections, ConversionSettings(**settings)))
    return reports


def _copy(campaign: Campaign, dest: Path) -> Campaign:
    shutil.copytree(campaign.root, dest)
    return load_campaign(dest)


@pytest.fixture(scope="session")
def checksums():
    """The ``sha256_tree(root)`` helper: ``{relative path: sha256}`` of every file under root."""
    return sha256_tree


def assert_one_line_error(caplog, capsys, *names) -> str:
    """Exactly one ERROR record, on one line, naming every ``names``; no traceback anywhere."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    record = errors[0]
    message = record.getMessage()
    assert "\n" not in message
    assert record.exc_info is None
    for name in names:
        assert str(name) in message, message
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert [line for line in captured.err.splitlines() if line.startswith("ERROR")] == \
        [f"ERROR utils.cli: {message}"]
    return message


@pytest.fixture(scope="session")
def one_line_error():
    """The ``assert_one_line_error(caplog, capsys, *names) -> message`` helper."""
    return assert_one_line_error


def pytest_terminal_summary(terminalreporter):
    """Say when FITS conformance was not checked (fitsverify missing)."""
    if _UNVERIFIED:
        terminalreporter.write_line(
            f"fitsverify is not installed: {len(_UNVERIFIED)} FITS files were not verified "
            "(apt-get install fitsverify)", yellow=True)


@pytest.fixture(scope="session")
def fitsverify():
    """The ``run_fitsverify(path) -> (errors, output)`` helper (0 errors without the binary)."""
    return run_fitsverify


@contextlib.contextmanager
def open_page(path: str | os.PathLike, width: int = 1280, height: int = 900):
    """Open a local HTML file in headless Chromium; yield ``(page, problems)``, ``problems``
    collecting console errors, page errors and failed requests.  Skips the calling test
    without Debian's ``chromium`` or the ``playwright`` package (``.ci/run`` installs both;
    the system browser is driven through ``executable_path``, nothing is downloaded)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if not chromium or sync_playwright is None:
        pytest.skip("headless browser check needs Debian chromium and the playwright package "
                    "(.ci/run installs both)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.goto(Path(path).as_uri())
            page.wait_for_load_state("load")
            yield page, problems
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser_page():
    """The ``open_page(html_path)`` context manager: ``(page, problems)`` in headless Chromium."""
    return open_page


# --- one worker per shared campaign (pytest-xdist --dist loadgroup) -----------------------------

#: Test files whose expensive session fixtures are shared run on one xdist worker, so each
#: fixture is built once per run instead of once per worker that needs it.  Every other file
#: is its own group (``--dist loadgroup`` then schedules like ``--dist loadfile``).
SHARED_FIXTURE_GROUPS = {
    # rad_dose, rad_analysis, rad_dark_models (dose, damage and radiation analyses, report)
    "rad_products": ("tests/analysis/test_dose_analysis.py",
                     "tests/analysis/test_radiation_damage.py",
                     "tests/analysis/test_radiation_analysis.py",
                     "tests/analysis/test_report_radiation.py"),
    # demo_output and rad_calibration (run_calibration.py runs)
    "calibration_runs": ("tests/test_run_calibration.py",
                         "tests/analysis/test_radiation_regressions.py",
                         "tests/analysis/test_report.py",
                         "tests/test_scheduler.py"),
}
_GROUP_OF_FILE = {path: group for group, paths in SHARED_FIXTURE_GROUPS.items()
                  for path in paths}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test with its ``xdist_group``: its file's shared group, else its file
    (before pytest-xdist reads the marks)."""
    root = Path(str(config.rootpath))
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = Path(str(item.path)).relative_to(root).as_posix()
            item.add_marker(pytest.mark.xdist_group(_GROUP_OF_FILE.get(path, path)))


# --- figures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def figures_rendered_in_process():
    """Commands run in a test render their figures in the test's own process.

    A command's default is one spawned renderer process when more than one CPU is available
    (``utils.plotting.figure_output``): beside a run it overlaps drawing with computing, but
    under pytest-xdist every core already runs a test, and each spawn re-imports numpy,
    matplotlib and astropy (~1.6 s of CPU per command; a few hundred commands run in the
    suite).  The renderer pool keeps its own tests (tests/utils/test_plotting.py) and one
    end-to-end run (``demo_output``, through :func:`default_figure_renderer`).
    """
    from utils import plotting

    original = plotting.figure_output

    def in_process(level: str = "summary", workers: int | None = None):
        return original(level, 0 if workers is None else workers)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plotting, "figure_output", in_process)
        yield original


@contextlib.contextmanager
def default_figure_renderer(original):
    """Within the block, commands choose their figure renderer as outside the tests."""
    from utils import plotting

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plotting, "figure_output", original)
        yield


# --- session campaigns (read-only) ---------------------------------------------------------------

@pytest.fixture(scope="session")
def standard_campaign(tmp_path_factory) -> Campaign:
    """Standard campaign, default (small) simulator sizes, with its three planted defects."""
    return simulate_standard(tmp_path_factory.mktemp("sim") / "standard", seed=SEED)


@pytest.fixture(scope="session")
def irradiation_campaign(tmp_path_factory) -> Campaign:
    """Irradiation campaign: pre, 10 and 20 kRads steps, post (no defects)."""
    return simulate_irradiation(tmp_path_factory.mktemp("sim") / "irradiation", seed=SEED)


@pytest.fixture(scope="session")
def dosedirs_campaign(tmp_path_factory) -> Campaign:
    """Dose directories of already-converted FITS frames (5 and 10 kRads)."""
    return simulate_dosedirs(tmp_path_factory.mktemp("sim") / "dosedirs", seed=SEED)


@pytest.fixture(scope="session")
def converted_standard(standard_campaign, tmp_path_factory):
    """``(campaign, report)``: a copy of the standard campaign converted once (read-only)."""
    campaign = _copy(standard_campaign, tmp_path_factory.mktemp("conv") / "standard")
    (report,) = convert_campaign(campaign)
    return campaign, report


@pytest.fixture(scope="session")
def converted_irradiation(irradiation_campaign, tmp_path_factory):
    """``(campaign, reports)``: a copy of the irradiation campaign, every stage converted once."""
    campaign = _copy(irradiation_campaign, tmp_path_factory.mktemp("conv") / "irradiation")
    return campaign, convert_campaign(campaign)


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory, figures_rendered_in_process):
    """``(out, messages)``: one run of ``run_calibration.py demo`` shared by the end-to-end and
    report tests (read-only), with the log messages of that run.  It runs in a non-ASCII
    folder, as these users' campaigns are named: every product must handle it; and with the
    commands' own figure renderer (a spawned process when there are two CPUs)."""
    import run_calibration

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    out = tmp_path_factory.mktemp("demo") / "cämp ü space" / "Irradiación"
    keep = Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        with default_figure_renderer(figures_rendered_in_process):
            status = run_calibration.main(["demo", str(out), "--no-progress"])
    finally:
        root.removeHandler(keep)
    assert status == 0, keep.messages[-5:]
    return out, keep.messages


# --- function-scoped copies (modifiable) ---------------------------------------------------------

@pytest.fixture
def standard_copy(standard_campaign, tmp_path) -> Campaign:
    """A private copy of the standard campaign (raw only) in ``tmp_path``."""
    return _copy(standard_campaign, tmp_path / "standard")


@pytest.fixture
def irradiation_copy(irradiation_campaign, tmp_path) -> Campaign:
    """A private copy of the irradiation campaign (raw only) in ``tmp_path``."""
    return _copy(irradiation_campaign, tmp_path / "irradiation")


@pytest.fixture
def dosedirs_copy(dosedirs_campaign, tmp_path) -> Campaign:
    """A private copy of the dose-directory campaign in ``tmp_path``."""
    return _copy(dosedirs_campaign, tmp_path / "dosedirs")


@pytest.fixture
def converted_standard_copy(converted_standard, tmp_path) -> Campaign:
    """A private copy of the converted standard campaign (FITS and fits_index.csv included)."""
    return _copy(converted_standard[0], tmp_path / "converted")


# --- irradiation campaign of the radiation and dose analyses (read-only) -------------------------
#: Seed, physics and gain [e-/ADC count] of ``rad_campaign``.
RAD_SEED = 21
RAD_GAIN = "2.0"


@pytest.fixture(scope="session")
def rad_campaign(tmp_path_factory):
    """``(campaign, index_csv)``, converted and indexed: pre and post stages with bias and darks
    at 10, 20 and 30 degC (their dark models can be fitted), four dose steps (10-40 krad) at
    20 degC, darks of 5 and 20 s, 8 frames per set, the beam off while measuring (each step's
    dose delivered before its frames), T_d 6.5 degC and a low dark current (0.5 e-/s at 20
    degC) so that a 5 e-/s threshold separates hot pixels cleanly."""
    from utils.io.index import build_index, write_index
    from utils.sim import Physics

    campaign = simulate_irradiation(tmp_path_factory.mktemp("rad") / "campaign", seed=RAD_SEED,
                                    width=64, height=48, frames=8, doses=(10, 20, 30, 40),
                                    model_temperatures=(10, 20, 30), dark_exposures=(5.0, 20.0),
                                    flat_exposures=(0.2,), dose_profile="before",
                                    physics=Physics(doubling_temperature=6.5, dark_median=0.5))
    convert_campaign(campaign)
    index = campaign.root / "index.csv"
    write_index(build_index(discover=[campaign.root]), index)
    return campaign, index


@pytest.fixture(scope="session")
def rad_dose(rad_campaign, tmp_path_factory):
    """``(campaign, out, status)`` of one dose_analysis run on ``rad_campaign`` (with its damage
    analysis in ``out/damage``)."""
    from analysis import dose_analysis

    campaign, index = rad_campaign
    out = tmp_path_factory.mktemp("rad_dose") / "out"
    status = dose_analysis.main([str(index), str(out), "--gain", RAD_GAIN, "--no-progress"])
    return campaign, out, status


@pytest.fixture(scope="session")
def rad_analysis(rad_campaign, tmp_path_factory):
    """``(campaign, out, status)`` of one radiation_analysis run on ``rad_campaign`` (per-group
    masters and the difference maps between groups), shared by its tests and the report's."""
    from analysis import radiation_analysis

    campaign, index = rad_campaign
    out = tmp_path_factory.mktemp("rad_analysis") / "out"
    status = radiation_analysis.main([str(index), str(campaign.root / "radiationLogCompleto.csv"),
                                      str(out), "--no-progress"])
    return campaign, out, status


def truth_currents(campaign) -> dict:
    """``{stage tag: true dark current at 20 degC per pixel [e-/s]}`` of an irradiation
    campaign: the pre-irradiation map and the damaged map of every step and of post."""
    maps = campaign.maps()
    out = {"pre": maps["dark_ref"]}
    for label, current in zip(maps["damage_label"], maps["damage_dark_ref"]):
        tag = "post" if label == "post" else f"radiating_D{float(label[:-5]):g}kR"
        out[tag] = current
    return out


@pytest.fixture(scope="session")
def rad_truth():
    """The ``truth_currents(campaign) -> {tag: map}`` helper."""
    return truth_currents


@pytest.fixture(scope="session")
def rad_dark_models(rad_campaign, tmp_path_factory):
    """``(out, {stage: status})``: the dark pipeline on the pre and post stages of
    ``rad_campaign`` (gain 2 e-/ADC count), in ``out/pre`` and ``out/post``."""
    from dark_pipeline import run_pipeline as dark_cli

    _, index = rad_campaign
    out = tmp_path_factory.mktemp("dark_pp") / "out"
    runs = {}
    for stage in ("pre", "post"):
        runs[stage] = dark_cli.main(["--basepath", str(index), "--output-dir",
                                     str(out / stage), "--stage", stage, "--gain", RAD_GAIN,
                                     "--no-progress"])
    return out, runs


@pytest.fixture(scope="session")
def rad_calibration(rad_campaign, tmp_path_factory):
    """``(campaign, products, status)`` of one ``run_calibration.py irradiation`` run on a copy
    of ``rad_campaign`` (already converted: the converter finds every FITS there), whose pre
    and post stages at 10, 20 and 30 degC get bias and dark models (read-only).  No figures
    (``--plots none``): no test of it looks at one, and saving them was most of its time."""
    import run_calibration

    campaign = _copy(rad_campaign[0], tmp_path_factory.mktemp("rad_calib") / "campaign")
    out = campaign.root.parent / "products"
    status = run_calibration.main(["irradiation", str(campaign.root), str(out), "--no-progress",
                                   "--no-per-attempt", "--plots", "none"])
    return campaign, out, status
