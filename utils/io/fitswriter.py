"""FITS image HDUs (and plain binary tables) written directly: header text, then big-endian
data in bounded chunks.

astropy's ``HDUList.writeto`` costs, per product, a few milliseconds of HDU construction,
verification and configuration look-ups per image, and byteswaps every little-endian image
into a whole big-endian copy before writing it (one extra image-sized buffer per HDU).  This
module writes the same bytes itself:

* the header is astropy's own text of the header astropy would write
  (:meth:`astropy.io.fits.Header.tostring`, END card, padded to 2880 bytes);
* the data are converted to big-endian (and, for unsigned integers, to the signed
  ``BZERO`` convention) :data:`CHUNK_BYTES` at a time, then padded with zeros to 2880 bytes.

Plain binary tables (:func:`table_part`: no units, masks or metadata) are written the same
way.  Anything unusual (other tables, scaled or compressed images, random groups, data not
loaded from a file yet) keeps astropy's writer: such an extension is serialized by astropy
and copied into the file, an unusual primary HDU sends the whole list to astropy.  The
resulting files are byte-identical to ``HDUList.writeto(..., output_verify="exception")``
(tests/utils/test_fitswriter.py compares them).

:func:`image_cards` and :func:`user_cards` build the header text of a new image HDU
without an astropy HDU object (what :func:`utils.io.fitsio.write_product` uses);
:func:`hdul_parts` takes an existing :class:`~astropy.io.fits.HDUList`.
"""

from __future__ import annotations

import functools
import io
import os
import re
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from astropy.io import fits
from astropy.io.fits.card import Card

BLOCK = 2880  # bytes of a FITS block
#: Largest piece of an image converted (byteswapped) at a time: 2 MiB, 1/8 of a 2048^2 float32
#: image, large enough that the per-write overhead is negligible next to the kernel's copy.
CHUNK_BYTES = 2 << 20

#: BITPIX of the dtypes FITS stores as they are.
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}
#: dtypes stored with an offset (``BZERO``): (BITPIX, BZERO).
PSEUDO_INT = {"int8": (8, -128), "uint16": (16, 2**15), "uint32": (32, 2**31),
              "uint64": (64, 2**63)}
_COMMENTS = fits.ImageHDU.standard_keyword_comments
#: Keywords astropy strips from a header given to a new HDU (Header.strip) or places itself.
_STRUCTURAL = frozenset({"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
                         "GROUPS", "BSCALE", "BZERO", "TFIELDS", "THEAP", "BLANK", "EXTNAME",
                         "EXTVER", "CHECKSUM", "DATASUM", ""})
_COMMENTARY = Card._commentary_keywords


class Part(NamedTuple):
    """One HDU ready to write: its header bytes, then ``data`` (or None) stored as ``dtype``.

    ``header`` of an HDU serialized by astropy holds the whole HDU (data included).
    """

    header: bytes
    data: np.ndarray | None = None
    dtype: np.dtype | None = None


@functools.lru_cache(maxsize=4096)
def card(key: str, value, comment: str = "") -> str:
    """The 80-column image of a card as astropy formats it (cached; raises what astropy
    raises for an invalid keyword or non-ASCII text)."""
    return Card(key, value, comment).image


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an image of ``dtype`` is written as (the type itself, unsigned ones
    through the ``BZERO`` convention).

    Raises
    ------
    ValueError
        For a type FITS images cannot hold (bool, complex, float16, strings...).
    """
    dtype = np.dtype(dtype)
    if dtype.name not in _BITPIX and dtype.name not in PSEUDO_INT:
        raise ValueError(f"a FITS image cannot hold {dtype.name} data")
    return dtype.newbyteorder("=")


def image_cards(shape: tuple[int, ...], dtype: np.dtype, *, primary: bool,
                extend: bool = False, name: str | None = None) -> list[str]:
    """Card images astropy puts first in a new image HDU of ``shape`` and ``dtype``.

    ``SIMPLE``/``XTENSION``, ``BITPIX``, ``NAXIS``, ``NAXISn``, then ``EXTEND`` (a primary
    followed by extensions) or ``PCOUNT``, ``GCOUNT``, ``BSCALE``/``BZERO`` (unsigned data of an
    extension) and ``EXTNAME``.  A primary of unsigned data is left to astropy (its
    ``BSCALE``/``BZERO`` go after the user's cards).
    """
    dtype = np.dtype(dtype)
    first = card("SIMPLE", True, _COMMENTS["SIMPLE"]) if primary else \
        card("XTENSION", "IMAGE", _COMMENTS["XTENSION"])
    bitpix = _BITPIX.get(dtype.name) or PSEUDO_INT[dtype.name][0]
    cards = [first, card("BITPIX", bitpix, _COMMENTS["BITPIX"]),
             card("NAXIS", len(shape), _COMMENTS["NAXIS"])]
    cards += [card(f"NAXIS{i + 1}", n) for i, n in enumerate(reversed(shape))]
    if primary:
        if dtype.name in PSEUDO_INT:
            raise ValueError("a primary HDU of unsigned data goes through astropy")
        if extend:
            cards.append(card("EXTEND", True))
        return cards
    cards += [card("PCOUNT", 0, _COMMENTS["PCOUNT"]), card("GCOUNT", 1, _COMMENTS["GCOUNT"])]
    if dtype.name in PSEUDO_INT:
        cards += [card("BSCALE", 1), card("BZERO", PSEUDO_INT[dtype.name][1])]
    if name:
        if not fits.conf.extension_name_case_sensitive:
            name = name.upper()
        cards.append(card("EXTNAME", name, "extension name"))
    return cards


def plain_header(header: fits.Header, *added: str) -> bool:
    """True when astropy would copy ``header``'s cards unchanged after its own first cards:
    no keyword astropy strips, places or checks itself, none of the keywords ``added``
    later (astropy would update them in place), no blank card, no repeated keyword (other
    than COMMENT/HISTORY)."""
    keys = list(header.keys())
    if any(k in _STRUCTURAL or k in added or k.startswith("NAXIS") for k in keys):
        return False
    named = [k for k in keys if k not in _COMMENTARY]
    return len(set(named)) == len(named)


def user_cards(header: fits.Header, key: str, value, comment: str) -> list[str]:
    """Images of the cards of a :func:`plain_header` (also of ``key``), verified as
    ``output_verify="exception"`` would, with ``header[key] = (value, comment)`` applied the
    way astropy applies it to a header holding no ``key``: after the last card that is not
    COMMENT/HISTORY.

    Raises
    ------
    astropy.io.fits.verify.VerifyError
        For a card astropy's writer would refuse.
    """
    cards = header.cards
    for item in cards:
        item.verify("exception")
    images = [item.image for item in cards]
    at = len(images)
    while at > 0 and cards[at - 1].keyword in _COMMENTARY:
        at -= 1
    images.insert(at, card(key, value, comment))
    return images


#: Keywords a Header splits into several cards.
_COMMENTARY = frozenset(("", "COMMENT", "HISTORY", "END"))
#: A keyword a Card writes as it is (no HIERARCH, no record-valued ``A.B`` form).
_PLAIN_KEY = re.compile(r"[A-Z0-9_-]{1,8}\Z")
try:  # astropy's text of a card value (its Card formats values through it)
    from astropy.io.fits.card import _format_value as _value_text
except ImportError:  # pragma: no cover - another astropy: every card through a Header
    _value_text = None


def plain_card(key: str, value, comment: str) -> str | None:
    """The 80-column image :class:`astropy.io.fits.Card` gives a number, logical or string
    under a plain keyword (``KEYWORD= value / comment``, the value's text from astropy), at
    a tenth of a Card's cost; None for anything else (HIERARCH, commentary, a value needing
    CONTINUE cards or not fitting): ask astropy.  ``value`` and ``comment`` are as
    :func:`utils.io.fitsio.set_card` leaves them (Python types, printable text)."""
    if _value_text is None or type(value) not in (int, float, bool, str) \
            or not _PLAIN_KEY.match(key) or key in _COMMENTARY:
        return None
    image = f"{key:8}= {_value_text(value)}" + (f" / {comment}" if comment else "")
    return f"{image:80}" if len(image) <= 80 else None


def header_bytes(cards: Iterable[str]) -> bytes:
    """Header text of card images: END card, blank-padded to a whole number of blocks."""
    text = "".join(cards) + f"{'END':80}"
    return (text + " " * (-len(text) % BLOCK)).encode("ascii")


# --- binary tables ---------------------------------------------------------------------------

#: TFORM of the column types written directly (others, e.g. unsigned or int8 needing TZERO,
#: go through astropy).
_TFORM = {"f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "u1": "B", "b1": "L"}


def _column_format(column) -> tuple[str, np.ndarray] | None:
    """(TFORM, big-endian values) of a plain table column, None for anything else."""
    from astropy.table import Column

    if type(column) is not Column or column.ndim != 1 or column.unit is not None \
            or column.format is not None or column.description is not None or column.meta:
        return None
    values = column.value
    kind = values.dtype.kind
    if kind in "US":
        width = values.dtype.itemsize // (4 if kind == "U" else 1)
        if kind == "U":
            try:
                values = np.char.encode(values, "ascii") if len(values) else \
                    values.astype(f"S{width}")
            except UnicodeEncodeError:
                return None
        return f"{width}A", values.astype(f"S{width}")
    code = f"{kind}{values.dtype.itemsize}"
    if code not in _TFORM:
        return None
    if kind == "b":  # FITS logicals are the characters T and F
        return "L", np.where(values, np.uint8(ord("T")), np.uint8(ord("F")))
    return _TFORM[code], values.astype(values.dtype.newbyteorder(">"), copy=False)


def table_part(table, name: str) -> Part | None:
    """A binary table extension of ``table`` (an :class:`astropy.table.Table`), byte for byte
    what ``fits.BinTableHDU(table, name=name)`` writes, for a plain table: no metadata,
    one-dimensional columns of float, signed 16-64-bit or 8-bit unsigned integers, logicals
    or ASCII strings, without units, formats, descriptions or masks.  None otherwise (astropy
    then writes the table).
    """
    if table.meta or not len(table.columns) or table.has_masked_columns \
            or not isinstance(name, str):
        return None
    columns = [(column.name, _column_format(column)) for column in table.itercols()]
    if any(fmt is None for _, fmt in columns):
        return None
    dtype = np.dtype([(f"f{i}", values.dtype.newbyteorder(">") if values.dtype.itemsize > 1
                       else values.dtype) for i, (_, (_, values)) in enumerate(columns)])
    rows = np.empty(len(table), dtype=dtype)
    for i, (_, (_, values)) in enumerate(columns):
        rows[f"f{i}"] = values
    if not fits.conf.extension_name_case_sensitive:
        name = name.upper()
    try:
        cards = [card("XTENSION", "BINTABLE", "binary table extension"),
                 card("BITPIX", 8, "array data type"),
                 card("NAXIS", 2, "number of array dimensions"),
                 card("NAXIS1", dtype.itemsize, "length of dimension 1"),
                 card("NAXIS2", len(rows), "length of dimension 2"),
                 card("PCOUNT", 0, "number of group parameters"),
                 card("GCOUNT", 1, "number of groups"),
                 card("TFIELDS", len(columns), "number of table fields")]
        for i, (label, (tform, _)) in enumerate(columns, start=1):
            cards += [card(f"TTYPE{i}", label), card(f"TFORM{i}", tform)]
        cards.append(card("EXTNAME", name, "extension name"))
    except ValueError:  # a name that is not printable ASCII: astropy says what is wrong
        return None
    return Part(header_bytes(cards), rows.view(np.uint8), np.dtype(np.uint8))


# --- existing HDULists -----------------------------------------------------------------------

def _direct(hdu) -> bool:
    """True when this HDU is a plain image whose bytes this module writes itself."""
    if type(hdu) not in (fits.PrimaryHDU, fits.ImageHDU) or "data" not in vars(hdu):
        return False  # tables, compressed images, groups; data still in a file (copied raw)
    if getattr(hdu, "_scale_back", False) or getattr(hdu, "_data_needs_rescale", False):
        return False
    data, header = hdu.data, hdu.header
    if data is None:
        return "BSCALE" not in header and "BZERO" not in header
    if type(data) not in (np.ndarray, np.memmap) or data.dtype.name not in _BITPIX | PSEUDO_INT:
        return False  # dask arrays, masked arrays, matrices: astropy's writer
    if data.dtype.name in PSEUDO_INT:
        return header.get("BSCALE") == 1 and header.get("BZERO") == PSEUDO_INT[data.dtype.name][1]
    return "BSCALE" not in header and "BZERO" not in header


def astropy_bytes(hdu) -> bytes:
    """One extension HDU (e.g. a binary table) serialized by astropy's own writer."""
    buffer = io.BytesIO()
    empty = fits.PrimaryHDU()
    fits.HDUList([empty, hdu]).writeto(buffer, output_verify="exception")
    return buffer.getvalue()[len(empty.header.tostring()):]


def hdul_parts(hdul: fits.HDUList) -> list[Part] | None:
    """The parts :func:`write_parts` writes for ``hdul``, byte for byte what
    ``hdul.writeto(output_verify="exception")`` writes; None when astropy must write the list
    (an empty list, or a primary HDU this module does not write).

    Verifies the list as astropy does (raising :class:`~astropy.io.fits.verify.VerifyError`
    for what it would refuse) and, like astropy, updates its headers (``EXTEND``, ``NAXISn``).
    """
    if not len(hdul) or not _direct(hdul[0]):
        return None
    hdul.verify(option="exception")
    hdul.update_extend()
    parts = []
    for hdu in hdul:
        if not _direct(hdu):
            parts.append(Part(astropy_bytes(hdu)))
            continue
        hdu.update_header()  # what astropy's _prewriteto does for an unscaled image
        data = hdu.data
        parts.append(Part(hdu.header.tostring().encode("ascii"), data,
                          None if data is None else stored_dtype(data.dtype)))
    return parts


# --- writing -----------------------------------------------------------------------------------

def _blocks(array: np.ndarray, items: int) -> Iterator[np.ndarray]:
    """Pieces of ``array`` of at most ~``items`` elements, in C order (views, no copy)."""
    if array.size <= items:
        yield array
    elif array.flags.c_contiguous:
        flat = array.reshape(-1)
        for start in range(0, flat.size, items):
            yield flat[start:start + items]
    elif array.ndim == 1:
        for start in range(0, array.size, items):
            yield array[start:start + items]
    else:
        rows = max(1, items // max(1, array[0].size))
        for start in range(0, array.shape[0], rows):
            yield from _blocks(array[start:start + rows], items)


def write_data(handle, data: np.ndarray, dtype: np.dtype | None = None) -> int:
    """Write ``data`` (as ``dtype``, default its own) big-endian, :data:`CHUNK_BYTES` at a
    time, zero-padded to a whole number of blocks; return the bytes written.

    Unsigned (and ``int8``) data are stored with astropy's ``BZERO`` convention: the sign
    bit flipped, which is ``value - BZERO`` in two's complement.  ``data`` itself is never
    modified (threads may share it).
    """
    source = np.dtype(data.dtype)
    dtype = stored_dtype(source if dtype is None else dtype)
    flip = dtype.name in PSEUDO_INT
    if flip and source.newbyteorder("=") != dtype:
        raise ValueError(f"{source.name} data cannot be stored as {dtype.name}")
    stored = np.dtype(f">u{dtype.itemsize}") if flip else dtype.newbyteorder(">")
    if flip and source.kind == "i":
        data = data.view(np.uint8)  # int8: its bytes, sign bit flipped below
    items = max(1, CHUNK_BYTES // stored.itemsize)
    buffer = None  # one chunk, reused: the only memory this function takes
    size = 0
    for block in _blocks(data, items):
        if block.dtype == stored and block.flags.c_contiguous and not flip:
            out = block  # already as stored (big-endian or single bytes): no copy
        else:
            if buffer is None:
                buffer = np.empty(min(items, data.size), dtype=stored)
            out = buffer[:block.size].reshape(block.shape)
            np.copyto(out, block, casting="unsafe")
            if flip:
                out.reshape(-1).view(np.uint8)[0::dtype.itemsize] ^= 0x80  # most significant first
        handle.write(out.data)
        size += out.nbytes
    if size % BLOCK:
        handle.write(bytes(BLOCK - size % BLOCK))
    return size + (-size % BLOCK)


def write_parts(path: str | os.PathLike, parts: Iterable[Part]) -> None:
    """Write HDUs (from :func:`hdul_parts` or built by hand) to ``path``, replacing it."""
    with open(path, "wb") as handle:
        for part in parts:
            handle.write(part.header)
            if part.data is not None and part.data.size:
                write_data(handle, part.data, part.dtype)
