#!/usr/bin/env python
"""Benchmark the operation analysis on a long sequence: wall time and peak memory.

Simulates (once, reused afterwards) one operation sequence of N frames of
SIZE x SIZE pixels as FITS with a sampled radiation log and a power log
(:func:`utils.sim.operation.simulate_operation`, transients following the beam),
then times, each case in its own Python subprocess so its peak RSS is its own:

* ``io_floor``: read every frame's bytes once (page cache warmed first);
* ``read_fits``: open every frame with astropy and touch its data once -- one
  "read of the sequence" as any analysis must do it;
* ``operation``: :func:`analysis.timeseries.operation.run` on the folder (both
  streamed passes, figures and animations included) into a fresh output.

Results are given as multiples of one read of the sequence: the operation's
wall time over ``read_fits``'s (and over the I/O floor's), its peak RSS over
``read_fits``'s, and in MB.  The transient-vs-dose-rate correlation is printed
next to the simulator's truth.

Run from the repository root (allow ~10 min and ~9 GB of disk the first time)::

    flock /tmp/cpu.lock python bench/bench_operation.py                  # 1000 x 2048^2
    flock /tmp/cpu.lock python bench/bench_operation.py --frames 100 --size 1024

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("io_floor", "read_fits", "operation")
DATASET = "5kRads"


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MB].

    ``VmHWM`` of ``/proc/self/status`` belongs to this program alone;
    ``getrusage``'s ``ru_maxrss`` survives ``exec`` and would report the parent's
    peak when the parent (which may have simulated the frames) was larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prepare(workdir: Path, frames: int, size: int) -> Path:
    """Simulate the sequence into ``workdir/Operation`` unless it is already there."""
    from utils.sim.operation import simulate_operation

    root = workdir / f"Operation_{frames}x{size}"
    if (root / "truth" / "truth.json").is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    # ~200 hits per frame at full beam on 2048^2 (hit_density scales with 1 / pixels)
    density = 200.0 / (size * size * 0.5 * 5.0 / (frames * 1.5 * 0.6))
    t0 = time.perf_counter()
    simulate_operation(root, seed=2025, width=size, height=size, frames=frames, doses=(5.0,),
                       raw=False, hit_density=density, progress_bar=True)
    print(f"simulated {frames} frames of {size}x{size} in {time.perf_counter() - t0:.0f} s "
          f"into {root}", flush=True)
    return root


def run_case(case: str, root: str, out: str) -> dict:
    """Run one case in this (child) process and return its measurements."""
    paths = sorted((Path(root) / DATASET / "fits").glob("*.fits"))
    result: dict = {"case": case, "frames": len(paths)}
    if case == "io_floor":
        buf = bytearray(16 * 2**20)
        view = memoryview(buf)
        t0 = time.perf_counter()
        total = 0
        for path in paths:
            with open(path, "rb", buffering=0) as fh:
                while got := fh.readinto(view):
                    total += got
        result.update(wall_s=time.perf_counter() - t0, bytes=total)
    elif case == "read_fits":
        from astropy.io import fits

        t0 = time.perf_counter()
        acc = 0
        for path in paths:
            with fits.open(path, memmap=False) as hdul:
                acc += int(hdul[0].data[0, 0])
        result.update(wall_s=time.perf_counter() - t0)
    else:
        import logging

        from analysis.timeseries.operation import run

        logging.basicConfig(level=logging.WARNING)
        from analysis.timeseries import rts_kernels  # noqa: F401 - numba imports outside timing
        from utils.stack import temporal  # noqa: F401

        t0 = time.perf_counter()
        res = run(root, out)
        result.update(wall_s=time.perf_counter() - t0, summary=res.summary_line())
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def child(case: str, root: Path, out: Path) -> dict:
    """Run ``case`` in a fresh interpreter; return its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--child", case, str(root), str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000, help="frames in the sequence")
    parser.add_argument("--size", type=int, default=2048, help="frame side [pixel]")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "cmos_calib_bench_operation",
                        help="where the simulated sequence is kept between runs")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "ROOT", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(*args.child)))
        return 0
    root = prepare(args.workdir, args.frames, args.size)
    out = args.workdir / f"out_{args.frames}x{args.size}"
    if out.exists():
        shutil.rmtree(out)
    child("io_floor", root, out)                 # warm the page cache
    results = {case: child(case, root, out) for case in CASES}
    seq_bytes = results["io_floor"]["bytes"]
    op, rd, io = results["operation"], results["read_fits"], results["io_floor"]
    truth = json.loads((root / "truth" / "truth.json").read_text())["operation"][0]
    summary = json.loads((out / DATASET / "summary.json").read_text())["row"]
    report = {
        "frames": args.frames, "size": args.size, "sequence_gb": seq_bytes / 1e9,
        "wall_s": {k: v["wall_s"] for k, v in results.items()},
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in results.items()},
        "wall_x_read_fits": op["wall_s"] / rd["wall_s"],
        "wall_x_io_floor": op["wall_s"] / io["wall_s"],
        "rss_x_read_fits": op["peak_rss_mb"] / rd["peak_rss_mb"],
        "rss_fraction_of_sequence": op["peak_rss_mb"] * 2**20 / seq_bytes,
        "r_transients": summary["R_TRANSIENTS"], "r_transients_err": summary["R_TRANSIENTS_ERR"],
        "r_truth": truth["truth_pearson_r"],
    }
    print(f"{args.frames} frames of {args.size}x{args.size} ({report['sequence_gb']:.2f} GB)")
    print(f"{'case':<10} {'wall [s]':>10} {'peak RSS [MB]':>14}")
    for case in CASES:
        print(f"{case:<10} {results[case]['wall_s']:>10.2f} {results[case]['peak_rss_mb']:>14.0f}")
    print(f"operation = {report['wall_x_read_fits']:.1f} x read_fits wall, "
          f"{report['wall_x_io_floor']:.1f} x I/O floor wall, "
          f"{report['rss_x_read_fits']:.2f} x read_fits peak RSS "
          f"({100 * report['rss_fraction_of_sequence']:.1f} % of the sequence's bytes)")
    print(f"r(transients, dose rate) = {report['r_transients']:.4f} ± "
          f"{report['r_transients_err']:.4f}; truth r(hits, true rate) = {report['r_truth']:.4f}")
    print(op["summary"])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
