#!/usr/bin/env python
"""Benchmark the flat pipeline (mode full) on 50 flats of 2048 x 2048 against reading them.

Writes, once, 50 flat frames the way the converter does (uint16, BZERO 32768, 12-bit counts
x 16; ``IMAGETYP, TEMP, EXPTIME, FRAMENUM, ADCBITS``): 5 levels (0.1 ... 0.5 s of a lamp
giving ~0.3 ... 1.6 of half full scale at the centre, with vignetting and 1 % PRNU) x 10
frames at 20 degC, plus a bias model (``bias_model.fits``) and a 2-D dark model
(``dark_model_2d.fits``) in the pipelines' formats, and the index CSV of the flats.  Then
times, each case in its own subprocess (so its peak RSS is its own; imports and numba
compilation are done before the clock starts, page cache warm):

* ``read_astropy``: astropy reads the 50 flats once (data as float32): the reference the
  issue asks for ("reading the 50 flats once");
* ``read_rows``: the same through :func:`utils.io.fitsio.read_rows` (the I/O floor of the
  stacking engine);
* ``flat_full``: ``flat_pipeline.run`` mode full with ``--bias-model`` and
  ``--dark-model`` on the index, figures included;
* ``flat_full_noplots``: the same with ``--no-save-plots``;
* ``stack_floor``: the five level sets sigma-clip combined from the files as they are (no
  reduction, nothing written): the stacking no flat pipeline can skip.

Then the **write floor**: writing as many bytes as ``flat_full_noplots`` wrote, as plain new
files (:mod:`floors`); the floor of the pipeline is read + stack + write.

Run from the repository root (under the shared lock on a shared machine)::

    flock /tmp/cpu.lock python bench/bench_flat.py
    python bench/bench_flat.py --size 512 --workdir /tmp/fb      # quick

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floors import tree_bytes, write_floor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("read_astropy", "read_rows", "flat_full", "flat_full_noplots", "stack_floor")
EXPOSURES = (0.1, 0.2, 0.3, 0.4, 0.5)
NFRAMES = 10
TEMP = 20.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MB]."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make(workdir: Path, size: int) -> None:
    """Flats, bias model, dark model and index (skipped when present)."""
    import math

    import numpy as np
    import pandas as pd
    from astropy.io import fits

    from dark_pipeline.model_2d import DarkModel2D
    from utils.io.fitsio import write_hdul
    from utils.io.index import build_index, write_index
    from utils.models.bias_model import BiasModel
    from utils.models.nonlinear import PowerExponentialFit

    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "done").is_file():
        return
    rng = np.random.default_rng(1)
    shape = (size, size)
    f32 = np.float32
    # bias [ADC count] a + b T, dark 5 e-/s doubling every 6 degC, gain 2 e-/ADC count
    a = (200 + 3 * rng.standard_normal(shape)).astype(f32)
    b = (0.5 + 0.03 * rng.standard_normal(shape)).astype(f32)
    dark = (5 * np.exp(0.3 * rng.standard_normal(shape))).astype(f32)
    y, x = np.indices(shape, dtype=f32)
    c = (size - 1) / 2
    r2 = ((x - 1.1 * c) ** 2 + (y - 0.9 * c) ** 2) / (2 * c * c)
    rate = (4000.0 * (1 - 0.15 * r2) * (1 + 0.01 * rng.standard_normal(shape))).astype(f32)
    del x, y, r2
    zeros = np.zeros(shape, f32)
    model = BiasModel(a=a * 16, b=b * 16, sigma_a=zeros + 2, sigma_b=zeros + 0.1, cov_ab=zeros,
                      chi2dof=zeros + 1, npts=np.full(shape, 6, np.int16),
                      mask=np.zeros(shape, np.uint8), t_ref=0.0, t_min=-10.0, t_max=40.0)
    model.write(workdir / "bias_model.fits")
    fit = PowerExponentialFit(dark * 8, zeros + 1, zeros + math.log(2) / 6, zeros + 1, zeros,
                              zeros, np.zeros((3, 3) + shape, f32), zeros,
                              np.full(shape, 8, np.int16), np.zeros(shape, bool), 20.0, 1.0,
                              math.log(2) / 6, 0.0, 0.0)
    DarkModel2D(fit, inputs=pd.DataFrame({"TAVG": [0.0, 40.0]})).write(
        workdir / "dark_model_2d.fits")
    del fit, model
    frames = workdir / "flats"
    n = 0
    for exptime in EXPOSURES:
        for k in range(NFRAMES):
            counts = a + b * TEMP + rng.poisson((rate * exptime + dark * exptime) * 2) / 2.0
            counts += 2.0 * rng.standard_normal(shape)
            data = (np.clip(np.rint(counts), 0, 4095).astype(np.uint16) * np.uint16(16))
            header = fits.Header()
            for key, value in (("IMAGETYP", "FLAT"), ("TEMP", TEMP + 0.05 * rng.standard_normal()),
                               ("EXPTIME", exptime), ("FRAMENUM", k), ("ADCBITS", 12),
                               ("ADUSCALE", 16), ("BUNIT", "adu"),
                               ("ATTEMPT", f"flat_{exptime:g}s")):
                header[key] = value
            write_hdul(fits.HDUList([fits.PrimaryHDU(data, header)]),
                       frames / f"flat_{exptime:g}s_{k:02d}.fits")
            n += 1
    write_index(build_index([("FLAT", frames)]), workdir / "index.csv")
    (workdir / "done").write_text(f"{n} flats\n")


def run_case(case: str, workdir: Path) -> dict:
    """Time one case in this process (imports and compilation first)."""
    import numpy as np
    from astropy.io import fits

    from flat_pipeline.pipeline import FlatSettings, run
    from utils.io.fitsio import fits_layout, read_rows
    from utils.models import linear
    from utils.stack import kernels

    kernels.warmup()
    linear.warmup()
    paths = sorted((workdir / "flats").glob("*.fits"))
    t0 = time.perf_counter()
    if case == "read_astropy":
        for p in paths:
            with fits.open(p, memmap=False) as hdul:
                _ = hdul[0].data.astype(np.float32)
    elif case == "read_rows":
        for p in paths:
            lay = fits_layout(p)
            read_rows(lay, 0, lay.shape[0])
    elif case == "stack_floor":
        from utils.stack.combine import combine

        for i in range(len(EXPOSURES)):
            combine(paths[i * NFRAMES:(i + 1) * NFRAMES], method="sigclip", workers=2)
    else:
        out = workdir / f"out_{case}"
        shutil.rmtree(out, ignore_errors=True)
        settings = FlatSettings(mode="full", bias_model=str(workdir / "bias_model.fits"),
                                dark_model=str(workdir / "dark_model_2d.fits"),
                                save_plots=case == "flat_full")
        result = run(workdir / "index.csv", out, settings)
        summary = result.groups[0].summary
    seconds = time.perf_counter() - t0
    record = {"case": case, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    if case.startswith("flat_full"):
        ptc = summary.get("photon_transfer") or {}
        record.update(gain=ptc.get("gain_e_per_adc"), masters=len(summary.get("masters", [])),
                      prnu_pct=(summary.get("prnu") or {}).get("combined", {}).get("PRNU_PCT"))
    return record


def main(argv=None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "cmos_flat_bench"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) / str(args.size)
    if args.case:
        print(json.dumps(run_case(args.case, workdir)))
        return 0
    make(workdir, args.size)

    def one(case):
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--workdir",
                              args.workdir, "--case", case], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        return json.loads(out)
    for case in CASES:  # warm numba caches and the page cache once
        one(case)
    results = {}
    for case in CASES:
        best = min((one(case) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        results[case] = best
        print(f"{case:18s} {best['seconds']:7.2f} s  peak {best['peak_rss_mb']:.0f} MB")
    sec = {case: r["seconds"] for case, r in results.items()}
    ratios = {f"{c}/read_astropy": sec[c] / sec["read_astropy"] for c in CASES[1:]}
    ratios.update({f"{c}/read_rows": sec[c] / sec["read_rows"] for c in CASES[2:]})
    for key, value in ratios.items():
        print(f"{key:32s} {value:7.2f}")
    written = tree_bytes(workdir / "out_flat_full_noplots")
    wfloor = write_floor(written, workdir / "write_floor")
    floor = sec["read_astropy"] + sec["stack_floor"] + wfloor
    ratios["flat_full_noplots/floor"] = sec["flat_full_noplots"] / floor
    print(f"products written without figures: {written / 2**30:.2f} GiB, as plain files "
          f"{wfloor:.2f} s here; floor read + stack + write {floor:.2f} s "
          f"({floor / sec['read_astropy']:.1f}x the read); flat_full_noplots is "
          f"{ratios['flat_full_noplots/floor']:.2f}x that floor")
    print(json.dumps({"size": args.size, "flats": len(EXPOSURES) * NFRAMES, "results": results,
                      "written_bytes": written, "write_floor_s": wfloor,
                      "floor_s": floor, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
