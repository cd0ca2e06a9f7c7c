"""A campaign run on a 2-worker Dask cluster writes the same products as the local run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from utils import scheduler
from utils.errors import ConfigError

distributed = pytest.importorskip("distributed")

#: Header keywords that record when, not what (the write time), INHASH, the hash of the
#: input paths (the local run, shared with other tests, lives under another temporary root),
#: and CNVHASH, which holds the raw files' modification times (another simulated campaign).
TIME_KEYS = {"DATE", "CHECKSUM", "DATASUM", "INHASH", "CNVHASH"}


def _text(value, roots):
    text = value.decode() if isinstance(value, bytes) else str(value)
    for old, new in roots:
        text = text.replace(old, new)
    return text


def _compare_fits(a: Path, b: Path, roots) -> None:
    with fits.open(a) as ha, fits.open(b) as hb:
        assert [h.name for h in ha] == [h.name for h in hb], a
        for x, y in zip(ha, hb):
            skip = set(TIME_KEYS)
            if isinstance(x, fits.BinTableHDU):  # string widths follow the paths' lengths
                skip |= {"NAXIS1"} | {k for k in x.header if k.startswith("TFORM")}
            keys = [k for k in x.header if k not in skip]
            assert keys == [k for k in y.header if k not in skip], (a, x.name)
            for key in keys:
                u, v = _text(x.header[key], roots), str(y.header[key])
                if isinstance(y.header[key], str) and max(len(u), len(v)) >= 68 and u != v:
                    # a path cut to the card's 68 characters inside the temporary root: compare
                    # up to where the two runs' roots part
                    common = os.path.commonprefix([roots[0][0], roots[0][1]])
                    cut = u.find(common)
                    if cut >= 0 and v.find(common) == cut:
                        u, v = u[:cut + len(common)], v[:cut + len(common)]
                assert u == v, (a, x.name, key)
            if isinstance(x, fits.BinTableHDU):
                for col in x.columns.names:
                    u, v = x.data[col], y.data[col]
                    if u.dtype.kind in "SUO":
                        assert [_text(s, roots) for s in u] == [_text(s, []) for s in v], \
                            (a, col)
                    else:
                        np.testing.assert_array_equal(u, v, err_msg=f"{a} {col}")
            elif x.data is not None:
                np.testing.assert_array_equal(x.data, y.data, err_msg=f"{a} {x.name}")


@pytest.mark.slow
def test_campaign_on_a_dask_cluster_equals_the_local_run(demo_output, tmp_path):
    import run_calibration

    local, _ = demo_output
    # the same folder names as the local run: only the temporary root differs
    remote = tmp_path / local.parent.name / local.name
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        status = run_calibration.main(["demo", str(remote), "--no-progress", "--scheduler",
                                       "dask", "--dask-address", cluster.scheduler_address])
        assert status == 0
        # the tasks did run on the cluster: conversion per attempt, index statistics per
        # frame, masters per set, the 2-D dark fit per tile
        assert {"convert_attempt", "one", "set_task", "first_pass_tile"} <= set(
            cluster.scheduler.task_prefixes)
        assert all(w.state.executed_count > 0 for w in cluster.workers.values())
    # paths appear as they are and, in FITS tables, percent-escaped (non-ASCII folder names)
    roots = [(str(local), str(remote)),
             (quote(str(local), safe="/ "), quote(str(remote), safe="/ "))]
    files = sorted(p.relative_to(local) for p in local.rglob("*")
                   if p.suffix in (".fits", ".csv") and p.is_file())
    assert len(files) > 50
    assert files == sorted(p.relative_to(remote) for p in remote.rglob("*")
                           if p.suffix in (".fits", ".csv") and p.is_file())
    for rel in files:
        if rel.suffix == ".fits":
            _compare_fits(local / rel, remote / rel, roots)
        else:
            a = pd.read_csv(local / rel, dtype=str, keep_default_na=False)
            b = pd.read_csv(remote / rel, dtype=str, keep_default_na=False)
            assert list(a.columns) == list(b.columns), rel
            if rel.name in ("fits_index.csv", "masters_summary.csv"):
                # STATUS says what that run did (converted or written, or existing on a
                # re-run of the shared local run), not what the product is
                a, b = a.drop(columns="STATUS"), b.drop(columns="STATUS")
            assert a.map(lambda v: _text(v, roots)).equals(b), rel
    summary = json.loads((remote / "products" / "dark" / "summary.json").read_text())
    expected = json.loads(_text((local / "products" / "dark" / "summary.json").read_text(),
                                [(json.dumps(str(local))[1:-1], json.dumps(str(remote))[1:-1])]))
    # the run's hash of its input paths, as INHASH: the roots differ
    assert summary.pop("inputs_hash") and expected.pop("inputs_hash")
    assert summary == expected


def test_scheduler_options_are_checked():
    assert scheduler.from_options("local").map(abs, [-2, 3], workers=2) == [2, 3]
    with pytest.raises(ConfigError, match="needs --scheduler dask"):
        scheduler.from_options("local", "tcp://nowhere:8786")
    with pytest.raises(ConfigError, match="scheduler"):
        scheduler.from_options("spark")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        with scheduler.using(scheduler.from_options("dask", cluster.scheduler_address)) as s:
            assert scheduler.current() is s and s.remote
            assert scheduler.map_tasks(np.square, [1, 2, 3]) == [1, 4, 9]
    assert not scheduler.current().remote


def test_per_pixel_fit_on_a_dask_cluster_equals_the_local_fit():
    from utils.models.nonlinear import fit_power_exponential_per_pixel

    rng = np.random.default_rng(3)
    temps = np.repeat([10.0, 20.0, 30.0], 2)
    exps = np.tile([1.0, 4.0], 3)
    amp = rng.lognormal(1.0, 0.5, (12, 9))
    y = amp * exps[:, None, None] * np.exp(0.1 * (temps - 20.0))[:, None, None]
    sigma = np.sqrt(1.0 + y)
    y = y + rng.normal(0, 1, y.shape) * sigma
    y[:2, ::3] = np.nan  # pixels with q + 2 = 4 points: just enough for the population fit
    local = fit_power_exponential_per_pixel(temps, exps, y, sigma, t_ref=20.0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        with scheduler.using(scheduler.from_options("dask", cluster.scheduler_address)):
            remote = fit_power_exponential_per_pixel(temps, exps, y, sigma, t_ref=20.0)
    for name in ("amplitude", "gamma", "rate", "covariance", "chi2", "npoints", "fallback"):
        np.testing.assert_array_equal(getattr(local, name), getattr(remote, name), err_msg=name)
    for name in ("population_gamma", "population_rate", "population_gamma_err",
                 "population_rate_err"):  # the same pixel sample on the cluster
        assert getattr(local, name) == getattr(remote, name), name


def test_bias_error_of_a_set_does_not_depend_on_the_sets_before_it():
    """A Dask task starts from a copy of the bias reference: the error it subtracts for a set
    must be the one a local run (which saw other sets first) subtracts."""
    from utils.models.bias_model import BiasModel
    from utils.stack.references import BiasReference

    shape = (4, 5)
    zeros = np.zeros(shape, np.float32)
    model = BiasModel(a=zeros + 100, b=zeros + 2, sigma_a=zeros + 0.5, sigma_b=zeros + 0.2,
                      cov_ab=zeros, chi2dof=zeros + 1, npts=np.full(shape, 6, np.int16),
                      mask=np.zeros(shape, np.uint8), t_ref=0.0, t_min=-10.0, t_max=40.0)
    first = pd.DataFrame({"TEMP": [20.02, 20.04]})   # both within one 0.25 degC step
    second = pd.DataFrame({"TEMP": [20.10, 20.12]})
    seen = BiasReference(model, [], 2.0, "bias_model.fits")
    seen.model_terms(first)
    after = seen.model_terms(second)[1]
    alone = BiasReference(model, [], 2.0, "bias_model.fits").model_terms(second)[1]
    np.testing.assert_array_equal(after, alone)


def test_index_rewritten_from_a_previous_index_is_the_same_file(tmp_path):
    """A re-run reuses the rows of the previous index: its CSV must come out byte for byte as
    the first run's (the shared local run of the Dask comparison is re-run by other tests)."""
    from utils.io.fitsio import write_hdul
    from utils.io.index import build_index, write_index

    frames = tmp_path / "Bias"
    rng = np.random.default_rng(5)
    for k in range(3):
        header = fits.Header()
        for key, value in (("IMAGETYP", "BIAS"), ("TEMP", 20.0 + 0.1 * k), ("EXPTIME", 1e-5),
                           ("FRAMENUM", k), ("ADCBITS", 12), ("ADUSCALE", 16)):
            header[key] = value
        data = (rng.integers(90, 110, (6, 8)) * 16).astype(np.uint16)
        path = frames / f"bias_{k}.fits"
        write_hdul(fits.HDUList([fits.PrimaryHDU(data, header)]), path)
        os.utime(path, (1e9, 1e9))  # older than the first index: its rows are reused
    first = write_index(build_index([("BIAS", frames)]), tmp_path / "index.csv")
    text = first.read_text()
    again = write_index(build_index([("BIAS", frames)], previous=first), first)
    assert again.read_text() == text
