#!/usr/bin/env python
"""Benchmark the per-pixel model fits against the cost of reading their input masters.

Writes synthetic float32 masters (primary + ``UNCERT``, via
:func:`utils.io.fitsio.write_product`) and times, each case in its own Python
subprocess so its peak RSS is its own, with the files in the page cache:

* ``raw_bias``, ``raw_dark``: read the files' bytes once (the I/O floor);
* ``read_bias``, ``read_dark``: astropy reads data + uncertainty of every
  master into native float32 arrays (what a fit needs in memory);
* ``line_bias``: :func:`utils.linear.fit_line_per_pixel` on the bias masters
  vs temperature;
* ``exp_dark``: :func:`utils.nonlinear.fit_exponential_per_pixel` on one
  dark-current map [adu/s] per temperature (weighted slope through the
  origin over the exposures, built before the clock starts);
* ``powexp_dark``: :func:`utils.nonlinear.fit_power_exponential_per_pixel` on
  all dark masters.

The fit cases first call :func:`utils.models.nonlinear.warmup` (numba compilation, or
loading it from numba's on-disk cache) outside the clock and report its time
as ``warmup_s``; every fit case keeps the fastest of ``--repeat`` runs.

Run from the repository root::

    python bench/bench_model_fit.py                       # 6 bias + 5x4 dark, 2048x2048
    python bench/bench_model_fit.py --size 1024 --repeat 1 --workdir /tmp/fitbench

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIAS_TEMPS = (-10.0, -3.0, 4.0, 11.0, 18.0, 25.0)          # degC, 6 bias masters
DARK_TEMPS = (-10.0, -1.25, 7.5, 16.25, 25.0)             # degC
DARK_TIMES = (0.5, 1.0, 2.0, 4.0)                         # s
T_REF = 20.0
CASES = ("raw_bias", "read_bias", "line_bias", "raw_dark", "read_dark", "exp_dark",
         "powexp_dark")


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def master_paths(workdir: Path, size: int) -> dict[str, list[Path]]:
    """Paths of the bias and dark masters, by kind (dark: temperature-major)."""
    return {"bias": [workdir / f"bias_{size}_{temp:+06.2f}.fits" for temp in BIAS_TEMPS],
            "dark": [workdir / f"dark_{size}_{temp:+06.2f}_{t:.1f}s.fits"
                     for temp in DARK_TEMPS for t in DARK_TIMES]}


def make_masters(workdir: Path, size: int) -> None:
    """Write the missing masters (run in a child: the parent's peak RSS is
    inherited by every process it starts)."""
    import numpy as np

    from utils.io.fitsio import write_product

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2025)
    shape = (size, size)
    paths = master_paths(workdir, size)
    # Bias: 1600 adu with a per-pixel offset and a small per-pixel T slope.
    offset = 1600.0 + rng.normal(0.0, 3.0, shape)
    slope = rng.normal(0.2, 0.05, shape)
    stderr = np.full(shape, 0.45, np.float32)  # 2 adu read noise, 20 frames
    for temp, path in zip(BIAS_TEMPS, paths["bias"]):
        if not path.exists():
            data = offset + slope * (temp - T_REF) + rng.normal(0.0, 0.45, shape)
            write_product(path, data, unit="adu", uncertainty=stderr)
    # Dark signal [adu]: 5 adu/s median at T_REF (log-normal, 1 % hot x30-100,
    # 10 % quiet x0.02), doubling every 6 degC, exactly proportional to t.
    amp = 5.0 * np.exp(rng.normal(0.0, 0.3, shape))
    amp[rng.random(shape) < 0.01] *= rng.uniform(30, 100)
    amp[rng.random(shape) < 0.1] *= 0.02
    rate = np.log(2) / 6.0 * (1.0 + rng.normal(0.0, 0.02, shape))
    grid = [(temp, t) for temp in DARK_TEMPS for t in DARK_TIMES]
    for (temp, t), path in zip(grid, paths["dark"]):
        if not path.exists():
            signal = amp * t * np.exp(rate * (temp - T_REF))
            stderr = np.sqrt(0.45 ** 2 + signal / 20.0)  # shot noise of a 20-frame mean
            data = signal + rng.normal(0.0, 1.0, shape) * stderr
            write_product(path, data, unit="adu", uncertainty=stderr)


def read_all(paths) -> int:
    """Read every file into one reusable buffer; return the bytes read."""
    buf = bytearray(8 * 2**20)
    view = memoryview(buf)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while True:
                got = fh.readinto(view)
                if not got:
                    break
                total += got
    return total


def load_masters(paths):
    """Data and uncertainty of every master as native float32 stacks (n, H, W)."""
    import numpy as np
    from astropy.io import fits

    data = uncert = None
    for i, path in enumerate(paths):
        with fits.open(path, memmap=False) as hdul:  # one open for both images
            if data is None:
                shape = (len(paths),) + hdul[0].data.shape
                data, uncert = np.empty(shape, np.float32), np.empty(shape, np.float32)
            data[i] = hdul[0].data
            uncert[i] = hdul["UNCERT"].data
    return data, uncert


def dark_rate_maps(paths):
    """Per temperature: weighted slope through the origin of signal vs exposure
    time, read one temperature at a time (the rate maps are the fit's input)."""
    import numpy as np

    nt = len(DARK_TIMES)
    t = np.asarray(DARK_TIMES)[:, None, None]
    rates, errs = [], []
    for k in range(len(DARK_TEMPS)):
        y, s = load_masters(paths[k * nt:(k + 1) * nt])
        w = t / s.astype(np.float64) ** 2
        stt = (w * t).sum(0)
        rates.append(((w * y).sum(0) / stt).astype(np.float32))
        errs.append((1.0 / np.sqrt(stt)).astype(np.float32))
    return np.stack(rates), np.stack(errs)


def run_case(case: str, paths: list[str], repeat: int) -> dict:
    """Run one case in this (child) process; best of ``repeat`` wall times."""
    import numpy as np

    from utils.models import linear, nonlinear

    out: dict = {"case": case, "files": len(paths)}
    read_all(paths)  # warm the page cache
    walls = []
    if case.startswith("raw"):
        for _ in range(repeat):
            t0 = time.perf_counter()
            out["bytes"] = read_all(paths)
            walls.append(time.perf_counter() - t0)
    elif case.startswith("read"):
        for _ in range(repeat):
            data = uncert = None  # never hold two copies
            t0 = time.perf_counter()
            data, uncert = load_masters(paths)
            walls.append(time.perf_counter() - t0)
        out["input_mb"] = (data.nbytes + uncert.nbytes) / 1e6
    else:
        out["warmup_s"] = nonlinear.warmup()
        if case == "exp_dark":
            t0 = time.perf_counter()
            data, uncert = dark_rate_maps(paths)
            out["rate_maps_s"] = time.perf_counter() - t0
        else:
            data, uncert = load_masters(paths)
        out["input_mb"] = (data.nbytes + uncert.nbytes) / 1e6
        out["rss_before_fit_mb"] = peak_rss_mb()
        for _ in range(repeat):
            fit = None  # never hold two results
            t0 = time.perf_counter()
            if case == "line_bias":
                fit = linear.fit_line_per_pixel(BIAS_TEMPS, data, uncert, x_ref=T_REF)
                out["median_slope"] = float(np.median(fit.slope))
            elif case == "exp_dark":
                fit = nonlinear.fit_exponential_per_pixel(DARK_TEMPS, data, uncert, x_ref=T_REF)
            else:
                temps = np.repeat(DARK_TEMPS, len(DARK_TIMES))
                times = np.tile(DARK_TIMES, len(DARK_TEMPS))
                fit = nonlinear.fit_power_exponential_per_pixel(temps, times, data, uncert,
                                                              t_ref=T_REF)
                out["population_gamma"] = fit.population_gamma
            walls.append(time.perf_counter() - t0)
        if case != "line_bias":
            out["doubling_degC"] = float(np.log(2) / fit.population_rate)
            out["fallback_fraction"] = float(fit.fallback.mean())
    out["wall_s"] = min(walls)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def spawn(case: str, paths: list[Path], repeat: int) -> dict:
    """Run ``case`` in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case,
           "--repeat", str(repeat), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="master side [pixel]")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "cmos_calib_bench_fit",
                        help="folder of the synthetic masters (reused when present)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per case; the fastest is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.make:
        make_masters(args.workdir, args.size)
        return 0
    if args.child:
        print(json.dumps(run_case(args.child, args.paths, max(1, args.repeat))))
        return 0

    import platform

    paths = master_paths(args.workdir, args.size)
    if not all(p.exists() for p in paths["bias"] + paths["dark"]):
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--make",
                        "--size", str(args.size), "--workdir", str(args.workdir)], check=True)
    summary = {"size": args.size, "cpus": os.cpu_count(), "python": platform.python_version(),
               "repeat": args.repeat, "cases": {}}
    results = summary["cases"]
    for case in args.cases:
        kind = "bias" if case.endswith("bias") else "dark"
        results[case] = spawn(case, paths[kind], args.repeat)
    print(f"\n{args.size}x{args.size} float32 masters + UNCERT: {len(paths['bias'])} bias, "
          f"{len(paths['dark'])} dark ({len(DARK_TEMPS)} T x {len(DARK_TIMES)} t); "
          f"{os.cpu_count()} CPUs, page cache warm, best of {args.repeat}")
    print(f"{'case':<13}{'files':>6}{'wall [s]':>10}{'peak RSS [MB]':>15}{'input [MB]':>12}"
          f"{'x read':>9}{'x raw':>9}")
    for case, res in results.items():
        if "error" in res:
            print(f"{case:<13}  FAILED: {res['error']}")
            continue
        kind = "bias" if case.endswith("bias") else "dark"
        read = results.get(f"read_{kind}", {}).get("wall_s")
        raw = results.get(f"raw_{kind}", {}).get("wall_s")
        res["x_read"] = res["wall_s"] / read if read else None
        res["x_raw"] = res["wall_s"] / raw if raw else None
        ratio = [f"{v:9.2f}" if v is not None else "        -" for v in (res["x_read"],
                                                                      res["x_raw"])]
        inp = f"{res['input_mb']:12.0f}" if "input_mb" in res else "           -"
        print(f"{case:<13}{res['files']:>6}{res['wall_s']:10.3f}{res['peak_rss_mb']:15.0f}"
              f"{inp}{ratio[0]}{ratio[1]}")
    warm = {c: r["warmup_s"] for c, r in results.items() if "warmup_s" in r}
    if warm:
        print("numba compile / cache load before the fits (not in the wall times): "
              + ", ".join(f"{c} {t:.2f} s" for c, t in warm.items()))
    for case in ("exp_dark", "powexp_dark"):
        res = results.get(case, {})
        if "wall_s" in res:
            print(f"{case}: fallback {100 * res['fallback_fraction']:.1f} % of pixels, "
                  f"doubling {res['doubling_degC']:.3f} degC (truth 6), peak RSS before the "
                  f"fit {res['rss_before_fit_mb']:.0f} MB"
                  + (f", rate maps built in {res['rate_maps_s']:.2f} s" if "rate_maps_s" in res
                     else ""))
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
