"""Command: write a seeded synthetic test campaign of the CMOS camera, with its ground truth.

Writes one of the on-disk layouts the toolkit reads -- ``standard`` (bias,
dark and flat test sections of raw frames), ``irradiation`` (pre-irradiation,
dose steps and post-irradiation stages of raw frames, plus the campaign
radiation log), ``dosedirs`` (already-converted FITS frames in
``<dose>kRads/fits`` folders), and the inputs of the secondary analyses:
``operation`` (``<dose>kRads`` sequences taken under a beam, with particle hits:
analysis.operation_analysis), ``flatseq`` (flat visits over days with an
optional structure and the outgassing pixel classes: analysis.structure_analysis,
analysis.outgassing_analysis) and ``darkseq`` (long dark runs with
random-telegraph pixels: analysis.rts_analysis) -- and, next to it,
``truth/truth.json`` (every physical parameter and one record per frame) and
``truth/truth.npz`` (the per-pixel maps the frames were drawn from), so tests
can check recovery.

Frames are drawn one at a time from a single seeded generator: the same seed
gives byte-identical files, and memory stays proportional to one frame, so the
same code writes 40 x 24 test campaigns and full 2048 x 2048 ones.  OUT must
be a new or empty folder.

Example
-------
::

    python -m utils.simulate standard /tmp/campaign
    python -m utils.simulate standard /tmp/big --width 2048 --height 2048 --frames 20 --seed 7
    python -m utils.simulate irradiation /tmp/irr --doses 10 20 40 --defects
    python -m utils.simulate dosedirs /tmp/dd --doses 5 10 20 --set dark_damage=0.1
    python -m utils.simulate operation /tmp/Operation --width 64 --height 48 --doses 5 10
    python -m utils.simulate flatseq /tmp/fs --structure 20 30 4 0.2 3 --pixel-classes
    python -m utils.simulate darkseq /tmp/ds --frames 600 --doses 10 20 --rts-per-krad 0.002
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from utils.cli import make_parser, run_cli
from utils.errors import ConfigError
from utils.io.fitsio import check_output_dir
from utils.sim import Physics, simulate_dosedirs, simulate_irradiation, simulate_standard
from utils.sim.operation import simulate_operation
from utils.sim.rts import RTSParams
from utils.sim.sequences import FlatStructure, simulate_dark_sequence, simulate_flat_sequence

logger = logging.getLogger(__name__ if __name__ != "__main__" else "utils.simulate")

# ================================================================================================
# Command line
# ================================================================================================

_LAYOUTS = {"standard": simulate_standard, "irradiation": simulate_irradiation,
            "dosedirs": simulate_dosedirs, "operation": simulate_operation,
            "flatseq": simulate_flat_sequence, "darkseq": simulate_dark_sequence}


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "y", "true", "1"):
        return True
    if value in ("no", "n", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser; layout options left unset fall back to the layout's defaults."""
    parser = make_parser("python -m utils.simulate", __doc__)
    unset = argparse.SUPPRESS  # absent options keep the Python defaults of each layout
    parser.add_argument("layout", choices=list(_LAYOUTS), help="campaign layout to write")
    parser.add_argument("out", type=Path, help="new or empty output folder")
    parser.add_argument("--seed", type=int, default=unset, metavar="N",
                        help="seed of the random generator (default 1)")
    parser.add_argument("--width", type=int, default=unset, metavar="W",
                        help="frame width [pixel] (default 40; operation 96, flatseq 48, "
                             "darkseq 32)")
    parser.add_argument("--height", type=int, default=unset, metavar="H",
                        help="frame height [pixel] (default 24; operation 64, flatseq 40, "
                             "darkseq 32)")
    parser.add_argument("--frames", type=int, default=unset, metavar="N",
                        help="frames per attempt (default 4; irradiation 3), per sequence "
                             "(operation 60) or per dark run (darkseq 1500)")
    parser.add_argument("--attempts", type=int, default=unset, metavar="N",
                        help="standard: attempts per set point (default 2)")
    parser.add_argument("--bias-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: bias set points [degC] (default -10 0 12.5 25)")
    parser.add_argument("--dark-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: dark set points [degC] (default 0 25)")
    parser.add_argument("--dark-exposures", type=float, nargs="+", default=unset, metavar="S",
                        help="standard, irradiation: dark exposures [s] "
                             "(default 0.5 2; irradiation 1)")
    parser.add_argument("--flat-temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="standard: flat set points [degC] (default 25)")
    parser.add_argument("--flat-exposures", type=float, nargs="+", default=unset, metavar="S",
                        help="standard, irradiation: flat exposures [s] (default 0.1 0.4; "
                             "irradiation 0.2)")
    parser.add_argument("--doses", type=float, nargs="+", default=unset, metavar="KRAD",
                        help="irradiation, dosedirs, operation, darkseq: increasing doses [krad] "
                             "(default 10 20; dosedirs 5 10; operation 5; darkseq none: one "
                             "run without irradiation)")
    parser.add_argument("--temperature", type=float, default=unset, metavar="T",
                        help="irradiation, dosedirs, operation, darkseq: set point [degC] "
                             "(default 20)")
    parser.add_argument("--exposure", type=float, default=unset, metavar="S",
                        help="operation, flatseq, darkseq: exposure [s] (default 0.5; "
                             "darkseq 0.1)")
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=unset,
                        help="operation: raw frames with a per-frame log (default), or "
                             "(--no-raw) FITS frames and a log sampled at its own cadence")
    parser.add_argument("--temperatures", type=float, nargs="+", default=unset, metavar="T",
                        help="flatseq: set points visited in turn [degC] (default 0 20)")
    parser.add_argument("--visits", type=int, default=unset, metavar="N",
                        help="flatseq: visits, one set point each (default 6)")
    parser.add_argument("--structure", type=float, nargs=5, default=unset,
                        metavar=("ROW", "COL", "RADIUS", "DEPTH", "VISIT"),
                        help="flatseq: a disc [pixel] losing DEPTH (e.g. 0.2) of its light from "
                             "visit VISIT on (default none)")
    parser.add_argument("--pixel-classes", action="store_true", default=unset,
                        help="flatseq: plant the outgassing analysis's pixel classes")
    parser.add_argument("--rts-per-krad", type=float, default=unset, metavar="P",
                        help="darkseq: probability per krad that a pixel turns RTS (default 0; "
                             "3 %% of the pixels are RTS from the start)")
    parser.add_argument("--dark-exposure", type=float, default=unset, metavar="S",
                        help="dosedirs: dark exposure [s] (default 1)")
    parser.add_argument("--with-log", type=_yes_no, nargs="+", default=unset, metavar="YES|NO",
                        help="dosedirs: write radiationLogDef.csv in each folder, cycled "
                             "(default no yes)")
    parser.add_argument("--constant-dose-log", type=_yes_no, default=unset, metavar="YES|NO",
                        help="dosedirs: write the nominal dose in every log row instead of the "
                             "true ramping dose (default yes)")
    parser.add_argument("--model-temperatures", type=float, nargs="+", default=unset,
                        metavar="T", help="irradiation: set points [degC] of the bias and darks "
                                          "of the pre and post stages (default --temperature)")
    parser.add_argument("--dose-profile", default=unset,
                        choices=["ramp", "before", "increments"],
                        help="irradiation (ramp, before), dosedirs (ramp, increments): how each "
                             "step's dose is delivered (default ramp)")
    parser.add_argument("--defects", action=argparse.BooleanOptionalAction, default=unset,
                        help="plant a truncated file, an all-zero frame and a dead region "
                             "(default on for standard, off for irradiation)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a Physics parameter, e.g. --set gain=1.5 (repeatable)")
    return parser


_LAYOUT_OPTIONS = ("seed", "width", "height", "frames", "attempts", "bias_temperatures",
                   "dark_temperatures", "dark_exposures", "flat_temperatures", "flat_exposures",
                   "doses", "temperature", "dark_exposure", "with_log", "constant_dose_log",
                   "defects", "model_temperatures", "dose_profile", "exposure", "raw",
                   "temperatures", "visits", "structure", "pixel_classes", "rts")


def physics_from_assignments(assignments: Sequence[str]) -> Physics:
    """Build a :class:`Physics` from ``NAME=VALUE`` strings.

    Raises
    ------
    ConfigError
        On an unknown name or a value that is not a number.

    Examples
    --------
    >>> physics_from_assignments(["gain=1.5"]).gain
    1.5
    """
    defaults = {f.name: f.default for f in dataclasses.fields(Physics)}
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                              f"{', '.join(defaults)}")
        try:
            values[name] = type(defaults[name])(text.strip())
        except ValueError as err:
            raise ConfigError(f"--set {item!r}: {err}") from err
    return Physics(**values)


def _run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "campaign folder")
    if hasattr(args, "structure"):
        row, col, radius, depth, visit = args.structure
        if not visit.is_integer():
            raise ConfigError(f"--structure: VISIT must be a whole number, not {visit:g}")
        args.structure = FlatStructure(row=row, col=col, radius=radius, depth=depth,
                                       first_visit=int(visit))
    if hasattr(args, "rts_per_krad"):
        args.rts = RTSParams(per_krad=args.rts_per_krad)
    func = _LAYOUTS[args.layout]
    options = {name: getattr(args, name) for name in _LAYOUT_OPTIONS if hasattr(args, name)}
    accepted = inspect.signature(func).parameters
    spelled = {"rts": "rts_per_krad"}  # options given under another name on the command line
    wrong = ["--" + spelled.get(name, name).replace("_", "-") for name in options
             if name not in accepted]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} do(es) not apply to the {args.layout} layout")
    campaign = func(args.out, physics=physics_from_assignments(args.set),
                    progress_bar=not args.no_progress, **options)
    logger.info("wrote %s", campaign.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator command line; returns the exit status (0, or 2 on a user error)."""
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
