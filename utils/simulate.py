"""Command: write a seeded synthetic test campaign of the CMOS camera, with its ground truth.

Writes one of three on-disk layouts the toolkit reads -- ``standard`` (bias,
dark and flat test sections of raw frames), ``irradiation`` (pre-irradiation,
dose steps and post-irradiation stages of raw frames, plus the campaign
radiation log) or ``dosedirs`` (already-converted FITS frames in
``<dose>kRads/fits`` folders) -- and, next to it, ``truth/truth.json`` (every
physical parameter and one record per frame) and ``truth/truth.npz`` (the
per-pixel maps the frames were drawn from), so tests can check recovery.

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

logger = logging.getLogger(__name__ if __name__ != "__main__" else "utils.simulate")

# ================================================================================================
# Command line
# ================================================================================================

_LAYOUTS = {"standard": simulate_standard, "irradiation": simulate_irradiation,
            "dosedirs": simulate_dosedirs}


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
                        help="frame width [pixel] (default 40)")
    parser.add_argument("--height", type=int, default=unset, metavar="H",
                        help="frame height [pixel] (default 24)")
    parser.add_argument("--frames", type=int, default=unset, metavar="N",
                        help="frames per attempt (default 4; irradiation 3)")
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
                        help="irradiation, dosedirs: increasing doses [krad] "
                             "(default 10 20; dosedirs 5 10)")
    parser.add_argument("--temperature", type=float, default=unset, metavar="T",
                        help="irradiation, dosedirs: set point [degC] (default 20)")
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
                   "defects", "model_temperatures", "dose_profile")


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
    func = _LAYOUTS[args.layout]
    options = {name: getattr(args, name) for name in _LAYOUT_OPTIONS if hasattr(args, name)}
    accepted = inspect.signature(func).parameters
    wrong = ["--" + name.replace("_", "-") for name in options if name not in accepted]
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
