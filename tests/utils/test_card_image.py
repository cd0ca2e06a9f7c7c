"""card_image (a Card's image, no Header) gives the images a Header built by set_card writes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits

from utils.io.fitsio import _card_image, card_image, set_card


def header_image(key, value, comment):
    """The reference: a whole Header, set_card, and its text (what card_image was)."""
    header = fits.Header()
    set_card(header, key, value, comment)
    return header.tostring(endcard=False, padding=False)


def _values():
    rng = np.random.default_rng(35)
    yield from (4789.1285400390625, 1e-05, 65520.0, -65520.0, 0.0, -0.0, 1.0, 0.1, 1 / 3,
                1.2345678901234567e-05, 1e300, -1e-300, 5e-324, 1.7976931348623157e308,
                123456789012345.6, 2.0 ** 60, float("nan"), float("inf"), -float("inf"),
                np.float32(0.1), np.float64(2.5), np.int16(-7), np.uint64(2 ** 63), np.bool_(True))
    yield from (0, 1, -1, 65535, 2 ** 31, -2 ** 63, 2 ** 64 + 3, 10 ** 25, True, False, None)
    for _ in range(300):
        yield float(rng.choice([-1, 1]) * 10.0 ** rng.uniform(-40, 40))
        yield float(np.round(rng.uniform(-1e5, 1e5), rng.integers(0, 12)))
        yield int(rng.integers(-2 ** 62, 2 ** 62))
    for n in (0, 1, 7, 8, 9, 18, 19, 20, 46, 47, 48, 66, 67, 68, 69, 70, 71, 100, 200):
        yield "x" * n
        yield ("it's " * 30)[:n]
    yield from ("krad", "  lead", "trail  ", "Ümlaut µs", "tab\there", "a&b", "'''")


KEYS = ("EXPTIME", "T", "FRMEAN", "TEMP_0", "DATE-OBS", "exptime", "A-B_9", "DP1.AXIS",
        "HIERARCH CONFIG BZERO", "HIERARCH CONFIG A.VERY.LONG.KEYWORD.NAME", "COMMENT", "HISTORY")
COMMENTS = ("", "[adu] mean of the pixels", "c" * 47, "c" * 48, "d" * 90, "é µ")


@pytest.mark.parametrize("key", KEYS)
def test_card_image_equals_the_header_path(key):
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # HIERARCH / long-value notices alike on both paths
        for i, value in enumerate(_values()):
            comment = COMMENTS[i % len(COMMENTS)]
            if key in ("COMMENT", "HISTORY") and not isinstance(value, str):
                continue
            assert _card_image(key, value, comment) == \
                header_image(key, value, comment), (key, value, comment)
            seen += 1
    assert seen > 20


def test_float_read_back_check_equals_astropys_reading():
    from utils.stack.stats import _reads_back

    checked = 0
    for value in _values():
        if not isinstance(value, float):
            continue
        for key in ("FRMEAN", "HIERARCH CONFIG A.VERY.LONG.KEYWORD.NAME"):
            image = card_image(key, value, "[adu] mean of the pixels")
            astropy_reads = fits.Card.fromstring(image[:80]).value
            assert _reads_back(key, value, "[adu] mean of the pixels") == \
                (astropy_reads == value), (key, value)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("level", [65520.0, 65519.5, 0.0, -3.0, 0.25, 65535.0, 65535.5, 1e9,
                                   float("inf"), -float("inf"), float("nan"), 4095.0])
def test_saturated_count_equals_the_mask_count(level):
    from utils.stack.stats import histogram_statistics

    hist = np.random.default_rng(1).integers(0, 3, 65536).astype(np.int64)
    stats = histogram_statistics(hist, saturation=level)
    mask = int(hist[np.arange(65536, dtype=np.float64) >= level].sum())
    assert stats.saturated_fraction == mask / hist.sum()


@pytest.mark.parametrize("first,second", [(1.0, 1), (1, 1.0), (True, 1), (1, True),
                                          (0.0, -0.0), (-0.0, 0.0), (False, 0), (2.0, np.int64(2))])
def test_equal_values_of_other_types_keep_their_own_image(first, second):
    """The cache does not hand one value the image of an equal one written otherwise."""
    key = f"EQ{abs(hash((repr(first), repr(second)))) % 10 ** 6}"   # a key not cached yet
    card_image(key, first, "c")
    assert card_image(key, second, "c") == header_image(key, second, "c")
