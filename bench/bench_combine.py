#!/usr/bin/env python
"""Benchmark the streaming master-frame engine against ccdproc and the I/O floor.

Writes N synthetic uint16 FITS frames (bias-like, with cosmic rays) and times,
each case in its own Python subprocess so its peak RSS is its own:

* ``io_floor``: read every frame's bytes once (page cache warmed first);
* ``ccdproc_guide``: ``ccdproc.combine`` with the CCD-reduction-guide settings
  (average, sigma_clip 3/3, ``np.ma.median`` / ``astropy.stats.mad_std``);
* ``ccdproc_fast``: the same with the ``'median'``/``'mad_std'`` strings (astropy's
  C fast path);
* ``ours_sigclip_w1`` / ``ours_sigclip_w2`` / ``ours_median_w2``:
  :func:`utils.stack.combine.combine` with 1 or 2 worker threads.

Run from the repository root::

    python bench/bench_combine.py                 # 20 and 50 frames of 2048x2048
    python bench/bench_combine.py --frames 50 --size 1024 --workdir /tmp/frames

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

CASES = ("io_floor", "ccdproc_guide", "ccdproc_fast", "ours_sigclip_w1", "ours_sigclip_w2",
         "ours_median_w2")


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def frame_paths(workdir: Path, n: int, size: int) -> list[Path]:
    """Create (or reuse) ``n`` frames of ``size x size`` in ``workdir``."""
    import numpy as np
    from astropy.io import fits

    from utils import headers as kw

    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(2024)
    for i in range(n):
        path = workdir / f"bias_{size}_{i:03d}.fits"
        paths.append(path)
        if path.exists():
            continue
        frame = np.round(rng.normal(100.0, 2.0, (size, size))) * 16
        hits = rng.random((size, size)) < 1e-3  # cosmic rays
        frame[hits] += rng.integers(20, 2000, int(hits.sum())) * 16
        hdu = fits.PrimaryHDU(frame.clip(0, 65520).astype(np.uint16))
        hdu.header[kw.BUNIT] = "adu"
        hdu.header[kw.EXPTIME] = 0.0
        hdu.header[kw.TEMP] = 20.0
        tmp = path.with_suffix(".tmp")
        hdu.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    return paths


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


def run_case(case: str, paths: list[str], repeat: int = 1) -> dict:
    """Run one case in this (child) process and return its measurements.

    The I/O floor and our cases run ``repeat`` times and report the fastest
    (shared machines are noisy); ccdproc runs once (tens of seconds).
    """
    import numpy as np

    out: dict = {"case": case}
    if case == "io_floor":
        read_all(paths)  # warm the page cache
        walls = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out["bytes"] = read_all(paths)
            walls.append(time.perf_counter() - t0)
        out["wall_s"] = min(walls)
    elif case.startswith("ccdproc"):
        import warnings

        import ccdproc
        from astropy.stats import mad_std

        funcs = ((np.ma.median, mad_std) if case == "ccdproc_guide" else ("median", "mad_std"))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            master = ccdproc.combine(paths, method="average", sigma_clip=True,
                                     sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
                                     sigma_clip_func=funcs[0], sigma_clip_dev_func=funcs[1],
                                     unit="adu")
        out["wall_s"] = time.perf_counter() - t0
        out["master_mean"] = float(np.mean(master.data))
    else:
        from utils.stack import combine as stacking

        method = case.split("_")[1]
        workers = int(case.rsplit("_w", 1)[1])
        out["compile_s"] = stacking.warmup()  # numba compile or cache load, timed apart
        walls = []
        master = None
        for _ in range(repeat):
            master = None  # never hold two results: peak RSS is that of one combine
            t0 = time.perf_counter()
            master = stacking.combine(paths, method=method, workers=workers)
            walls.append(time.perf_counter() - t0)
        out["wall_s"] = min(walls)
        out["master_mean"] = float(np.nanmean(master.data))
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


def fmt_ratio(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[20, 50],
                        help="frame counts to benchmark (default: 20 50)")
    parser.add_argument("--size", type=int, default=2048, help="frame side [pixel]")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "cmos_calib_bench",
                        help="folder of the synthetic frames (reused when present)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the I/O floor and of our cases; the fastest is kept "
                             "(ccdproc runs once)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args.child, args.paths, max(1, args.repeat))))
        return 0

    import platform

    summary = {"size": args.size, "cpus": os.cpu_count(), "python": platform.python_version(),
               "repeat": args.repeat, "runs": {}}
    all_paths = frame_paths(args.workdir, max(args.frames), args.size)
    for n in args.frames:
        paths = all_paths[:n]
        read_all(paths)  # every case starts with the frames in the page cache
        results = {}
        for case in args.cases:
            results[case] = spawn(case, paths, args.repeat)
        summary["runs"][str(n)] = results
        floor = results.get("io_floor", {}).get("wall_s")
        guide = results.get("ccdproc_guide", {}).get("wall_s")
        fast = results.get("ccdproc_fast", {}).get("wall_s")
        print(f"\n{n} frames of {args.size}x{args.size} uint16 "
              f"({n * args.size ** 2 * 2 / 1e6:.0f} MB on disk), {os.cpu_count()} CPUs")
        print(f"{'case':<18}{'wall [s]':>10}{'peak RSS [MB]':>15}{'x I/O floor':>13}"
              f"{'vs guide':>10}{'vs fast':>10}")
        for case, res in results.items():
            if "error" in res:
                print(f"{case:<18}  FAILED: {res['error']}")
                continue
            wall = res["wall_s"]
            res["x_io_floor"] = wall / floor if floor else None
            res["speedup_vs_guide"] = guide / wall if guide else None
            res["speedup_vs_fast"] = fast / wall if fast else None
            print(f"{case:<18}{wall:10.3f}{res['peak_rss_mb']:15.0f}"
                  f"{fmt_ratio(res['x_io_floor']):>13}{fmt_ratio(res['speedup_vs_guide']):>10}"
                  f"{fmt_ratio(res['speedup_vs_fast']):>10}")
        ours = results.get("ours_sigclip_w2", {})
        if "compile_s" in ours:
            print(f"(numba compile / cache load, not in wall: {ours['compile_s']:.2f} s)")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
