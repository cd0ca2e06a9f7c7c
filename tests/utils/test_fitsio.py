"""Product writing: an array handed to the writer is never changed, even for a moment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from utils.io.fitsio import write_product


def test_a_shared_array_written_by_threads_at_once_stays_intact(tmp_path):
    """One error map shared by several products written at the same time (index processing
    writes the masters of one bias-model step in parallel, all with the same ``SUBERR``):
    every file holds it exactly, and so does the array.  astropy byteswaps a writeable array
    in place while writing it; the writer must not let it."""
    rng = np.random.default_rng(2)
    shared = rng.normal(5.0, 1.0, (256, 256)).astype(np.float32)
    before = shared.copy()

    def write(k):
        data = np.full((256, 256), float(k), np.float32)
        return write_product(tmp_path / f"p{k}.fits", data, unit="adu", uncertainty=shared,
                             images={"SUBERR": (shared, "adu")})

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(write, range(48)))
    assert shared.flags.writeable and np.array_equal(shared, before)
    for path in paths:
        with fits.open(path) as hdul:
            assert np.array_equal(hdul["SUBERR"].data, before), path
            assert np.array_equal(hdul["UNCERT"].data, before), path


def _astropy_layout(path, k):
    with fits.open(path) as hdul:
        header = hdul[k].header
        return (hdul.fileinfo(k)["datLoc"], (header["NAXIS2"], header["NAXIS1"]),
                header["BITPIX"], float(header.get("BSCALE", 1.0)),
                float(header.get("BZERO", 0.0)))


def test_fast_layout_finds_every_image_hdu_where_astropy_does(tmp_path):
    """The card parser steps over HDUs of every kind (a long header, a table, a 3-D cube,
    scaled integers) to the same data offsets as astropy, and leaves what is not a 2-D
    image to it; a truncated extension is an error naming the file."""
    from utils.errors import UnreadableFrameError
    from utils.io import fitsio

    rng = np.random.default_rng(3)
    primary = fits.PrimaryHDU(rng.integers(0, 4000, (7, 5)).astype(np.uint16))
    for i in range(120):  # a header of several 2880-byte blocks
        primary.header[f"HIST{i:04d}"] = (i, "filler")
    table = fits.BinTableHDU.from_columns([fits.Column("PATH", "20A", array=["a", "bb"])],
                                          name="INPUTS")
    cube = fits.ImageHDU(np.zeros((2, 3, 4), np.float32), name="CUBE")
    scaled = fits.ImageHDU(rng.normal(size=(9, 11)).astype(np.float32), name="SCALED")
    scaled.scale("int16", bscale=0.01, bzero=3.0)
    image = fits.ImageHDU(rng.normal(size=(6, 13)).astype(np.float64), name="LAST")
    path = tmp_path / "many.fits"
    fits.HDUList([primary, table, cube, scaled, image]).writeto(path)
    for k in (0, 3, 4):
        assert fitsio._fast_layout(str(path), k) == _astropy_layout(path, k)
        layout = fitsio.fits_layout(path, k)
        with fits.open(path) as hdul:
            np.testing.assert_array_equal(fitsio.read_rows(layout, 0, layout.shape[0]),
                                          hdul[k].data.astype(np.float32))
    for k in (1, 2, 5):  # a table, a cube, no such HDU: astropy decides
        assert fitsio._fast_layout(str(path), k) is None
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[:-2880])
    with pytest.raises(UnreadableFrameError, match="truncated"):
        fitsio.fits_layout(cut, 4)


def test_truncated_header_reads_are_flagged_from_many_threads(tmp_path):
    """Indexing reads headers in a thread pool. ``warnings.catch_warnings`` swaps the
    process-wide filters, so one thread leaving its capture while another was inside it
    let astropy's 'may have been truncated' warning escape the other (as an exception under
    an 'error' filter, or printed and the file taken as good): an occasional test failure,
    and in a run a truncated frame not flagged.  Every read must give UnreadableFrameError,
    whatever the other threads do."""
    import threading
    import warnings

    from astropy.io import fits

    from utils.errors import UnreadableFrameError
    from utils.io.fitsio import read_header

    path = tmp_path / "cut.fits"
    fits.PrimaryHDU(np.zeros((48, 64), np.uint16)).writeto(path)
    path.write_bytes(path.read_bytes()[:2 * 2880])  # header and part of the data
    outcomes, lock = [], threading.Lock()

    def reader():
        for _ in range(150):
            try:
                read_header(path)
                result = "read"
            except UnreadableFrameError:
                result = "flagged"
            except Exception as err:  # noqa: BLE001 - what escaped is the finding
                result = type(err).__name__
            with lock:
                outcomes.append(result)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # like the test suite's configuration
        threads = [threading.Thread(target=reader) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(outcomes) == {"flagged"}, {o: outcomes.count(o) for o in set(outcomes)}


def test_primary_cards_give_what_astropy_reads_or_none(tmp_path):
    """The re-run's check of converted frames (CNVHASH, ADCBITS) reads the cards without
    astropy (utils.io.fastheader): every value it gives is astropy's ``Header.get`` (same
    value and type, None for a key absent); whatever it cannot tell (a quote inside a
    string, a long string, a repeated key, a file cut short, not FITS) is None, for
    astropy."""
    from utils.io.fitsio import primary_cards

    header = fits.Header()
    header["CNVHASH"] = ("0123456789abcdef", "hash")
    header["ADCBITS"] = (12, "bits")
    header["NEG"] = -7
    header["FLAG"] = True
    header["OFF"] = False
    header["EMPTY"] = ""
    header["SPACED"] = "  lead and trail  "
    header["REAL"] = 1.5
    header["TINY"] = -1.25e-07
    for i in range(60):  # the keys asked for on the header's second block
        header[f"PAD{i}"] = i
    header["LATE"] = "second block"
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((4, 5), np.int16), header).writeto(path)
    keys = ("CNVHASH", "ADCBITS", "NEG", "FLAG", "OFF", "EMPTY", "SPACED", "REAL", "TINY",
            "LATE", "NAXIS1", "BITPIX", "SIMPLE", "ABSENT")
    got = primary_cards(path, keys)
    read = fits.getheader(path)
    assert got is not None
    for key in keys:
        assert got[key] == read.get(key) and type(got[key]) is type(read.get(key)), key

    for key, value in (("QUOTE", "it's"), ("DUP", 2), ("LONG", "x" * 100)):
        odd = header.copy()
        odd[key] = value
        if key == "DUP":  # a repeated key: astropy gives the first
            odd.append((key, 3))
        odd_path = tmp_path / f"{key}.fits"
        fits.PrimaryHDU(np.zeros((4, 5), np.int16), odd).writeto(odd_path)
        assert primary_cards(odd_path, ("CNVHASH", key)) is None
        assert primary_cards(odd_path, ("CNVHASH",)) == {"CNVHASH": "0123456789abcdef"}
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[:2880])  # the header's END is in the second block
    assert primary_cards(cut, ("CNVHASH",)) is None
    text = tmp_path / "text.fits"
    text.write_bytes(b"not a FITS file " * 200)
    assert primary_cards(text, ("CNVHASH",)) is None
    assert primary_cards(tmp_path / "missing.fits", ("CNVHASH",)) is None


def test_find_masters_by_the_cards_is_find_masters_by_astropy(tmp_path, monkeypatch):
    """find_masters reads each product's INHASH from its cards: the same {INHASH: path} as
    astropy's headers give, including a product without INHASH, one whose INHASH astropy
    must read (a quote inside), a repeated hash (the first path) and an incomplete file."""
    import utils.stack.master as master

    def product(name, inhash=None):
        header = fits.Header()
        if inhash is not None:
            header["INHASH"] = inhash
        path = tmp_path / "masters" / name
        path.parent.mkdir(exist_ok=True)
        fits.HDUList([fits.PrimaryHDU(np.zeros((4, 5), np.float32), header),
                      fits.ImageHDU(np.ones((4, 5), np.float32), name="UNCERT")]).writeto(path)
        return path
    product("a.fits", "0123456789abcdef")
    product("b.fits", "fedcba9876543210")
    product("c.fits", "0123456789abcdef")    # the same inputs again: a.fits is kept
    product("d.fits")                        # no hash
    product("e.fits", "it's odd")            # astropy reads this one
    (tmp_path / "masters" / "f.fits").write_bytes(b"SIMPLE  = " + b" " * 100)  # incomplete
    got = master.find_masters(tmp_path / "masters")
    monkeypatch.setattr(master, "primary_cards", lambda path, keys: None)
    want = master.find_masters(tmp_path / "masters")
    assert got == want and set(got) == {"0123456789abcdef", "fedcba9876543210", "it's odd"}
    assert got["0123456789abcdef"].name == "a.fits"


def test_read_pixels_equals_the_rows_read(tmp_path):
    """darkeval: ``read_pixels`` (the image mapped, only the pixels asked for converted) gives
    what ``read_rows`` gives those pixels, bit for bit: uint16 (BZERO 32768), scaled int16,
    float32 with NaN, float64, an image past a large header (offset not page-aligned), no
    pixel, and a file shorter than its header says is an error naming it."""
    from utils.errors import UnreadableFrameError
    from utils.io import fitsio

    rng = np.random.default_rng(5)
    primary = fits.PrimaryHDU(rng.integers(0, 65535, (37, 41)).astype(np.uint16))
    for i in range(50):
        primary.header[f"HIST{i:04d}"] = (i, "filler")
    scaled = fits.ImageHDU(rng.normal(size=(29, 31)).astype(np.float32), name="SCALED")
    scaled.scale("int16", bscale=0.01, bzero=3.0)
    floats = rng.normal(size=(300, 257)).astype(np.float32)
    floats.flat[::11] = np.nan
    hdus = [primary, scaled, fits.ImageHDU(floats, name="F32"),
            fits.ImageHDU(rng.normal(size=(13, 17)), name="F64")]
    path = tmp_path / "pixels.fits"
    fits.HDUList(hdus).writeto(path)
    for k in range(4):
        layout = fitsio.fits_layout(path, k)
        whole = fitsio.read_rows(layout, 0, layout.shape[0]).reshape(-1)
        for pixels in (np.arange(0, whole.size, 7), np.array([0, whole.size - 1]),
                       np.arange(whole.size), np.array([], np.int64)):
            got = fitsio.read_pixels(layout, pixels)
            assert got.dtype == np.float32
            assert got.tobytes() == whole[pixels].tobytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[:fitsio.fits_layout(path, 2).offset + 1000])
    layout = fitsio.FitsLayout(str(cut), fitsio.fits_layout(path, 2).offset, (300, 257),
                               np.dtype(">f4"))
    with pytest.raises(UnreadableFrameError, match="cut.fits"):
        fitsio.read_pixels(layout, np.arange(5))
