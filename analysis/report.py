"""Write one HTML datasheet of the sensor (and its radiation response) from a results folder.

Reads the products that the pipelines wrote below RESULTS_DIR (``summary.json``
files, FITS headers, CSV tables, PNG figures) and writes ``index.html``: the
datasheet (every characteristic number with its uncertainty, unit, method and
the product it comes from), the key calibration figures with captions, the
radiation response when present, data quality (frames rejected or flagged,
masters refused, warnings, with reasons) and provenance (software version,
settings of every step, input hashes).  ``report.json`` holds the same numbers
for scripts.  Figures are copied next to the page, so the folder can be zipped
and mailed; nothing is fetched from the network to view it.  Parts that were
not measured are marked so, never an error.  The report computes nothing the
pipelines did not compute.

Example
-------
::

    python -m analysis.report demo_output/products
    python -m analysis.report results/ --output results/report --title "SIM-CMOS-12 TVAC"
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from jinja2 import Environment, FileSystemLoader, select_autoescape

from analysis.report_data import ReportData, collect
from utils import cli, plotting
from utils.errors import InputPathError
from utils.io.fitsio import (
    atomic_path,
    check_output_dir,
    remove_stale_temporaries,
    software_version,
    write_json,
    write_text,
)
from utils.io.tokens import error_decimals

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.report")

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Rows shown per data-quality table (the CSV products hold all of them).
MAX_ROWS = 200


def _fmt(value) -> str:
    """A number with 4 significant digits (integers as they are)."""
    if value is None:
        return ""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return f"{int(value)}"
    return f"{value:.4g}"


def _fmt_pair(value, error) -> tuple[str, str]:
    """Value and uncertainty as a physicist writes them: the error to two significant
    digits, the value to the same decimal place (``2.06``, ``0.076``)."""
    if value is None or error is None or not math.isfinite(float(error)) or float(error) <= 0:
        return _fmt(value), _fmt(error)
    digits = error_decimals(float(error))
    shown = f"{float(value):.{digits}f}"
    return (shown.lstrip("-") if float(shown) == 0 else shown), f"{float(error):.{digits}f}"


def _cell(value) -> str:
    """A table cell as text: ``(value, error)`` pairs as ``value +- error``."""
    if isinstance(value, tuple):
        shown = _fmt_pair(*value)
        # a count's error of 0 (no pixel near the threshold) is no uncertainty to show
        return f"{shown[0]} \u00b1 {shown[1]}" if shown[1] and float(shown[1]) else shown[0]
    if isinstance(value, float):
        return _fmt(value)
    return "\u2013" if value is None else str(value)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.globals["pair"] = _fmt_pair
    return env


def _copy_figure(src: Path, folder: Path, taken: set[str], root: Path | None = None) -> str:
    """Copy a figure next to the report, named after its path below the results folder
    ``root`` (``dark/plots/x.png`` -> ``dark_plots_x.png``; its last three parts when it lies
    elsewhere), unique; return its relative path."""
    try:
        parts = Path(src).resolve().relative_to(Path(root).resolve()).parts
    except (TypeError, ValueError):  # no root, or a figure outside it
        parts = src.parts[-3:]
    stem = "_".join(parts)
    name = stem
    k = 1
    while name in taken:
        name, k = f"{k}_{stem}", k + 1
    taken.add(name)
    with atomic_path(folder / name) as tmp:
        shutil.copyfile(src, tmp)
    return f"figures/{name}"


def render(data: ReportData, out_dir: Path) -> tuple[Path, Path]:
    """Write ``index.html``, ``report.json`` and ``figures/`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    def copy(figure) -> str:
        return _copy_figure(figure.path, out_dir / "figures", taken, data.results_dir)

    figs = [{"src": copy(f), "caption": f.caption}
            for f in data.figures if f.section == "calibration"]
    radiation_blocks = [{
        "key": block.key, "title": block.title, "entries": block.entries,
        "measured": block.measured, "missing": block.missing,
        "tables": [{"caption": t.caption, "columns": t.columns,
                    "rows": [[_cell(c) for c in row] for row in t.rows],
                    "classes": t.row_classes or [""] * len(t.rows)} for t in block.tables],
        "figures": [{"src": copy(f), "caption": f.caption} for f in block.figures]}
        for block in data.radiation or []]
    quality = data.quality
    counts = [(name, quality[key]) for key, name in (
        ("frames_converted", "Raw frames converted"), ("frames_rejected", "Raw frames rejected"),
        ("frames_indexed", "Frames indexed"), ("frames_flagged", "Frames flagged BADFITS"),
        ("masters_built", "Masters built"), ("masters_refused", "Masters refused"),
        ("warnings", "Warnings logged")) if key in quality]
    # an empty CSV cell (no stage, a bias's exposure, all attempts) reads as NaN: a dash,
    # as in the datasheet, not "nan"
    tables = [(name, {"columns": list(t.columns),
                      "rows": [[_cell(None if isinstance(v, float) and math.isnan(v) else v)
                                 for v in row]
                               for row in t.head(MAX_ROWS).itertuples(index=False)]})
              for name, t in quality.get("tables", {}).items()]
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html = _environment().get_template("report.html.j2").render(
        title=data.title, generated=generated, software=software_version(),
        results_dir=str(data.results_dir), sections=data.sections(), datasheet=data.datasheet,
        calibration_figures=figs, radiation_blocks=radiation_blocks, quality_counts=counts,
        quality_tables=tables, provenance=data.provenance,
        nav=[("datasheet", "Datasheet"), ("calibration", "Calibration"),
             ("radiation", "Radiation"), ("quality", "Data quality"),
             ("provenance", "Provenance")])
    page = write_text(html, out_dir / "index.html")
    for stale in (out_dir / "figures").glob("*.png"):   # figures of an earlier report
        if stale.name not in taken:
            stale.unlink()
    record = dict(data.as_json(), generated=generated, software=software_version())
    numbers = write_json(record, out_dir / "report.json", indent=1)
    return page, numbers


def run(results_dir: str | Path, out_dir: str | Path | None = None,
        title: str = "") -> tuple[Path, ReportData]:
    """Collect the products below ``results_dir`` and write the report.

    Raises
    ------
    InputPathError
        ``results_dir`` is not a folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputPathError(f"{results_dir}: no such results folder; give the output folder "
                             "of run_calibration.py (its products/) or of "
                             "run_full_radiation_pipeline.py")
    out_dir = check_output_dir(Path(out_dir) if out_dir else results_dir / "report",
                               "report folder")
    t0 = time.perf_counter()
    # the report shows the products' figures: those still being rendered (a pipeline of this
    # process, e.g. the radiation model just before) are written first, else which figures it
    # shows would depend on the renderer's timing
    plotting.figures().wait_under(results_dir)
    data = collect(results_dir, title)
    if not data.products:
        raise InputPathError(f"{results_dir}: no pipeline products found; give the output "
                             "folder of run_calibration.py (its products/) or of "
                             "run_full_radiation_pipeline.py")
    remove_stale_temporaries(out_dir, recursive=True)  # left by a killed run
    page, _ = render(data, out_dir)
    measured = sum(e.measured for e in data.datasheet)
    logger.info("report: %d of %d datasheet numbers measured, %d figures, written to %s "
                "(%.1f s)", measured, len(data.datasheet), len(data.figures), page,
                time.perf_counter() - t0)
    return page, data


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python -m analysis.report", __doc__)
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="output folder of the pipelines (e.g. demo_output/products)")
    parser.add_argument("--output", default=None,
                        help="folder of the report (default: RESULTS_DIR/report)")
    parser.add_argument("--title", default="", help="title of the report")
    return parser


def _main(args) -> int:
    run(args.results_dir, args.output, args.title)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
