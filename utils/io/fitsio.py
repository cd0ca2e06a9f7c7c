"""FITS input/output: atomic writes, product layout, and row-block reads.

* :func:`atomic_path` / :func:`write_hdul` write to a temporary file in the
  target folder and rename it into place, so a crash never leaves a
  half-written product and "the file exists" means "the file is complete".
* :func:`write_product` writes a master-like product that
  ``astropy.nddata.CCDData.read`` opens: primary = data (with ``BUNIT``),
  ``UNCERT`` (standard deviation), ``MASK``, and further named image or table
  extensions (noise map, accepted-sample counts, list of inputs).  Both write
  through :mod:`utils.io.fitswriter` (the same bytes as astropy's writer, without
  its per-HDU overhead or whole-image byteswapped copies).
* :class:`FitsLayout` and :func:`read_rows` read a block of rows of an image
  straight from the file's data section, without loading the whole frame;
  :func:`read_pixels` a sample of its pixels.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from astropy.io import fits

from .. import SOFTWARE_NAME, __version__
from .. import headers as kw
from ..errors import OutputPathError, UnreadableFrameError
from . import fitswriter
from .atomic import atomic_path
from .fitswriter import BLOCK

logger = logging.getLogger(__name__)


def software_version() -> str:
    """Name and version written into ``PIPEVER``."""
    return f"{SOFTWARE_NAME} {__version__}"


def utc_now() -> str:
    """Current UTC time as an ISO string (seconds), for ``DATE``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (``path`` itself may not exist yet)."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, without creating anything, that ``path`` is (or can become) a writable folder.

    Commands call it before any work, so a bad output folder fails in one line
    before a single product is written.

    Raises
    ------
    OutputPathError
        ``path`` (or one of its parents) is a file, or the folder that would hold
        the products is not writable.
    """
    path = Path(path)
    probe = _first_existing(path)
    if probe == path and not probe.is_dir():
        raise OutputPathError(f"{path}: the {what} is a file, not a folder; give another "
                              "folder or move the file away")
    if not probe.is_dir():
        raise OutputPathError(f"{path}: the {what} cannot be created, {probe} is a file; give "
                              "another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: the {what} is not writable ({probe} denies writing); "
                              "give a folder you may write to or fix its permissions")
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Like :func:`check_output_dir` for a file: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: the {what} is a folder; give a file name")
    check_output_dir(path.parent, f"folder of the {what}")
    return path


#: Name of an :func:`atomic_path` temporary file: ``.<name>.<random characters>.tmp``
#: (mkstemp writes 8; a user's ``.notes.tmp`` or ``.notes.txt.tmp`` does not match).
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{6,}\.tmp(\.[A-Za-z0-9]{1,5})?")


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = False) -> int:
    """Delete ``.<name>.<random>.tmp[.ext]`` files an interrupted :func:`atomic_path` left behind.

    Returns the number of files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for leftover in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        # only the names atomic_path makes: other files stay
        if not _TEMPORARY.fullmatch(leftover.name):
            continue
        if leftover.is_file() and not leftover.is_symlink():
            logger.debug("removing leftover of an interrupted write: %s", leftover)
            try:
                leftover.unlink(missing_ok=True)
            except OSError as err:  # a read-only folder is reported where it is written to
                logger.debug("cannot remove %s (%s)", leftover, err.strerror or err)
                continue
            removed += 1
    return removed


# --- text in FITS headers and tables ------------------------------------------------------------
# FITS strings are printable ASCII.  Paths, attempt names and config values may not be
# (``Irradiación``, ``cämp ü``): such text is written with every character outside printable
# ASCII as %XX escapes of its UTF-8 bytes (RFC 3986 percent-encoding).  A '%' that is followed
# by two hex digits is escaped too, so :func:`unescape_text` inverts :func:`fits_text` exactly
# while plain ASCII text (including '50% done') is written unchanged.
_NEEDS_ESCAPE = re.compile(r"[^\x20-\x7e]|%(?=[0-9A-Fa-f]{2})")
_ESCAPED = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def fits_text(text: str) -> str:
    """``text`` as printable ASCII for a FITS header or table (see :func:`unescape_text`).

    Examples
    --------
    >>> fits_text("cämp ü space/f0.fits")
    'c%C3%A4mp %C3%BC space/f0.fits'
    >>> fits_text("50% done")
    '50% done'
    """
    def escape(match):
        return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))
    return _NEEDS_ESCAPE.sub(escape, text)


def unescape_text(text: str) -> str:
    """Inverse of :func:`fits_text`: the original (UTF-8) text.

    Examples
    --------
    >>> unescape_text("c%C3%A4mp %C3%BC space/f0.fits")
    'cämp ü space/f0.fits'
    """
    def decode(match):
        raw = bytes.fromhex(match.group().replace("%", ""))
        return raw.decode("utf-8", "surrogatepass")
    return _ESCAPED.sub(decode, text)


def write_hdul(hdul: fits.HDUList, path: str | os.PathLike) -> Path:
    """Write ``hdul`` atomically to ``path`` (replacing any existing file).

    The file is byte for byte what ``hdul.writeto(output_verify="exception")`` writes; plain
    image HDUs go through :mod:`utils.io.fitswriter` (no whole-image byteswapped copy, less
    per-HDU overhead), anything else through astropy.
    """
    parts = fitswriter.hdul_parts(hdul)
    with atomic_path(path) as tmp:
        if parts is None:
            hdul.writeto(tmp, overwrite=True, output_verify="exception")
        else:
            fitswriter.write_parts(tmp, parts)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_ready(obj, default=str):
    """``obj`` with every non-finite float (NaN, inf) as None, recursively, numpy scalars as
    Python numbers, and anything else JSON cannot hold through ``default``: strict JSON
    (``NaN`` is not JSON; ``jq`` and browsers refuse a file holding it)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, default) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        obj = obj.item()  # numpy scalar
        if isinstance(obj, (bool, str)):
            return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return json_ready(default(obj), default)


def json_text(record, default=str, *, indent: int = 2, sort_keys: bool = False) -> str:
    """``record`` as indented strict JSON (non-finite numbers written as null), one final
    newline."""
    return json.dumps(json_ready(record, default), indent=indent, sort_keys=sort_keys,
                      allow_nan=False) + "\n"


def write_json(record, path: str | os.PathLike, default=str, *, indent: int = 2,
               sort_keys: bool = False) -> Path:
    """Write ``record`` atomically as strict JSON (:func:`json_text`): every product JSON
    file goes through here, so none holds the bare ``NaN`` token."""
    return write_text(json_text(record, default, indent=indent, sort_keys=sort_keys), path)


def write_csv(frame, path: str | os.PathLike, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (no index column)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it: :func:`utils.rendering.write_png`
    (one layout pass and one draw for a constrained-layout figure; one without a layout
    engine is cropped to its artists)."""
    from ..rendering import write_png

    return write_png(fig, path, dpi=dpi)


def set_card(header: fits.Header, key: str, value, comment: str = "") -> None:
    """Set a header card, shortening string values that cannot fit one card.

    Long strings go through astropy's CONTINUE convention for normal keywords;
    HIERARCH cards cannot use it, so their values are cut to fit.
    """
    header[key] = _card_fields(key, value, comment)


def _card_fields(key: str, value, comment: str) -> tuple[object, str]:
    """The value and comment :func:`set_card` writes (FITS types, printable, cut to fit)."""
    if isinstance(value, (bool, np.bool_)):
        value = bool(value)
    elif isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not np.isfinite(value):
        value = str(value).upper()  # FITS has no NaN/inf: keep the information as text
    if isinstance(value, str):
        value = fits_text(value)  # printable ASCII only (non-ASCII paths are escaped)
    comment = fits_text(comment)
    if key.startswith("HIERARCH "):
        room = 80 - len(key) - 6
        if isinstance(value, str) and len(value) > room:
            value = value[: max(room, 0)]
        if len(key) + 4 + len(str(value)) + len(comment) > 76:
            comment = ""
    elif isinstance(value, str):
        # a string is padded to 8 characters in quotes and its field to 20 columns (fixed
        # format): 'krad' takes 20 columns, not 6
        width = max(len(value.replace("'", "''")) + 2, 20)
        if width <= 70:  # one card: keep the comment only where it fits
            comment = comment[: max(0, 80 - 10 - width - 3)]
    else:
        comment = comment[:47]  # numbers and logicals take 20 columns
    return value, comment


def card_image(key: str, value, comment: str = "") -> str:
    """The 80-column image(s) of one card, as :func:`set_card` would write it (cached).

    Building a whole :class:`astropy.io.fits.Header` per frame costs more than
    reading the frame; most cards repeat from frame to frame, so their images
    are formatted once (a new one by :func:`utils.io.fitswriter.plain_card` where it can).
    The cache tells apart equal values written differently (1, 1.0, True; 0.0, -0.0).
    """
    negative_zero = type(value) is float and value == 0.0 and math.copysign(1.0, value) < 0
    return _cached_image(key, value, comment, negative_zero)


@functools.lru_cache(maxsize=4096, typed=True)
def _cached_image(key: str, value, comment: str, negative_zero: bool) -> str:
    # typed: 1, 1.0 and True are cached apart; negative_zero: -0.0 apart from 0.0 (they
    # compare and hash equal)
    return _card_image(key, value, comment)


def _card_image(key: str, value, comment: str) -> str:
    value, comment = _card_fields(key, value, comment)
    image = fitswriter.plain_card(key, value, comment)
    if image is not None:
        return image
    header = fits.Header()
    header[key] = (value, comment)
    return header.tostring(endcard=False, padding=False)


def header_bytes(cards) -> bytes:
    """A complete primary header (END card and padding) from ``(key, value, comment)`` cards."""
    return fitswriter.header_bytes(card_image(k, v, c) for k, v, c in cards)


def provenance_cards(product: str) -> list[tuple[str, object, str]]:
    """Cards stating what made this file and when."""
    return [
        (kw.PRODUCT, product, "kind of product"),
        (kw.PIPEVER, software_version(), "software that wrote this file"),
        (kw.DATE, utc_now(), "UTC time this file was written"),
    ]


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``: astropy byteswaps a writeable little-endian array *in
    place* while writing it (and back after), so an array shared with another thread -- e.g.
    one cached bias error map written as ``SUBERR`` by several masters at once -- could be
    read, or written, byteswapped (garbage); of a read-only one it writes a swapped copy."""
    view = array.view()
    view.flags.writeable = False
    return view


def write_product(path: str | os.PathLike, data: np.ndarray, header: fits.Header | None = None, *,
                  unit: str, uncertainty: np.ndarray | None = None,
                  mask: np.ndarray | None = None,
                  images: Mapping[str, tuple[np.ndarray, str]] | None = None,
                  tables: Mapping[str, "object"] | None = None) -> Path:
    """Write an image product that ``CCDData.read`` understands, atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.fits`` file.
    data : numpy.ndarray
        Primary image (written as float32 unless it is an integer type).
    header : astropy.io.fits.Header, optional
        Primary header cards (provenance, statistics...).
    unit : str
        Physical unit of ``data`` and ``uncertainty`` (``BUNIT``), e.g. ``"adu"``.
    uncertainty : numpy.ndarray, optional
        One-sigma standard uncertainty of ``data`` (``UNCERT`` extension,
        ``UTYPE = 'StdDevUncertainty'``).
    mask : numpy.ndarray, optional
        Non-zero where ``data`` is not valid (``MASK`` extension, uint8).
    images : mapping, optional
        Extra image extensions, ``{EXTNAME: (array, bunit)}``.
    tables : mapping, optional
        Extra binary tables, ``{EXTNAME: astropy.table.Table or DataFrame}``.
    """
    header = fits.Header() if header is None else header
    planes = [(None, data, [(kw.BUNIT, unit, "physical unit of the data")])]
    if uncertainty is not None:
        planes.append(("UNCERT", uncertainty, [
            ("UTYPE", "StdDevUncertainty", "astropy.nddata uncertainty class"),
            (kw.BUNIT, unit, "one-sigma uncertainty of the primary data")]))
    if mask is not None:
        planes.append(("MASK", np.asarray(mask).astype(np.uint8, copy=False), [
            ("COMMENT", "non-zero = pixel not valid in the primary data", "")]))
    planes += [(name, array, [(kw.BUNIT, bunit, "")] if bunit else [])
               for name, (array, bunit) in (images or {}).items()]
    # (EXTNAME, array, dtype written: float32 when floating point, uint8 when boolean,
    # cards after the structural ones)
    images = []
    for name, array, cards in planes:
        array = np.asarray(array)
        store = (np.dtype(np.uint8) if array.dtype.kind == "b" else
                 np.dtype(np.float32) if array.dtype.kind == "f" else array.dtype)
        images.append((name, array, store, cards))
    tables = [(name, _ascii_table(table)) for name, table in (tables or {}).items()]
    parts = _product_parts(header, images, tables)
    if parts is None:  # astropy builds (and checks) what this module does not
        return write_hdul(_product_hdul(header, images, tables), path)
    with atomic_path(path) as tmp:
        fitswriter.write_parts(tmp, parts)
    return Path(path)


def _product_parts(header: fits.Header, images: list, tables: list):
    """:func:`write_product`'s HDUs as :class:`~utils.io.fitswriter.Part`, byte for byte what
    :func:`_product_hdul` writes, without building astropy HDUs; None for anything unusual
    (a header with structural, repeated or ``BUNIT`` keywords, unsigned primary data, 0-d
    arrays)."""
    _, data, dtype, cards = images[0]
    if not fitswriter.plain_header(header, cards[0][0]) or dtype.name in fitswriter.PSEUDO_INT:
        return None
    for name, array, store, _ in images:
        if array.ndim == 0 or not (name is None or isinstance(name, str)):
            return None
        try:
            fitswriter.stored_dtype(store)
        except ValueError:
            return None
    primary = fitswriter.image_cards(data.shape, dtype, primary=True,
                                     extend=len(images) + len(tables) > 1)
    primary += fitswriter.user_cards(header, *cards[0])
    parts = [fitswriter.Part(fitswriter.header_bytes(primary), data, dtype)]
    for name, array, store, extra in images[1:]:
        head = fitswriter.image_cards(array.shape, store, primary=False, name=name)
        head += [fitswriter.card(*item) for item in extra]
        parts.append(fitswriter.Part(fitswriter.header_bytes(head), array, store))
    for name, table in tables:
        parts.append(fitswriter.table_part(table, name) or fitswriter.Part(
            fitswriter.astropy_bytes(fits.BinTableHDU(table, name=name))))
    return parts


def _product_hdul(header: fits.Header, images: list, tables: list) -> fits.HDUList:
    """:func:`write_product`'s HDUs built by astropy."""
    hdus = []
    for name, array, store, cards in images:
        array = _read_only(array.astype(store, copy=False))
        hdu = fits.PrimaryHDU(array, header.copy()) if name is None else \
            fits.ImageHDU(array, name=name)
        for key, value, comment in cards:
            hdu.header[key] = (value, comment)
        hdus.append(hdu)
    hdus += [fits.BinTableHDU(table, name=name) for name, table in tables]
    return fits.HDUList(hdus)


def _ascii_table(table):
    """A copy of an astropy table (or DataFrame) whose text columns are
    :func:`fits_text`-escaped."""
    from astropy.table import Table

    if not isinstance(table, Table):
        table = Table.from_pandas(table)
    out = table.copy(copy_data=False)
    for name in out.colnames:
        column = out[name]
        if column.dtype.kind in "UO":
            values = [fits_text(str(v)) for v in column]
            out.replace_column(name, np.array(values, dtype=str) if values else column)
    return out


@dataclass(frozen=True)
class FitsLayout:
    """Where and how an image's pixels sit inside a FITS file.

    Attributes
    ----------
    path : str
        File path.
    offset : int
        Byte offset of the first pixel of the image HDU.
    shape : tuple of int
        ``(rows, columns)``.
    dtype : numpy.dtype
        On-disk (big-endian) sample type.
    bscale, bzero : float
        Linear scaling from stored to physical values.
    """

    path: str
    offset: int
    shape: tuple[int, int]
    dtype: np.dtype
    bscale: float = 1.0
    bzero: float = 0.0

    @property
    def row_bytes(self) -> int:
        """Bytes of one image row on disk."""
        return self.shape[1] * self.dtype.itemsize


_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


#: ``warnings.catch_warnings`` swaps the process-wide filters: two threads capturing at once
#: restore each other's, and a warning escapes the capture (a truncated frame read as good,
#: or the warning raised where an "error" filter is in force).  Captures take turns.
_CAPTURE_LOCK = threading.RLock()


@contextlib.contextmanager
def _astropy_warnings_as_errors(path: str):
    """Turn astropy's 'file may have been truncated' style warnings into a frame error.

    One capture at a time in the process (:data:`_CAPTURE_LOCK`); a warning that still
    arrives as an exception (filters another library's thread set) is judged the same way.
    """
    with _CAPTURE_LOCK:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        except Warning as err:
            if isinstance(err, UserWarning) and "truncated" in str(err):
                raise UnreadableFrameError(path, f"truncated ({err}); re-convert or remove "
                                                 "the file") from err
            raise
    for item in caught:
        if issubclass(item.category, (UserWarning,)) and "truncated" in str(item.message):
            raise UnreadableFrameError(path, f"truncated ({item.message}); re-convert or "
                                             "remove the file")
    for item in caught:  # anything else keeps its normal route
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


#: Header cards the fast layout parser reads (NAXISn beyond NAXIS2 are read by prefix).
_LAYOUT_KEYS = (b"SIMPLE", b"XTENSION", b"BITPIX", b"NAXIS", b"PCOUNT", b"GCOUNT", b"BSCALE",
                b"BZERO")
#: Headers longer than this many blocks, and files with more HDUs before the one asked for,
#: are left to astropy.
_FAST_BLOCKS = 64


def _header_values(handle) -> tuple[dict[bytes, bytes], int] | None:
    """The layout cards of the header starting at ``handle``'s position and the header's
    length [byte]; None when the header is unusual (too long, cut short)."""
    values: dict[bytes, bytes] = {}
    for n in range(1, _FAST_BLOCKS + 1):
        block = handle.read(BLOCK)
        if len(block) < BLOCK:
            return None
        for i in range(0, BLOCK, 80):
            card = block[i:i + 80]
            key = card[:8].rstrip()
            if key == b"END":
                return values, n * BLOCK
            if card[8:10] == b"= " and (key in _LAYOUT_KEYS or key.startswith(b"NAXIS")):
                values.setdefault(key, card[10:].split(b"/", 1)[0].strip())
            elif not values and key not in (b"SIMPLE", b"XTENSION"):
                return None  # not a FITS header
    return None


def primary_cards(path: str | os.PathLike, keys: Sequence[str]) -> dict | None:
    """``{key: value}`` of the primary header's cards ``keys`` (a key absent is None, as
    ``Header.get`` gives), read without astropy (:func:`utils.io.fastheader.read_primary`);
    None when any of them, or the file, is unusual (a quote inside a string, a long string, a
    repeated key, a file cut short...): then ask astropy.

    A re-run checks the conversion hash and ADC bits of every frame converted before:
    astropy takes ~1 ms a header for this, the cards ~30 us.
    """
    from .fastheader import UnusualCard, read_primary

    header = read_primary(path)
    if header is None:
        return None
    try:
        return {key: header.get(key) for key in keys}
    except UnusualCard:
        return None


def _fast_layout(path: str, hdu: int = 0
                 ) -> tuple[int, tuple[int, int], int, float, float] | None:
    """``(offset, shape, bitpix, bscale, bzero)`` of the plain 2-D image of HDU ``hdu``,
    parsed from the fixed-format cards, stepping over the HDUs before it by their data
    sizes; None when anything is unusual (astropy then decides).

    A campaign run locates every frame several times (index checks, every master it goes
    into) and every extension of every master it fits; astropy takes ~5-10 ms a file for
    this, the cards ~50 us.
    """
    try:
        with open(path, "rb") as handle:
            offset = 0
            for k in range(hdu + 1):
                parsed = _header_values(handle)
                if parsed is None:
                    return None
                values, length = parsed
                first = values.get(b"SIMPLE" if k == 0 else b"XTENSION")
                if first is None or (k == 0 and first != b"T"):
                    return None
                bitpix = int(values[b"BITPIX"])
                naxis = int(values[b"NAXIS"])
                axes = [int(values[b"NAXIS%d" % j]) for j in range(1, naxis + 1)]
                offset += length
                if k == hdu:
                    if naxis != 2 or (k > 0 and first.strip(b"' ") != b"IMAGE"):
                        return None
                    scale = float(values.get(b"BSCALE", b"1").replace(b"D", b"E"))
                    zero = float(values.get(b"BZERO", b"0").replace(b"D", b"E"))
                    return offset, (axes[1], axes[0]), bitpix, scale, zero
                # data: |BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn), padded
                size = 0
                if naxis:
                    size = abs(bitpix) // 8 * int(values.get(b"GCOUNT", b"1")) * (
                        int(values.get(b"PCOUNT", b"0")) + int(np.prod(axes, dtype=np.int64)))
                offset += -(-size // BLOCK) * BLOCK
                handle.seek(offset)
    except (OSError, KeyError, ValueError):
        return None
    return None


def fits_layout(path: str | os.PathLike, hdu: int = 0) -> FitsLayout:
    """Locate the image data of HDU ``hdu`` of ``path`` for direct row reads.

    Raises
    ------
    UnreadableFrameError
        When the file is not a FITS image of two dimensions, or is shorter than
        its header says (truncated).
    """
    path = str(path)
    fast = _fast_layout(path, hdu)
    if fast is not None and fast[2] in _BITPIX:
        offset, shape, bitpix, bscale, bzero = fast
        dtype = np.dtype(_BITPIX[bitpix])
        needed = offset + shape[0] * shape[1] * dtype.itemsize
        size = os.path.getsize(path)
        if size < needed:
            raise UnreadableFrameError(path, f"truncated: {size} bytes, header needs {needed}; "
                                             "re-convert the frame")
        return FitsLayout(path, offset, shape, dtype, bscale, bzero)
    try:
        with _astropy_warnings_as_errors(path), \
                fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            info = hdul.fileinfo(hdu)
            header = hdul[hdu].header
            if header.get("NAXIS") != 2:
                raise UnreadableFrameError(path, f"HDU {hdu} is not a 2-D image "
                                                 f"(NAXIS={header.get('NAXIS')})")
            bitpix = int(header["BITPIX"])
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            offset = int(info["datLoc"])
            bscale = float(header.get("BSCALE", 1.0))
            bzero = float(header.get("BZERO", 0.0))
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise UnreadableFrameError(path, f"cannot read FITS header ({err}); "
                                         "re-convert or remove the file") from err
    dtype = np.dtype(_BITPIX[bitpix])
    needed = offset + shape[0] * shape[1] * dtype.itemsize
    size = os.path.getsize(path)
    if size < needed:
        raise UnreadableFrameError(path, f"truncated: {size} bytes, header needs {needed}; "
                                         "re-convert the frame")
    return FitsLayout(path, offset, shape, dtype, bscale, bzero)


def read_rows(layout: FitsLayout, start: int, stop: int, *, fd: int | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Read rows ``start:stop`` of an image as float32 physical values.

    Uses ``os.pread`` on the data section only, so memory is proportional to
    the rows asked for, and threads can share a file descriptor.

    Parameters
    ----------
    layout : FitsLayout
        From :func:`fits_layout`.
    start, stop : int
        Row range (0-based, ``stop`` exclusive).
    fd : int, optional
        An open file descriptor of ``layout.path``; opened and closed here if absent.
    out : numpy.ndarray, optional
        float32 array of shape ``(stop - start, columns)`` to fill.
    """
    nrows = stop - start
    nbytes = nrows * layout.row_bytes
    own = fd is None
    if own:
        fd = os.open(layout.path, os.O_RDONLY)
    try:
        buf = os.pread(fd, nbytes, layout.offset + start * layout.row_bytes)
    finally:
        if own:
            os.close(fd)
    if len(buf) != nbytes:
        raise UnreadableFrameError(layout.path, f"short read of rows {start}:{stop}")
    raw = np.frombuffer(buf, dtype=layout.dtype).reshape(nrows, layout.shape[1])
    if out is None:
        out = np.empty((nrows, layout.shape[1]), dtype=np.float32)
    return _physical(raw, layout, out)


def _physical(raw: np.ndarray, layout: FitsLayout, out: np.ndarray) -> np.ndarray:
    """``raw`` stored samples as float32 physical values in ``out`` (elementwise)."""
    if layout.dtype == np.dtype(">i2") and layout.bscale == 1.0 and layout.bzero == 32768.0:
        # unsigned 16-bit convention: flipping the sign bit is exact and fast
        np.copyto(out, (raw.view(">u2") ^ np.uint16(0x8000)), casting="unsafe")
    else:
        np.copyto(out, raw, casting="unsafe")
        if layout.bscale != 1.0:
            out *= np.float32(layout.bscale)
        if layout.bzero != 0.0:
            out += np.float32(layout.bzero)
    return out


def read_pixels(layout: FitsLayout, pixels: np.ndarray, *,
                out: np.ndarray | None = None) -> np.ndarray:
    """Float32 physical values of the flat pixel indices ``pixels`` of an image: the values
    :func:`read_rows` gives those pixels (the same elementwise conversion).

    The image's bytes are mapped (``mmap``, read-only) and only the pixels asked for are
    copied and converted, not every row that holds one: a stride sample of a frame is
    ~4x faster than reading its rows (the mapped pages count in the resident size only
    until the call returns: one image at most).
    """
    import mmap

    pixels = np.asarray(pixels, dtype=np.intp)
    if out is None:
        out = np.empty(pixels.size, np.float32)
    count = layout.shape[0] * layout.shape[1]
    start = layout.offset - layout.offset % mmap.ALLOCATIONGRANULARITY
    length = layout.offset - start + count * layout.dtype.itemsize
    with open(layout.path, "rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start)
        except (ValueError, OSError) as err:  # e.g. a file shorter than its header says
            raise UnreadableFrameError(layout.path, f"cannot map the image ({err})") from err
    try:
        raw = np.frombuffer(mapped, dtype=layout.dtype, count=count,
                            offset=layout.offset - start)[pixels]
    finally:
        mapped.close()
    return _physical(raw, layout, out)


def read_image(path: str | os.PathLike, hdu: int = 0) -> tuple[np.ndarray, fits.Header]:
    """Read a whole image (physical values, float32 unless integer) and its header.

    Raises
    ------
    UnreadableFrameError
        When the file cannot be opened or holds no image.
    """
    try:
        with _astropy_warnings_as_errors(str(path)), fits.open(path, memmap=False) as hdul:
            data = hdul[hdu].data
            header = hdul[hdu].header.copy()
    except (OSError, IndexError, ValueError, TypeError) as err:
        raise UnreadableFrameError(path, f"cannot read FITS ({err})") from err
    if data is None:
        raise UnreadableFrameError(path, f"HDU {hdu} holds no image")
    return data, header


def read_header(path: str | os.PathLike, hdu: int = 0) -> fits.Header:
    """Read one header only.

    Raises
    ------
    UnreadableFrameError
        When the file cannot be opened.
    """
    try:
        with _astropy_warnings_as_errors(str(path)):
            return fits.getheader(path, hdu)
    except (OSError, IndexError, ValueError, TypeError) as err:
        raise UnreadableFrameError(path, f"cannot read FITS header ({err})") from err


def is_complete_fits(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and is at least as long as its headers say.

    Products are written atomically, so this mainly guards against files
    copied in by hand or by an older tool.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size < BLOCK or path.stat().st_size % BLOCK:
        return False
    try:
        fits_layout(path)
    except UnreadableFrameError:
        return False
    return True
