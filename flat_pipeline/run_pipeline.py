"""Flat pipeline: reduced and master flats, illumination (vignetting), PRNU and defects,
photon-transfer gain, flat model over temperature and exposure time.

Modes: full (everything below), full_no_vignetting (full without the illumination
model, the vignetting correction and the PRNU/defect maps, which are defined against
it), reduce_only (reduced frames: bias at each frame's temperature and dark at its
temperature and exposure removed, in flat_reduced/), normalize_only (reduced frames
divided by their own level, in flat_normalized/), vignetting_only (normalised frames
divided by the relative illumination, given with --illumination-model or fitted to
each set's master, in flat_vignetting_corrected/), make_master (normalised master
per flat level, and the sky median with --flat-type sky), fit_model (masters and the
per-pixel model F = A + B (T - TREF) + C (t - EXPREF)) and evaluate_model (that model
against each master: MAE, MAPE, leave-one-out pulls).  The bias comes from
--bias-model (the bias pipeline's bias_model.fits) else from the tree's own bias
frames; the dark from --dark-model (the dark pipeline's dark_model_2d.fits) else
from dark masters of --dark-files-json or of the tree's own dark frames.  Every
(stage, dose step) is processed apart, into OUT/<stage>.  Products are listed in
flat_pipeline/pipeline.py and the README.

Example
-------
::

    python flat_pipeline/run_pipeline.py --mode full --basepath campaign_fits \\
        --output-dir out/flat --bias-model out/bias/bias_model.fits \\
        --dark-model out/dark/dark_model_2d/dark_model_2d.fits
    python flat_pipeline/run_pipeline.py --mode evaluate_model --basepath index.csv \\
        --output-dir out/flat --save-eval-fits
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from flat_pipeline.pipeline import FLAT_TYPES, MODES, FlatSettings, run
from flat_pipeline.quality import NORM_METHODS
from utils import cli, plotting, scheduler
from utils.errors import ConfigError
from utils.io.index import parse_stage
from utils.stack.combine import METHODS
from utils.stack.master import CombineSettings

logger = logging.getLogger("flat_pipeline.run_pipeline")


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = FlatSettings()
    c = CombineSettings()
    parser = cli.make_parser("python flat_pipeline/run_pipeline.py", __doc__)
    add = parser.add_argument
    add("--mode", choices=MODES, default=d.mode, help="what to run")
    add("--basepath", default="", help="folder of converted FITS frames, or an index CSV")
    add("--output-dir", required=True, help="folder for the products")
    add("--flat-type", choices=FLAT_TYPES, default=d.flat_type,
        help="lab (lamp), sky (also the sky median) or satellite")
    add("--bias-model", default="", help="bias_model.fits of the bias pipeline")
    add("--dark-model", default="",
        help="dark_model_2d.fits (or dark_model.fits) of the dark pipeline")
    add("--dark-files-json", default="",
        help="JSON list of {original_path, temperature, exposure} dark frames")
    add("--allow-bias-only", action="store_true",
        help="reduce flats without a dark with the bias alone (flagged)")
    add("--norm-method", choices=NORM_METHODS, default=d.norm_method,
        help="frame level: statistic of the central region")
    add("--central-fraction", type=float, default=d.central_fraction,
        help="side fraction of the central region")
    add("--master-method", choices=list(METHODS), default=c.method,
        help="combination of the frames of one master")
    add("--sigma", type=float, default=c.sigma_high, help="[sigma] clipping threshold")
    add("--memory-limit", type=float, default=c.memory_limit,
        help="[byte] working-memory budget of one combination")
    add("--workers", type=int, default=c.workers, help="threads per combination")
    add("--t-ref", type=float, default=None,
        help="[degC] TREF of the flat model (default: the masters' mean temperature)")
    add("--exp-ref", type=float, default=None,
        help="[s] EXPREF of the flat model (default: the masters' mean exposure)")
    add("--gain", default=None,
        help="[e-/ADC count] gain, or a gain.json, used in the products instead of the "
             "measured one")
    add("--save-reduced", action="store_true",
        help="also write the reduced and normalised frames")
    add("--save-eval-fits", action="store_true", help="also write the evaluation maps as FITS")
    add("--stage", default="", help="only this irradiation stage (pre, radiating, post)")
    add("--dose", type=float, default=None, help="[krad] only this dose step")
    add("--temp-bin", type=float, default=d.temp_bin,
        help="[degC] largest temperature span of one master")
    add("--exp-tolerance", type=float, default=d.exp_tolerance,
        help="largest relative exposure span of one master")
    add("--bias-temp-tolerance", type=float, default=d.bias_temp_tolerance,
        help="[degC] largest distance to the bias model's range or a bias master")
    add("--dark-temp-tolerance", type=float, default=d.dark_temp_tolerance,
        help="[degC] largest distance to the dark model's range or a dark master")
    add("--max-zero-fraction", type=float, default=d.max_zero_fraction,
        help="flats with more zero pixels are excluded")
    add("--max-saturated-fraction", type=float, default=d.max_saturated_fraction,
        help="flats with more saturated pixels are left out of the masters")
    add("--level-nsigma", type=float, default=d.level_nsigma,
        help="[sigma] lamp-drift threshold on the level per second")
    add("--level-min-dev", type=float, default=d.level_min_dev,
        help="smallest relative level departure called lamp drift")
    add("--tilt", action="store_true", help="illumination model times a tilted-lamp plane")
    add("--illumination-model", default="",
        help="illumination_<tag>.fits applied by vignetting_only")
    add("--cold-threshold", type=float, default=d.cold_threshold,
        help="cold pixel: response below this fraction of the smooth one")
    add("--dead-threshold", type=float, default=d.dead_threshold,
        help="dead pixel: response below this fraction of the smooth one")
    add("--model-dir", default="",
        help="folder with flat_model_fits/ for evaluate_model (default: output dir)")
    # the old tool's vignetting options: parsed, never used (its vignetting copied the data)
    for old in ("--lensfun-json", "--radial-json", "--empirical-json"):
        add(old, default="", help="ignored (old tool); the illumination model is fitted")
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def settings_from(args) -> FlatSettings:
    """Validated settings from parsed options."""
    try:
        stage = parse_stage(args.stage) if args.stage else ""
        combine = CombineSettings(method=args.master_method, sigma_low=args.sigma,
                                  sigma_high=args.sigma, memory_limit=args.memory_limit,
                                  workers=args.workers)
        return FlatSettings(
            mode=args.mode, flat_type=args.flat_type, bias_model=args.bias_model,
            dark_model=args.dark_model, dark_files_json=args.dark_files_json,
            allow_bias_only=args.allow_bias_only, norm_method=args.norm_method,
            central_fraction=args.central_fraction, t_ref=args.t_ref, exp_ref=args.exp_ref,
            gain=args.gain, save_reduced=args.save_reduced, save_eval_fits=args.save_eval_fits,
            save_plots=args.plots != "none", stage=stage, dose=args.dose,
            temp_bin=args.temp_bin, exp_tolerance=args.exp_tolerance,
            bias_temp_tolerance=args.bias_temp_tolerance,
            dark_temp_tolerance=args.dark_temp_tolerance,
            max_zero_fraction=args.max_zero_fraction,
            max_saturated_fraction=args.max_saturated_fraction,
            level_nsigma=args.level_nsigma, level_min_dev=args.level_min_dev, tilt=args.tilt,
            illumination_model=args.illumination_model, cold_threshold=args.cold_threshold,
            dead_threshold=args.dead_threshold, model_dir=args.model_dir, combine=combine)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    for old in ("lensfun_json", "radial_json", "empirical_json"):
        if getattr(args, old):
            logger.warning("--%s is ignored: the illumination model is fitted to the masters",
                           old.replace("_", "-"))
    result = run(args.basepath or None, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
