"""Settings of a flat-pipeline run: the modes, and a frozen, validated dataclass written to
``config_used.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from utils.settings import field as sfield
from utils.stack.master import CombineSettings

from .quality import NORM_METHODS

MODES = ("full", "full_no_vignetting", "reduce_only", "normalize_only", "vignetting_only",
         "make_master", "fit_model", "evaluate_model")
FLAT_TYPES = ("lab", "sky", "satellite")
#: Modes that stack masters.
MASTER_MODES = ("full", "full_no_vignetting", "make_master", "fit_model", "evaluate_model",
                "vignetting_only")


@dataclass(frozen=True)
class FlatSettings:
    """Settings of one flat-pipeline run (written to ``config_used.json``)."""

    mode: str = sfield("full", "what to run: " + ", ".join(MODES))
    flat_type: str = sfield("lab", "lab (lamp), sky (also the sky median) or satellite")
    bias_model: str = sfield("", "bias_model.fits of the bias pipeline (else fitted from the "
                                 "tree's bias frames)")
    dark_model: str = sfield("", "dark_model_2d.fits (or dark_model.fits) of the dark pipeline "
                                 "(else dark masters from the tree's dark frames)")
    dark_files_json: str = sfield("", "old list of {original_path, temperature, exposure} darks")
    allow_bias_only: bool = sfield(False, "reduce flats without a dark with the bias alone "
                                          "(flagged)")
    norm_method: str = sfield("median", "frame level: median, mean or max of the central "
                                        "region")
    central_fraction: float = sfield(0.5, "side fraction of the central region (levels, "
                                          "photon transfer)")
    t_ref: float | None = sfield(None, "[degC] TREF of the flat model (default: masters' mean)")
    exp_ref: float | None = sfield(None, "[s] EXPREF of the flat model (default: masters' "
                                         "mean)")
    gain: str | None = sfield(None, "[e-/ADC count] gain, or a gain.json, overriding the "
                                    "measured one in the products")
    save_reduced: bool = sfield(False, "also write the reduced and normalised frames")
    save_eval_fits: bool = sfield(False, "also write the evaluation maps as FITS")
    save_plots: bool = sfield(True, "write the PNG figures")
    stage: str = sfield("", "only this irradiation stage (default: every stage, apart)")
    dose: float | None = sfield(None, "[krad] only this dose step of the radiating stage")
    temp_bin: float = sfield(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = sfield(0.01, "largest relative exposure-time span of one master")
    bias_temp_tolerance: float = sfield(2.0, "[degC] largest distance to the bias model's range "
                                             "or to a bias master")
    dark_temp_tolerance: float = sfield(2.0, "[degC] largest distance to the dark model's "
                                             "range or to a dark master")
    max_zero_fraction: float = sfield(1e-4, "flats with more zero pixels are excluded")
    max_saturated_fraction: float = sfield(0.01, "flats with more saturated pixels are left "
                                                 "out of the masters")
    level_nsigma: float = sfield(5.0, "[sigma] lamp-drift test on the level per second")
    level_min_dev: float = sfield(0.02, "smallest relative level departure called drift")
    tilt: bool = sfield(False, "illumination model times a tilted-lamp plane")
    illumination_model: str = sfield("", "illumination_<tag>.fits applied by vignetting_only")
    cold_threshold: float = sfield(0.8, "cold pixel: response below this of the smooth one")
    dead_threshold: float = sfield(0.1, "dead pixel: response below this of the smooth one")
    column_nsigma: float = sfield(5.0, "[sigma] column-defect test on column medians")
    column_min_dev: float = sfield(0.02, "smallest relative column departure called a defect")
    ptc_fit_fraction: float = sfield(0.7, "photon-transfer fit up to this fraction of the "
                                          "saturation onset")
    model_dir: str = sfield("", "folder holding flat_model_fits/ for evaluate_model (default: "
                                "the output folder)")
    combine: CombineSettings = sfield(CombineSettings(), "combination of each master")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.flat_type not in FLAT_TYPES:
            raise ValueError(f"flat type must be one of {', '.join(FLAT_TYPES)}")
        if self.norm_method not in NORM_METHODS:
            raise ValueError(f"norm method must be one of {', '.join(NORM_METHODS)}")
        if not 0 < self.central_fraction <= 1:
            raise ValueError("central_fraction must be within (0, 1]")
        if not self.temp_bin > 0 or self.exp_tolerance < 0:
            raise ValueError("temp_bin must be > 0 and exp_tolerance >= 0")
        if min(self.bias_temp_tolerance, self.dark_temp_tolerance) < 0:
            raise ValueError("temperature tolerances must be >= 0")
        for name in ("max_zero_fraction", "max_saturated_fraction", "cold_threshold",
                     "dead_threshold", "level_min_dev", "column_min_dev"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1")
        if not self.dead_threshold < self.cold_threshold:
            raise ValueError("dead_threshold must be below cold_threshold")
        if not (self.level_nsigma > 0 and self.column_nsigma > 0):
            raise ValueError("level_nsigma and column_nsigma must be > 0")
        if not 0 < self.ptc_fit_fraction <= 1:
            raise ValueError("ptc_fit_fraction must be within (0, 1]")
        for name in ("t_ref", "exp_ref", "dose"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite")


__all__ = ["FlatSettings", "MODES", "FLAT_TYPES", "MASTER_MODES"]
