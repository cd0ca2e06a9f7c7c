"""Operation analysis: outliers and transients of sequences taken under the beam, vs radiation.

For every ``<x>kRads`` sub-folder of INPUT_DIR (or those given with
--datasets): frames from ``fits/`` (else ``frames/*.raw`` or ``*.raw``
converted with the shared converter, CALTYPE OPER), ordered and timed since
the first frame; per-pixel temporal mean and sigma streamed in two passes
(robust against the hits); outlier pixels (|x - mean| > --threshold sigma,
default 5), events (touching outlier pixels) and transients (events new in
their frame: hits, not pixels that stay hot) per frame; the radiation
series of ``radiationLog*.csv`` interpolated at the frame times on one zero
point; Pearson r (with its error, 95 % interval and p-value) and a line fit
with standard errors of the counts vs the dose rate; power-log current and
voltage.  Outputs per folder in OUTPUT_DIR/<x>kRads/: frame_metrics.csv,
correlation.csv, cumulative_outliers.fits|png, metrics.png,
rad_vs_outliers.png (with a radiation log), intensity_stats.png,
first_last.png, frames.gif, outliers.gif (.mp4 too when ffmpeg is
installed); OUTPUT_DIR/operation_summary.csv and config_used.json.

Example
-------
::

    python -m analysis.operation_analysis Operation operation_results
    python -m analysis.operation_analysis Operation out --datasets 10kRads 20kRads \\
        --threshold 6 --radiation dose-rate
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from analysis.timeseries.operation import OperationSettings, run
from analysis.timeseries.radiation import RADIATION_CHOICES
from analysis.timeseries.transients import TransientSettings
from utils import cli
from utils.errors import ConfigError
from utils.io.fitsio import check_output_dir

logger = logging.getLogger("analysis.operation_analysis")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d, t = OperationSettings(), TransientSettings()
    parser = cli.make_parser("python -m analysis.operation_analysis", __doc__)
    parser.add_argument("input_dir", nargs="?", default="Operation", metavar="INPUT_DIR",
                        help="folder holding the <x>kRads sequence folders")
    parser.add_argument("output_dir", nargs="?", default="operation_results",
                        metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                        help="analyse only these sub-folders (exact names)")
    parser.add_argument("--threshold", type=float, default=t.threshold,
                        help="[sigma] outlier threshold on the temporal sigma")
    parser.add_argument("--radiation", choices=RADIATION_CHOICES, default=d.radiation,
                        help="radiation series correlated with the counts")
    parser.add_argument("--pilot-frames", type=int, default=t.pilot_frames,
                        help="frames of the robust pilot estimate")
    parser.add_argument("--no-common-mode", action="store_true",
                        help="do not remove each frame's median offset")
    parser.add_argument("--min-frames", type=int, default=d.min_frames,
                        help="sequences with fewer frames are flagged")
    parser.add_argument("--animation-frames", type=int, default=t.animation_frames,
                        help="largest number of frames in the animations")
    parser.add_argument("--display-size", type=int, default=t.display_size,
                        help="[pixel] largest side of the animation frames")
    parser.add_argument("--fps", type=float, default=d.fps, help="[1/s] animation frame rate")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help="processes converting raw frames")
    return parser


def settings_from(args) -> OperationSettings:
    """Validated settings from parsed options."""
    try:
        transients = TransientSettings(threshold=args.threshold, pilot_frames=args.pilot_frames,
                                       common_mode=not args.no_common_mode,
                                       animation_frames=args.animation_frames,
                                       display_size=args.display_size)
        return OperationSettings(transients=transients, radiation=args.radiation,
                                 min_frames=args.min_frames, fps=args.fps, workers=args.workers)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    settings = settings_from(args)
    check_output_dir(args.output_dir)  # a file in the way: one line, before any work
    result = run(args.input_dir, args.output_dir, settings, datasets=args.datasets,
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.operation_analysis [INPUT_DIR] [OUTPUT_DIR]``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
