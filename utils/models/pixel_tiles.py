"""Per-pixel fits over pixel tiles: the points of a fit read a range of pixels at a time.

:class:`PixelTiles` lets the nonlinear fits of :mod:`utils.models.nonlinear` stream over
row tiles of many masters (read with the stacking engine's block reader, see
:mod:`utils.stack.tiles`) instead of holding ``(n, H, W)`` stacks; the helpers move a
tile's results in and out of the full-frame maps and gather the joint population fit's
pixel sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .population import MAX_PIXELS as POPULATION_PIXELS


@dataclass(frozen=True)
class PixelTiles:
    """The points of a per-pixel fit, read a range of pixels at a time.

    Lets a fit over many masters run in bounded memory: :meth:`read` gives the values and
    errors of pixels ``a:b`` (flattened, e.g. rows of every master read with the
    stacking engine's block reader), and the fit streams over :attr:`ranges`.  Per-pixel
    results do not depend on the tiling (every pixel is fitted on its own; the population
    steps see the same pixels in the same order), so a tiled fit equals an untiled one.

    Attributes
    ----------
    n : int
        Points per pixel.
    shape : tuple of int
        Shape of the pixel maps (e.g. ``(H, W)``).
    ranges : list of (int, int)
        Consecutive ``(a, b)`` flattened-pixel ranges covering every pixel.
    read : callable
        ``read(a, b) -> (y, sigma, shared_cov)``: ``(n, b - a)`` values and errors, and the
        ``(D, D, b - a)`` covariance of the shared errors of those pixels (or None).
    """

    n: int
    shape: tuple
    ranges: list
    read: object

    @classmethod
    def of_arrays(cls, y, sigma, shared_cov=None) -> PixelTiles:
        """One tile holding in-memory ``(n, ...)`` arrays."""
        y2 = y.reshape(y.shape[0], -1)
        s2 = sigma.reshape(y.shape[0], -1)
        c2 = None if shared_cov is None else \
            shared_cov.reshape(shared_cov.shape[0], shared_cov.shape[1], -1)
        return cls(y.shape[0], y.shape[1:], [(0, y2.shape[1])],
                   lambda a, b: (y2[:, a:b], s2[:, a:b], None if c2 is None else c2[:, :, a:b]))


def tile_outputs(maps, a, b, P):
    """Contiguous per-tile views (one tile: the maps themselves) or copies of ``maps``."""
    if (a, b) == (0, P):
        return maps
    return tuple(np.ascontiguousarray(m[..., a:b]) for m in maps)


def store_tile(maps, out, a, b, P):
    if (a, b) != (0, P):
        for m, o in zip(maps, out):
            m[..., a:b] = o


def gather_sample(tiles: PixelTiles, candidate: np.ndarray, n: int):
    """Values, errors and shared covariance of the joint fit's pixel sample: the same
    deterministic stride over the candidate pixels as :func:`joint_shape` takes."""
    idx = np.flatnonzero(candidate)
    idx = idx[::max(1, math.ceil(idx.size / POPULATION_PIXELS))]
    if len(tiles.ranges) == 1:
        y_t, s_t, c_t = tiles.read(*tiles.ranges[0])
        y_t, s_t = np.asarray(y_t).reshape(n, -1), np.asarray(s_t).reshape(n, -1)
        return y_t[:, idx], s_t[:, idx], None if c_t is None else flat_cov(c_t)[:, :, idx]
    parts = SampleParts(n)
    for a, b in tiles.ranges:
        sel = idx[(idx >= a) & (idx < b)] - a
        if sel.size:
            parts.add(*tiles.read(a, b), sel)
    return parts.result()


class SampleParts:
    """The joint fit's sample gathered tile by tile: each tile's selected pixels (values,
    errors, shared covariance), concatenated in the order of the tiles."""

    def __init__(self, n: int):
        self.n = n
        self.ys: list = []
        self.ss: list = []
        self.cs: list = []

    def add(self, y_t, s_t, c_t, sel: np.ndarray) -> None:
        """Keep pixels ``sel`` (indices within the tile) of one tile's read."""
        self.ys.append(np.asarray(y_t).reshape(self.n, -1)[:, sel])
        self.ss.append(np.asarray(s_t).reshape(self.n, -1)[:, sel])
        if c_t is not None:
            self.cs.append(flat_cov(c_t)[:, :, sel])

    def result(self):
        """``(y, s, C or None)`` of every pixel kept."""
        if not self.ys:
            return np.empty((self.n, 0)), np.empty((self.n, 0)), None
        return (np.concatenate(self.ys, axis=1), np.concatenate(self.ss, axis=1),
                np.concatenate(self.cs, axis=2) if self.cs else None)


def flat_cov(c):
    c = np.asarray(c)
    return c.reshape(c.shape[0], c.shape[1], -1)


__all__ = ["PixelTiles", "tile_outputs", "store_tile", "gather_sample", "flat_cov",
           "SampleParts"]
