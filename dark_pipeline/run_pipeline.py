"""Dark pipeline: per-pixel dark-current model in temperature and exposure time, hot pixels.

Modes: full (masters, rates, 1-D and 2-D models, hot pixels, evaluation, dark
current vs temperature), synthetic_only (1-D rate maps and synthetic darks at
--temps x --exptimes), evaluation_only (1-D model vs the masters),
evaluate_dark_current, fit_2d_model, evaluate_2d_model, synthetic_2d (2-D
synthetic darks at --temps x --exptimes) and synthetic_2d_single (one at
--temp-single, --exptime-single).  Bias is removed with --bias-model (the
bias pipeline's bias_model.fits) evaluated at each frame's temperature, else
with a model fitted from the bias frames of the same tree.  Products are
listed in dark_pipeline/pipeline.py and the README.  An irradiation campaign is
modelled per (stage, dose step), never across dose steps: --stage/--dose choose
one, else each group found goes to its own sub-folder (pre, radiating_D10kR,
post).

Example
-------
::

    python dark_pipeline/run_pipeline.py --basepath campaign_fits --output-dir out/dark \\
        --bias-model out/bias/bias_model.fits --gain 2.0
    python dark_pipeline/run_pipeline.py --mode synthetic_2d_single --output-dir out/dark \\
        --temp-single 12.5 --exptime-single 3
    python dark_pipeline/run_pipeline.py --basepath irr/index.csv --output-dir out/dark \\
        --bias-model out/bias --gain 2.0      (one model per stage and dose step)
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from dark_pipeline.pipeline import MODES, DarkSettings, run
from utils import cli, plotting, scheduler
from utils.errors import ConfigError
from utils.io.index import parse_stage
from utils.stack.master import add_combine_options, combine_settings

logger = logging.getLogger("dark_pipeline.run_pipeline")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = DarkSettings()
    parser = cli.make_parser("python dark_pipeline/run_pipeline.py", __doc__)
    parser.add_argument("--mode", choices=MODES, default=d.mode, help="what to run")
    parser.add_argument("--basepath", default="",
                        help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", required=True, help="folder for the products")
    parser.add_argument("--model-dir", default="",
                        help="folder with dark_model/ and dark_model_2d/ (default: output dir)")
    parser.add_argument("--bias-model", default="",
                        help="bias_model.fits of the bias pipeline, or its output folder (one "
                             "<stage tag>/bias_model.fits per stage and dose step)")
    parser.add_argument("--temps", type=float, nargs="+", default=list(d.temps),
                        help="[degC] temperatures of the synthetic modes")
    parser.add_argument("--exptimes", type=float, nargs="+", default=list(d.exptimes),
                        help="[s] exposure times of the synthetic modes")
    parser.add_argument("--temp-single", type=float, default=d.temp_single,
                        help="[degC] temperature of synthetic_2d_single")
    parser.add_argument("--exptime-single", type=float, default=d.exptime_single,
                        help="[s] exposure of synthetic_2d_single")
    parser.add_argument("--gain", default=None,
                        help="[e-/ADC count] gain, or the flat pipeline's gain.json, for "
                             "electron units and the hot-pixel floor")
    parser.add_argument("--hot-threshold", type=float, default=d.hot_threshold,
                        help="[sigma] hot-pixel threshold on ln(dark rate)")
    parser.add_argument("--hot-min-rate", type=float, default=d.hot_min_rate,
                        help="[e-/s] hot pixels must also exceed this (needs --gain)")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    parser.add_argument("--exp-tolerance", type=float, default=d.exp_tolerance,
                        help="largest relative exposure span of one master")
    parser.add_argument("--bias-temp-tolerance", type=float, default=d.bias_temp_tolerance,
                        help="[degC] largest distance to the bias model's range or a master")
    parser.add_argument("--t-ref", type=float, default=d.t_ref,
                        help="[degC] reference temperature of the models")
    parser.add_argument("--min-snr", type=float, default=d.min_snr,
                        help="smallest signal/error counted as signal by the 2-D model (the 1-D "
                             "model fits every pixel with two positive rates)")
    parser.add_argument("--stage", default="",
                        help="irradiation stage to use (pre, radiating, post); default: each "
                             "(stage, dose step) found, in sub-folders of the output folder")
    parser.add_argument("--dose", type=float, default=None,
                        help="[krad] dose step of the radiating stage to use (default: each)")
    add_combine_options(parser)
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def settings_from(args) -> DarkSettings:
    """Validated settings from parsed options."""
    try:
        return DarkSettings(mode=args.mode, temp_bin=args.temp_bin,
                            exp_tolerance=args.exp_tolerance, t_ref=args.t_ref,
                            bias_model=args.bias_model,
                            bias_temp_tolerance=args.bias_temp_tolerance,
                            model_dir=args.model_dir, gain=args.gain,
                            hot_threshold=args.hot_threshold, hot_min_rate=args.hot_min_rate,
                            min_snr=args.min_snr,
                            stage=parse_stage(args.stage) if args.stage else "",
                            dose=args.dose, temps=tuple(args.temps),
                            exptimes=tuple(args.exptimes), temp_single=args.temp_single,
                            exptime_single=args.exptime_single, combine=combine_settings(args))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.basepath or None, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
