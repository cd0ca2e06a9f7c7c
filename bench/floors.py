"""I/O floors shared by the benchmarks: what reading the inputs and writing the products cost
on this machine, with no computation, so a pipeline's wall time can be read against them.

The write floor matters on virtual machines: writing new files copies every byte into page
cache pages the guest may first have to obtain from the host, which can cost more than
reading the same bytes (measured here: 0.2-3 s per GiB, depending on how recently that memory
was used).  A benchmark that reports only the read floor hides that part of the bill.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np


def tree_bytes(*roots: Path, since: float | None = None) -> int:
    """Bytes of every file under ``roots`` (hard links counted once); with ``since`` (a
    ``time.time()`` stamp) only files modified at or after it, i.e. written by a run that
    started then (files it reused are not part of its bill)."""
    seen, total = set(), 0
    for root in roots:
        for p in Path(root).rglob("*"):
            st = p.lstat()
            if since is not None and st.st_mtime < since:
                continue
            if p.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def write_floor(nbytes: int, folder: Path, chunk: int = 16 << 20) -> float:
    """Time [s] to write ``nbytes`` as new files of ``chunk`` bytes into ``folder`` (put it on
    the products' file system) from one buffer, plainly: no format, no rename.

    One pass, like a run's own writes of fresh files; the files are removed after.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = np.random.default_rng(0).integers(0, 255, chunk, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    written, i = 0, 0
    try:
        while written < nbytes:
            n = min(chunk, nbytes - written)
            with open(folder / f"w{i:05d}.bin", "wb", buffering=0) as f:
                f.write(buf[:n])
            written, i = written + n, i + 1
        return time.perf_counter() - t0
    finally:  # also when the disk fills: never leave the floor's files behind
        shutil.rmtree(folder, ignore_errors=True)
