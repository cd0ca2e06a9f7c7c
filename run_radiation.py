"""Convert, index and analyse an irradiation campaign in one command.

BASEPATH holds Preirradiation/, Irradiation/<dose>kRads/ and Postirradiation/,
each with Bias/, Darks/, Flats/ of raw frames.  Steps: raw frames -> FITS
(frames already converted are skipped; inputs are never modified), the index
BASEPATH/index.csv with the dose bookkeeping joined from RADIATION_LOG by time
stamp, then the radiation analysis into OUTPUT_DIR (per stage and dose step:
statistics, masters, time figures, group summary; differences between groups;
see python -m analysis.radiation_analysis --help).  Re-running finishes what is
missing and keeps complete products.

Example
-------
::

    python run_radiation.py /data/irr /data/irr/radiationLogCompleto.csv out/rad
    python run_radiation.py /data/irr /data/irr/radiationLogCompleto.csv out/rad \\
        --stages pre post --convert-workers 2
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from analysis import radiation_analysis
from utils import cli, plotting
from utils.errors import ConfigError, InputPathError
from utils.io.conversion import (
    STATUS_CONVERTED,
    STATUS_EXISTING,
    STATUS_REJECTED,
    ConversionSettings,
    convert_sections,
)
from utils.io.discovery import campaign_sections
from utils.io.dose import check_radiation_log
from utils.io.fitsio import check_output_dir
from utils.io.index import IndexSettings, build_index, write_index
from utils.stack.master import add_combine_options

logger = logging.getLogger("run_radiation")


def run(basepath: Path, radiation_log: Path, out_dir: Path,
        settings: radiation_analysis.RadiationSettings, *, search_depth: int = 6,
        workers: int = 1, progress_bar: bool = False) -> dict:
    """Conversion, indexing with the dose join, radiation analysis; in this order.

    Raises
    ------
    UserError
        No irradiation stage folders, a missing or unusable radiation log, or what the
        analysis refuses.
    """
    basepath, radiation_log = Path(basepath), Path(radiation_log)
    if not radiation_log.is_file():
        raise InputPathError(f"{radiation_log}: radiation log not found; give the campaign's "
                             "radiationLogCompleto.csv")
    # every input and the output folder checked before anything is converted or written:
    # a bad log or output path must not leave a half-updated campaign behind
    check_radiation_log(radiation_log)
    check_output_dir(out_dir)
    stages = campaign_sections(basepath, "irradiation")
    conversion = ConversionSettings(search_depth=search_depth, workers=workers)
    counts = {STATUS_CONVERTED: 0, STATUS_EXISTING: 0, STATUS_REJECTED: 0}
    for stage in stages:
        report = convert_sections(dict(stage.sections), conversion, index_dir=stage.root,
                                  progress_bar=progress_bar)
        for status in counts:
            counts[status] += report.count(status)
    index_path = basepath / "index.csv"
    table = build_index(discover=[basepath], settings=IndexSettings(search_depth=search_depth + 2),
                        previous=index_path, radiation_log=radiation_log,
                        progress_bar=progress_bar)
    write_index(table, index_path)
    result = radiation_analysis.run(index_path, radiation_log, out_dir, settings, joined=True,
                                    progress_bar=progress_bar)
    return {"converted": counts[STATUS_CONVERTED], "existing": counts[STATUS_EXISTING],
            "rejected": counts[STATUS_REJECTED], "indexed": len(table), "index": index_path,
            "uncovered": int(table["FRAMEDOSE"].isna().sum()), "result": result}


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python run_radiation.py", __doc__)
    parser.add_argument("basepath", metavar="BASEPATH", help="irradiation campaign folder")
    parser.add_argument("radiation_log", metavar="RADIATION_LOG",
                        help="campaign radiation log (radiationLogCompleto.csv)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--stages", nargs="+", default=["pre", "radiating", "post"],
                        help="stages to analyse, in order")
    parser.add_argument("--ignore-temp", action="store_true",
                        help="one master per group and exposure, all temperatures together")
    parser.add_argument("--search-depth", type=int, default=6,
                        help="folder levels below each section to look for attempts")
    parser.add_argument("--convert-workers", type=int, default=1,
                        help="processes converting raw frames")
    add_combine_options(parser)
    plotting.add_plots_option(parser)
    return parser


def _main(args) -> int:
    args.group_by_dose = False
    settings = radiation_analysis.settings_from(args)
    if args.search_depth < 0:
        raise ConfigError(f"invalid option: --search-depth must be >= 0, not {args.search_depth}")
    if args.convert_workers < 1:
        raise ConfigError(f"invalid option: --convert-workers must be >= 1, not "
                          f"{args.convert_workers}")
    summary = run(Path(args.basepath), Path(args.radiation_log), Path(args.output_dir),
                  settings, search_depth=args.search_depth, workers=args.convert_workers,
                  progress_bar=not args.no_progress)
    logger.info("done: %d frames converted (%d already there, %d rejected); %d indexed in %s "
                "(%d without a dose from the log); %s", summary["converted"],
                summary["existing"], summary["rejected"], summary["indexed"], summary["index"],
                summary["uncovered"], summary["result"].summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python run_radiation.py BASEPATH RADIATION_LOG OUTPUT_DIR``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
