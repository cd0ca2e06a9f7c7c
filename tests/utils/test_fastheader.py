"""The primary header read without astropy (utils.io.fastheader): every answer it gives is
astropy's, and whatever it cannot answer as astropy would raises UnusualCard or reads None."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.io.fastheader import MAX_BLOCKS, UnusualCard, plain_value, read_primary
from utils.io.fitsio import read_header
from utils.io.fitswriter import BLOCK

#: Keys the index asks a frame's header for (utils.io.index._header_row and its helpers).
INDEX_KEYS = ("PRODUCT", "CALTYPE", "IMAGETYP", "EXPTIME", "DOSE", "ADCBITS", "SATLEVEL",
              "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "TEMP", "FRAMENUM", "TIMESTMP", "TIMESTAMP",
              "TIME", "ATTEMPT", "FRNPIX", "FRNZERO", "FRNSAT", "FRSATLEV", "FRMEAN",
              "FRMEDIAN", "FRSTD", "FRP16", "FRP84", "FRMIN", "FRMAX")
ABSENT = object()


def same(a, b) -> bool:
    """Equal values of the same type (-0.0 is not 0.0, NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def answers(header, key):
    """``(get, in)`` of ``key``; None when the fast header declines (UnusualCard), the error's
    type when astropy raises."""
    try:
        return header.get(key, ABSENT), key in header
    except UnusualCard:
        return None
    except Exception as err:  # astropy: an unparsable card
        return type(err)


def assert_answers_as_astropy(fast, astro, keys) -> int:
    """Every key the fast header answers, it answers as astropy; how many it answered."""
    answered = 0
    for key in keys:
        mine = answers(fast, key)
        if mine is None:
            continue
        theirs = answers(astro, key)
        assert isinstance(theirs, tuple), (key, mine, theirs)
        assert same(mine[0], theirs[0]) and mine[1] == theirs[1], (key, mine, theirs)
        answered += 1
    return answered


def card(key: str, field: str) -> str:
    return f"{key:<8}= {field}"[:80].ljust(80)


def write_fits(path, cards, *, shape=(3, 4), bitpix=8, cut: int | None = None):
    """A primary image: the structural cards, ``cards`` (80-column images), END, data."""
    images = [card("SIMPLE", f"{'T':>20}"), card("BITPIX", f"{bitpix:>20}"),
              card("NAXIS", f"{len(shape):>20}")]
    images += [card(f"NAXIS{j + 1}", f"{n:>20}") for j, n in enumerate(reversed(shape))]
    text = "".join(images + [c.ljust(80)[:80] for c in cards] + ["END".ljust(80)])
    head = text.encode("latin-1")
    head += b" " * (-len(head) % BLOCK)
    size = abs(bitpix) // 8 * int(np.prod(shape))
    data = bytes(range(256)) * (size // 256 + 1)
    raw = head + data[:size] + b"\0" * (-size % BLOCK)
    path.write_bytes(raw[:cut])
    return path


def astropy_header(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.getheader(path)


# --- one value field ---------------------------------------------------------------------------

def astropy_value(field: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fits.Card.fromstring(card("KEY", field)).value
        except Exception as err:
            return type(err)


FIELDS = ["5", "+5", "-0", "007", "1234567890123", "1.5", "-0.0", ".5", "5.", "1E5", "1.E-5",
          "1.5D3", "-2.5D-07", "+.5E+2", "1e5", "1.5d3", "1 .5", "- 5", "1_000", "inf", "nan",
          "0x10", "1.2.3", "T", "F", "t", "TRUE", "'DARK    '", "'  lead'", "''", "'it''s'",
          "'a: 1'", "'long&'", "'a/b' / c", "'abc'x", "'abc", "(1, 2)", "(1.5,-2)", "", "   ",
          "/ only a comment", "abc", "5 / c", "5/c", "T / c", "'x'/c", "1.0 2"]


@pytest.mark.parametrize("field", FIELDS)
def test_plain_value_is_astropys_or_none(field):
    mine = plain_value(card("KEY", field)[10:].encode("ascii"))
    if mine is not None:
        assert same(mine, astropy_value(field)), (field, mine)


def test_plain_values_parsed():
    assert [plain_value(f.encode()) for f in ("5", "1.5D3", "'DARK    '", "F", "-0.0")] == \
        [5, 1500.0, "DARK", False, -0.0]


_FORMATS = [repr, str, lambda x: f"{x:.6g}", lambda x: f"{x:.15E}", lambda x: f"{x:.3E}",
            lambda x: f"{x:.15E}".replace("E", "D"), lambda x: f"{x:>20.8f}",
            lambda x: f"{x:.0f}.", lambda x: f"{x:.3e}", lambda x: f"{x:+.17g}"]


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=64),
       st.sampled_from(range(len(_FORMATS))))
def test_formatted_floats_parse_as_astropy(value, fmt):
    field = _FORMATS[fmt](value)
    mine = plain_value(card("KEY", field)[10:].encode("ascii"))
    if mine is not None:
        assert same(mine, astropy_value(field)), (field, mine)
    elif fmt != 8 and "e" not in field and "inf" not in field and len(field) <= 70:
        pytest.fail(f"{field!r} not read")  # upper-case fixed format: always read


@settings(max_examples=100, deadline=None)
@given(st.integers(-10**18, 10**18), st.booleans())
def test_formatted_integers_parse_as_astropy(value, plus):
    field = f"{value:+d}" if plus else f"{value:>20d}"
    assert same(plain_value(card("KEY", field)[10:].encode()), astropy_value(field))


# --- whole headers -----------------------------------------------------------------------------

KEYS = ["EXPTIME", "TEMP", "ATTEMPT", "CALTYPE", "DOSE", "FRMEAN", "X-1", "A_B", "TIME"]


def random_card(rng) -> str:
    key = KEYS[rng.integers(len(KEYS))]
    field = FIELDS[rng.integers(len(FIELDS))]
    kind = rng.integers(12)
    if kind == 0:
        return f"HIERARCH {key} = {field}"
    if kind == 1:
        return f"HIERARCH {key}_LONGER_NAME = {field}"
    if kind == 2:
        return f"CONTINUE  '{field.strip(chr(39))}&'"
    if kind == 3:
        return f"COMMENT {field}"
    if kind == 4:
        return f"{key:<8}  {field}"  # no value indicator
    if kind == 5:
        return card(key, f"{field:>20}" + (" / a comment" if rng.integers(2) else ""))
    if kind == 6:
        value = rng.normal() * 10.0 ** rng.integers(-30, 30)
        return card(key, f"{value:>20.{rng.integers(1, 17)}E}")
    return card(key, field)


def test_random_headers_answer_as_astropy(tmp_path):
    """Seeded random headers of plain and unusual cards (HIERARCH, CONTINUE, commentary,
    repeated keys, unparsable values): every key the fast header answers, astropy answers the
    same; and it reads most of them."""
    rng = np.random.default_rng(15)
    read = answered = 0
    keys = KEYS + [k.lower() for k in KEYS] + ["HIERARCH EXPTIME", "TEMP.X", "COMMENT", "NAXIS1"]
    for n in range(400):
        cards = [random_card(rng) for _ in range(rng.integers(0, 12))]
        path = write_fits(tmp_path / f"h{n}.fits", cards)
        fast = read_primary(path)
        if fast is None:
            continue
        read += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_header(path)  # astropy reads it without an error (no truncation)
        answered += assert_answers_as_astropy(fast, astropy_header(path), keys)
    assert read > 300 and answered > 3000


def test_converter_style_header_read(tmp_path):
    """A header like the converter's: HIERARCH config cards, strings, ints, floats, logicals."""
    from utils.io.fitsio import card_image

    cards = [card_image(k, v, c) for k, v, c in [
        ("HIERARCH BIT_DEPTH", 16, "config"), ("HIERARCH SENSORMODEL", "SIM-CMOS-12", "config"),
        ("EXTEND", True, ""), ("BZERO", 32768, ""), ("BSCALE", 1, ""), ("CALTYPE", "DARK", "t"),
        ("TEMP", 30.145, "[degC]"), ("EXPTIME", 8.0, "[s]"), ("TIMESTMP", 1748796771.295, ""),
        ("ATTEMPT", "20Frames/T30/8s", ""), ("FRMEAN", 4789.1285400390625, ""),
        ("FRSTD", 1e-300, ""), ("DOSE", -0.0, ""), ("DATE-OBS", "2025-06-01T16:52:51", ""),
        ("PRODUCT", "FRAME", "")]]
    path = write_fits(tmp_path / "f.fits", cards, shape=(8, 16), bitpix=16)
    fast = read_primary(path)
    assert fast is not None and fast.data_offset == BLOCK
    astro = astropy_header(path)
    keys = list(astro.keys()) + list(INDEX_KEYS)
    assert assert_answers_as_astropy(fast, astro, keys) >= len(INDEX_KEYS)
    for key in INDEX_KEYS:  # the index's keys are all answered here
        assert answers(fast, key) is not None, key
    for key in ("BIT_DEPTH", "SENSORMODEL", "DATE-OBS"):  # HIERARCH, a ':' in the string
        with pytest.raises(UnusualCard):
            fast.get(key)


@pytest.mark.parametrize("cards, key", [
    (["HIERARCH EXPTIME = 3.0"], "EXPTIME"),                  # HIERARCH with a key asked for
    (["HIERARCH TIMESTAMP = 5"], "TIMESTAMP"),                # longer than 8: only HIERARCH
    ([card("ATTEMPT", "'a long one&'"), "CONTINUE  'more'"], "ATTEMPT"),
    ([card("TEMP", "20.0"), "CONTINUE  'x'"], "TEMP"),        # astropy joins it regardless
    ([card("TEMP", "20.0"), card("TEMP", "21.0")], "TEMP"),   # repeated
    ([card("TEMP", "(1, 2)")], "TEMP"),                       # complex
    ([card("ATTEMPT", "'it''s'")], "ATTEMPT"),                # a quote inside
    ([card("ATTEMPT", "'DP: 1'")], "ATTEMPT"),                # record-valued
    ([card("TEMP", "")], "TEMP"),                             # no value
    (["TEMP      20.0"], "TEMP"),                            # no value indicator
    ([card("TEMP", "2 0")], "TEMP"),                          # malformed
])
def test_unusual_key_raises_not_none(tmp_path, cards, key):
    fast = read_primary(write_fits(tmp_path / "f.fits", cards))
    assert fast is not None
    with pytest.raises(UnusualCard):
        fast.get(key)
    assert fast.get("NAXIS1") == 4 and fast.get("NOSUCH", 7) == 7


@pytest.mark.parametrize("cards", [
    [card("exptime", "5")],                 # lower-case keyword
    ["EXP TIME= 5"],                        # a space in the keyword
    ["EXPTIME=  5"],                        # '=' in the keyword field
    [card("TEMP", "'caf\xe9'")],            # not ASCII
    [card("TEMP", "'tab\there'")],          # not printable
    ["HIERARCH=5"],
    [card("GROUPS", "T")],
    [card("BZERO", "'x'")],
])
def test_unusual_header_read_by_astropy(tmp_path, cards):
    assert read_primary(write_fits(tmp_path / "f.fits", cards)) is None


def test_unusual_files_read_by_astropy(tmp_path):
    good = write_fits(tmp_path / "good.fits", [card("TEMP", "20.5")], shape=(100, 100),
                      bitpix=16)
    raw = good.read_bytes()
    assert read_primary(good).get("TEMP") == 20.5
    cases = {"header.fits": raw[:BLOCK + 100], "data.fits": raw[:-1], "empty.fits": b"",
             "END.fits": raw.replace(b"END" + b" " * 77, b"END  x".ljust(80), 1),
             "long.fits": None, "simple_f.fits": raw[:29] + b"F" + raw[30:]}
    assert raw[:30] == b"SIMPLE  = " + b"T".rjust(20)
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:  # a header of more than MAX_BLOCKS blocks
            write_fits(path, [card(f"K{i}", str(i)) for i in range(36 * MAX_BLOCKS)])
        else:
            path.write_bytes(content)
        assert read_primary(path) is None, name
    assert read_primary(tmp_path / "missing.fits") is None
    assert read_primary(tmp_path) is None
    (tmp_path / "g.fits.gz").write_bytes(raw)
    assert read_primary(tmp_path / "g.fits.gz") is None
    # the data unit padded to whole blocks is what astropy checks: one byte less warns
    with pytest.raises(Exception, match="truncated"):
        read_header(tmp_path / "data.fits")


def test_long_header_within_the_limit_read(tmp_path):
    cards = [card(f"K{i}", str(i)) for i in range(36 * 5)] + [card("TEMP", "-1.5D2")]
    path = write_fits(tmp_path / "f.fits", cards)
    fast = read_primary(path)
    assert fast is not None and fast.data_offset == 6 * BLOCK and fast.get("TEMP") == -150.0
    assert fast.get("K179") == 179
    assert assert_answers_as_astropy(fast, astropy_header(path), [f"K{i}" for i in range(200)])
