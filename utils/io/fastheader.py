"""A frame's primary header read without astropy, for the dataset index.

Indexing a campaign reads one header per frame; astropy's ``getheader`` takes ~1.5 ms for
one (and holds the GIL), most of the index's time.  :func:`read_primary` reads the header's
blocks once and keeps each card's value field unparsed; :class:`PrimaryHeader` answers
``get``, ``[]`` and ``in`` exactly as :class:`astropy.io.fits.Header` would, parsing a value
when asked (a plain string, integer, float or logical, by astropy's rules).

The reader never guesses.  It gives None (read the file with astropy) for anything but a
plain primary header of standard 8-character keys, printable ASCII, ending with a clean
``END`` card within :data:`MAX_BLOCKS` blocks, whose structural cards (``SIMPLE``,
``BITPIX``, ``NAXISn``, ``BSCALE``...) are plain, and whose data unit is all in the file (the
check with which astropy warns "File may have been truncated").  Within such a header, a
key asked for that it cannot answer as astropy would -- one that appears as a ``HIERARCH``
card, twice, continued by ``CONTINUE`` cards, as a commentary card or without a value
indicator, with a value that is not plain (a quote inside a string, a record-valued
``'a: 1'``, a complex number, no value) -- raises :class:`UnusualCard`, never a silent None:
the caller then reads the header with astropy.
"""

from __future__ import annotations

import os
import re

from .fitswriter import BLOCK

#: Headers longer than this many 2880-byte blocks are left to astropy.
MAX_BLOCKS = 64
#: Blocks read at once (a converted frame's header takes two).
_READ_BLOCKS = 2
_CARD = 80
_END_CARD = b"END" + b" " * 77
#: A standard keyword field: upper-case letters, digits, '_' and '-', then blanks (astropy
#: takes a card "END" followed by anything but a keyword character for the END card: such
#: a keyword field is not standard, or is "END     ").
_KEY = re.compile(rb"[A-Z0-9_-]+ *")
_PRINTABLE = bytes(range(0x20, 0x7F))
#: A fixed-format number: astropy's ``_numr_FSC`` (no spaces inside, upper-case exponent).
_NUMBER = re.compile(rb"[+-]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[DE][+-]?[0-9]+)?")
#: Names astropy answers with commentary (a list of cards or their text), never a value.
_COMMENTARY = frozenset({"", "COMMENT", "HISTORY", "CONTINUE"})
#: Suffixes astropy opens as compressed files.
_COMPRESSED = (".gz", ".zip", ".bz2", ".xz", ".lzma", ".z")
_BITPIX = (8, 16, 32, 64, -32, -64)
_UNUSUAL = -1
#: Card keyword fields seen before -> their name (None: not a standard keyword).
_NAMES: dict[bytes, str | None] = {b"        ": ""}


class UnusualCard(Exception):
    """A key was asked for that :class:`PrimaryHeader` cannot answer as astropy would; read
    the header with astropy instead."""


def plain_value(field: bytes):
    """The value of a card's value field (bytes 10-80) as astropy parses it -- a string
    (trailing blanks dropped), an int, a float (``D`` exponent as ``E``) or a bool -- or None
    when it is anything else (a quote or ``: `` inside a string, a string ending in ``&``, a
    complex number, lower-case or spaced numbers, no value, text after the value).

    Examples
    --------
    >>> plain_value(b"  1.5D3 / c"), plain_value(b"'DARK    ' / type"), plain_value(b"T")
    (1500.0, 'DARK', True)
    >>> plain_value(b"'it''s'") is None, plain_value(b"(1, 2)") is None
    (True, True)
    """
    text = field.strip()
    if text[:1] == b"'":
        end = text.find(b"'", 1)
        if end < 0:
            return None
        rest = text[end + 1:].lstrip()
        value = text[1:end].rstrip()
        if (rest and rest[:1] != b"/") or value.endswith(b"&") or b":" in value:
            return None  # a quote inside, a long string, a record-valued card
        return value.decode("ascii")
    value = text.split(b"/", 1)[0].rstrip()
    if value == b"T" or value == b"F":
        return value == b"T"
    if not _NUMBER.fullmatch(value):
        return None
    try:
        return int(value)
    except ValueError:
        return float(value.replace(b"D", b"E"))


def _name(key) -> str:
    """The name astropy looks ``key`` up by; UnusualCard for keys it finds by another route
    (``HIERARCH ...``, record-valued ``KEY.field``, not a string)."""
    if not isinstance(key, str):
        raise UnusualCard(repr(key))
    name = key.strip().upper()
    if name.startswith("HIERARCH ") or "." in name:
        raise UnusualCard(key)
    return name


class PrimaryHeader:
    """The cards of a plain primary header, answering like :class:`astropy.io.fits.Header`.

    ``get``, ``[]`` and ``in`` give what astropy gives, or raise :class:`UnusualCard`
    (never a wrong answer); iterating is not supported.

    Attributes
    ----------
    data_offset : int
        [byte] Start of the data unit (the header's length).
    data_end : int
        [byte] End of the padded data unit; the file is at least this long.
    """

    __slots__ = ("_blocks", "_cards", "_values", "data_offset", "data_end")

    def __init__(self, blocks: bytes, cards: dict, data_offset: int, data_end: int):
        self._blocks = blocks
        self._cards = cards  # name -> offset of its card in blocks, or _UNUSUAL
        self._values: dict = {}
        self.data_offset = data_offset
        self.data_end = data_end

    def _offset(self, key) -> int | None:
        at = self._cards.get(key) if type(key) is str else None
        if at is None:  # not as given: as astropy looks it up (stored names are upper case)
            at = self._cards.get(_name(key))
        if at == _UNUSUAL:
            raise UnusualCard(key)
        return at

    def __getitem__(self, key):
        try:
            return self._values[key]
        except (KeyError, TypeError):
            pass
        at = self._offset(key)
        if at is None:
            raise KeyError(f"Keyword {key!r} not found.")
        value = plain_value(self._blocks[at + 10:at + _CARD])
        if value is None:
            raise UnusualCard(key)
        self._values[key] = value
        return value

    def __contains__(self, key) -> bool:
        return self._offset(key) is not None

    def get(self, key, default=None):
        """``self[key]``, or ``default`` when the key is absent (as ``Header.get``)."""
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self):
        raise UnusualCard("iteration")


def _card_name(key: bytes) -> str | None:
    """Name of a standard keyword field (8 bytes), None if it is not one."""
    name = key.rstrip().decode("ascii") if _KEY.fullmatch(key) else None
    if len(_NAMES) < 4096:
        _NAMES[key] = name
    return name


class _NotPlain(Exception):
    """The header is not one :func:`read_primary` reads (astropy decides)."""


def _cards(blocks: bytes) -> tuple[dict, int] | None:
    """``({name: offset of its card or _UNUSUAL}, header length [byte])`` of the header in
    ``blocks``; None when its END card is not there yet.

    Raises
    ------
    _NotPlain
        A card is not a standard one, the END card is not clean, or a byte of the header's
        blocks is not printable ASCII.
    """
    cards: dict = {}
    previous = None
    names = _NAMES
    for i in range(0, len(blocks), _CARD):
        key = blocks[i:i + 8]
        name = names.get(key, False)
        if name is False:
            name = _card_name(key)
        if name is None:
            raise _NotPlain  # lower case, spaces or '=' in the keyword, "END" + something
        if name == "END":
            length = (i // BLOCK + 1) * BLOCK
            if blocks[i:i + _CARD] != _END_CARD or blocks[:length].translate(None, _PRINTABLE):
                raise _NotPlain
            return cards, length
        if name == "CONTINUE":  # astropy joins it to the card before, whatever that is
            if previous is not None:
                cards[previous] = _UNUSUAL
            continue
        if name == "HIERARCH":
            equals = blocks.find(b"=", i + 9, i + _CARD)
            if blocks[i + 8:i + 9] != b" " or equals < 0:
                raise _NotPlain
            name = blocks[i + 9:equals].strip().upper().decode("ascii", "replace")
            cards[name] = _UNUSUAL
        elif blocks[i + 8:i + 10] == b"= " and name not in cards and name not in _COMMENTARY:
            cards[name] = i
        else:  # a repeated key, commentary, no value indicator
            cards[name] = _UNUSUAL
        previous = name
    return None


def _structure(header: PrimaryHeader) -> tuple[int, int] | None:
    """``(BITPIX, data size [byte])`` of a plain primary image header, None otherwise."""
    try:
        if header.get("SIMPLE") is not True or any(
                k in header for k in ("XTENSION", "GROUPS", "PCOUNT", "GCOUNT")):
            return None
        bitpix, naxis = header["BITPIX"], header["NAXIS"]
        if type(bitpix) is not int or bitpix not in _BITPIX or type(naxis) is not int \
                or not 0 <= naxis <= 999:
            return None
        size = 0
        if naxis:
            size = abs(bitpix) // 8
            for j in range(1, naxis + 1):
                length = header[f"NAXIS{j}"]
                if type(length) is not int or length < 0:
                    return None
                size *= length
        for key, kinds in (("BSCALE", (int, float)), ("BZERO", (int, float)), ("BLANK", (int,))):
            value = header.get(key, 0)
            if type(value) not in kinds:
                return None
    except (KeyError, UnusualCard):
        return None
    return bitpix, size


def read_primary(path: str | os.PathLike) -> PrimaryHeader | None:
    """The primary header of the FITS file ``path``, read without astropy, or None when
    anything is unusual (see the module's description): then read it with astropy.

    The file is opened once: the header's blocks are read, and its size shows that the data
    unit the header describes is all there.
    """
    if os.path.splitext(os.fspath(path))[1].lower() in _COMPRESSED:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, TypeError, ValueError):
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, _READ_BLOCKS * BLOCK)
        if not data.startswith(b"SIMPLE  = "):
            return None
        while (parsed := _cards(data[:len(data) - len(data) % BLOCK])) is None:
            more = os.read(fd, min(len(data), MAX_BLOCKS * BLOCK - len(data)))  # doubling
            if not more or len(data) >= MAX_BLOCKS * BLOCK:
                return None
            data += more
    except (OSError, _NotPlain):
        return None
    finally:
        os.close(fd)
    cards, offset = parsed
    header = PrimaryHeader(data, cards, offset, 0)
    structure = _structure(header)
    if structure is None or offset > MAX_BLOCKS * BLOCK:
        return None
    header.data_end = offset + -(-structure[1] // BLOCK) * BLOCK
    if header.data_end > size:
        return None  # astropy warns "File may have been truncated": it decides
    return header
