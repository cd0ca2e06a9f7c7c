"""Index converted FITS frames into one CSV table (``index.csv``).

Each section option must point at the section folder itself (``Bias``,
``Darks``, ``Flats`` or ``TestSection1/2/3``); ``--discover ROOT`` finds those
folders below ROOT instead (case-insensitive).  A root without such folders
(e.g. ``<dose>kRads/fits/`` directories) is indexed with frame types read from
the headers.  STAGE and VACUUM are inferred from folder words unless given;
frames with more than 1 % zero pixels, or unreadable, are flagged BADFITS
with the reason.  Irradiation campaigns get their dose bookkeeping (DOSE step, FRAMEDOSE,
DOSERATE [rad(Si)/s], BEAM, TANNEAL) from the radiation logs joined by time stamp.
Input files are only read, never modified.

Example
-------
  python -m utils.index_dataset --bias data/Bias --dark data/Darks --flat data/Flats index.csv
  python -m utils.index_dataset --discover data/irradiation_campaign index.csv
  python -m utils.index_dataset --discover data/irr --radiation-log data/irr/radLog.csv index.csv
  python -m utils.index_dataset data/TestSection1 data/TestSection2 data/TestSection3 index.csv
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from utils import cli, scheduler
from utils.errors import ConfigError
from utils.io.fitsio import check_output_file
from utils.io.index import STAGES, IndexSettings, build_index, parse_stage, write_index

logger = logging.getLogger(__name__ if __name__ != "__main__" else "utils.index_dataset")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface of the indexer."""
    parser = cli.make_parser("python -m utils.index_dataset", __doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="OUTPUT_CSV, or BIAS DARK FLAT OUTPUT_CSV (legacy form)")
    parser.add_argument("--bias", action="append", default=[], help="bias section (repeatable)")
    parser.add_argument("--dark", action="append", default=[], help="dark section (repeatable)")
    parser.add_argument("--flat", action="append", default=[], help="flat section (repeatable)")
    parser.add_argument("--discover", action="append", default=[],
                        help="root to search for Bias/Darks/Flats folders (repeatable)")
    parser.add_argument("--stage", default=None,
                        help=f"force the stage ({', '.join(STAGES)}) instead of inferring it")
    parser.add_argument("--vacuum", default=None, help="force the VACUUM column (e.g. vacuum, air)")
    parser.add_argument("--search-depth", type=int, default=6, help="depth of --discover")
    parser.add_argument("--zero-fraction", type=float, default=0.01,
                        help="flag frames with more zero pixels than this fraction")
    parser.add_argument("--workers", type=int, default=2, help="reader threads")
    parser.add_argument("--radiation-log", default=None,
                        help="campaign radiation log joined to the frames by time stamp "
                             "(default: radiationLogCompleto.csv found in the --discover root)")
    scheduler.add_options(parser)
    return parser


def _main(args) -> int:
    if len(args.paths) == 1:
        output, legacy = args.paths[0], []
    elif len(args.paths) == 4:
        *legacy, output = args.paths
    else:
        raise ConfigError(f"expected OUTPUT_CSV or BIAS DARK FLAT OUTPUT_CSV, got "
                          f"{len(args.paths)} paths; use --bias/--dark/--flat for sections")
    if not output.lower().endswith(".csv"):
        raise ConfigError(f"{output}: the output must be a .csv file (it is the last positional)")
    check_output_file(output, "output CSV")
    sections = [("BIAS", p) for p in args.bias] + [("DARK", p) for p in args.dark] + \
               [("FLAT", p) for p in args.flat]
    sections += list(zip(("BIAS", "DARK", "FLAT"), legacy))
    if not sections and not args.discover:
        raise ConfigError("no section given; use --bias/--dark/--flat or --discover ROOT")
    try:
        stage = parse_stage(args.stage) if args.stage else None
        settings = IndexSettings(zero_fraction_limit=args.zero_fraction,
                                 search_depth=args.search_depth, workers=args.workers)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    table = build_index(sections, args.discover, stage=stage, vacuum=args.vacuum,
                        settings=settings, radiation_log=args.radiation_log,
                        progress_bar=not args.no_progress)
    path = write_index(table, output)
    bad = int(table["BADFITS"].sum())
    counts = ", ".join(f"{n} {c.lower() or 'unknown'}" for c, n in
                       table["CALTYPE"].value_counts().sort_index().items())
    logger.info("indexed %d frames (%s), %d flagged BADFITS (reason in the REASON column); "
                "wrote %s", len(table), counts, bad, path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m utils.index_dataset [options] OUTPUT_CSV``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
