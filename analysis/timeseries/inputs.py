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




def inputs_digest(table: pd.DataFrame, settings) -> str:
    """Hash of the settings and of every indexed frame's path, size and modification time."""
    import hashlib

    digest = hashlib.sha1(repr(settings).encode())
    for path in sorted(table["PATH"].astype(str)):
        try:
            st = os.stat(path)
            digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}:missing".encode())
    return digest.hexdigest()[:16]


def previous_run(out_dir: str | os.PathLike, digest: str) -> dict | None:
    """The summary of a complete earlier run with the same inputs and settings, else None."""
    import logging

    from utils.run_record import completed_run

    summary = completed_run(out_dir, digest)
    if summary is not None:
        logging.getLogger(__name__).info("%s: inputs and settings unchanged since the last run; "
                                         "products kept", out_dir)
    return summary


__all__ = ["frame_index", "inputs_digest", "previous_run"]
