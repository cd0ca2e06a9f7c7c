"""Command: convert a campaign's raw frames to FITS, one file per frame, and list them.

For every attempt of the bias, dark and flat sections (``TestSection1/2/3``,
or ``Bias/Darks/Flats`` of an irradiation stage) each raw file in
``frames/`` becomes ``fits/<name>.fits`` beside it: unsigned 16-bit data
(BZERO convention), every config entry and per-frame log column as header
keywords, exposure in seconds, sensor temperature as ``TEMP``, the values
parsed from the file and folder names, the ADU convention and the raw file's
provenance.  ``fits_index.csv`` in the common parent of the sections lists
every raw frame with its status: converted, already there, or rejected with
the reason (a wrong-size file is never padded: it gets no FITS).

Re-running skips frames whose FITS is complete and finishes the rest; every
file is written atomically, and raw files are only ever read.

Example
-------
  python -m utils.raw_to_fits data/TestSection1 data/TestSection2 data/TestSection3 \\
      --search-depth 6 --workers 2
  python -m utils.raw_to_fits data/TestSection1 data/TestSection2 data/TestSection3 --skip-flat
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from utils import cli, scheduler
from utils.errors import ConfigError
from utils.io.conversion import (
    STATUS_CONVERTED,
    STATUS_EXISTING,
    STATUS_REJECTED,
    ConversionReport,
    ConversionSettings,
    convert_sections,
)

logger = logging.getLogger(__name__ if __name__ != "__main__" else "utils.raw_to_fits")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface of the converter."""
    parser = cli.make_parser("python -m utils.raw_to_fits", __doc__)
    parser.add_argument("bias", metavar="BIAS", help="bias section (e.g. TestSection1)")
    parser.add_argument("dark", metavar="DARK", help="dark section (e.g. TestSection2)")
    parser.add_argument("flat", metavar="FLAT", help="flat section (e.g. TestSection3)")
    parser.add_argument("--search-depth", type=int, default=6,
                        help="folder levels below each section to look for attempts")
    for section in ("bias", "dark", "flat"):
        parser.add_argument(f"--skip-{section}", action="store_true",
                            help=f"do not convert the {section} section (its rows of an "
                            "earlier fits_index.csv are kept)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes converting raw frames (1: this process, on two "
                             "threads where there are two cores)")
    parser.add_argument("--overwrite", action="store_true", help="re-convert existing FITS files")
    parser.add_argument("--byte-order", choices=["little", "big"], default="little",
                        help="byte order of raw samples when the config does not say")
    parser.add_argument("--index-dir", default=None,
                        help="folder for fits_index.csv (default: common parent of the sections)")
    scheduler.add_options(parser)
    return parser


def summary_line(report: ConversionReport) -> str:
    """One line saying what was converted and where the listing is."""
    return (f"{report.count(STATUS_CONVERTED)} frames converted, "
            f"{report.count(STATUS_EXISTING)} already converted, "
            f"{report.count(STATUS_REJECTED)} rejected (wrong size or unreadable; listed with the "
            f"reason); index: {report.index_path}")


def _main(args) -> int:
    try:
        settings = ConversionSettings(search_depth=args.search_depth,
                                      byteorder="<" if args.byte_order == "little" else ">",
                                      overwrite=args.overwrite, workers=args.workers)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err
    sections = {}
    for cal, path, skip in (("BIAS", args.bias, args.skip_bias),
                            ("DARK", args.dark, args.skip_dark),
                            ("FLAT", args.flat, args.skip_flat)):
        if not skip:
            sections[cal] = path
    if not sections:
        raise ConfigError("every section is skipped; nothing to convert")
    index_dir = args.index_dir
    skipped = [cal for cal in ("BIAS", "DARK", "FLAT") if cal not in sections]
    report = convert_sections(sections, settings, index_dir=index_dir, keep=skipped,
                              progress_bar=not args.no_progress)
    logger.info("%s", summary_line(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m utils.raw_to_fits BIAS DARK FLAT [options]``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
