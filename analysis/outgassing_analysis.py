"""Outgassing / destruction analysis: flat degradation and outlier pixels, with their classes.

Flats of BASEPATH (a folder of converted FITS frames or an index CSV) are
checked (not saturated at the header's SATLEVEL, timed; a time stamp of 0 is
valid), optionally calibrated (--calibrate: the dark master of the same
exposure nearest in temperature within 1 degC and 0.1 s, else the bias master),
normalised by their median and compared with the earliest flat of their
temperature bin, then all together ignoring temperature.  A pixel is an
outlier where the difference exceeds the threshold in units of the flats' own
noise.  Each outlier pixel is classified: Sensor Damage (found at two or more
temperatures or stages), Likely Sensor (one temperature, two or more times),
Temperature (otherwise).  Outputs (the old names): analysis_flats.csv,
analysis_outliers.csv, suspicious_bias.log, suspicious_darks.log,
flats_norm[_reduced]/, analysis_by_temperature/T_<T>/diffmap_<time>.png,
analysis_by_time_ignore_temp/, summary_plots/, sensor_plane_outliers/,
config_used.json, summary.json.  The old entry point
dark_pipeline/.../outgasing_destruction_analysis is replaced by this command
(same arguments: BASEPATH, --calibrate, --output_dir).

Example
-------
::

    python -m analysis.outgassing_analysis campaign_fits --calibrate --output-dir analysis_results
    python analysis/outgassing_analysis.py data/index.csv --output_dir outgasing_analysis
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from analysis.structure_analysis import add_compare_options, compare_settings
from analysis.timeseries.outgassing import OutgassingSettings, run
from utils import cli
from utils.errors import ConfigError

logger = logging.getLogger("analysis.outgassing_analysis")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = OutgassingSettings()
    parser = cli.make_parser("python -m analysis.outgassing_analysis", __doc__)
    parser.add_argument("basepath", metavar="BASEPATH_OR_INDEX",
                        help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", default="outgasing_analysis",
                        help="folder for the products (the old default name)")
    parser.add_argument("--calibrate", action="store_true",
                        help="subtract the dark (else bias) master at each flat's temperature")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one bin")
    parser.add_argument("--max-saturated", type=float, default=d.max_saturated,
                        help="largest fraction of pixels at SATLEVEL in a valid flat")
    parser.add_argument("--temp-tolerance", type=float, default=d.temp_tolerance,
                        help="[degC] largest flat-dark temperature difference (--calibrate)")
    parser.add_argument("--dark-exp-tolerance", type=float, default=d.dark_exp_tolerance,
                        help="[s] largest flat-dark exposure difference (--calibrate)")
    parser.add_argument("--no-normalised", action="store_true",
                        help="do not write the normalised flats")
    add_compare_options(parser, OutgassingSettings().compare)
    return parser


def settings_from(args) -> OutgassingSettings:
    """Validated settings from parsed options."""
    try:
        return OutgassingSettings(compare=compare_settings(args), temp_bin=args.temp_bin,
                                  max_saturated=args.max_saturated, calibrate=args.calibrate,
                                  temp_tolerance=args.temp_tolerance,
                                  dark_exp_tolerance=args.dark_exp_tolerance,
                                  save_normalised=not args.no_normalised)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.basepath, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.outgassing_analysis BASEPATH_OR_INDEX``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
