"""Bias pipeline: per-temperature masters, a per-pixel bias(T) model, read noise and evaluation.

Reads converted FITS frames (a folder, whose bias frames are recognised from
their headers, or an index CSV), combines one sigma-clipped master per
temperature bin, fits bias = A + B (T - TREF) per pixel with standard errors,
measures the read noise from consecutive frame pairs and cross-validates the
model by predicting each master from the others.  An irradiation campaign is
modelled per (stage, dose step), never across dose steps: --stage/--dose choose
one, else each group found goes to its own sub-folder (pre, radiating_D10kR,
post).  Products are listed in
``bias_pipeline/pipeline.py`` and the README.

Example
-------
::

    python bias_pipeline/run_pipeline.py --basepath campaign_fits/TestSection1 --output-dir out/bias
    python bias_pipeline/run_pipeline.py --basepath index.csv --output-dir out/bias \\
        --generate-set --save-eval-fits --gain 2.0 --hot-pixel-mask hot.fits
    python bias_pipeline/run_pipeline.py --basepath irr/index.csv --output-dir out/bias
        (an irradiation index: one model per stage and dose step, out/bias/pre/,
        out/bias/radiating_D10kR/, ..., out/bias/post/)
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from bias_pipeline.pipeline import BiasSettings, run
from utils import cli, plotting, scheduler
from utils.errors import ConfigError
from utils.io.index import parse_stage
from utils.stack.master import add_combine_options, combine_settings

logger = logging.getLogger("bias_pipeline.run_pipeline")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = BiasSettings()
    parser = cli.make_parser("python bias_pipeline/run_pipeline.py", __doc__)
    parser.add_argument("--basepath", required=True,
                        help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", required=True, help="folder for the products")
    parser.add_argument("--hot-pixel-mask", default="",
                        help="boolean FITS mask; non-zero pixels get no model")
    parser.add_argument("--generate-set", action="store_true",
                        help="write a synthetic bias at every master temperature")
    parser.add_argument("--save-eval-fits", action="store_true",
                        help="also write the evaluation maps as FITS")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    parser.add_argument("--t-ref", type=float, default=d.t_ref,
                        help="[degC] reference temperature of the A map")
    parser.add_argument("--gain", type=float, default=None,
                        help="[e-/ADC count] gain, for read noise in electrons")
    parser.add_argument("--stage", default="",
                        help="irradiation stage to use (pre, radiating, post); default: each "
                             "(stage, dose step) found, in sub-folders of the output folder")
    parser.add_argument("--dose", type=float, default=None,
                        help="[krad] dose step of the radiating stage to use (default: each)")
    add_combine_options(parser)
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def settings_from(args) -> BiasSettings:
    """Validated settings from parsed options."""
    try:
        return BiasSettings(temp_bin=args.temp_bin, t_ref=args.t_ref, gain=args.gain,
                            stage=parse_stage(args.stage) if args.stage else "",
                            dose=args.dose, hot_pixel_mask=args.hot_pixel_mask,
                            generate_set=args.generate_set, save_eval_fits=args.save_eval_fits,
                            combine=combine_settings(args))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.basepath, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
