"""The frames of a structure, outgassing or RTS run: an index CSV, or a folder indexed here.

A folder's index is kept in the output folder (``index.csv``) so a re-run reuses the
rows of unchanged frames; it is written only once the inputs have been checked, so a
run stopped by bad input leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd

from utils.errors import InputPathError
from utils.io.index import DatasetIndex, build_index, write_index


def frame_index(basepath: str | os.PathLike, out_dir: str | os.PathLike, *,
                progress_bar: bool = False) -> tuple[pd.DataFrame, Callable[[], None]]:
    """The index table of ``basepath`` and a function that saves it as ``out_dir/index.csv``.

    Raises
    ------
    InputPathError
        ``basepath`` is neither a folder nor a file, or holds no FITS frame.
    TableError
        The CSV is not an index.
    """
    basepath = Path(basepath)
    if basepath.is_file():
        return DatasetIndex.from_csv(basepath).table, lambda: None
    if not basepath.is_dir():
        raise InputPathError(f"{basepath}: no such folder or index CSV; give the folder of "
                             "converted FITS frames or an index from utils.index_dataset")
    cache = Path(out_dir) / "index.csv"
    table = build_index([("", basepath)], previous=cache, progress_bar=progress_bar)
    return DatasetIndex(table).table, lambda: write_index(table, cache)


__all__ = ["frame_index"]
