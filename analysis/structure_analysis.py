"""Structure analysis: new structures in flats over time, per temperature bin, saved not shown.

Flats of BASEPATH (a folder of converted FITS frames or an index CSV) are
grouped by temperature bin and exposure time; the reference of each group is
its earliest valid flat by time stamp, and each later flat (minus the dark,
else bias, master at its own temperature with --reduce) is compared with it.
The normalised difference is judged against the noise the flats themselves
show (variance vs signal fitted over the frame), and changed regions are
connected groups of significant pixels (seed above the threshold set by
--false-alarm, grown down to --grow-threshold), each with its area, centroid
and amplitude with errors.  Frames with too many zero pixels go to
suspicious_frames.csv in the output folder.  Outputs: structures.csv,
comparisons.csv, suspicious_frames.csv, differences/*.png, timeline.png,
structure_counts.fits, config_used.json, summary.json.

Example
-------
::

    python -m analysis.structure_analysis campaign_fits --output-dir out/structures
    python -m analysis.structure_analysis data/index.csv --reduce --output-dir out/structures
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from analysis.timeseries.flat_compare import CompareSettings
from analysis.timeseries.structure import StructureSettings, run
from utils import cli
from utils.errors import ConfigError

logger = logging.getLogger("analysis.structure_analysis")


def add_compare_options(parser, defaults: CompareSettings = CompareSettings()) -> None:
    """Options of :class:`CompareSettings` (shared with the outgassing analysis)."""
    parser.add_argument("--seed-threshold", type=float, default=defaults.seed_threshold,
                        help="[sigma] smallest significance of a detection")
    parser.add_argument("--false-alarm", type=float, default=defaults.false_alarm,
                        help="chance per comparison that noise alone passes the threshold")
    parser.add_argument("--grow-threshold", type=float, default=defaults.grow_threshold,
                        help="[sigma] pixels joined to a detection around its seed")
    parser.add_argument("--min-area", type=int, default=defaults.min_area,
                        help="[pixel] smallest detection")
    parser.add_argument("--no-background", action="store_true",
                        help="keep the smooth large-scale part of each difference")


def compare_settings(args) -> CompareSettings:
    """:class:`CompareSettings` from parsed options (ValueError when invalid)."""
    return CompareSettings(seed_threshold=args.seed_threshold, false_alarm=args.false_alarm,
                           grow_threshold=args.grow_threshold, min_area=args.min_area,
                           background=not args.no_background)


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = StructureSettings()
    parser = cli.make_parser("python -m analysis.structure_analysis", __doc__)
    parser.add_argument("basepath", metavar="BASEPATH_OR_INDEX",
                        help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", default="structure_analysis",
                        help="folder for the products")
    parser.add_argument("--reduce", action="store_true",
                        help="subtract the dark (else bias) master at each flat's temperature")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one bin")
    parser.add_argument("--exp-tolerance", type=float, default=d.exp_tolerance,
                        help="largest relative exposure span of one group")
    parser.add_argument("--max-saturated", type=float, default=d.max_saturated,
                        help="largest fraction of pixels at SATLEVEL in a valid flat")
    parser.add_argument("--temp-tolerance", type=float, default=d.temp_tolerance,
                        help="[degC] largest flat-master temperature difference (--reduce)")
    parser.add_argument("--persist-radius", type=float, default=d.persist_radius,
                        help="[pixel] distance matching a detection in the next comparison")
    add_compare_options(parser)
    return parser


def settings_from(args) -> StructureSettings:
    """Validated settings from parsed options."""
    try:
        return StructureSettings(compare=compare_settings(args), temp_bin=args.temp_bin,
                                 exp_tolerance=args.exp_tolerance,
                                 max_saturated=args.max_saturated, reduce=args.reduce,
                                 temp_tolerance=args.temp_tolerance,
                                 persist_radius=args.persist_radius)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.basepath, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.structure_analysis BASEPATH_OR_INDEX``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
