"""The masters stage reads and prepares each frame's blocks once for a set's master and its
attempts' masters (utils.stack.subsets): the same products and records as one combine per
master, and a frame unreadable while stacked refuses exactly the masters holding it."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from astropy.io import fits

from analysis import masters
from analysis.masters import MasterSettings
from utils import sim
from utils.errors import UnreadableFrameError
from utils.io.conversion import ConversionSettings, convert_sections
from utils.io.index import DatasetIndex, build_index, write_index
from utils.stack import combine as stacking


def _index(tmp_path, seed):
    """A small campaign of 2 attempts x 3 frames per set, converted and indexed."""
    ds = sim.simulate_standard(tmp_path / "ds", seed=seed, frames=3, attempts=2, defects=False,
                               bias_temperatures=(0.0, 25.0), dark_temperatures=(25.0,),
                               dark_exposures=(0.5, 2.0), flat_temperatures=(25.0,),
                               flat_exposures=(0.1,)).root
    convert_sections({"BIAS": ds / "TestSection1", "DARK": ds / "TestSection2",
                      "FLAT": ds / "TestSection3"}, ConversionSettings())
    write_index(build_index(discover=[ds]), ds / "index.csv")
    index = DatasetIndex.from_csv(ds / "index.csv").table
    index["BADFITS"] = False
    return index


def _same_records(a_list, b_list):
    for a, b in zip(a_list, b_list, strict=True):
        def fields(r):
            return (r.key.caltype, r.key.tag, r.status, r.reason, r.path is None,
                    r.worst_frame, r.ncombine)
        assert fields(a) == fields(b)
        np.testing.assert_array_equal([a.mean, a.median, a.std, a.noise, a.level, a.tavg],
                                      [b.mean, b.median, b.std, b.noise, b.level, b.tavg])
        if a.path is None:
            continue
        assert a.path.name == b.path.name
        with fits.open(a.path) as ha, fits.open(b.path) as hb:
            assert len(ha) == len(hb)
            for x, y in zip(ha, hb):
                assert [c.image for c in x.header.cards if c.keyword != "DATE"] == \
                    [c.image for c in y.header.cards if c.keyword != "DATE"]
                if isinstance(x, fits.BinTableHDU):
                    assert x.data.tolist() == y.data.tolist()
                else:
                    assert x.data.tobytes() == y.data.tobytes()


def _counting(monkeypatch):
    reads = Counter()
    read_bytes = stacking._FileSource.read_bytes

    def counted(self, i, start, stop, buf):
        reads[(Path(self.paths[i]).name, start)] += 1
        return read_bytes(self, i, start, stop, buf)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", counted)
    return reads


def test_each_bias_and_dark_block_read_once_same_products(tmp_path, monkeypatch):
    index = _index(tmp_path, 21)
    settings = MasterSettings(workers=2, memory_limit=1e6)
    reads = _counting(monkeypatch)
    one = masters.build_masters(index.copy(), tmp_path / "one", settings)
    kinds = dict(zip(index.PATH.map(lambda p: Path(p).name), index.CALTYPE))
    assert {r.status for r in one} == {"written"}
    assert sum(bool(r.key.attempt) for r in one) == 2 * sum(not r.key.attempt for r in one)
    once = {k: v for k, v in reads.items() if kinds[k[0]] in ("BIAS", "DARK")}
    assert once and set(once.values()) == {1}  # every block of every bias and dark frame
    assert len({k[1] for k in once}) > 1  # (several blocks)
    # each master stacked alone reads each frame twice (its set's and its attempt's)
    reads.clear()
    monkeypatch.setattr(masters, "SHARE_READS", False)
    apart = masters.build_masters(index.copy(), tmp_path / "apart", settings)
    assert {v for k, v in reads.items() if kinds[k[0]] in ("BIAS", "DARK")} == {2}
    _same_records(one, apart)
    # frames too large for the images of three masters at once: stacked in turn
    reads.clear()
    monkeypatch.setattr(masters, "SHARE_READS", True)
    monkeypatch.setattr(masters, "SHARE_IMAGE_BYTES", 2 * 15 * 40 * 24)
    big = masters.build_masters(index.copy(), tmp_path / "big", settings)
    assert {v for k, v in reads.items() if kinds[k[0]] in ("BIAS", "DARK")} == {2}
    _same_records(one, big)


def test_frame_unreadable_while_stacked_refuses_the_masters_holding_it(tmp_path, monkeypatch):
    # a dark frame of the second attempt unreadable in its last block: the set's master and
    # that attempt's are refused with its reason, the first attempt's master is written; the
    # records and files of one combine per master (shared pool, and not)
    index = _index(tmp_path, 22)
    settings = MasterSettings(workers=2, memory_limit=1e6)
    darks = index[(index.CALTYPE == "DARK") & (index.EXPTIME == 2.0)]
    second = sorted(set(darks.ATTEMPT))[1]
    bad = Path(darks[darks.ATTEMPT == second].PATH.iloc[1]).name
    read_bytes = stacking._FileSource.read_bytes

    def failing(self, i, start, stop, buf):
        if Path(self.paths[i]).name == bad and stop == self.shape[0]:
            raise UnreadableFrameError(self.paths[i], f"short read of rows {start}:{stop}")
        return read_bytes(self, i, start, stop, buf)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", failing)
    shared = masters.build_masters(index.copy(), tmp_path / "shared", settings)
    refused = [r for r in shared if r.status == "refused"]
    assert [(r.key.exptime, r.key.attempt) for r in refused] == [(2.0, ""), (2.0, second)]
    assert all(bad in r.reason and "short read of rows" in r.reason for r in refused)
    assert sum(r.status == "written" for r in shared) == len(shared) - 2
    monkeypatch.setattr(masters, "SHARE_READS", False)
    _same_records(shared, masters.build_masters(index.copy(), tmp_path / "apart", settings))
    stack_rows = masters.stack_rows
    monkeypatch.setattr(masters, "stack_rows",
                        lambda *a, **k: stack_rows(*a, **{**k, "executor": None}))
    _same_records(shared, masters.build_masters(index.copy(), tmp_path / "alone", settings))


def test_record_of_a_written_master_is_the_one_astropy_reads(tmp_path):
    """A master's record is filled from its file's cards read without astropy: the same
    values and types as from astropy's header, and astropy's when a card is unusual (a
    long BIASFILE in CONTINUE cards, a HIERARCH card)."""
    from utils.io.fitsio import read_header
    from utils.stack.grouping import GroupKey

    def record_fields(record):
        return [(type(v), v) for v in (record.ncombine, record.mean, record.median, record.std,
                                       record.tavg, record.noise, record.bias_file,
                                       record.dark_file)] + [math.isnan(record.level)]

    key = GroupKey("", math.nan, "DARK", 20.0, 1.0)
    for i, biasfile in enumerate(("bias_model.fits", "b" * 90 + ".fits")):
        header = fits.Header()
        for name, value in (("NCOMBINE", 10), ("MEAN", 1.7121811479019915),
                            ("MEDIAN", 1.3624999523162842), ("STD", 13.920401183415283),
                            ("TAVG", -10.081999999999999), ("NOISEMED", 32.60305550888789),
                            ("BIASFILE", biasfile), ("HIERARCH LONG KEYWORD", 1)):
            header[name] = value
        path = tmp_path / f"m{i}.fits"
        fits.PrimaryHDU(np.zeros((4, 5), np.float32), header).writeto(path)
        fast = masters.MasterRecord(key, path, "written")
        masters._fill_from_file(fast, path)
        want = masters.MasterRecord(key, path, "written")
        masters._fill_from_header(want, read_header(path))
        assert record_fields(fast) == record_fields(want)
        assert fast.bias_file == biasfile and fast.ncombine == 10
