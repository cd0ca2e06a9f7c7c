"""Convert, index and process a calibration campaign in one command.

Layouts:
  standard     DATASET holds TestSection1 (bias), TestSection2 (darks), TestSection3 (flats)
  irradiation  DATASET holds Preirradiation/, Irradiation/<dose>kRads/ and Postirradiation/,
               each with Bias/, Darks/, Flats/; stages and dose steps are never mixed
  demo         simulate the built-in synthetic campaign into OUTPUT_DIR/campaign first,
               then run it (standard layout unless --demo-layout irradiation)

Steps: raw frames -> FITS (frames already converted are skipped), the index
DATASET/index.csv, then masters, per-frame statistics and plots in OUTPUT_DIR
(see python -m analysis.process_index --help), then the bias pipeline
(OUTPUT_DIR/bias, see bias_pipeline/run_pipeline.py --help), the photon-transfer
gain from the flats (OUTPUT_DIR/flat/gain.json: it needs only the bias and flat
pairs), the dark pipeline with that bias model and that gain (OUTPUT_DIR/dark),
and the flat pipeline with the bias and dark models (OUTPUT_DIR/flat, see
flat_pipeline/run_pipeline.py --help); per stage pre and post for an
irradiation campaign; finally the campaign report OUTPUT_DIR/report/index.html (see
python -m analysis.report --help; for an irradiation campaign its radiation section
compares the pre and post stages, and shows the damage, precision and model results
once python -m analysis.dose_analysis has written them below OUTPUT_DIR) and the run's
warnings in OUTPUT_DIR/warnings.log.  The master options (--method, --sigma,
--temp-bin, --exp-tolerance, ...) hold for every pipeline: they all group and
combine as index processing did, and take its masters.
Re-running finishes what is missing and leaves complete products alone.

Example
-------
  python run_calibration.py demo demo_output
  python run_calibration.py standard /data/campaign results/
  python run_calibration.py irradiation /data/irrad_campaign results/ --workers 2
  python run_calibration.py standard /data/campaign results/ --plots all   # every figure
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Sequence

from analysis import process_index
from analysis import report as campaign_report
from analysis.stage_pipelines import run_stage_pipelines
from utils import cli, plotting, scheduler
from utils.errors import ConfigError
from utils.io.conversion import (
    STATUS_CONVERTED,
    STATUS_EXISTING,
    STATUS_REJECTED,
    ConversionSettings,
    convert_sections,
)
from utils.io.discovery import campaign_sections
from utils.io.fitsio import check_output_dir, check_output_file
from utils.io.index import IndexSettings, build_index, write_index

logger = logging.getLogger("run_calibration")


def run(layout: str, dataset: Path, out_dir: Path, *, search_depth: int = 6, workers: int = 1,
        masters=None, progress_bar: bool = False,
        warnings: cli.WarningCollector | None = None) -> dict:
    """Conversion, indexing and index processing, in this order; ``warnings`` (the run's
    collector) is written to ``warnings.log`` before the report, which lists them.

    Returns
    -------
    dict
        Counts and paths for the final summary.
    """
    try:
        conversion = ConversionSettings(search_depth=search_depth, workers=workers)
        indexing = IndexSettings(search_depth=search_depth + 2)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err
    # every output place is checked before the first frame is converted
    check_output_dir(out_dir)
    stages = campaign_sections(dataset, layout)
    index_path = dataset / "index.csv"
    check_output_file(index_path, "dataset index")
    converted = existing = rejected = 0
    for stage in stages:
        report = convert_sections({c: p for c, p in stage.sections.items()}, conversion,
                                  index_dir=stage.root, progress_bar=progress_bar)
        converted += report.count(STATUS_CONVERTED)
        existing += report.count(STATUS_EXISTING)
        rejected += report.count(STATUS_REJECTED)
        logger.info("%s: %d converted, %d already there, %d rejected",
                    stage.root, report.count(STATUS_CONVERTED), report.count(STATUS_EXISTING),
                    report.count(STATUS_REJECTED))
    table = build_index(discover=[dataset], settings=indexing, previous=index_path,
                        progress_bar=progress_bar)
    write_index(table, index_path)
    masters = masters or process_index.MasterSettings()
    result = process_index.run(index_path, out_dir, masters,
                               progress_bar=progress_bar,
                               upstream_settings={"layout": layout, "dataset": str(dataset),
                                                  "conversion": conversion, "indexing": indexing})
    pipes = run_pipelines(layout, table, index_path, out_dir, masters=masters,
                          progress_bar=progress_bar)
    plotting.figures().wait()  # the report shows the figures: every one written first
    if warnings is not None:  # and this run's warnings (it read the last run's, or none)
        warnings.write(out_dir / "warnings.log")
    page, _ = campaign_report.run(out_dir, out_dir / "report")
    return {"converted": converted, "existing": existing, "rejected": rejected, "report": page,
            "indexed": len(table), "badfits": int(table["BADFITS"].sum()),
            "index": index_path, "result": result, "bias": pipes.bias, "dark": pipes.dark,
            "flat": pipes.flat}


def model_groups(layout: str) -> list[tuple[str, float]]:
    """('', nan) for a standard campaign; the pre and post stages otherwise (the radiating
    stage's dose steps are the radiation analyses' business)."""
    if layout == "standard":
        return [("", math.nan)]
    return [("pre", math.nan), ("post", math.nan)]


def run_pipelines(layout: str, table, index_path: Path, out_dir: Path, *, masters=None,
                  progress_bar: bool = False):
    """The bias, photon-transfer gain, dark and flat pipelines (``analysis.stage_pipelines``)
    into ``OUTPUT_DIR/<kind>/<stage>``, grouping and combining as ``masters`` (the master
    options); the bias and dark pipelines take index processing's masters
    (``OUTPUT_DIR/masters``) instead of stacking the frames again."""
    return run_stage_pipelines(index_path, table, model_groups(layout),
                               lambda kind, stage, dose: out_dir / kind / stage,
                               masters_from=out_dir / "masters", masters=masters,
                               progress_bar=progress_bar)


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python run_calibration.py", __doc__)
    parser.add_argument("layout", choices=["standard", "irradiation", "demo"],
                        help="dataset layout, or demo for the built-in synthetic campaign")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="DATASET OUTPUT_DIR (demo: OUTPUT_DIR, default demo_output)")
    parser.add_argument("--search-depth", type=int, default=6,
                        help="folder levels below each section to look for attempts")
    parser.add_argument("--convert-workers", type=int, default=1,
                        help="processes converting raw frames (1: this process, on two "
                             "threads where there are two cores)")
    parser.add_argument("--demo-layout", choices=["standard", "irradiation"], default="standard",
                        help="campaign simulated by the demo")
    parser.add_argument("--seed", type=int, default=1, help="seed of the demo campaign")
    process_index.add_master_options(parser)
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def _main(args) -> int:
    masters = process_index.master_settings(args)  # a bad option stops before anything is done
    if args.search_depth < 0:
        raise ConfigError(f"invalid option: --search-depth must be >= 0, not {args.search_depth}")
    if args.convert_workers < 1:
        raise ConfigError(f"invalid option: --convert-workers must be >= 1, not "
                          f"{args.convert_workers}")
    if args.layout == "demo":
        if len(args.paths) > 1:
            raise ConfigError("demo takes one OUTPUT_DIR (the campaign is simulated inside it)")
        out = Path(args.paths[0] if args.paths else "demo_output")
        dataset, layout = out / "campaign", args.demo_layout
        check_output_dir(out)
        from utils import sim  # (the simulator: only the demo needs it)

        if (dataset / "truth" / "truth.json").is_file():
            logger.info("demo campaign already simulated in %s", dataset)
        elif layout == "standard":
            # darks at three temperatures and two exposures: enough signal for the dark model;
            # flats at four levels below 70 % of saturation, one near it and one saturated:
            # the photon-transfer gain
            sim.simulate_standard(dataset, seed=args.seed, dark_temperatures=(5.0, 15.0, 25.0),
                                  dark_exposures=(1.0, 4.0),
                                  flat_exposures=(0.05, 0.15, 0.25, 0.35, 0.7, 1.3))
        else:
            sim.simulate_irradiation(dataset, seed=args.seed)
        out_dir = out / "products"
    else:
        if len(args.paths) != 2:
            raise ConfigError(f"{args.layout} needs DATASET and OUTPUT_DIR")
        dataset, out_dir, layout = Path(args.paths[0]), Path(args.paths[1]), args.layout
    with cli.WarningCollector() as warnings:
        summary = run(layout, dataset, out_dir, search_depth=args.search_depth,
                      workers=args.convert_workers, masters=masters,
                      progress_bar=not args.no_progress, warnings=warnings)
        warnings.write(out_dir / "warnings.log")
    result = summary["result"]
    models = ", ".join([str(r.out_dir / "bias_model.fits") for r in summary["bias"]]
                       + [str(r.out_dir / "dark_model") for r in summary["dark"]
                          if (r.out_dir / "dark_model").is_dir()]
                       + [str(g.out_dir) for r in summary["flat"] for g in r.groups]) or "none"
    logger.info("done: %d frames converted (%d already there, %d rejected); %d indexed in %s "
                "(%d BADFITS); %s; models: %s; report: %s", summary["converted"],
                summary["existing"], summary["rejected"], summary["indexed"], summary["index"],
                summary["badfits"], result.summary_line(), models, summary["report"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python run_calibration.py {standard,irradiation,demo} ...``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
