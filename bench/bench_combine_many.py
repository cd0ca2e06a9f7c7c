#!/usr/bin/env python
"""Benchmark :func:`utils.stack.combine.combine_many` against one ``combine`` per master.

A calibration set of N frames and its attempts (N split in ``--attempts``
consecutive groups) make 1 + attempts masters that share every frame.  Times,
best of ``--repeat`` (alternating the two ways):

* ``many``: ``combine_many(paths, [all, attempt 0, attempt 1, ...])`` (each
  frame read once per row block);
* ``separate``: one ``combine`` call per master (each frame read once per
  master holding it).

With ``--cold`` each timed run starts with the frames' pages dropped from the
page cache (``posix_fadvise(DONTNEED)`` on those files only; no root needed),
otherwise the page cache is warm.  The masters of both ways are checked equal.

Run from the repository root::

    python bench/bench_combine_many.py                      # 10 frames of 2048^2, 2 attempts
    python bench/bench_combine_many.py --cold --workdir /tmp/many_frames

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_combine import frame_paths, read_all  # noqa: E402


def drop_cache(paths) -> None:
    """Evict these files' clean pages from the page cache (this process' files only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10, help="frames of the set (default 10)")
    parser.add_argument("--attempts", type=int, default=2, help="attempts it splits into")
    parser.add_argument("--size", type=int, default=2048, help="frame side [pixel]")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "cmos_calib_bench",
                        help="folder of the synthetic frames (reused when present)")
    parser.add_argument("--method", default="sigclip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; best kept")
    parser.add_argument("--cold", action="store_true",
                        help="drop the frames' pages from the page cache before each run")
    args = parser.parse_args(argv)

    import numpy as np

    from utils.stack import combine as stacking

    paths = [str(p) for p in frame_paths(args.workdir, args.frames, args.size)]
    n = len(paths)
    edges = np.linspace(0, n, args.attempts + 1).round().astype(int)
    sets = [list(range(n))] + [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:])]
    kwargs = dict(method=args.method, workers=args.workers)
    compile_s = stacking.warmup()
    read_all(paths)

    def many():
        return stacking.combine_many(paths, sets, **kwargs)

    def separate():
        return [stacking.combine([paths[i] for i in idx], **kwargs) for idx in sets]

    walls = {"many": [], "separate": []}
    for _ in range(args.repeat):
        for name, run in (("many", many), ("separate", separate)):
            if args.cold:
                drop_cache(paths)
            t0 = time.perf_counter()
            masters = run()
            walls[name].append(time.perf_counter() - t0)
            if name == "many":
                first = masters
            else:
                for a, b in zip(first, masters):
                    assert a.data.tobytes() == b.data.tobytes(), "masters differ"
            del masters
    best = {k: min(v) for k, v in walls.items()}
    cache = "cold (pages dropped)" if args.cold else "warm page cache"
    print(f"{n} frames of {args.size}x{args.size} in {args.attempts} attempts: "
          f"{len(sets)} masters, {args.method}, {args.workers} workers, {cache}")
    for name in ("many", "separate"):
        print(f"{name:<10}{best[name]:8.3f} s   (runs: "
              + ", ".join(f"{w:.3f}" for w in walls[name]) + ")")
    print(f"separate / many = {best['separate'] / best['many']:.2f}")
    print(json.dumps({"frames": n, "size": args.size, "attempts": args.attempts,
                      "method": args.method, "workers": args.workers, "cold": args.cold,
                      "compile_s": compile_s, "walls_s": walls, "best_s": best,
                      "speedup": best["separate"] / best["many"]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
