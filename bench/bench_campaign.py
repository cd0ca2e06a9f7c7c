#!/usr/bin/env python
"""Benchmark ``run_calibration.py standard`` end to end on a simulated campaign.

Simulates once (cached in ``--workdir``, default ``/tmp/cmos_calib_bench_campaign``) a
standard campaign -- by default the one of issue 15: frames of 1024 x 1024, 10 bias
temperatures, a 9 x 4 dark grid (temperature x exposure), 6 flat sets, 2 attempts of 5 frames
each (520 frames, 1.04 GiB of raw) -- then, page cache warm:

* the **raw-read floor**: every raw frame's bytes read once into a reused buffer;
* the **campaign run**: ``python run_calibration.py standard DATASET OUT`` in a fresh
  subprocess (the converted FITS and the index of a previous run are removed first, so the
  conversion is timed too, unless ``--keep-fits``), with the wall time and peak RSS of each
  stage: conversion, index, masters (``analysis.process_index``), bias pipeline, gain,
  dark pipeline, flat pipeline, report.  Stage peaks are sampled every 20 ms from
  ``/proc``: the run's own process, and it with its figure-drawing children; the run's
  overall peak is ``getrusage(RUSAGE_CHILDREN)`` (its largest process).  Each stage's CPU
  time [s] too: the run's process (all its threads), and it with the figure process's work
  done during the stage (user + system, from ``/proc``), which shows how busy the two cores
  were (CPU / wall).

Prints one table, the ratio of the end-to-end wall time to the raw-read floor, then the
**write floor** (writing as many bytes as the run wrote -- products and converted frames -- as
plain new files, :mod:`floors`) and the ratio to read + write floors, and ends with one JSON
line holding every number.

Run from the repository root, under the shared lock on a shared machine::

    flock /tmp/cpu.lock python bench/bench_campaign.py                    # the issue's campaign
    python bench/bench_campaign.py --size 256 --workdir /tmp/cb256         # quick iteration
    python bench/bench_campaign.py --size 256 --profile /tmp/run.prof      # cProfile the run
    python bench/bench_campaign.py --plots none                            # without figures
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from floors import tree_bytes, write_floor

ROOT = Path(__file__).resolve().parents[1]

#: Stage functions of ``run_calibration`` timed by the driver, in the order they run.
STAGES = (("convert", "run_calibration", "convert_sections"),
          ("index", "run_calibration", "build_index"),
          ("masters", "analysis.process_index", "run"),
          ("bias", "bias_pipeline.pipeline", "run"),
          ("gain", "flat_pipeline.pipeline", "measure_gain_only"),
          ("dark", "dark_pipeline.pipeline", "run"),
          ("flat", "flat_pipeline.pipeline", "run"),
          ("report", "analysis.report", "run"))

# The driver runs in the measured subprocess: it wraps each stage function with a timer and
# an RSS sampler, runs run_calibration.main(argv) and writes the stage numbers as JSON.
_DRIVER = r"""
import importlib, json, os, sys, threading, time
stages_spec, argv, out_json, profile = json.loads(sys.argv[1])
sys.argv = ["run_calibration.py"] + argv
import run_calibration

PAGE = os.sysconf("SC_PAGE_SIZE")

TICKS = os.sysconf("SC_CLK_TCK")

def tree_sum(value):
    # value(pid) summed over this process and its live children (the figure process)
    total = 0
    pids = [os.getpid()]
    seen = set()
    while pids:
        pid = pids.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += value(pid)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        except (OSError, ValueError, IndexError):
            pass
    return total

def rss_of(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE

def cpu_of(pid):
    # user + system CPU [s]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS

def rss_tree():
    return tree_sum(rss_of)

def cpu_tree():
    return tree_sum(cpu_of)

def rss_main():
    return rss_of(os.getpid())

state = {"peak": 0, "main": 0}
stop = threading.Event()

def sample():
    while not stop.is_set():
        state["peak"] = max(state["peak"], rss_tree())
        state["main"] = max(state["main"], rss_main())
        stop.wait(0.02)

threading.Thread(target=sample, daemon=True).start()
numbers = {}

def timed(name, fn):
    def wrapper(*args, **kwargs):
        state["peak"], state["main"] = rss_tree(), rss_main()
        t0, c0, m0 = time.perf_counter(), cpu_tree(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = numbers.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "cpu_main_s": 0.0,
                                              "peak_rss_mb": 0.0, "peak_main_mb": 0.0})
            entry["wall_s"] += time.perf_counter() - t0
            entry["cpu_s"] += cpu_tree() - c0
            entry["cpu_main_s"] += time.process_time() - m0
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], state["peak"] / 2**20)
            entry["peak_main_mb"] = max(entry["peak_main_mb"], state["main"] / 2**20)
    return wrapper

for name, module, attr in stages_spec:
    mod = importlib.import_module(module)
    setattr(mod, attr, timed(name, getattr(mod, attr)))
t0 = time.perf_counter()
if profile:
    import cProfile
    prof = cProfile.Profile()
    status = prof.runcall(run_calibration.main, argv)
    prof.dump_stats(profile)
else:
    status = run_calibration.main(argv)
numbers["total_in_process"] = {"wall_s": time.perf_counter() - t0}
stop.set()
with open(out_json, "w") as f:
    json.dump({"status": status, "stages": numbers}, f)
"""


def campaign_parameters(args) -> dict:
    """Keyword arguments of :func:`utils.sim.simulate_standard` for this benchmark."""
    # spread over -10 ... 30 degC, so any grid holds the flats' 20 degC (their dark correction):
    # 9 -> every 5 degC, 5 -> every 10 degC; one temperature -> the flats' own
    dark_temps = ([round(float(t), 1) for t in np.linspace(-10.0, 30.0, args.dark_temps)]
                  if args.dark_temps > 1 else [20.0])
    return dict(seed=1, width=args.size, height=args.size, frames=args.frames,
                attempts=args.attempts,
                bias_temperatures=[-15.0 + 5.0 * i for i in range(args.bias_temps)],
                dark_temperatures=dark_temps,
                dark_exposures=[1.0 * 2 ** i for i in range(args.dark_exposures)],
                flat_temperatures=(20.0,),
                flat_exposures=[round(0.05 + 0.1 * i, 3) for i in range(args.flat_sets - 2)]
                + [0.7, 1.3],
                defects=False)


def simulate(workdir: Path, params: dict) -> Path:
    """The campaign of ``params`` in ``workdir/campaign`` (written once, reused after)."""
    dataset = workdir / "campaign"
    stamp = workdir / "parameters.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(params)):
        return dataset
    sys.path.insert(0, str(ROOT))
    from utils.sim import simulate_standard

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    simulate_standard(dataset, progress_bar=True, **params)
    print(f"simulated {dataset} in {time.perf_counter() - t0:.0f} s", flush=True)
    stamp.write_text(json.dumps(params))
    return dataset


def raw_files(dataset: Path) -> list[Path]:
    """Every raw frame of the campaign."""
    return sorted(p for p in dataset.rglob("*.raw") if "truth" not in p.parts)


def read_floor(files: list[Path], repeat: int = 3) -> tuple[float, int]:
    """Fastest of ``repeat`` passes reading every file once into one reused buffer [s], bytes."""
    size = max(p.stat().st_size for p in files)
    buf = bytearray(size)
    view = memoryview(buf)
    best, total = float("inf"), 0
    for _ in range(repeat + 1):  # the first pass warms the page cache
        t0 = time.perf_counter()
        total = 0
        for p in files:
            with open(p, "rb", buffering=0) as f:
                total += f.readinto(view)
        best = min(best, time.perf_counter() - t0)
    return best, total


def dark_inputs(out: Path) -> list[Path]:
    """The masters the dark pipeline reads: the dark masters and the bias masters (not the
    per-attempt ones)."""
    return sorted(p for kind in ("dark", "bias")
                  for p in (out / "masters" / kind).glob("master_*.fits"))


def clean(dataset: Path, out: Path, keep_fits: bool) -> None:
    """Remove the products of a previous run (and, unless kept, the converted frames)."""
    shutil.rmtree(out, ignore_errors=True)
    if keep_fits:
        return
    for fits_dir in [p for p in dataset.rglob("fits") if p.is_dir()]:
        shutil.rmtree(fits_dir)
    for name in ("index.csv", "fits_index.csv"):
        for p in dataset.rglob(name):
            p.unlink()


def run_campaign(dataset: Path, out: Path, args) -> dict:
    """``run_calibration.py standard`` in a fresh subprocess, timed per stage."""
    stage_json = out.parent / "stages.json"
    argv = ["standard", str(dataset), str(out), "--no-progress"]
    argv += ["--plots", args.plots] if args.plots else []
    argv += args.extra
    repo = args.repo.resolve()
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time() - 1.0  # file times may be truncated to the second
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _DRIVER,
                           json.dumps([STAGES, argv, str(stage_json), args.profile or ""])],
                          cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not stage_json.is_file():
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"run_calibration failed (exit {proc.returncode})")
    result = json.loads(stage_json.read_text())
    log = proc.stderr.strip().splitlines()
    return {"started": started, "wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime),
            "peak_rss_mb": after.ru_maxrss / 1024.0, "stages": result["stages"],
            "last_log_line": log[-1] if log else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="frame side [pixel]")
    parser.add_argument("--frames", type=int, default=5, help="frames per attempt")
    parser.add_argument("--attempts", type=int, default=2, help="attempts per set")
    parser.add_argument("--bias-temps", type=int, default=10, help="bias temperatures")
    parser.add_argument("--dark-temps", type=int, default=9, help="dark temperatures")
    parser.add_argument("--dark-exposures", type=int, default=4, help="dark exposures")
    parser.add_argument("--flat-sets", type=int, default=6, help="flat exposures (>= 3)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="cache of the campaign and the run's products "
                             "(default /tmp/cmos_calib_bench_campaign_<size>)")
    parser.add_argument("--plots", default=None, choices=["none", "summary", "all"],
                        help="figures drawn by the run (default: the command's default)")
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="checkout whose run_calibration.py runs (e.g. an older one)")
    parser.add_argument("--keep-fits", action="store_true",
                        help="reuse the converted FITS of a previous run (conversion not timed)")
    parser.add_argument("--profile", default="", metavar="PROF",
                        help="write a cProfile of the run (main process) to PROF")
    parser.add_argument("extra", nargs="*", help="more run_calibration options (after --)")
    args = parser.parse_args(argv)
    if args.flat_sets < 3:
        parser.error("--flat-sets must be >= 3")
    workdir = args.workdir or Path(f"/tmp/cmos_calib_bench_campaign_{args.size}")
    params = campaign_parameters(args)
    dataset = simulate(workdir, params)
    out = workdir / "products"
    clean(dataset, out, args.keep_fits)
    files = raw_files(dataset)
    floor, nbytes = read_floor(files)
    print(f"campaign: {len(files)} raw frames of {args.size}x{args.size}, "
          f"{nbytes / 2**30:.2f} GiB; raw-read floor {floor:.3f} s", flush=True)
    run = run_campaign(dataset, out, args)
    rows = [(name, run["stages"].get(name, {})) for name, _, _ in STAGES]
    # peak RSS of the run's own process, and of it with its children (the figure renderer)
    # CPU: the run's process (all threads), and with the figure process's work in the stage
    print(f"{'stage':<10} {'wall [s]':>9} {'peak RSS [MB]':>14} {'with children':>14} "
          f"{'CPU [s]':>8} {'with children':>14}")
    for name, entry in rows:
        if entry:
            print(f"{name:<10} {entry['wall_s']:9.2f} {entry.get('peak_main_mb', 0):14.0f} "
                  f"{entry['peak_rss_mb']:14.0f} {entry.get('cpu_main_s', 0):8.1f} "
                  f"{entry.get('cpu_s', 0):14.1f}")
    ratio = run["wall_s"] / floor
    print(f"{'total':<10} {run['wall_s']:9.2f} {run['peak_rss_mb']:14.0f}   "
          f"(cpu {run['cpu_s']:.1f} s; {ratio:.0f}x the raw-read floor)")
    dark = run["stages"].get("dark")
    masters = dark_inputs(out)
    if dark and masters:
        mfloor, mbytes = read_floor(masters)
        print(f"dark stage: {dark['wall_s']:.2f} s = {dark['wall_s'] / mfloor:.0f}x reading its "
              f"{len(masters)} masters once ({mbytes / 2**30:.2f} GiB, {mfloor:.3f} s, page "
              "cache warm)")
        dark.update(masters_read_floor_s=mfloor, ratio_to_masters_read=dark["wall_s"] / mfloor)
    # every file the run wrote: its products and the converted frames (not those reused with
    # --keep-fits: only files modified since the run started)
    wbytes = tree_bytes(out, *[p for p in dataset.rglob("fits") if p.is_dir()],
                        since=run["started"])
    wfloor = write_floor(wbytes, out.parent / "write_floor")
    io_ratio = run["wall_s"] / (floor + wfloor)
    print(f"written: {wbytes / 2**30:.2f} GiB (products, and converted frames unless reused); "
          "writing as many "
          f"bytes takes {wfloor:.2f} s here, so read + write floor {floor + wfloor:.2f} s: the run "
          f"is {io_ratio:.1f}x it")
    print(json.dumps({"size": args.size, "frames": len(files), "raw_bytes": nbytes,
                      "plots": args.plots or "default", "raw_read_floor_s": round(floor, 4),
                      "wall_s": round(run["wall_s"], 2), "cpu_s": round(run["cpu_s"], 2),
                      "peak_rss_mb": round(run["peak_rss_mb"]), "ratio_to_floor": round(ratio, 1),
                      "written_bytes": wbytes, "write_floor_s": round(wfloor, 3),
                      "ratio_to_io_floor": round(io_ratio, 2),
                      "stages": {n: {k: round(v, 2) for k, v in e.items()} for n, e in rows if e},
                      "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
