#!/usr/bin/env python
"""Benchmark the campaign report on a large results folder: what it adds to a run.

Simulates (once, reused afterwards, in ``--workdir``) a standard campaign of
SIZE x SIZE frames, 16 per attempt (512 raw frames, 1.07 GB at 1024^2), runs
``run_calibration.py standard`` on it, then times :func:`analysis.report.run` on
its ``products/`` folder in a fresh subprocess (best of ``--repeat``; the wall time
of collecting the numbers and writing the page, figures and ``report.json``), and
the whole ``python -m analysis.report`` command (interpreter start and imports
included).  ``--parent`` also times the report pointed at the folder holding both
the raw campaign and the products (the case where it must skip thousands of frame
files while looking for products).

Run from the repository root (allow ~5 min and ~5 GB of disk the first time)::

    flock /tmp/cpu.lock python bench/bench_report.py
    flock /tmp/cpu.lock python bench/bench_report.py --size 512 --workdir /tmp/rep512

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TIMED = """
import sys, time
from analysis import report
best = float("inf")
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    report.run(sys.argv[1], sys.argv[2])
    best = min(best, time.perf_counter() - t0)
print(best)
"""


def prepare(workdir: Path, size: int) -> Path:
    """The campaign and its products (made once)."""
    campaign, products = workdir / "campaign", workdir / "products"
    if not (campaign / "truth" / "truth.json").is_file():
        from utils import sim

        sim.simulate_standard(campaign, seed=1, width=size, height=size, frames=16,
                              dark_temperatures=(5.0, 15.0, 25.0), dark_exposures=(1.0, 4.0),
                              flat_exposures=(0.05, 0.15, 0.25, 0.35, 0.7, 1.3))
    if not (products / "report" / "report.json").is_file():
        subprocess.run([sys.executable, "run_calibration.py", "standard", str(campaign),
                        str(products), "--no-progress"], cwd=ROOT, check=True)
    return products


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="frame side [pixel]")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir())
                                                 / "cmos_calib_bench_report"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parent", action="store_true",
                        help="also time the report on the folder holding campaign and products")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    products = prepare(workdir, args.size)
    out = workdir / "report_bench"
    raw = sum(p.stat().st_size for p in (workdir / "campaign").rglob("*.raw"))
    result = {"size": args.size, "raw_gb": raw / 1e9,
              "products_gb": _size(products) / 1e9,
              "product_files": sum(1 for p in products.rglob("*") if p.is_file())}
    cases = [("report_run_s", products)] + ([("report_run_parent_s", workdir)]
                                            if args.parent else [])
    for name, folder in cases:
        proc = subprocess.run([sys.executable, "-c", TIMED, str(folder), str(out),
                               str(args.repeat)], cwd=ROOT, check=True, capture_output=True,
                              text=True)
        result[name] = float(proc.stdout.strip().splitlines()[-1])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "analysis.report", str(products), "--output",
                    str(out), "--no-progress"], cwd=ROOT, check=True, capture_output=True)
    result["command_s"] = time.perf_counter() - t0
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
