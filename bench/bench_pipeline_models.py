#!/usr/bin/env python
"""Benchmark the pipelines' model steps on 2048 x 2048 masters against reading those masters.

Writes master files the way the pipelines do (primary, ``UNCERT``, ``MASK``,
``NOISE``, ``NCOMB``, ``FLAGS``, ``SUBERR`` via :func:`utils.stack.master`'s
writer), from a simulated sensor (bias a + b T per pixel; dark rate doubling
every 6 degC), then times with a warm page cache, each case in its own
subprocess so its peak RSS is its own:

* ``read_bias``: astropy reads data, NOISE, NCOMB and MASK of the 6 bias masters;
* ``fit_bias``: :func:`utils.models.bias_model.fit_bias_model` (reads the same by row
  blocks and fits; no cross-validation);
* ``read_dark``: the same images of the 20 dark masters (5 temperatures x 4 exposures);
* ``rates_1d``: loading the masters once, rate maps of every temperature and the 1-D model;
* ``model_2d``: loading the masters once, the 2-D model with the shared-bias-error
  propagation.

Run from the repository root::

    python bench/bench_pipeline_models.py                 # 2048 x 2048
    python bench/bench_pipeline_models.py --size 512 --workdir /tmp/pm

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIAS_TEMPS = (-10.0, -3.0, 4.0, 11.0, 18.0, 25.0)
DARK_TEMPS = (-10.0, -1.25, 7.5, 16.25, 25.0)
DARK_TIMES = (0.5, 1.0, 2.0, 4.0)
CASES = ("read_bias", "fit_bias", "read_dark", "rates_1d", "model_2d")
NFRAMES = 20


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MB]."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make(workdir: Path, size: int) -> None:
    """Write the bias model, 6 bias masters and 20 dark masters (skipped when present)."""
    import numpy as np
    from astropy.io import fits

    from utils.io.fitsio import write_product
    from utils.models.bias_model import MasterStack, fit_bias_model

    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "done").is_file():
        return
    rng = np.random.default_rng(1)
    shape = (size, size)
    a = (3200 + 30 * rng.standard_normal(shape)).astype(np.float32)
    b = (8 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    dark = (40 * np.exp(0.3 * rng.standard_normal(shape))).astype(np.float32)
    noise = np.full(shape, 32.0, np.float32)
    count = np.full(shape, NFRAMES, np.int16)

    def master(path, data, extra):
        header = fits.Header()
        for key, value in extra.items():
            header[key] = value
        header["INHASH"] = path.stem
        err = (noise / np.sqrt(NFRAMES)).astype(np.float32)
        write_product(path, data, header, unit="adu", uncertainty=err,
                      mask=np.zeros(shape, np.uint8),
                      images={"NOISE": (noise, "adu"), "NCOMB": (count, ""),
                              "FLAGS": (np.zeros(shape, np.uint8), ""),
                              "SUBERR": (np.full(shape, 3.0, np.float32), "adu")})
    for t in BIAS_TEMPS:
        data = a + b * t + rng.standard_normal(shape).astype(np.float32) * 7
        master(workdir / f"bias_{t:+.2f}.fits", data, {"TAVG": t})
    stack = MasterStack(sorted(workdir.glob("bias_*.fits")),
                        [fits.getheader(p)["TAVG"] for p in sorted(workdir.glob("bias_*.fits"))])
    model, _ = fit_bias_model(stack, cross_validate=False)
    model.write(workdir / "bias_model.fits")
    for t in DARK_TEMPS:
        for x in DARK_TIMES:
            signal = dark * 2 ** ((t - 20) / 6) * x
            data = signal + rng.standard_normal(shape).astype(np.float32) * 7
            master(workdir / f"dark_{t:+.2f}_{x:.1f}s.fits", data,
                   {"TAVG": t, "TBIN": t, "EXPTIME": x, "BIASFILE": "bias_model.fits",
                    "SUBTRACT": "bias(T)", "NCOMBINE": NFRAMES})
    (workdir / "done").write_text("ok\n")


def _read(paths) -> None:
    from astropy.io import fits

    for p in paths:
        with fits.open(p, memmap=False) as hdul:
            for name in (0, "NOISE", "NCOMB", "MASK"):
                _ = hdul[name].data.astype("=f4" if name != "MASK" else "u1")


def run_case(case: str, workdir: Path, memory_limit: float) -> dict:
    """Time one case in this process (tiles sized by ``memory_limit`` [byte], as the
    pipelines' ``--memory-limit``)."""
    from astropy.io import fits

    # imports first: the clock measures work, not module loading
    from dark_pipeline.masters import DarkMaster
    from dark_pipeline.model_2d import fit_model_2d
    from dark_pipeline.rates import load_stack, measure_rates
    from dark_pipeline.temperature_model import fit_temperature_model
    from utils.models.bias_model import BiasModel, MasterStack, fit_bias_model

    bias = sorted(workdir.glob("bias_+*.fits")) + sorted(workdir.glob("bias_-*.fits"))
    darks = sorted(workdir.glob("dark_*.fits"))
    headers = {p: fits.getheader(p) for p in bias + darks}
    t0 = time.perf_counter()
    if case == "read_bias":
        _read(bias)
    elif case == "read_dark":
        _read(darks)
    elif case == "fit_bias":
        stack = MasterStack(bias, [headers[p]["TAVG"] for p in bias])
        fit_bias_model(stack, cross_validate=False, memory_limit=memory_limit)
    else:
        ms = [DarkMaster(headers[p]["TBIN"], headers[p]["TAVG"], headers[p]["EXPTIME"], p,
                         NFRAMES, False) for p in darks]
        # the pipeline reads the masters once for every step
        stack = load_stack(ms, memory_limit)
        if case == "rates_1d":
            fit_temperature_model(measure_rates(stack), 20.0)
        else:
            fit_model_2d(stack, 20.0, bias_model=BiasModel.read(workdir / "bias_model.fits"))
    return {"case": case, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "cmos_pm_bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", type=float, default=None,
                        help="tile budget [byte] (default: the pipelines' --memory-limit "
                             "default)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_limit is None:
        from utils.stack.master import CombineSettings

        args.memory_limit = CombineSettings().memory_limit
    workdir = Path(args.workdir) / str(args.size)
    if args.case:
        print(json.dumps(run_case(args.case, workdir, args.memory_limit)))
        return 0
    make(workdir, args.size)
    case_args = ["--size", str(args.size), "--workdir", args.workdir, "--memory-limit",
                 str(args.memory_limit)]
    # warm numba caches and the page cache once
    for case in CASES:
        subprocess.run([sys.executable, __file__, *case_args, "--case", case], check=True,
                       capture_output=True)
    results = {}
    for case in CASES:
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, *case_args, "--case", case],
                                 check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1]
            runs.append(json.loads(out))
        best = min(runs, key=lambda r: r["seconds"])
        results[case] = best
        seconds, peak = best["seconds"], best["peak_rss_mb"]
        print(f"{case:10s} {seconds:7.3f} s  peak {peak:.0f} MB")
    sec = {case: r["seconds"] for case, r in results.items()}
    ratios = {"fit_bias/read_bias": sec["fit_bias"] / sec["read_bias"],
              "rates_1d/read_dark": sec["rates_1d"] / sec["read_dark"],
              "model_2d/read_dark": sec["model_2d"] / sec["read_dark"]}
    for key, value in ratios.items():
        print(f"{key:22s} {value:6.2f}")
    print(json.dumps({"size": args.size, "memory_limit": args.memory_limit, "results": results,
                      "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
