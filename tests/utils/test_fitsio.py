"""Product writing: an array handed to the writer is never changed, even for a moment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy.io import fits

from utils.io.fitsio import write_product


def test_a_shared_array_written_by_threads_at_once_stays_intact(tmp_path):
    """One error map shared by several products written at the same time (index processing
    writes the masters of one bias-model step in parallel, all with the same ``SUBERR``):
    every file holds it exactly, and so does the array.  astropy byteswaps a writeable array
    in place while writing it; the writer must not let it."""
    rng = np.random.default_rng(2)
    shared = rng.normal(5.0, 1.0, (256, 256)).astype(np.float32)
    before = shared.copy()

    def write(k):
        data = np.full((256, 256), float(k), np.float32)
        return write_product(tmp_path / f"p{k}.fits", data, unit="adu", uncertainty=shared,
                             images={"SUBERR": (shared, "adu")})

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(write, range(48)))
    assert shared.flags.writeable and np.array_equal(shared, before)
    for path in paths:
        with fits.open(path) as hdul:
            assert np.array_equal(hdul["SUBERR"].data, before), path
            assert np.array_equal(hdul["UNCERT"].data, before), path
