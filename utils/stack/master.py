"""One master file from one calibration set: combine, write, and skip it when unchanged.

A master records in ``INHASH`` a hash of its input paths, the combination
settings and whatever was subtracted; a re-run whose inputs and settings are
the same finds a complete file with the same hash and does not rebuild it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import adu
from .. import headers as kw
from ..errors import FrameError
from ..io.discovery import real_paths  # noqa: F401 - also imported from here
from ..io.fitsio import atomic_path, is_complete_fits, primary_cards, read_header
from ..settings import field
from .blockops import _quadrature
from .combine import DEFAULT_CLIP_SIGMA, METHODS, combine
from .tiles import PIXEL_BLOCK, pixel_blocks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CombineSettings:
    """How the frames of one set are combined (see :func:`utils.stack.combine.combine`)."""

    method: str = field("sigclip", "combination: sigclip, median or mean")
    sigma_low: float = field(DEFAULT_CLIP_SIGMA, "[sigma] lower clipping threshold")
    sigma_high: float = field(DEFAULT_CLIP_SIGMA, "[sigma] upper clipping threshold")
    maxiters: int = field(5, "largest number of clipping iterations")
    min_accepted: int = field(3, "pixels with fewer accepted samples are masked")
    memory_limit: float = field(1e9, "[byte] working-memory budget of one combination")
    workers: int = field(2, "threads of one combination")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        # 'not x > 0' also refuses NaN
        if not (self.sigma_low > 0 and self.sigma_high > 0) or self.min_accepted < 1:
            raise ValueError("sigma thresholds must be > 0 and min_accepted >= 1")
        if not self.memory_limit >= 1e6:
            raise ValueError(f"memory_limit must be >= 1e6 byte, not {self.memory_limit:g}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")


def add_combine_options(parser, defaults: CombineSettings = CombineSettings()) -> None:
    """Command-line options of :class:`CombineSettings` (``--method --sigma --memory-limit
    --workers``)."""
    parser.add_argument("--method", choices=list(METHODS), default=defaults.method,
                        help="combination of the frames of one set")
    parser.add_argument("--sigma", type=float, default=defaults.sigma_high,
                        help="[sigma] clipping threshold (both sides)")
    parser.add_argument("--memory-limit", type=float, default=defaults.memory_limit,
                        help="[byte] working-memory budget of one combination")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="threads per combination")


def combine_settings(args) -> CombineSettings:
    """Validated :class:`CombineSettings` from parsed options (ConfigError when invalid)."""
    from ..errors import ConfigError

    try:
        return CombineSettings(method=args.method, sigma_low=args.sigma, sigma_high=args.sigma,
                               memory_limit=args.memory_limit, workers=args.workers)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _identity(ref) -> str:
    """What a reference stands for in a hash, never where the output folder is.

    A FITS file (a master or model that was subtracted) counts by its own
    ``INHASH`` (which depends only on its inputs and settings), else by a hash of
    its bytes; anything else (a scale factor, a fingerprint) by its ``repr``.
    """
    if isinstance(ref, (str, os.PathLike)) and str(ref).lower().endswith((".fits", ".fit")) \
            and os.path.isfile(ref):
        try:
            inhash = read_header(ref).get(kw.INHASH)
        except FrameError:
            inhash = None
        if inhash:
            return f"INHASH {inhash}"
        content = hashlib.sha1()
        with open(ref, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                content.update(chunk)
        return f"SHA1 {content.hexdigest()}"
    return repr(ref)


#: Bumped when the engine's products change for the same inputs and settings, so that a
#: re-run rebuilds the masters it made before (2: NOISE floor of identical quantised
#: samples, ``combine(quantum=)``; 3: sigma clipping against the larger of the pixel's own
#: scale and its image row's pooled scale, ``combine(pooled_floor=)``).
ENGINE_REVISION = 3


def inputs_hash(paths: Sequence[str | os.PathLike], settings, *refs,
                real: Mapping[str, str] | None = None) -> str:
    """Short hash of the inputs, the combination settings and what was subtracted.

    Inputs count by their real path (``data/f.fits`` and ``/abs/data/f.fits`` are
    the same frame; ``real`` may give them, see :func:`real_paths`); references
    (``refs``) by :func:`_identity`, so two output folders built from the same inputs
    get the same hash and a re-run from another working folder or with an absolute
    index path rebuilds nothing.
    """
    real = real or {}
    digest = hashlib.sha1()
    for p in sorted(real.get(os.fspath(p)) or os.path.realpath(p) for p in paths):
        digest.update(p.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    digest.update(repr((settings.method, settings.sigma_low, settings.sigma_high,
                        settings.maxiters, settings.min_accepted,
                        tuple(_identity(r) for r in refs), ENGINE_REVISION)).encode())
    return digest.hexdigest()[:16]


def existing_product(path: str | os.PathLike, digest: str) -> fits.Header | None:
    """Header of a complete product at ``path`` made from the same inputs, else None."""
    if not is_complete_fits(path):
        return None
    header = read_header(path)
    return header if header.get(kw.INHASH) == digest else None


def find_masters(folder: str | os.PathLike | None) -> dict[str, Path]:
    """``{INHASH: path}`` of the complete FITS products below ``folder`` (headers only).

    The masters index processing built (``OUT/masters``), so that a pipeline run by the
    same campaign run (``run_calibration.py``) takes them instead of stacking the same
    frames again: see ``reuse`` in :func:`make_master`.  Empty without a folder.
    """
    found: dict[str, Path] = {}
    if not folder or not Path(folder).is_dir():
        return found
    for path in sorted(Path(folder).rglob("*.fits")):
        if not is_complete_fits(path):
            continue
        # the card itself (~30 us), astropy for an unusual header (~1 ms): a campaign's
        # bias and dark pipelines look through its ~150 masters each
        cards = primary_cards(path, (kw.INHASH,))
        try:
            digest = cards[kw.INHASH] if cards is not None else read_header(path).get(kw.INHASH)
        except FrameError:
            continue
        if digest:
            found.setdefault(str(digest), path)
    return found


def reuse_product(digest: str, path: str | os.PathLike,
                  known: Mapping[str, Path] | None) -> fits.Header | None:
    """Put the known product of ``digest`` at ``path`` (a hard link, else a copy); its header.

    Same ``INHASH`` means same input frames, same combination settings and the same
    subtracted references (by content), so the file is the one :func:`make_master`
    would write.  None when no complete product of that hash is known.
    """
    source = (known or {}).get(digest)
    if source is None or existing_product(source, digest) is None:
        return None
    path = Path(path)
    if path.exists() and os.path.samefile(source, path):
        return read_header(path)
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or no hard links
            shutil.copyfile(source, tmp)
    logger.info("%s: same inputs and settings as %s (INHASH %s): reused, not stacked again",
                path.name, source, digest)
    return read_header(path)


def adc_bits_of(rows: pd.DataFrame) -> int:
    """Converter bits of a set of index rows (from their ``ADUSCALE``)."""
    scale = pd.to_numeric(rows["ADUSCALE"], errors="coerce").dropna() if "ADUSCALE" in rows \
        else pd.Series(dtype=float)
    if scale.empty:
        return adu.DEFAULT_ADC_BITS
    return adu.STORED_BITS - int(round(math.log2(float(scale.iloc[0]))))


def frame_metadata(rows: pd.DataFrame) -> list[dict]:
    """Per-frame ``TEMP``/``EXPTIME`` for the master's header statistics and INPUTS table."""
    return [{kw.TEMP: t, kw.EXPTIME: e} for t, e in zip(rows["TEMP"], rows["EXPTIME"])]


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def stack_request(rows: pd.DataFrame, settings: CombineSettings, *, scale=None, subtract=None,
                  product: str = "", progress_bar: bool = False,
                  bits: int | None = None) -> dict:
    """The keyword arguments of :func:`utils.stack.combine.combine` that :func:`stack_rows`
    stacks ``rows`` with (for :func:`utils.stack.subsets.combine_subsets`)."""
    bits = adc_bits_of(rows) if bits is None else bits
    step_scale = float(np.median(scale)) if scale is not None else 1.0
    return dict(inputs=rows["PATH"].astype(str).tolist(), method=settings.method,
                sigma_low=settings.sigma_low, sigma_high=settings.sigma_high,
                maxiters=settings.maxiters, min_accepted=settings.min_accepted, scale=scale,
                subtract=subtract, saturation=adu.saturation_level(bits),
                min_scale=adu.clip_floor(bits, step_scale),
                quantum=adu.quantum(bits, step_scale), memory_limit=settings.memory_limit,
                workers=settings.workers, metadata=frame_metadata(rows), product=product,
                progress_bar=progress_bar)


def stack_rows(rows: pd.DataFrame, settings: CombineSettings, *, scale=None, subtract=None,
               product: str = "", progress_bar: bool = False, deferred: bool = False,
               executor=None, bits: int | None = None):
    """Stack the frames of index ``rows`` with ``settings``: :func:`utils.stack.combine.combine`
    with the saturation level, clipping floor and quantum of the frames' ADC bits (at the
    median of ``scale``).  Returns what ``combine`` returns (``deferred``: to finish later;
    ``executor``: combine's shared block pool; ``bits``: :func:`adc_bits_of` of ``rows``
    when the caller has it already)."""
    return combine(**stack_request(rows, settings, scale=scale, subtract=subtract,
                                   product=product, progress_bar=progress_bar, bits=bits),
                   deferred=deferred, executor=executor)


def quadrature_sum(a: np.ndarray, b: np.ndarray, *, out: np.ndarray | None = None,
                   block: int = PIXEL_BLOCK) -> np.ndarray:
    """``sqrt(a**2 + b**2)`` of two error images in float64, stored as float32.

    Worked by pixel blocks, so no full-frame float64 temporaries (a 2048 x 2048 frame's
    would be ~100 MB); the numbers are those of the whole-frame formula.

    Parameters
    ----------
    a, b : numpy.ndarray
        Error images of one shape, any float dtype [the same unit].
    out : numpy.ndarray, optional
        C-contiguous float32 image to write (may be ``a`` itself: in place); a new one
        by default.
    block : int, optional
        Pixels per block (without numba; with it, one pass over the pixels).

    Returns
    -------
    numpy.ndarray
        ``out`` (float32).
    """
    a, b = np.asarray(a), np.asarray(b)
    if out is None:
        out = np.empty(a.shape, np.float32)
    elif out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != a.shape:
        raise ValueError("out must be a C-contiguous float32 image of the inputs' shape")
    flat_a, flat_b, flat_out = np.ravel(a), np.ravel(b), out.reshape(-1)
    if _quadrature is not None and flat_a.dtype in _FLOATS and flat_b.dtype in _FLOATS:
        # one pass, the same float64 operations (~5 ms of numpy blocks at 1024 x 1024)
        _quadrature(flat_a, flat_b, flat_out)
        return out
    for blk in pixel_blocks(out.size, block):
        flat_out[blk] = np.sqrt(np.asarray(flat_a[blk], np.float64) ** 2
                                + np.asarray(flat_b[blk], np.float64) ** 2)
    return out


def make_master(rows: pd.DataFrame, path: str | os.PathLike, settings: CombineSettings, *,
                unit: str = adu.UNIT, product: str = "MASTER", subtract=None, scale=None,
                extra: dict | None = None, refs: tuple = (), sub_stderr=None,
                reuse: Mapping[str, Path] | None = None,
                progress_bar: bool = False) -> tuple[fits.Header, bool]:
    """Combine the frames of ``rows`` into ``path`` unless an identical master exists.

    Parameters
    ----------
    rows : pandas.DataFrame
        Index rows of the set (``PATH, TEMP, EXPTIME``, optionally ``ADUSCALE``).
    path : path-like
        Destination file.
    settings : CombineSettings
        Combination settings.
    unit : str, optional
        ``BUNIT`` of the master.
    product : str, optional
        ``PRODUCT`` card, e.g. ``MASTER_BIAS``.
    subtract, scale : optional
        Passed to :func:`utils.stack.combine.combine`.
    extra : dict, optional
        Header cards ``{key: value or (value, comment)}``.
    refs : tuple, optional
        Identities of what was subtracted (part of the hash).
    sub_stderr : numpy.ndarray, optional
        One-sigma error of what was subtracted [unit]: common to every frame, it
        is added once in quadrature to ``UNCERT`` and kept alone in ``SUBERR``.
    reuse : mapping, optional
        ``{INHASH: path}`` of masters already built from the same frames (see
        :func:`find_masters`): one of the same hash is linked to ``path`` instead of
        stacking the frames again.

    Returns
    -------
    (astropy.io.fits.Header, bool)
        The master's primary header, and whether it was (re)written.
    """
    paths = rows["PATH"].astype(str).tolist()
    digest = inputs_hash(paths, settings, *refs)
    header = existing_product(path, digest)
    if header is not None:
        return header, False
    header = reuse_product(digest, path, reuse)
    if header is not None:
        return header, True
    bits = adc_bits_of(rows)
    result = stack_rows(rows, settings, scale=scale, subtract=subtract, product=product,
                        progress_bar=progress_bar, bits=bits)
    cards = dict(extra or {})
    cards[kw.INHASH] = (digest, "hash of inputs and settings")
    for name, value, comment in adu.scaling_cards(bits):
        cards.setdefault(name, (value, comment))
    images = None
    if sub_stderr is not None:
        sub_stderr = np.asarray(sub_stderr, dtype=np.float32)
        result.stderr = quadrature_sum(result.stderr, sub_stderr, out=result.stderr)
        images = {"SUBERR": (sub_stderr, unit)}
        cards["SUBERR"] = (True, "UNCERT includes the SUBERR of the subtracted image")
    written = result.write(path, unit=unit, extra_header=cards, extra_images=images)
    return read_header(written), True


@dataclass
class MasterImages:
    """A master's images (float32, masked pixels NaN in ``data``)."""

    data: np.ndarray      # master [unit]
    noise: np.ndarray     # per-pixel sample std of the accepted inputs [unit]
    count: np.ndarray     # accepted inputs per pixel
    stderr: np.ndarray    # UNCERT [unit]
    suberr: np.ndarray    # error of what was subtracted [unit] (0 when nothing)
    header: fits.Header


def read_master(path: str | os.PathLike) -> MasterImages:
    """Load a master written by :func:`make_master` (all its images at once)."""
    with fits.open(path, memmap=False) as hdul:
        names = {h.name for h in hdul}
        data = np.array(hdul[0].data, dtype=np.float32)
        if "MASK" in names:
            data[np.asarray(hdul["MASK"].data) != 0] = np.nan

        def image(name, fill):
            return np.asarray(hdul[name].data, dtype=np.float32) if name in names else \
                np.full(data.shape, fill, np.float32)
        return MasterImages(data, image("NOISE", np.nan), image("NCOMB", 1.0),
                            image("UNCERT", np.nan), image("SUBERR", 0.0), hdul[0].header.copy())


__all__ = ["MasterImages", "read_master", "add_combine_options", "combine_settings",
           "find_masters", "reuse_product",
           "CombineSettings", "inputs_hash", "existing_product", "adc_bits_of", "frame_metadata",
           "make_master", "quadrature_sum"]
