"""Synthetic master bias at any temperature from the bias model, with its uncertainty.

The image is ``A + B (T - TREF)`` per pixel; its ``UNCERT`` extension is the
model's one-sigma prediction error (with the A-B covariance), and ``MASK``
carries the model's flags.  Outside the fitted temperature range the model
is extrapolated, with a warning.  ``--output`` may be a file or an existing
folder (the file is then ``synthetic_bias_<T>C.fits``).

Example
-------
::

    python -m bias_pipeline.generate_bias --model out/bias_model.fits --temperature 5 --output out/
    python -m bias_pipeline.generate_bias --a-map bias_model/bias_a_map.fits \\
        --b-map bias_model/bias_b_map.fits --temperature -5 --output synthetic.fits
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from utils import adu, cli
from utils import headers as kw
from utils.errors import UserError
from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.io.tokens import number_text
from utils.models.bias_model import BiasModel

logger = logging.getLogger("bias_pipeline.generate_bias")


def synthetic_bias_path(folder: str | os.PathLike, temperature: float) -> Path:
    """``<folder>/synthetic_bias_<T:.1f>C.fits``."""
    return Path(folder) / f"synthetic_bias_{number_text(temperature)}C.fits"


def write_synthetic_bias(model: BiasModel, temperature: float, path: str | os.PathLike,
                         source: str = "") -> Path:
    """Write the model's bias at ``temperature`` [degC] as a CCDData-readable master.

    Returns the path written.
    """
    if not math.isfinite(temperature):
        raise UserError(f"temperature must be a finite number of degC, got {temperature}")
    if math.isfinite(model.t_min) and not model.covers(temperature):
        logger.warning("%.2f degC is outside the fitted range %.1f..%.1f degC: extrapolated",
                       temperature, model.t_min, model.t_max)
    from astropy.io import fits

    header = fits.Header()
    for key, value, comment in provenance_cards("SYNTHETIC_BIAS"):
        set_card(header, key, value, comment)
    for key, value, comment in (
            (kw.IMAGETYP, "MASTER BIAS", "synthetic, from the bias model"),
            (kw.TEMP, float(temperature), "[degC] temperature the model was evaluated at"),
            ("BIASMODL", Path(source).name if source else "a/b maps", "bias model used"),
            (kw.TREF, float(model.t_ref), "[degC] reference temperature of the model"),
            ("EXTRAPOL", bool(math.isfinite(model.t_min) and not model.covers(temperature)),
             "outside the fitted temperature range")):
        set_card(header, key, value, comment)
    for key, value, comment in adu.scaling_cards(model.adc_bits):
        set_card(header, key, value, comment)
    data = model.predict(temperature)
    finite = np.isfinite(data) & (model.mask == 0)
    if finite.any():
        set_card(header, kw.MEAN, float(np.mean(data[finite])), "[adu] mean, unmasked pixels")
        set_card(header, kw.STD, float(np.std(data[finite])), "[adu] std, unmasked pixels")
    return write_product(path, data, header, unit=adu.UNIT,
                         uncertainty=model.predict_err(temperature),
                         mask=(model.mask != 0) | ~np.isfinite(data))


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python -m bias_pipeline.generate_bias", __doc__)
    parser.add_argument("--model", help="bias_model.fits written by the bias pipeline")
    parser.add_argument("--a-map", help="old-style A map (bias at TREF, default 0 degC) [adu]")
    parser.add_argument("--b-map", help="old-style B map (temperature coefficient) [adu/degC]")
    parser.add_argument("--temperature", type=float, required=True,
                        help="[degC] temperature of the synthetic bias")
    parser.add_argument("--output", required=True,
                        help="output FITS file, or an existing folder")
    return parser


def _main(args) -> int:
    if args.model and (args.a_map or args.b_map):
        raise UserError("give either --model or --a-map/--b-map, not both")
    if args.model:
        model, source = BiasModel.read(args.model), args.model
    elif args.a_map and args.b_map:
        for p in (args.a_map, args.b_map):
            if not Path(p).is_file():
                raise UserError(f"{p}: map not found")
        model, source = BiasModel.from_maps(args.a_map, args.b_map), args.a_map
    else:
        raise UserError("give --model bias_model.fits (or both --a-map and --b-map)")
    out = Path(args.output)
    path = synthetic_bias_path(out, args.temperature) if out.is_dir() else out
    written = write_synthetic_bias(model, args.temperature, path, source)
    data = model.predict(args.temperature)
    err = model.predict_err(args.temperature)
    logger.info("synthetic bias at %.2f degC: mean %.2f adu, std %.2f adu, median error %.3f adu; "
                "written to %s", args.temperature, float(np.nanmean(data)),
                float(np.nanstd(data)), float(np.nanmedian(err)), written)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
