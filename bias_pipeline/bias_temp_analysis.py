"""Per-temperature statistics of bias frames: temperature and frame-mean spread per bin.

For every temperature bin of the bias frames: the mean and standard deviation
of the sensor temperature, the mean, standard deviation and standard error of
the frame means [adu], a sigma-clipped master, a detail plot of the frame
means in acquisition order, and the frame-mean vs temperature plot.  Frame
means come from the index (one streaming pass per frame, reused on re-runs).

Outputs (``--output-dir``, default ``bias_temp_analysis``): ``bias_stats.json``
(keyed by the bin label, e.g. ``"12.5"``), ``bias_stats.csv``,
``master_bias_<T>C.fits``, ``detail_T<T>.png``, ``mean_vs_temperature.png``.

Example
-------
::

    python -m bias_pipeline.bias_temp_analysis campaign_fits/TestSection1 --output-dir out/stats
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bias_pipeline import plots
from bias_pipeline.pipeline import build_masters, select_bias_frames, temperature_sets
from utils import cli
from utils.io.fitsio import check_output_dir, save_figure, write_csv, write_json
from utils.io.index import load_frames
from utils.stack.master import CombineSettings, add_combine_options, combine_settings

logger = logging.getLogger("bias_pipeline.bias_temp_analysis")


def temperature_statistics(sets) -> pd.DataFrame:
    """One row per temperature bin.

    Columns: ``TBIN`` [degC] label, ``NFRAMES``, ``TEMP_MEAN``/``TEMP_STD``
    [degC], ``MEAN_ADU``/``STD_ADU`` (mean and sample std of the frame means)
    and ``SEM_ADU`` (standard error of ``MEAN_ADU``) [adu], ``VALUES`` (the
    frame means in acquisition order).
    """
    rows = []
    for key, part in sets:
        part = part.sort_values([c for c in ("TIMESTAMP", "FRAMENUM", "PATH") if c in part])
        means = pd.to_numeric(part["MEAN"], errors="coerce").to_numpy(float)
        temps = part["TEMP"].to_numpy(float)
        n = int(np.isfinite(means).sum())
        std = float(np.nanstd(means, ddof=1)) if n > 1 else float("nan")
        rows.append({"TBIN": key.temperature, "NFRAMES": len(part),
                     "TEMP_MEAN": float(np.nanmean(temps)),
                     "TEMP_STD": float(np.nanstd(temps, ddof=1)) if len(temps) > 1 else 0.0,
                     "MEAN_ADU": float(np.nanmean(means)), "STD_ADU": std,
                     "SEM_ADU": std / np.sqrt(n) if n > 1 else float("nan"),
                     "VALUES": [float(v) for v in means]})
    return pd.DataFrame(rows)


def run(basepath, out_dir, combine: CombineSettings = CombineSettings(), *, temp_bin: float = 1.0,
        stage: str = "", progress_bar: bool = False) -> tuple[pd.DataFrame, list[Path]]:
    """Statistics, masters and plots of every temperature bin; returns the table and files."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    index = load_frames(basepath, out_dir / "index.csv", progress_bar=progress_bar)
    rows, _ = select_bias_frames(index, stage)
    sets = temperature_sets(rows, temp_bin)
    table = temperature_statistics(sets)
    moved = [m.path for m in build_masters(sets, out_dir, combine, progress_bar=progress_bar)]
    stats = {f"{r.TBIN:.1f}": {"temperature_mean": r.TEMP_MEAN, "temperature_std": r.TEMP_STD,
                               "mean_adu": r.MEAN_ADU, "std_adu": r.STD_ADU, "sem_adu": r.SEM_ADU,
                               "n_frames": r.NFRAMES, "values": r.VALUES}
             for r in table.itertuples()}
    moved.append(write_json(stats, out_dir / "bias_stats.json"))
    moved.append(write_csv(table.drop(columns="VALUES"), out_dir / "bias_stats.csv"))
    for r in table.itertuples():
        ax = plots.plot_frame_means(r.VALUES, r.TBIN)
        moved.append(save_figure(ax.figure, out_dir / f"detail_T{r.TBIN:.1f}.png"))
    moved.append(save_figure(plots.plot_mean_vs_temperature(table).figure,
                             out_dir / "mean_vs_temperature.png"))
    return table, moved


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python -m bias_pipeline.bias_temp_analysis", __doc__)
    parser.add_argument("basepath", help="folder of converted FITS frames, or an index CSV")
    parser.add_argument("--output-dir", default="bias_temp_analysis", help="output folder")
    parser.add_argument("--temp-bin", type=float, default=1.0,
                        help="[degC] largest temperature span of one bin")
    parser.add_argument("--stage", default="", help="irradiation stage when several")
    add_combine_options(parser)
    return parser


def _main(args) -> int:
    table, files = run(args.basepath, args.output_dir, combine_settings(args),
                       temp_bin=args.temp_bin, stage=args.stage,
                       progress_bar=not args.no_progress)
    logger.info("bias statistics of %d frames in %d temperature bins: %d files in %s",
                int(table["NFRAMES"].sum()), len(table), len(files), args.output_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
