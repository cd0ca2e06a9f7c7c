"""RTS analysis: random-telegraph-signal pixels in long dark sequences, per stage and dose step.

Frames of BASEPATH (a folder of converted FITS frames or an index CSV) of one
type (darks by default) are grouped like masters -- irradiation stage, dose
step, temperature bin, exposure time -- and each sequence of at least
--min-frames frames is streamed by blocks of rows.  Per pixel: the noise from
successive differences, the von Neumann ratio (a switching pixel stays put
between switches), and for candidates a two- and three-level hidden Markov fit
(Viterbi, then maximum likelihood).  A pixel is RTS when its levels differ by
at least --k-amplitude times its own noise and it switched at least
--min-transitions times (fewer: a step).  Reported: levels, amplitude with its
error, mean dwell time of each level with its error, occupancy.  Outputs:
rts_pixels.csv, rts_counts.csv (RTS fraction per sequence with its binomial
error: on an irradiation campaign, RTS pixels vs dose), rts_<group>.fits
(class map, amplitude, noise, significance), rts_counts_vs_dose.png,
rts_amplitudes.png, rts_dwell_times.png, rts_examples_<group>.png,
config_used.json, summary.json.

Example
-------
::

    python -m analysis.rts_analysis long_darks_fits --output-dir out/rts
    python -m analysis.rts_analysis irradiation/index.csv --output-dir out/rts --k-amplitude 3
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from analysis.timeseries.rts import RTSSettings
from analysis.timeseries.rts_campaign import RTSRunSettings, run
from utils import cli
from utils.errors import ConfigError
from utils.io.fitsio import check_output_dir

logger = logging.getLogger("analysis.rts_analysis")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d, r = RTSRunSettings(), RTSSettings()
    parser = cli.make_parser("python -m analysis.rts_analysis", __doc__)
    parser.add_argument("basepath", metavar="BASEPATH_OR_INDEX",
                        help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", default="rts_analysis", help="folder for the products")
    parser.add_argument("--caltype", choices=["DARK", "BIAS"], default=d.caltype,
                        help="frame type searched")
    parser.add_argument("--k-amplitude", type=float, default=r.k_amplitude,
                        help="RTS steps must exceed this many times the pixel's noise")
    parser.add_argument("--z-threshold", type=float, default=r.z_threshold,
                        help="[sigma] von Neumann significance of a candidate")
    parser.add_argument("--min-transitions", type=int, default=r.min_transitions,
                        help="fewer switches make a step, not an RTS pixel")
    parser.add_argument("--max-levels", type=int, choices=[2, 3], default=r.max_levels,
                        help="largest number of levels tried")
    parser.add_argument("--no-common-mode", action="store_true",
                        help="keep each frame's median offset")
    parser.add_argument("--min-frames", type=int, default=d.min_frames,
                        help="shorter sequences are flagged, not searched")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one sequence")
    parser.add_argument("--memory-limit", type=float, default=r.memory_limit,
                        help="[byte] working memory of one block of rows")
    return parser


def settings_from(args) -> RTSRunSettings:
    """Validated settings from parsed options."""
    try:
        rts = RTSSettings(k_amplitude=args.k_amplitude, z_threshold=args.z_threshold,
                          min_transitions=args.min_transitions, max_levels=args.max_levels,
                          common_mode=not args.no_common_mode, memory_limit=args.memory_limit)
        return RTSRunSettings(rts=rts, caltype=args.caltype, temp_bin=args.temp_bin,
                              min_frames=args.min_frames)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    settings = settings_from(args)
    check_output_dir(args.output_dir)  # a file in the way: one line, before any work
    result = run(args.basepath, args.output_dir, settings, progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.rts_analysis BASEPATH_OR_INDEX``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
