"""Dose analysis of an irradiation campaign: levels, noise and precision vs dose, per group.

Groups the frames of an index by (stage, calibration type, dose step, exposure,
temperature bin) -- never across dose steps or exposures -- builds a
sigma-clipped master per group and writes every product of the old dose
analysis under its old name and .npz keys (dose_summary.csv,
photometric_precision.csv, masters/, plots/, pixel_precision/, analysis/), each
PNG with its .npz twin and each fitted coefficient with its standard error
(fits.csv lists every fit, and why one was skipped: too few rows, equal dose
rates, a single dose step).  The full scale is the camera's saturation level;
the shot noise uses the measured gain (--gain K [e-/ADC count] or the flat
pipeline's gain.json) and says which (1 e-/adu, the old assumption, only when
none is given, with a warning).  Where the campaign allows it (pre or post darks
at two temperatures), the damage analysis (python -m analysis.damage_analysis)
runs into OUTPUT_DIR/damage.  Products are listed in analysis/dose/pipeline.py
and the README.

Example
-------
::

    python -m analysis.dose_analysis irr/index.csv out/dose --gain 2.0
    python -m analysis.dose_analysis dd/index.csv out/dose --gain flat/gain.json \\
        --radiation-log dd/radiationLogCompleto.csv --verbose
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from analysis.dose.pipeline import DoseSettings, run
from utils import cli, plotting
from utils.errors import ConfigError
from utils.stack.master import add_combine_options, combine_settings

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.dose_analysis")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = DoseSettings()
    parser = cli.make_parser("python -m analysis.dose_analysis", __doc__)
    parser.add_argument("index_csv", metavar="INDEX_CSV", help="index of the campaign")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--radiation-log", default=None,
                        help="campaign radiation log joined by time stamp (default: the "
                             "index's dose columns)")
    parser.add_argument("--gain", default=None,
                        help="[e-/ADC count] system gain, or a gain.json of the flat pipeline")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    parser.add_argument("--dark-exposure", type=float, default=None,
                        help="[s] dark exposure of the dynamic-range and precision products "
                             "(default: the longest)")
    parser.add_argument("--no-damage", action="store_true",
                        help="skip the damage analysis (damage/)")
    add_combine_options(parser)
    plotting.add_plots_option(parser)
    return parser


def settings_from(args) -> DoseSettings:
    """Validated settings from parsed options."""
    try:
        return DoseSettings(temp_bin=args.temp_bin, dark_exposure=args.dark_exposure,
                            damage=not args.no_damage, combine=combine_settings(args))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.index_csv, args.output_dir, settings_from(args), gain=args.gain,
                 radiation_log=args.radiation_log, progress_bar=not args.no_progress)
    for note in result.notes:
        logger.info("note: %s", note)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.dose_analysis INDEX_CSV OUTPUT_DIR``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
