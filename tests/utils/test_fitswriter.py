"""The direct FITS writer (utils.io.fitswriter) writes what astropy's HDUList.writeto writes.

Every file is compared byte for byte with astropy's own output for the same HDUs; headers
carry identical DATE cards because both files are built from the same header objects.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.nddata import CCDData
from astropy.table import Table

from utils import headers as kw
from utils.io import fitsio, fitswriter
from utils.io.fitsio import provenance_cards, set_card, write_hdul, write_product

RNG_SEED = 20261202


def _reference(hdus, path):
    """astropy's bytes for ``hdus`` (the writer write_hdul used before)."""
    fits.HDUList(hdus).writeto(path, output_verify="exception")
    return path.read_bytes()


def _rich_header() -> fits.Header:
    """Many cards: provenance (DATE), numbers, NaN as text, a CONTINUE long string, HIERARCH,
    COMMENT and HISTORY (at the end, so where a new card goes matters)."""
    header = fits.Header()
    for key, value, comment in provenance_cards("TEST"):
        set_card(header, key, value, comment)
    set_card(header, "NCOMBINE", np.int64(17), "frames combined")
    set_card(header, "MEAN", np.float64(0.1) + 0.2, "a float that needs 17 digits")
    set_card(header, "BAD", float("nan"), "not a number")
    set_card(header, "FLAG", np.bool_(True), "a logical")
    set_card(header, "INPUTS", "/data/campaign/" + "very/long/path/" * 12 + "f.fits",
             "a string too long for one card")
    set_card(header, "HIERARCH ESO DET CHIP TEMP", -40.5, "hierarch card")
    header["COMMENT"] = "a comment card"
    header["HISTORY"] = "step one"
    header["HISTORY"] = "step two " + "x" * 90
    return header


def _images(rng):
    """{name: array} of every dtype and dimensionality the writer handles."""
    return {
        "F32": rng.normal(size=(37, 53)).astype(np.float32),
        "F64": rng.normal(size=(5, 7, 11)),
        "I16": rng.integers(-2000, 2000, size=(64, 40), dtype=np.int16),
        "U8": rng.integers(0, 256, size=(1001,), dtype=np.uint8),
        "U16": rng.integers(0, 65536, size=(31, 33), dtype=np.uint16),
        "I8": rng.integers(-128, 128, size=(9, 9), dtype=np.int8),
        "U32": rng.integers(0, 2**32, size=(3, 4, 5), dtype=np.uint32),
        "I32": rng.integers(-2**31, 2**31, size=(17,), dtype=np.int32),
        "I64": rng.integers(-2**62, 2**62, size=(6, 6), dtype=np.int64),
        "BIGEND": rng.normal(size=(20, 30)).astype(">f4"),
        "STRIDED": rng.normal(size=(60, 80)).astype(np.float32)[::3, 1::2],
        "TRANSPOSED": rng.integers(0, 65536, size=(40, 30), dtype=np.uint16).T,
    }


@pytest.mark.parametrize("primary_data", ["float32", "uint16", "empty"])
def test_write_hdul_is_byte_identical_to_astropy(tmp_path, primary_data):
    rng = np.random.default_rng(RNG_SEED)
    images = _images(rng)
    header = _rich_header()
    table = Table({"PATH": ["a.fits", "bb.fits"], "TEMP": [20.5, 21.0], "N": [1, 2]})
    images["MEMMAP"] = np.memmap(tmp_path / "image.raw", dtype=np.float64, mode="w+",
                                 shape=(21, 13))
    images["MEMMAP"][:] = rng.normal(size=(21, 13))

    def hdus():
        data = {"float32": images["F32"], "uint16": images["U16"], "empty": None}[primary_data]
        out = [fits.PrimaryHDU(data, header.copy())]
        out += [fits.ImageHDU(array, name=name) for name, array in images.items()]
        out.append(fits.BinTableHDU(table, name="TABLE"))
        return out

    expected = _reference(hdus(), tmp_path / "astropy.fits")
    assert write_hdul(fits.HDUList(hdus()), tmp_path / "direct.fits").read_bytes() == expected
    # every image written by the direct writer, the table by astropy
    parts = fitswriter.hdul_parts(fits.HDUList(hdus()))
    assert [part.data is not None for part in parts] == \
        [primary_data != "empty"] + [True] * len(images) + [False]
    with fits.open(tmp_path / "direct.fits") as hdul:
        for name, array in images.items():
            np.testing.assert_array_equal(hdul[name].data, array)
            assert hdul[name].data.dtype.newbyteorder("=") == array.dtype.newbyteorder("=")


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "uint8", "uint16"])
@pytest.mark.parametrize("shape", [(1000,), (33, 47), (3, 21, 17)])
def test_single_image_files_are_byte_identical(tmp_path, dtype, shape):
    rng = np.random.default_rng(RNG_SEED)
    data = (rng.normal(size=shape) * 1000).astype(dtype)
    expected = _reference([fits.PrimaryHDU(data)], tmp_path / "astropy.fits")
    assert write_hdul(fits.HDUList([fits.PrimaryHDU(data)]),
                      tmp_path / "direct.fits").read_bytes() == expected


def _old_write_product(path, data, header, *, unit, uncertainty=None, mask=None, images=None,
                       tables=None):
    """write_product as it was before the direct writer: every HDU built by astropy."""
    header = fits.Header() if header is None else header.copy()
    data = np.asarray(data)
    if data.dtype.kind == "f":
        data = data.astype(np.float32)
    primary = fits.PrimaryHDU(data=data, header=header)
    primary.header[kw.BUNIT] = (unit, "physical unit of the data")
    hdus = [primary]
    if uncertainty is not None:
        hdu = fits.ImageHDU(np.asarray(uncertainty, dtype=np.float32), name="UNCERT")
        hdu.header["UTYPE"] = ("StdDevUncertainty", "astropy.nddata uncertainty class")
        hdu.header[kw.BUNIT] = (unit, "one-sigma uncertainty of the primary data")
        hdus.append(hdu)
    if mask is not None:
        hdu = fits.ImageHDU(np.asarray(mask).astype(np.uint8), name="MASK")
        hdu.header["COMMENT"] = "non-zero = pixel not valid in the primary data"
        hdus.append(hdu)
    for name, (array, bunit) in (images or {}).items():
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind == "b":
            array = array.astype(np.uint8)
        hdu = fits.ImageHDU(array, name=name)
        if bunit:
            hdu.header[kw.BUNIT] = bunit
        hdus.append(hdu)
    for name, table in (tables or {}).items():
        hdus.append(fits.BinTableHDU(table, name=name))
    return _reference(hdus, path)


def _product(rng, header):
    shape = (48, 64)
    return dict(
        data=rng.normal(100, 5, size=shape),  # float64: written as float32
        header=header, unit="adu",
        uncertainty=rng.uniform(1, 2, size=shape),
        mask=rng.uniform(size=shape) < 0.1,
        images={"NOISE": (rng.uniform(size=shape).astype(np.float32), "adu"),
                "NCOMB": (rng.integers(0, 50, size=shape, dtype=np.int16), ""),
                "FLAGS": (rng.uniform(size=shape) < 0.05, ""),
                "COUNTS": (rng.integers(0, 65536, size=shape, dtype=np.uint16), "count")},
        tables={"INPUTS": Table({"PATH": ["/data/f0.fits", "/data/f1.fits"],
                                 "TEMP": [20.1, 20.2], "NSAT": [0, 3]})})


def _edge_header(kind):
    header = _rich_header()
    if kind == "bunit":  # BUNIT already there: astropy updates it in place
        header[kw.BUNIT] = ("electron", "old unit")
    elif kind == "structural":  # keywords astropy strips or moves (written through astropy)
        header["NAXIS"] = 3
        header["EXTEND"] = False
        header["BZERO"] = 5
    elif kind == "blank":
        header.append(fits.Card())
    return header


@pytest.mark.parametrize("kind", ["rich", "none", "bunit", "structural", "blank"])
def test_write_product_is_byte_identical_to_astropy(tmp_path, kind, fitsverify, monkeypatch):
    header = None if kind == "none" else _edge_header(kind)
    if kind in ("rich", "none"):  # plain headers: no astropy HDU is built
        monkeypatch.setattr(fitsio, "_product_hdul", None)
    args = _product(np.random.default_rng(RNG_SEED), header)
    expected = _old_write_product(tmp_path / "astropy.fits", **args)
    path = write_product(tmp_path / "direct.fits", **args)
    assert path.read_bytes() == expected
    errors, output = fitsverify(path)
    assert errors == 0, output
    ccd = CCDData.read(path)
    np.testing.assert_array_equal(ccd.data, args["data"].astype(np.float32))
    np.testing.assert_array_equal(ccd.uncertainty.array, args["uncertainty"].astype(np.float32))
    np.testing.assert_array_equal(ccd.mask, args["mask"])


def test_write_product_of_an_integer_primary_without_extensions(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    for n, data in enumerate((rng.integers(0, 4000, size=(20, 30), dtype=np.int16),
                              rng.integers(0, 65536, size=(20, 30), dtype=np.uint16))):
        header = _rich_header()
        expected = _old_write_product(tmp_path / f"astropy{n}.fits", data, header, unit="adu")
        assert write_product(tmp_path / f"direct{n}.fits", data, header,
                             unit="adu").read_bytes() == expected


def test_inputs_are_left_untouched(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    args = _product(rng, _rich_header())
    before = {key: np.copy(args[key]) for key in ("data", "uncertainty", "mask")}
    cards = len(args["header"])
    write_product(tmp_path / "p.fits", **args)
    for key, value in before.items():
        np.testing.assert_array_equal(args[key], value)
    assert len(args["header"]) == cards and kw.BUNIT not in args["header"]


def test_a_card_astropy_refuses_is_refused_and_nothing_is_written(tmp_path):
    header = _rich_header()
    header.append(fits.Card.fromstring("badkey  = 'lower-case keyword from a file'"))
    with pytest.raises(VerifyError):
        fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)), header.copy())]).writeto(
            tmp_path / "astropy.fits", output_verify="exception")
    with pytest.raises(VerifyError):
        write_hdul(fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)), header.copy())]),
                   tmp_path / "hdul.fits")
    with pytest.raises(VerifyError):
        write_product(tmp_path / "product.fits", np.zeros((4, 4)), header, unit="adu")
    assert not list(tmp_path.glob("*hdul*")) and not list(tmp_path.glob("*product*"))


def _allocated(write) -> int:
    """Peak bytes allocated while ``write()`` runs (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        write()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_writing_a_large_image_allocates_a_bounded_chunk_not_a_copy(tmp_path):
    image = np.random.default_rng(RNG_SEED).normal(size=(2048, 2048)).astype(np.float32)
    image.flags.writeable = False  # shared arrays: astropy cannot byteswap them in place
    direct = _allocated(lambda: write_product(tmp_path / "direct.fits", image, unit="adu"))
    astropy = _allocated(lambda: fits.PrimaryHDU(image).writeto(tmp_path / "astropy.fits"))
    assert direct < image.nbytes / 4, (direct, image.nbytes)
    assert astropy >= image.nbytes, (astropy, image.nbytes)  # the check can see a copy
    assert (tmp_path / "direct.fits").read_bytes()[2880:] == \
        (tmp_path / "astropy.fits").read_bytes()[2880:]


def _tables(rng):
    """Tables written directly (plain columns) and through astropy (units, masks, meta...)."""
    n = 7
    plain = Table({"PATH": [f"/data/frame_{i:03d}.fits" for i in range(n)],
                   "TEMP": rng.normal(20, 1, n), "GAIN": rng.normal(1, 0.1, n).astype(np.float32),
                   "NSAT": rng.integers(0, 9, n), "J": rng.integers(-9, 9, n).astype(np.int32),
                   "I": rng.integers(-9, 9, n).astype(np.int16),
                   "B": rng.integers(0, 255, n).astype(np.uint8),
                   "OK": rng.uniform(size=n) < 0.5, "RAW": np.array([b"ab", b"c"] * 3 + [b""])})
    with_unit = plain.copy()
    with_unit["TEMP"].unit = "deg_C"
    masked = Table(plain, masked=True)
    masked["NSAT"].mask[2] = True
    with_meta = plain.copy()
    with_meta.meta["ORIGIN"] = "test"
    unsigned = Table({"U16": rng.integers(0, 60000, n).astype(np.uint16)})
    return {"PLAIN": plain, "EMPTY": plain[:0], "UNIT": with_unit, "MASKED": masked,
            "META": with_meta, "UNSIGNED": unsigned, "PANDAS": plain.to_pandas()}


@pytest.mark.parametrize("which", ["PLAIN", "EMPTY", "UNIT", "MASKED", "META", "UNSIGNED",
                                   "PANDAS"])
def test_tables_are_byte_identical_to_astropy(tmp_path, which, fitsverify):
    rng = np.random.default_rng(RNG_SEED)
    table = _tables(rng)[which]
    data = rng.normal(size=(8, 8))
    reference = table if isinstance(table, Table) else Table.from_pandas(table)
    direct = which in ("PLAIN", "EMPTY", "PANDAS")
    assert (fitswriter.table_part(reference, which) is not None) == direct
    header = _rich_header()
    expected = _old_write_product(tmp_path / "astropy.fits", data, header, unit="adu",
                                  tables={which: reference})
    path = write_product(tmp_path / "direct.fits", data, header, unit="adu",
                         tables={which: table})
    assert path.read_bytes() == expected
    errors, output = fitsverify(path)
    assert errors == 0, output
    back = Table.read(path, hdu=which)
    assert back.colnames == reference.colnames and len(back) == len(reference)
