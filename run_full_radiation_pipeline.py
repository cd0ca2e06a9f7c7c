r"""The whole irradiation campaign in one command: conversion, dose bookkeeping, per-stage
calibration products, precision analyses, the radiation response model, reconstruction and
procedure checks.

DATASET_ROOT is either an irradiation campaign with stage folders (Preirradiation/,
Irradiation/<dose>kRads/, Postirradiation/, each with Bias/, Darks/, Flats/ of raw frames)
or dose directories (<dose>kRads/ holding fits/*.fits, or raw frames in frames/, with an
optional radiationLogDef.csv).  RADIATION_LOG is the campaign log; without it the one
beside the data (radiationLogCompleto.csv) is used, else one is synthesised from the dose
bookkeeping into OUTPUT_DIR (never over the user's files).

Steps (run() states the order): recognise the layout -> convert the raw frames not yet
converted -> index with the dose bookkeeping (OUTPUT_DIR/index.csv) -> per (stage, dose
step) the bias, dark and flat pipelines into OUTPUT_DIR/<stage>/ (pre/, radiating/<step>/,
post/) -> the radiation analysis and the dose analysis (with the damage analysis) into
OUTPUT_DIR/precision/ -> per-stage intensity time series (<stage>/plots/) -> the
radiation response model (OUTPUT_DIR/radiation_model/) -> reconstruction of every master
(<stage>/reconstruction/) -> procedure checks (procedure_checks.csv) -> summary.json ->
the campaign report (OUTPUT_DIR/report/).  Input files are never modified: FITS are
added beside raw frames that have none, every listing goes to OUTPUT_DIR.  A re-run with
the same inputs and settings keeps the complete products.

The master options (--temp-bin, --exp-tolerance, --bias-temp-tolerance, --method, --sigma,
--memory-limit) are those of run_calibration.py and reach every step that groups or
combines frames (the radiation response model's masters stay mean-combined, by design);
--scheduler dask sends conversion, index statistics and the per-pixel model fits to a
Dask cluster.

Example
-------
::

    python run_full_radiation_pipeline.py /data/irr out/irr --gain 2.0
    python run_full_radiation_pipeline.py /data/irr /data/irr/radiationLogCompleto.csv out/irr
    python run_full_radiation_pipeline.py /data/dosedirs out/dd --ignore-temp --verbose
    python run_full_radiation_pipeline.py /data/irr out/irr --sigma 5 --memory-limit 5e8
    python run_full_radiation_pipeline.py /shared/irr /shared/out --scheduler dask \
        --dask-address tcp://labhost:8786
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

from analysis import fit_radiation_model, procedure_checks, process_index, radiation_reconstruction
from analysis import report as campaign_report
from analysis.campaign_runs import (
    campaign_log,
    check_frame_sizes,
    check_log,
    convert_campaign,
    detect_layout,
    index_campaign,
    intensity_series,
    stage_folder,
)
from analysis.campaign_summary import (
    bias_slope,
    campaign_summary,
    doubling_temperature_and_error,
    measured_gain,
    run_digest_of,
    stage_of,
    summary_line,
)
from analysis.dose.pipeline import DoseSettings
from analysis.dose.pipeline import run as dose_run
from analysis.radiation_analysis import RadiationSettings
from analysis.radiation_analysis import run as radiation_run
from analysis.stage_pipelines import run_stage_pipelines
from utils import cli, plotting, scheduler
from utils.errors import ConfigError
from utils.io.fitsio import check_output_dir, write_json
from utils.io.index import STAGES
from utils.run_record import completed_run, write_run_summary
from utils.settings import remove_interrupted_writes
from utils.stack.grouping import stage_groups

logger = logging.getLogger("run_full_radiation_pipeline")


def run(dataset: Path, radiation_log: Path | None, out_dir: Path, *,
        settings: RadiationSettings = RadiationSettings(),
        masters: process_index.MasterSettings | None = None, gain: float | str | None = None,
        search_depth: int = 6, workers: int = 1, progress_bar: bool = False,
        warnings: cli.WarningCollector | None = None) -> dict:
    """Every step of the campaign's analysis, in order (see the module notes); ``warnings``
    (the run's collector) is written to ``warnings.log`` before the report, which lists them.
    ``masters`` (the master options; default: those of ``settings``) sets how every step
    groups and combines frames: the stage pipelines, the radiation and dose analyses, and the
    grouping and memory budget of the radiation response model (whose masters are
    mean-combined).

    Returns
    -------
    dict
        The summary (also written to ``OUTPUT_DIR/summary.json``).

    Raises
    ------
    UserError
        No stage folders and no ``<dose>kRads`` folders, an empty stage, a given log that is
        missing or covers none of the frames, an output folder that cannot be written.
    """
    dataset, out_dir = Path(dataset), Path(out_dir)
    c = settings.combine
    m = masters or process_index.MasterSettings(
        temp_bin=settings.temp_bin, exp_tolerance=settings.exp_tolerance,
        bias_temp_tolerance=settings.bias_temp_tolerance, method=c.method,
        sigma_low=c.sigma_low, sigma_high=c.sigma_high, maxiters=c.maxiters,
        min_accepted=c.min_accepted, memory_limit=c.memory_limit, workers=c.workers)
    grouping = dict(temp_bin=m.temp_bin, exp_tolerance=m.exp_tolerance)
    settings = dataclasses.replace(settings, **grouping, bias_temp_tolerance=m.bias_temp_tolerance,
                                   combine=m.combine)
    check_output_dir(out_dir)
    layout = detect_layout(dataset, search_depth=search_depth)
    logger.info("%s", layout.describe())
    if radiation_log is not None:
        check_log(radiation_log)   # before anything is converted
    # a killed run's leftovers: the step pipelines clean their own folders, not what this
    # command writes itself (index.csv, summary.json, <stage>/plots/, procedure_checks.csv)
    remove_interrupted_writes(out_dir)
    conversion = convert_campaign(layout, out_dir, search_depth=search_depth, workers=workers,
                                  progress_bar=progress_bar)
    index_path, table, dose_report = index_campaign(layout, out_dir, radiation_log,
                                                    search_depth=search_depth,
                                                    progress_bar=progress_bar)
    check_frame_sizes(table, index_path)
    log_path, log_note = campaign_log(layout, out_dir, radiation_log, table)
    digest = run_digest_of(table, log_path, (settings, m), gain)
    previous = completed_run(out_dir, digest)
    if previous is not None:
        logger.info("nothing changed since the last complete run (%s): products kept",
                    out_dir / "summary.json")
        previous["skipped"] = True
        return previous
    groups = [g for g in stage_groups(table[~table["BADFITS"].astype(bool)])
              if g[0] in settings.stages]
    pipes = run_stage_pipelines(
        index_path, table, groups,
        lambda kind, stage, dose: stage_folder(out_dir, stage, dose) / kind,
        gain=gain, masters=m, progress_bar=progress_bar)
    gain_used = gain if gain is not None else measured_gain(out_dir, pipes)
    precision = out_dir / "precision"
    rad = radiation_run(index_path, log_path, precision / "radiation_analysis", settings,
                        progress_bar=progress_bar)
    dose = dose_run(index_path, precision,
                    DoseSettings(**grouping, bias_temp_tolerance=m.bias_temp_tolerance,
                                 combine=m.combine),
                    gain=gain_used, progress_bar=progress_bar)
    files = intensity_series(rad, out_dir)
    damage = dose.damage.summary if dose.damage is not None else {}
    t_d, t_d_err = doubling_temperature_and_error(damage)
    model = fit_radiation_model.run(
        index_path, out_dir / "radiation_model",
        fit_radiation_model.FitSettings(gain=gain_used, doubling_temperature=t_d,
                                        doubling_temperature_err=t_d_err,
                                        bias_slope=bias_slope(out_dir), **grouping,
                                        combine=dataclasses.replace(
                                            fit_radiation_model.FitSettings().combine,
                                            memory_limit=m.memory_limit, workers=m.workers)),
        progress_bar=progress_bar)
    recon = radiation_reconstruction.run(model, lambda tag: stage_folder(
        out_dir, *stage_of(tag)) / "reconstruction")
    checks = procedure_checks.run(table, log_path, out_dir / "procedure_checks.csv")
    summary = campaign_summary(layout, conversion, table, dose_report, log_path, log_note,
                               pipes, damage, model, recon, checks, out_dir)
    files += model.files + recon.files + [checks.path, index_path]
    write_json(summary, out_dir / "summary.json")
    if warnings is not None:  # the report lists this run's warnings (it read the last run's)
        warnings.write(out_dir / "warnings.log")
    page, _ = campaign_report.run(out_dir, out_dir / "report")
    summary["report"] = str(page)
    write_run_summary(out_dir, summary, files, digest)
    return summary


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python run_full_radiation_pipeline.py", __doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="DATASET_ROOT [RADIATION_LOG] OUTPUT_DIR")
    parser.add_argument("--stages", nargs="+", default=list(STAGES),
                        help="stages to analyse, in order")
    parser.add_argument("--ignore-temp", action="store_true",
                        help="radiation analysis: one master per group and exposure, all "
                             "temperatures together")
    parser.add_argument("--group-by-dose", action="store_true",
                        help="old option: same as --ignore-temp (groups are always per dose "
                             "step)")
    parser.add_argument("--gain", default=None,
                        help="[e-/ADC count] gain, or a gain.json (default: measured from the "
                             "pre-irradiation flats when they allow it)")
    parser.add_argument("--search-depth", type=int, default=6,
                        help="folder levels below each section to look for attempts")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes converting raw frames (1: this process, on two "
                             "threads where there are two cores)")
    process_index.add_master_options(parser, per_attempt=False, workers=False)
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def _main(args) -> int:
    if len(args.paths) not in (2, 3):
        raise ConfigError("give DATASET_ROOT [RADIATION_LOG] OUTPUT_DIR")
    masters = process_index.master_settings(args, workers=process_index.MasterSettings().workers)
    if args.workers < 1 or args.search_depth < 0:
        raise ConfigError("invalid option: --workers must be >= 1 and --search-depth >= 0")
    dataset, out = Path(args.paths[0]), Path(args.paths[-1])
    log = Path(args.paths[1]) if len(args.paths) == 3 else None
    try:
        settings = RadiationSettings(stages=tuple(args.stages), ignore_temp=args.ignore_temp,
                                     group_by_dose=args.group_by_dose)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err
    with cli.WarningCollector() as warnings:
        summary = run(dataset, log, out, settings=settings, masters=masters, gain=args.gain,
                      search_depth=args.search_depth, workers=args.workers,
                      progress_bar=not args.no_progress, warnings=warnings)
        warnings.write(out / "warnings.log")
    logger.info("%s", summary_line(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python run_full_radiation_pipeline.py DATASET_ROOT [LOG] OUTPUT_DIR``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
