"""The flat pipeline: reduced and master flats, illumination (vignetting), PRNU and defects,
photon-transfer gain, flat model over temperature and exposure time, evaluation.

:func:`run` states the order of every mode once; each (stage, dose step) of the frames is
processed on its own, into ``OUT/<stage_dir>`` (``OUT`` itself without stages).
Products of one group::

    frame_qc.csv                          every flat: level, saturation, zeros, used or why not
    photon_transfer/ptc_pairs.csv, ptc_levels.csv, ptc_bias_pairs.csv, linearity.csv
    gain.json                             measured gain (utils.models.gain), read by --gain
    master_flat/master_flat_T<T>C_E<t>s.fits   normalised master per flat level
    sky_median/master_flat_sky_median[_normalized].fits   (--flat-type sky)
    illumination_model/illumination_<tag>.fits, illumination.csv
    flat_vignetting_corrected/master_flat_<tag>_vigncorr.fits (frames: <name>_vigncorr.fits)
    prnu/prnu_map.fits (combined), prnu_map_T<T>C.fits (per temperature, with several),
         prnu_summary.csv (per master, per temperature, combined), defects.fits|csv
    flat_model_fits/flat_model.fits, flat_A_map.fits, flat_B_map.fits, flat_C_map.fits
    flat_evaluation/evaluation_summary.csv (+ <master>_diff|_mae|_mape.fits, --save-eval-fits)
    flat_reduced/<name>_reduced.fits, flat_normalized/<name>_normalized.fits (when asked)
    masters.csv, plots/*.png, summary.json; bias_masters/, bias_model.fits, dark_masters/,
    auto_dark_files.json when bias and dark come from the tree's own frames
and ``config_used.json``, ``index.csv`` (a folder given) in ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils import adu, plotting
from utils.errors import UserError
from utils.io.fitsio import check_output_dir, write_csv, write_json
from utils.io.tokens import number_text
from utils.memory import release_free_memory
from utils.models.gain import Gain, resolve_gain, write_gain
from utils.models.read_noise import frame_pairs
from utils.progress import progress
from utils.run_record import completed_run, run_digest, write_run_summary
from utils.settings import dump_settings
from utils.stack.error_factor import clipped_error_factor
from utils.stack.grouping import calibration_groups
from utils.stack.master import read_master
from utils.stack.references import bias_reference, select_frames

from . import plots
from .evaluation import EVAL_FOLDER, evaluate
from .flat_model import MODEL_FOLDER, FlatModel, fit_flat_model
from .flat_model import read_rows as read_flat_rows
from .flat_model import reader as flat_reader
from .illumination import (
    CORRECTED_FOLDER,
    ILLUMINATION_FOLDER,
    fit_master,
    illumination_table,
    read_relative_illumination,
    write_corrected,
    write_illumination,
)
from .inputs import check_inputs, model_path
from .master import (
    MASTER_FOLDER,
    SKY_FOLDER,
    FlatMaster,
    build_master,
    build_sky_median,
    master_path,
)
from .photon_transfer import PTC_FOLDER, measure_gain
from .prnu import (
    PRNU_FOLDER,
    CrossAccumulator,
    accumulate,
    cross_estimates,
    defect_table,
    find_defects,
    finish_combined,
    prnu_map,
    write_defects,
    write_prnu,
)
from .quality import (
    USED,
    SetToMeasure,
    assess,
    bias_pair_statistics,
    measure_frames,
)
from .reduction import (
    DarkSource,
    FlatGroup,
    dark_source,
    flat_sets,
    output_names,
    reference_for_set,
    write_frames,
)
from .settings import FLAT_TYPES, MASTER_MODES, MODES, FlatSettings

logger = logging.getLogger(__name__)

#: Record of the gain-only step (``photon_transfer/``): its hash, for re-runs.
GAIN_RECORD = "gain_only_run.json"

@dataclass
class GroupResult:
    """What one (stage, dose step) produced."""

    out_dir: Path
    summary: dict
    files: list[Path]


@dataclass
class FlatResult:
    """What a run produced."""

    out_dir: Path
    groups: list[GroupResult] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file written or kept."""
        return [f for g in self.groups for f in g.files]

    def summary_line(self) -> str:
        """One line: what was written where."""
        parts = []
        for g in self.groups:
            s = g.summary
            text = f"{s.get('group', 'all')}: {s.get('used_frames', 0)} flats used " \
                   f"({s.get('excluded_frames', 0)} excluded)"
            if s.get("masters"):
                text += f", {len(s['masters'])} masters"
            ptc = s.get("photon_transfer") or {}
            if ptc.get("gain_e_per_adc") is not None:
                text += f", gain {ptc['gain_e_per_adc']:.3f} +- {ptc['gain_err_e_per_adc']:.3f} " \
                        "e-/ADC count"
            prnu = (s.get("prnu") or {}).get("combined") or {}
            if prnu.get("PRNU_PCT") is not None:
                text += f", PRNU {prnu['PRNU_PCT']:.3f} %"
            parts.append(text)
        mode = self.groups[0].summary.get("mode", "") if self.groups else ""
        return f"flat pipeline ({mode}) " + "; ".join(parts) + \
            f"; {len(self.files)} files in {self.out_dir}"


def _json(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean(obj):
    """NaN -> None, numpy -> Python, recursively (for summary.json)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, str, int)) or obj is None:
        return obj
    if isinstance(obj, (int, float, np.integer, np.floating, np.bool_)):
        return _json(obj)
    return str(obj)


class _Outputs:
    """Files written by one group, and figures (when plots are on)."""

    def __init__(self, out_dir: Path, save_plots: bool):
        self.dir, self.save_plots, self.files = out_dir, save_plots, []

    def add(self, paths) -> None:
        self.files += [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]

    def wants(self, level: str = "summary") -> bool:
        """Whether figures of ``level`` will be drawn (what only they need can be dropped)."""
        return self.save_plots and plotting.wants(level)

    def figure(self, draw, name: str, level: str = "summary") -> None:
        """Draw and save ``plots/<name>`` when plots are on and ``level`` is wanted (``draw``:
        a drawing or a callable, see :func:`utils.plotting.save`)."""
        if not self.save_plots:
            return
        saved = plotting.save(draw, self.dir / "plots" / name, level=level)
        if saved is not None:
            self.files.append(saved)


# --- the pipeline -------------------------------------------------------------------------------

def run(basepath: str | os.PathLike | None, out_dir: str | os.PathLike,
        settings: FlatSettings = FlatSettings(), *, progress_bar: bool = False) -> FlatResult:
    """Run one mode of the flat pipeline on every (stage, dose step) of the frames.

    Order, per group: references (bias at each frame's T, dark at its T and t) -> one pass
    over the central regions (levels, photon-transfer pairs) -> frame QC -> photon-transfer
    gain -> reduced / normalised frames (when asked) -> masters per flat level (and sky
    median) -> illumination model -> vignetting-corrected masters or frames -> PRNU and
    defects -> flat model over T and t -> evaluation -> figures -> summary.  Each mode
    runs the parts its name says (module notes of :mod:`flat_pipeline.run_pipeline`).

    Raises
    ------
    UserError
        Bad input (see :func:`check_inputs`), no flat passing the QC, or a mode that needs
        a product it cannot make (a flat model from a single master).
    """
    out_dir = check_output_dir(out_dir)  # a file in the way: one line, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = check_inputs(basepath, out_dir, settings, progress_bar=progress_bar)
    dump_settings(out_dir, flat=settings, basepath=str(basepath or ""))
    result = FlatResult(out_dir)
    for group in inputs.groups:
        result.groups.append(run_group(inputs.index, group, out_dir, settings,
                                       inputs.shapes[group.label], inputs.adc_bits[group.label],
                                       progress_bar=progress_bar,
                                       subfolder=len(inputs.groups) > 1))
    if any(g.out_dir != out_dir for g in result.groups):
        write_json(_clean({"mode": settings.mode, "groups": [
            {"group": g.summary.get("group"), "folder": g.out_dir.name,
             "summary": (g.out_dir / "summary.json").name} for g in result.groups]}),
            out_dir / "summary.json")
    return result


def measure_gain_only(basepath, out_dir, settings: FlatSettings = FlatSettings(), *,
                      progress_bar: bool = False) -> list[Gain]:
    """Photon-transfer gain of every group (``gain.json``), without the rest of the pipeline.

    ``run_calibration.py`` calls this before the dark pipeline so that its hot-pixel
    thresholds and dark currents in electrons use the measured gain: the photon transfer
    needs the bias and flat pairs only (the dark signal sits on the same variance line).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = check_inputs(basepath, out_dir, settings, progress_bar=progress_bar,
                          need_dark=False)
    gains = []
    for group in inputs.groups:
        res = run_group(inputs.index, group, out_dir, settings, inputs.shapes[group.label],
                        inputs.adc_bits[group.label], progress_bar=progress_bar, gain_only=True,
                        subfolder=len(inputs.groups) > 1)
        path = res.out_dir / "gain.json"
        if path.is_file():
            from utils.models.gain import read_gain

            gains.append(read_gain(path))
    return gains


def _references(index, group, group_dir, settings, shape, progress_bar, need_dark=True):
    dose = group.key.dose if group.key.stage == "radiating" else None
    bias = bias_reference(index, group_dir, model_path=settings.bias_model,
                          stage=group.key.stage, temp_bin=settings.temp_bin,
                          tolerance=settings.bias_temp_tolerance, combine=settings.combine,
                          progress_bar=progress_bar, dose=dose, what="flats", lean=True)
    bias.check_shape(shape, "flat frames")
    if not need_dark:
        return bias, DarkSource("none", "not needed (photon transfer only)")
    darks = dark_source(index, group, group_dir, bias, dark_model=settings.dark_model,
                        dark_files_json=settings.dark_files_json, temp_bin=settings.temp_bin,
                        exp_tolerance=settings.exp_tolerance,
                        tolerance=settings.dark_temp_tolerance, combine=settings.combine,
                        progress_bar=progress_bar)
    darks.check_shape(shape)
    return bias, darks


#: Bias-pair statistics already measured in this process, by pairs, shape, region and file
#: times: the gain (before the dark pipeline) and the full run of a campaign read them once.
_BIAS_PAIRS: dict = {}


def _bias_pairs(index, group, shape, settings) -> pd.DataFrame | None:
    dose = group.key.dose if group.key.stage == "radiating" else None
    rows = select_frames(index, "BIAS", group.key.stage, dose=dose,
                         purpose="the read noise of the photon transfer")
    if rows.empty:
        return None
    pairs = []
    for _, part in calibration_groups(rows, temp_width=settings.temp_bin):
        pairs += frame_pairs(part)
    if not pairs:
        return None
    key = (tuple(pairs), tuple(shape), settings.central_fraction,
           tuple(os.stat(p).st_mtime_ns for pair in pairs for p in pair if os.path.exists(p)))
    if key not in _BIAS_PAIRS:
        _BIAS_PAIRS.clear()  # one campaign's pairs at a time
        _BIAS_PAIRS[key] = bias_pair_statistics(pairs, shape,
                                                central_fraction=settings.central_fraction)
    return _BIAS_PAIRS[key].copy()


def _gain_pass_done(record: Path, group_dir: Path, digest: str) -> bool:
    """Whether the gain-only pass recorded in ``record`` had these inputs and its files are
    all still there.  The record lists what the pass wrote (``written``, relative to
    ``group_dir``): a pass that measured no gain wrote no ``gain.json`` and is complete too.
    A record of an older version (no ``written``) is complete only with a ``gain.json``."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("inputs_hash") != digest:
        return False
    written = data.get("written")
    if not isinstance(written, list):
        return (group_dir / "gain.json").is_file()
    return all((group_dir / str(f)).is_file() for f in written)


def run_group(index, group: FlatGroup, out_dir: Path, settings: FlatSettings,
              shape: tuple[int, int], adc_bits: int, *, progress_bar: bool = False,
              gain_only: bool = False, subfolder: bool = True) -> GroupResult:
    """Every step of :func:`run` for one (stage, dose step), into ``out_dir/<stage_dir>``
    (``out_dir`` itself when ``subfolder`` is False: a run of a single group).  With
    ``gain_only``, the frame QC and the photon transfer only, bias-subtracted (the gain
    needs no dark)."""
    mode = settings.mode
    group_dir = out_dir / group.key.stage_dir if subfolder else out_dir
    group_dir.mkdir(parents=True, exist_ok=True)
    out = _Outputs(group_dir, settings.save_plots and not gain_only)
    rows = group.rows
    usable = rows[~rows["BADFITS"].astype(bool) & rows["TEMP"].notna()
                  & (pd.to_numeric(rows["EXPTIME"], errors="coerce") > 0)]
    bias, darks = _references(index, group, group_dir, settings, shape, progress_bar,
                              need_dark=not gain_only)
    sets = flat_sets(usable, settings.temp_bin, settings.exp_tolerance)
    digest = run_digest(settings, [], *sorted(f"{p}:{os.path.getmtime(p)}"
                                              for p in usable["PATH"].astype(str)),
                        bias.fingerprint, darks.fingerprint, str(gain_only))
    # the gain step (before the dark pipeline) keeps its own record: it writes into the flat
    # folder, and redoing it on a re-run would overwrite the full run's frame_qc.csv and
    # photon-transfer tables with its bias-only ones while the full run is skipped
    gain_record = group_dir / PTC_FOLDER / GAIN_RECORD
    if gain_only and _gain_pass_done(gain_record, group_dir, digest):
        logger.info("photon-transfer gain of %s in %s is up to date", group.label, group_dir)
        return GroupResult(group_dir, {}, [])
    done = completed_run(group_dir, digest)
    if done is not None and not gain_only:
        logger.info("flat products of %s in %s are up to date (same frames and settings)",
                    group.label, group_dir)
        return GroupResult(group_dir, done, [group_dir / f for f in done["files"]])
    summary: dict = {"mode": mode, "group": group.label, "stage": group.key.stage,
                     "dose_krad": group.key.dose, "flat_type": settings.flat_type,
                     "units": "normalised flats [1]; levels in stored 16-bit ADU (divide by "
                              "adu_scale for ADC counts)",
                     "adu_scale": adu.adu_scale(adc_bits), "bias": bias.source,
                     "dark": darks.description}
    if darks.kind == "masters" and not settings.dark_files_json:
        out.add(write_json(darks.files, group_dir / "auto_dark_files.json"))

    # 1. references per set, one pass over the central regions, frame QC; one set's
    # reference (bias and dark images) in memory at a time
    measured, dark_missing = [], {}
    for key, part in progress(sets, desc="flat levels", enabled=progress_bar, unit="set"):
        ref, why = reference_for_set(part, key, bias, darks)
        if ref is None or ref.no_dark:
            for p in part["PATH"].astype(str):
                dark_missing[p] = why if ref is None else \
                    f"no dark correction ({ref.no_dark}); give --dark-model or --allow-bias-only"
        if ref is not None:
            measured.append(measure_frames([SetToMeasure(key, part, ref)], shape,
                                           norm_method=settings.norm_method,
                                           central_fraction=settings.central_fraction,
                                           adc_bits=adc_bits))
        del ref
    frames = pd.concat([m[0] for m in measured], ignore_index=True) if measured \
        else pd.DataFrame(columns=["PATH", "TBIN", "EXPTIME", "TEMP", "READERR"])
    pairs = pd.concat([m[1] for m in measured], ignore_index=True) if measured \
        else measure_frames([], shape, norm_method=settings.norm_method,
                            central_fraction=settings.central_fraction, adc_bits=adc_bits)[1]
    qc = assess(frames, rows, dark_missing, allow_bias_only=settings.allow_bias_only or gain_only,
                max_zero_fraction=settings.max_zero_fraction,
                max_saturated_fraction=settings.max_saturated_fraction,
                level_nsigma=settings.level_nsigma, level_min_dev=settings.level_min_dev)
    out.add(write_csv(qc, group_dir / "frame_qc.csv"))
    used_qc = qc[qc["STATUS"] == USED]
    summary.update(frames=int(len(qc)), used_frames=int(len(used_qc)),
                   excluded_frames=int(len(qc) - len(used_qc)),
                   excluded=[{"file": Path(p).name, "reason": r} for p, r in
                             zip(qc.loc[qc["STATUS"] != USED, "PATH"],
                                 qc.loc[qc["STATUS"] != USED, "REASON"])])
    excluded = qc[qc["STATUS"] != USED]
    # the gain-only pass runs on the same frames before the full one, which warns: one
    # warning per set in warnings.log and the report, not two
    log = logger.info if gain_only else logger.warning
    for (_, _, _), part in excluded.groupby(
            [excluded["TBIN"].fillna(-999), excluded["EXPTIME"],
             excluded["REASON"].str.split(":").str[0]], sort=False):
        log("%s%s: left out of the masters (%s)", Path(part["PATH"].iloc[0]).name,
            f" and {len(part) - 1} more of its set" if len(part) > 1 else "",
            part["REASON"].iloc[0])
    out.figure(plotting.drawing(plots.plot_frame_levels, qc), "frame_levels.png")

    # 2. photon transfer (gain.json) -- bias and flat pairs only
    gain_used = resolve_gain(settings.gain, adc_bits)
    if mode in ("full", "full_no_vignetting") or gain_only:
        ptc = measure_gain(pairs, qc, _bias_pairs(index, group, shape, settings),
                           adc_bits=adc_bits, fit_fraction=settings.ptc_fit_fraction)
        folder = group_dir / PTC_FOLDER
        out.add([write_csv(pairs, folder / "ptc_pairs.csv"),
                 write_csv(ptc.levels, folder / "ptc_levels.csv"),
                 write_csv(ptc.linearity, folder / "linearity.csv")])
        summary["photon_transfer"] = ptc.summary()
        if ptc.measured:
            measured = ptc.to_gain(str(group_dir / "gain.json"))
            out.add(write_gain(measured, group_dir / "gain.json"))
            gain_used = gain_used or measured
        out.figure(plotting.drawing(plots.plot_ptc, ptc, pairs), "ptc.png")
        out.figure(plotting.drawing(plots.plot_linearity, ptc), "linearity.png")
    if gain_only:
        root = group_dir.resolve()
        written = sorted({Path(f).resolve().relative_to(root).as_posix() for f in out.files
                          if Path(f).resolve().is_relative_to(root)})
        write_json({"inputs_hash": digest, "files": [], "written": written}, gain_record)
        return GroupResult(group_dir, summary, out.files)
    if gain_used is not None:
        summary["gain_used"] = {"gain_e_per_adc": gain_used.gain, "source": gain_used.source,
                                "method": gain_used.method}
    gain_cards = {k: (v, c) for k, v, c in gain_used.cards()} if gain_used else {}

    if used_qc.empty:
        reasons = used_qc = qc["REASON"].value_counts()
        raise UserError(f"no flat frame of {group.label} passed the frame QC ("
                        + "; ".join(f"{n} x {r}" for r, n in reasons.items())[:300]
                        + f"); see {group_dir / 'frame_qc.csv'}")

    # the sets again, with their used frames only (references index frames by position);
    # each set's reference is made when the set is used, and dropped after
    levels = qc.set_index("PATH")["LEVEL"]
    used_paths = set(used_qc["PATH"].astype(str))
    used_sets = []
    for key, part in sets:
        part = part[part["PATH"].astype(str).isin(used_paths)]
        if part.empty:
            continue

        def make_ref(part=part, key=key):
            return reference_for_set(part, key, bias, darks)[0]
        used_sets.append((key, part, make_ref,
                          levels.loc[part["PATH"].astype(str)].to_numpy(float)))
    common = {"FLATTYPE": (settings.flat_type, "lab, sky or satellite")} | gain_cards

    # 3. reduced / normalised frames (written only when asked)
    if mode in ("reduce_only", "normalize_only") or settings.save_reduced:
        names = output_names(list(usable["PATH"].astype(str)), "reduced")
        norm_names = {p: n.replace("_reduced.fits", "_normalized.fits") for p, n in names.items()}
        for key, part, make_ref, lv in used_sets:
            ref = make_ref()
            if mode != "normalize_only" or settings.save_reduced:
                out.add(write_frames(part, ref, group_dir / "flat_reduced", step="raw_reduced",
                                     names=names, adc_bits=adc_bits, extra=common))
            if mode != "reduce_only" or settings.save_reduced:
                out.add(write_frames(part, ref, group_dir / "flat_normalized", step="normalized",
                                     names=norm_names, levels=lv, adc_bits=adc_bits,
                                     extra=common))
        summary["frames_written"] = int(len(used_qc))

    # 4. masters per flat level (and the sky median)
    masters: list[FlatMaster] = []
    if mode in MASTER_MODES and not (mode == "vignetting_only" and settings.illumination_model):
        for key, part, make_ref, lv in used_sets:
            if len(part) < 2:
                logger.warning("flat set %s: one usable frame; no master", key.tag)
                continue
            masters.append(build_master(key, part, lv, make_ref(),
                                        master_path(group_dir / MASTER_FOLDER, key),
                                        settings.combine, norm_method=settings.norm_method,
                                        central_fraction=settings.central_fraction,
                                        cards=common, progress_bar=progress_bar))
        if not masters:
            raise UserError(f"no flat master of {group.label} could be made: every flat level "
                            "has fewer than two usable frames (see frame_qc.csv)")
        out.add([m.path for m in masters])
        table = pd.DataFrame([{"TAG": m.tag, "TBIN": m.key.temperature, "TAVG": m.tavg,
                               "EXPTIME": m.exptime, "LEVEL": m.level, "NCOMBINE": m.ncombine,
                               "PATH": m.path.relative_to(group_dir).as_posix()}
                              for m in masters])
        out.add(write_csv(table, group_dir / "masters.csv"))
        summary["masters"] = table.to_dict("records")
        if settings.flat_type == "sky" and mode in ("full", "full_no_vignetting", "make_master"):
            entries = []  # every set's reference at once: the sky median stacks them all
            for key, part, make_ref, lv in used_sets:
                ref = make_ref()
                entries += [(row, ref, i, float(lv[i])) for i, (_, row) in
                            enumerate(part.iterrows())]
            out.add(build_sky_median(entries, group_dir / SKY_FOLDER, settings.combine,
                                     norm_method=settings.norm_method,
                                     central_fraction=settings.central_fraction,
                                     key=group.key, cards=common, progress_bar=progress_bar))
        if mode != "vignetting_only":  # the bias and dark images are not needed any more
            used_sets, bias, darks = [], None, None
            release_free_memory()
        reference = _reference_master(masters, summary, adc_bits)
        summary["reference_master"] = reference.tag
        out.figure(lambda: plotting.drawing(plots.plot_master_data, plots.master_data(
            read_master(reference.path).data, reference.tag)), "master_flat.png")

    # 5. illumination, vignetting correction, PRNU and defects
    if mode == "full":
        _illumination_and_prnu(masters, reference, group_dir, settings, summary, out,
                               common)
        release_free_memory()
    elif mode == "vignetting_only":
        _vignetting_only(used_sets, masters, group_dir, settings, shape, summary, out, common,
                         adc_bits)

    # 6. flat model over T and t, and its evaluation
    model = None
    if mode in ("full", "full_no_vignetting", "fit_model"):
        try:
            model = fit_flat_model(masters, t_ref=settings.t_ref, exp_ref=settings.exp_ref,
                                   shape=shape, memory_limit=settings.combine.memory_limit)
        except UserError as err:
            if mode == "fit_model":
                raise
            logger.warning("%s", err)
            summary["flat_model"] = {"note": str(err)}
        if model is not None:
            out.add(model.write(group_dir / MODEL_FOLDER))
            release_free_memory()
            summary["flat_model"] = model.headline()
            for j, name in enumerate("ABC"):
                out.figure(lambda j=j: plotting.drawing(plots.plot_model_map_data,
                                                        plots.model_map_data(model, j)),
                           f"flat_model_{name}.png")
    if mode == "evaluate_model":
        model = FlatModel.read(model_path(out_dir, settings, group))
    if model is not None and mode in ("full", "full_no_vignetting", "evaluate_model"):
        defects = summary.get("_defect_mask")
        ev, files = evaluate(model, masters, exclude=defects,
                             fits_dir=group_dir / EVAL_FOLDER if settings.save_eval_fits
                             else None, maps=out.wants("all"))  # (only those figures)
        out.add(files)
        out.add(write_csv(ev.table, group_dir / EVAL_FOLDER / "evaluation_summary.csv"))
        summary["evaluation"] = ev.table.to_dict("records")
        out.figure(plotting.drawing(plots.plot_evaluation, ev.table),
                   "flat_model_evaluation.png")

        def error_maps(ev=ev, masters=masters, defects=defects):
            if not ev.maps:  # not made above (figures of level all not wanted then)
                ev.maps.update(evaluate(model, masters, exclude=defects)[0].maps)
            return ev.maps
        out.figure(lambda: plots.plot_error_maps(error_maps(), 0, title="|master - model|",
                                                 unit="1"), "mae_maps.png", level="all")
        out.figure(lambda: plots.plot_error_maps(error_maps(), 1,
                                                 title="absolute percentage error", unit="%"),
                   "mape_maps.png", level="all")
    summary.pop("_defect_mask", None)
    out.add(write_run_summary(group_dir, _clean(summary), out.files, digest, default=_json))
    return GroupResult(group_dir, _clean(summary), out.files)


def _reference_master(masters: list[FlatMaster], summary: dict, adc_bits: int) -> FlatMaster:
    """The master nearest half the saturation onset (EMVA 1288 quotes PRNU at 50 %)."""
    ptc = summary.get("photon_transfer") or {}
    onset = ptc.get("saturation_onset_adu")
    target = 0.5 * (onset if onset else adu.saturation_level(adc_bits) * 0.9)
    return min(masters, key=lambda m: abs(m.level - target) if math.isfinite(m.level) else 1e30)


def _illumination_and_prnu(masters, reference, group_dir, settings, summary, out, cards) -> None:
    """Step 5 of ``full``: illumination per master, corrected masters, PRNU, defects.

    Pass 1, master by master: illumination model, its products, the vignetting-corrected
    master, and the inverse-variance sums of the combined PRNU map (and of one map per
    temperature bin).  Defects from the combined map.  Pass 2, row blocks of every master
    together: the cross-covariance sums of the PRNU statistics
    (:class:`flat_pipeline.prnu.CrossAccumulator`).
    """
    fitted, norms = [], []
    shape = None
    sums: dict = {}
    ref_data = ref_ill = None
    for m in masters:
        data, err = read_flat_rows(m.path)
        shape = data.shape
        ill = fit_master(m.tag, data, tilt=settings.tilt)
        fitted.append(ill)
        out.add(write_illumination(ill, group_dir / ILLUMINATION_FOLDER /
                                   f"illumination_{m.tag}.fits", m.path))
        out.add(write_corrected(m.path, ill, group_dir / CORRECTED_FOLDER /
                                f"{m.path.stem}_vigncorr.fits", data))
        p = prnu_map(m.tag, data, err, ill.relative * np.float32(ill.model.value("c0")))
        norms.append(p.norm)
        several_t = len({x.key.temperature for x in masters}) > 1
        for key in ("all", m.key.temperature) if several_t else ("all",):
            acc, wsum = sums.setdefault(key, (np.zeros(shape, np.float32),
                                              np.zeros(shape, np.float32)))
            accumulate(acc, wsum, p)
        if m is reference and out.wants():  # the figures' master and maps
            ref_data, ref_ill = data, ill
        else:  # pass 2 evaluates the model by rows: the full-resolution maps are done with
            fitted[-1] = dataclasses.replace(ill, relative=None, relative_err=None)
        # (no malloc_trim here: the next master's maps of the same sizes take these blocks
        # again; the trim after the step returns what is left, ~0.1 s less here)
        del data, err, ill, p
    out.add(write_csv(illumination_table(fitted), group_dir / ILLUMINATION_FOLDER /
                      "illumination.csv"))
    summary["illumination"] = illumination_table(fitted).to_dict("records")
    combined = finish_combined(*sums.pop("all"), "combined")
    bits = find_defects(combined, dead_threshold=settings.dead_threshold,
                        cold_threshold=settings.cold_threshold,
                        column_nsigma=settings.column_nsigma,
                        column_min_dev=settings.column_min_dev)
    exclude = bits != 0
    comb = settings.combine
    cross = CrossAccumulator([m.tag for m in masters], shape, noise_factors=[
        clipped_error_factor(m.ncombine, comb.method, sigma_low=comb.sigma_low,
                             sigma_high=comb.sigma_high, maxiters=comb.maxiters,
                             min_accepted=comb.min_accepted)
        for m in masters])
    readers = [flat_reader(m.path) for m in masters]
    for start in range(0, shape[0], 256):
        stop = min(shape[0], start + 256)
        blocks = [r.read(start, stop) for r in readers]
        models = [ill.model.evaluate(slice(start, stop)) for ill in fitted]
        data = np.stack([b[0] / mod / n for b, mod, n in zip(blocks, models, norms)])
        err = np.stack([b[1] / mod / n for b, mod, n in zip(blocks, models, norms)])
        valid = np.isfinite(data).all(0) & np.isfinite(err).all(0) & ~exclude[start:stop]
        cross.add(start, data, err, valid)
    rows = cross_estimates(cross, [m.key.temperature for m in masters])
    stats = rows[-1]
    folder = group_dir / PRNU_FOLDER
    out.add(write_prnu(combined, folder / "prnu_map.fits", bits, stats,
                       cards | {"NMASTERS": (len(masters), "PRNU maps combined")}))
    if len(sums) > 1:  # one map per temperature bin
        for t, (acc, wsum) in sorted(sums.items()):
            per_t = finish_combined(acc, wsum, f"T{number_text(t)}C")
            row = next((r for r in rows if r["TAG"] == per_t.tag), {})
            out.add(write_prnu(per_t, folder / f"prnu_map_{per_t.tag}.fits", bits, row, cards))
    out.add(write_csv(pd.DataFrame(rows), folder / "prnu_summary.csv"))
    defects = defect_table(bits)
    out.add([write_defects(bits, folder / "defects.fits", cards),
             write_csv(defects, folder / "defects.csv")])
    summary["prnu"] = {"combined": stats, "rows": rows[:-1]}
    summary["defects"] = {r["DEFECT"]: int(r["COUNT"]) for r in defects.to_dict("records")}
    summary["defect_columns"] = defects.loc[defects["DEFECT"] == "column", "COLUMNS"].iloc[0]
    summary["_defect_mask"] = exclude
    # drawn in the render process from what they show (reduced here when wanted)
    out.figure(lambda: plotting.drawing(plots.plot_illumination_profile_data,
                                        plots.illumination_profile_data(ref_data, ref_ill)),
               "illumination_profile.png")
    out.figure(lambda: plotting.drawing(plots.plot_illumination_map_data,
                                        plots.illumination_map_data(ref_ill)),
               "illumination_map.png")
    out.figure(lambda: plotting.drawing(plots.plot_prnu_map_data, plots.prnu_map_data(combined)),
               "prnu_map.png")
    out.figure(lambda: plotting.drawing(plots.plot_prnu_histogram_data,
                                        plots.prnu_histogram_data(combined, stats)),
               "prnu_histogram.png")
    out.figure(lambda: plotting.drawing(plots.plot_defects_data, plots.defects_data(bits)),
               "defects_map.png")


def _vignetting_only(used_sets, masters, group_dir, settings, shape, summary, out, cards,
                     adc_bits) -> None:
    """``vignetting_only``: normalised frames divided by the given or fitted illumination."""
    given = read_relative_illumination(settings.illumination_model, shape) \
        if settings.illumination_model else None
    by_tag = {m.tag: m for m in masters}
    fitted = []
    names = output_names([p for _, part, _, _ in used_sets for p in part["PATH"].astype(str)],
                         "vigncorr")
    for key, part, make_ref, lv in used_sets:
        if given is not None:
            relative = given
        elif key.tag in by_tag:
            m = by_tag[key.tag]
            ill = fit_master(m.tag, read_master(m.path).data, tilt=settings.tilt)
            fitted.append(ill)
            out.add(write_illumination(ill, group_dir / ILLUMINATION_FOLDER /
                                       f"illumination_{m.tag}.fits", m.path))
            relative = ill.relative
        else:
            logger.warning("flat set %s: no master to fit an illumination model to; its "
                           "frames are not corrected", key.tag)
            continue
        out.add(write_frames(part, make_ref(), group_dir / CORRECTED_FOLDER,
                             step="vignetting_corrected", names=names, levels=lv,
                             illumination=relative, adc_bits=adc_bits, extra=cards))
    if fitted:
        out.add(write_csv(illumination_table(fitted), group_dir / ILLUMINATION_FOLDER /
                          "illumination.csv"))
        summary["illumination"] = illumination_table(fitted).to_dict("records")
    summary["illumination_source"] = settings.illumination_model or "fitted to each set's master"


__all__ = ["FlatSettings", "FlatResult", "GroupResult", "run", "run_group", "check_inputs",
           "measure_gain_only", "MODES", "FLAT_TYPES"]
