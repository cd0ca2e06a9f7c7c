"""Row tiles of a stack of 2-D products, for model fits whose memory must not grow with the stack.

A per-pixel model fit over K masters needs, per pixel, the K values of every
input image; holding all of them as ``(K, H, W)`` arrays grows with both the
number of masters and the frame size (11 GB for 20 dark masters of 2048x2048
with their errors and the fit's float64 copies).  The fits instead go tile by
tile: rows ``r0:r1`` of every master, read with the block reader of the
stacking engine (:func:`utils.io.fitsio.read_rows`, ``os.pread`` of the data
section only), so the working set is ``K x rows x W`` per image and
:func:`tile_rows` sizes ``rows`` from the ``--memory-limit`` budget.  Per-pixel
results land in full-frame 2-D maps (one value per pixel, whatever K is);
frame-wide statistics (population medians, error scales) are computed on those
maps between passes.

Example
-------
>>> rows = tile_rows(20, (2048, 2048), 256e6, images=3)
>>> 1 <= rows <= 2048
True
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
from astropy.io import fits

from ..errors import UnreadableFrameError
from ..io import fitsio

#: Most rows of one tile, whatever the budget: the budget is the stacking's (``--memory-limit``,
#: 1 GB by default), and tiles of that size on top of a fit's full-frame maps took the flat
#: pipeline to 1.2 GB and the 2-D dark fit past 1.08 GB at 2048^2 (bench_flat,
#: bench_pipeline_models: its rate fits got whole-frame tiles); 256 rows of 2048 columns are
#: large enough that per-tile costs do not show.
MAX_TILE_ROWS = 256

#: Share of the run's memory budget (``--memory-limit``) one tile of a per-pixel model fit
#: (bias, dark) may take: the rest holds the interpreter with numba, astropy and pandas
#: (~350 MB), the models' full-frame maps (~40 float32 maps at the 2-D dark fit: 700 MB at
#: 2048^2) and the rate maps.  A tile of the whole budget took the dark pipeline to 1.6 GB
#: at 1024^2 (36 masters), and the bias fit's tiles of 256 rows of ten 2048-column masters
#: ~370 MB; smaller tiles cost nothing measurable (every pass reads each row once whatever
#: the tile).
TILE_SHARE = 0.25

#: Working bytes per sample of one image in a tile: the float32 read, the float64 copies
#: and temporaries the per-pixel fits make of it (measured on the dark 2-D fit: ~5).
BYTES_PER_SAMPLE = 24


def tile_rows(n_planes: int, shape: tuple[int, int], memory_limit: float, *,
              images: int = 1, bytes_per_sample: int = BYTES_PER_SAMPLE,
              max_rows: int = MAX_TILE_ROWS) -> int:
    """Rows per tile so ``images`` stacks of ``n_planes`` planes fit ``memory_limit``, and
    never more than ``max_rows``.

    Parameters
    ----------
    n_planes : int
        Planes (masters) per stack.
    shape : tuple of int
        ``(rows, columns)`` of every plane.
    memory_limit : float
        Budget of one tile's working set [byte].
    images : int, optional
        Stacks read per tile (e.g. signal, noise and bias error: 3).
    bytes_per_sample : int, optional
        Working bytes per sample, temporaries included.
    max_rows : int, optional
        Cap on the rows (:data:`MAX_TILE_ROWS`).

    Returns
    -------
    int
        At least 1, at most ``min(shape[0], max_rows)``.
    """
    per_row = max(1, n_planes) * shape[1] * images * bytes_per_sample
    return int(max(1, min(shape[0], max_rows, memory_limit // per_row)))


#: Pixels per block of elementwise float64 work on a flattened image (2 MB per float64
#: array): full-frame temporaries would be ~34 MB each at 2048^2.
PIXEL_BLOCK = 1 << 18


def pixel_blocks(npix: int, size: int = PIXEL_BLOCK) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` pixels covering ``npix`` flattened pixels.

    Elementwise work done block by block gives the same numbers as on the whole frame.

    >>> [(b.start, b.stop) for b in pixel_blocks(5, 2)]
    [(0, 2), (2, 4), (4, 6)]
    """
    for b0 in range(0, npix, size):
        yield slice(b0, b0 + size)


def row_tiles(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(r0, r1)`` of consecutive tiles of ``rows`` rows covering ``height``."""
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


class ProductRows:
    """Rows of named images of several FITS products of one shape, read on demand.

    Parameters
    ----------
    paths : sequence of path-like
        The products (e.g. masters), one plane each.
    names : sequence of str
        Image HDUs to read (``"PRIMARY"`` is HDU 0); a product without one gets the
        ``fill`` value of :meth:`read`.

    Raises
    ------
    UnreadableFrameError
        A product that is not a FITS file, or whose images differ in shape.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], names: Sequence[str]):
        self.paths = [str(p) for p in paths]
        self.layouts: dict[str, list] = {name: [] for name in names}
        self.shape: tuple[int, int] | None = None
        for path in self.paths:
            try:
                with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                    index = {("PRIMARY" if i == 0 else h.name): i for i, h in enumerate(hdul)}
            except OSError as err:
                raise UnreadableFrameError(path, f"cannot read FITS ({err})") from err
            for name in names:
                lay = fitsio.fits_layout(path, index[name]) if name in index else None
                if lay is not None:
                    if self.shape is None:
                        self.shape = lay.shape
                    elif lay.shape != self.shape:
                        raise UnreadableFrameError(path, f"{name} is {lay.shape}, the other "
                                                         f"products {self.shape}")
                self.layouts[name].append(lay)
        if self.shape is None:
            raise UnreadableFrameError(self.paths[0] if self.paths else "?", "no image to read")

    def __len__(self) -> int:
        return len(self.paths)

    def has(self, name: str) -> list[bool]:
        """Whether each product holds the image ``name``."""
        return [lay is not None for lay in self.layouts[name]]

    def read(self, name: str, r0: int, r1: int, fill: float = np.nan,
             planes: Sequence[int] | None = None) -> np.ndarray:
        """Rows ``r0:r1`` of image ``name`` of every product (or of ``planes``), float32.

        Returns
        -------
        numpy.ndarray, shape (K, r1 - r0, W)
        """
        planes = range(len(self.paths)) if planes is None else planes
        out = np.empty((len(planes), r1 - r0, self.shape[1]), np.float32)
        for j, k in enumerate(planes):
            lay = self.layouts[name][k]
            if lay is None:
                out[j] = fill
            else:
                fitsio.read_rows(lay, r0, r1, out=out[j])
        return out


class ArrayRows:
    """In-memory stand-in of :class:`ProductRows`: ``{name: (K, H, W) array}``."""

    def __init__(self, images: dict):
        self.images = images
        first = next(iter(images.values()))
        self.shape = tuple(first.shape[1:])
        self.paths = [f"<plane {k}>" for k in range(first.shape[0])]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, name: str, r0: int, r1: int, fill: float = np.nan,
             planes: Sequence[int] | None = None) -> np.ndarray:
        """Rows ``r0:r1`` of image ``name`` of the planes (copy, float32)."""
        planes = list(range(len(self.paths)) if planes is None else planes)
        if name not in self.images:
            return np.full((len(planes), r1 - r0, self.shape[1]), fill, np.float32)
        return self.images[name][planes, r0:r1].astype(np.float32)


def pixel_sample(shape: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Flat indices of a deterministic stride sample of at most ``max_pixels`` pixels
    (every pixel when the frame has no more)."""
    total = int(np.prod(shape))
    return np.arange(0, total, max(1, -(-total // max_pixels)))


def gather_sample(rows, names: Sequence[str], idx: np.ndarray, tile: int,
                  fills: dict | None = None) -> ArrayRows:
    """The pixels ``idx`` (flat) of every plane of ``rows``, read ``tile`` rows at a time,
    as an :class:`ArrayRows` of shape ``(K, 1, len(idx))``."""
    height, width = rows.shape
    fills = fills or {}
    out = {name: np.empty((len(rows), 1, idx.size), np.float32) for name in names}
    for r0, r1 in row_tiles(height, tile):
        lo, hi = np.searchsorted(idx, [r0 * width, r1 * width])
        if hi == lo:
            continue
        sel = idx[lo:hi] - r0 * width
        for name in names:
            block = rows.read(name, r0, r1, fill=fills.get(name, np.nan))
            out[name][:, 0, lo:hi] = block.reshape(block.shape[0], -1)[:, sel]
    return ArrayRows(out)


__all__ = ["TILE_SHARE", "ProductRows", "ArrayRows", "pixel_sample", "gather_sample", "tile_rows",
           "row_tiles",
           "BYTES_PER_SAMPLE"]
