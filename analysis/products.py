"""Writing analysis products: every figure with its data twin, tables and small images.

Each PNG of the radiation analyses is written with an ``.npz`` of the same base
name holding the arrays drawn (the old README promised that and did not
deliver); both are written atomically (:func:`utils.io.fitsio.atomic_path`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from utils import plotting
from utils.io.fitsio import atomic_path


def _array(value):
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return np.array(value, dtype=str)
    if isinstance(value, str):
        return np.array(value)
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.array([math.nan if v is None else v for v in arr.ravel()],
                       dtype=float).reshape(arr.shape)
    return arr


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) atomically; None becomes NaN."""
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{k: _array(v) for k, v in arrays.items()})
    return path


def save_plot(ax, path: str | os.PathLike, data: dict, dpi: int = 110) -> list[Path]:
    """Save the figure of ``ax`` as ``path`` (PNG) and ``data`` as its ``.npz`` twin.

    The figure goes through :func:`utils.plotting.save` (rendered beside the run in a
    command, not written with ``--plots none``); the data twin is always written.
    """
    path = Path(path)
    stem = path.name[:-4] if path.suffix == ".png" else path.name   # names may hold dots
    png = plotting.save(ax, path.with_name(stem + ".png"), dpi=dpi)
    return [p for p in (png, write_npz(path.with_name(stem + ".npz"), **data)) if p is not None]


def p_form(value: float) -> str:
    """The old exposure token: ``str(float)`` with ``.`` replaced by ``p`` (1.0 -> ``1p0``).

    Examples
    --------
    >>> p_form(1.0), p_form(1.2e-05), p_form(0.5)
    ('1p0', '1p2e-05', '0p5')
    """
    return str(float(value)).replace(".", "p")


__all__ = ["write_npz", "save_plot", "p_form"]
