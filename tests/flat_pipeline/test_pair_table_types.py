"""A flat set with one usable frame (e.g. ``--temp-bin 0.5`` isolating a flat whose reading
jittered) has no pair: its pair table was empty and untyped, the concatenation with the other
sets' pairs became 'object', and the photon-transfer fit ended the run in a traceback
(TypeError: ufunc 'isfinite' not supported)."""

from __future__ import annotations

import pandas as pd

from flat_pipeline.quality import measure_frames
from utils.models.photon_transfer import level_table


def test_pairs_of_no_set_are_typed_and_concatenate_as_numbers():
    _, empty = measure_frames([], (12, 16), norm_method="median", central_fraction=0.5,
                              adc_bits=12)
    assert empty.empty and empty["VAR"].dtype == float and empty["NPIX"].dtype == "int64"
    one = pd.DataFrame([{"TBIN": 25.0, "EXPTIME": 0.1, "PATH_A": "a", "PATH_B": "b",
                         "MEAN": 6300.0, "VAR": 5.0e4, "NPIX": 240, "RATIO": 1.0, "NCLIP": 0,
                         "SATFRACTION": 0.0}])
    pairs = pd.concat([empty, one], ignore_index=True)
    assert pairs["VAR"].dtype == float
    levels = level_table(pairs)
    assert len(levels) == 1 and levels["VAR"].iloc[0] == 5.0e4
