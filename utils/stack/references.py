"""What is subtracted from frames while stacking: the bias at each frame's temperature, and darks.

Shared by the dark pipeline (bias under darks) and the flat pipeline (bias and dark under
flats), and by the index processing (darks scaled to a flat's exposure):

* :func:`select_frames`: the usable frames of one type, stage and dose step;
* :class:`BiasReference` / :func:`bias_reference`: the per-pixel bias model given by
  the user (the bias pipeline's ``bias_model.fits``), else fitted from the tree's own
  bias frames (masters per temperature bin, then the model), else the nearest bias
  master; it gives the ``subtract(i, start, stop)`` rows of each frame and the error
  of what is subtracted;
* :func:`scaled_dark`: a dark image at another exposure time from the dark masters of
  one temperature, never leaving a hole where the nearest master is flagged (a hot
  pixel saturated in a long dark): such pixels come from the next-nearest exposure,
  and, when no master has them, from the population's median dark rate.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import headers as kw
from ..errors import InputPathError, UserError
from ..io.fitsio import read_header, read_image
from ..io.index import DatasetIndex
from ..io.tokens import number_text
from ..models.bias_model import BiasLineModel, BiasModel, MasterStack, fit_bias_model
from .grouping import calibration_groups, check_one_dose_step, select_stage, stage_groups, stage_tag
from .master import CombineSettings, existing_product, make_master
from .tiles import pixel_blocks

logger = logging.getLogger(__name__)

#: Folder of the bias masters made from a tree's own bias frames.
BIAS_FOLDER = "bias_masters"

#: Bias-model error maps a :class:`BiasReference` keeps for the next sets (least recently
#: used dropped first).
ERROR_MAPS_KEPT = 2


def select_frames(index: DatasetIndex, caltype: str, stage: str = "", *,
                  dose: float | None = None, purpose: str = "the dark pipeline") -> pd.DataFrame:
    """Usable frames of one type and (stage, dose step) with a temperature; others are logged.

    Parameters
    ----------
    index : DatasetIndex
        The frames.
    caltype : str
        ``BIAS``, ``DARK`` or ``FLAT``.
    stage : str, optional
        Irradiation stage; '' when the frames hold a single one.
    dose : float, optional
        [krad] dose step within a radiating stage.
    purpose : str, optional
        Named in the log lines of the frames left out.

    Raises
    ------
    UserError
        Frames of several (stage, dose step) groups remain (choose one), or of several
        dose steps (a fit across them is refused).
    """
    table = index.table
    rows = select_stage(table[table["CALTYPE"] == caltype], stage, dose)
    groups = stage_groups(rows)
    if len(groups) > 1:
        raise UserError(f"{caltype.lower()} frames of several stages or dose steps ("
                        + ", ".join(stage_tag(s, d) for s, d in groups)
                        + "); choose one with --stage and --dose")
    check_one_dose_step(rows, f"{caltype.lower()} frames")
    bad = rows["BADFITS"].astype(bool) | rows["TEMP"].isna()
    for _, row in rows[bad].iterrows():
        why = row["REASON"] if isinstance(row["REASON"], str) and row["REASON"] else \
            "no sensor temperature (TEMP)"
        logger.warning("%s: left out of %s (%s)", row["PATH"], purpose, why)
    return rows[~bad]


def resolve_bias_model(path: str | Path, tag: str) -> Path:
    """The bias model file to use for the stage tag ``tag``: ``path`` itself when it is a
    file, else (a bias-pipeline output folder) ``path/<tag>/bias_model.fits`` when it
    exists, else ``path/bias_model.fits``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / tag / "bias_model.fits", path / "bias_model.fits"):
            if candidate.is_file():
                return candidate
        raise InputPathError(f"{path}: no bias_model.fits for {tag or 'these frames'} in this "
                             "folder; run the bias pipeline first or give the model file")
    return path


class BiasReference:
    """The bias removed from frames: a per-pixel model, and/or masters by temperature.

    Parameters
    ----------
    model : BiasModel or BiasLineModel or None
        Per-pixel bias(T) model (what subtraction needs of it: ``a``, ``b``, ``shape``,
        ``covers``, ``subtractor``, ``predict_err``).
    masters : list of (temperature [degC], path)
        Bias masters usable when the model does not cover a temperature.
    tolerance : float
        [degC] largest distance to the model's range or to a master.
    source : str
        What the model came from (for headers and logs).
    """

    def __init__(self, model: BiasModel | None, masters: list[tuple[float, Path]],
                 tolerance: float, source: str):
        self.model, self.masters, self.tolerance, self.source = model, masters, tolerance, source
        # model error maps by temperature (0.25 degC steps): the last few only, since sets
        # come by temperature and every map is a full frame (16.8 MB at 2048 x 2048)
        self._errors: dict = {}
        # what was subtracted, by content: a refitted model at the same path changes the masters
        # (the file name only, so that two output folders give the same masters' INHASH)
        digest = hashlib.sha1(Path(source).name.encode())
        if model is not None:
            digest.update(np.ascontiguousarray(model.a).tobytes())
            digest.update(np.ascontiguousarray(model.b).tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def check_shape(self, shape: tuple[int, int], what: str = "dark frames") -> None:
        """One-line error when the bias does not match the frames' shape."""
        if self.model is not None and self.model.shape != shape:
            raise UserError(f"bias model {self.source} is {self.model.shape[1]}x"
                            f"{self.model.shape[0]} but the {what} are {shape[1]}x{shape[0]}")

    def nearest_master(self, temperature: float) -> tuple[float, Path] | None:
        """``(temperature, path)`` of the bias master nearest ``temperature`` within the
        tolerance, else None."""
        if not self.masters:
            return None
        t_bias, path = min(self.masters, key=lambda m: abs(m[0] - temperature))
        return (t_bias, path) if abs(t_bias - temperature) <= self.tolerance else None

    def model_terms(self, rows: pd.DataFrame):
        """``(subtract, stderr, cards, refs)`` of the model for the frames of ``rows``.

        ``refs`` names the model by content (:attr:`fingerprint`), so masters made with
        the same model by index processing and by the dark pipeline share their ``INHASH``.
        """
        temps = rows["TEMP"].to_numpy(float)
        mean_t = float(np.mean(temps))
        cards = {kw.BIASFILE: (Path(self.source).name, "bias model A+B*(T-TREF) subtracted"),
                 kw.BIASTEMP: (mean_t, "[degC] mean frame temperature of the evaluation"),
                 kw.SUBTRACT: ("bias(T)", "bias model at each frame's TEMP")}
        # the error at the set's mean temperature rounded to 0.25 degC (within that it does
        # not change): evaluated at the rounded value, not at the first set's mean, so that it
        # does not depend on which sets came before (a Dask task sees none of them)
        key = round(mean_t * 4) / 4
        error = self._errors.pop(key, None)
        if error is None:
            error = self.model.predict_err(key)
        self._errors[key] = error  # most recent last
        while len(self._errors) > ERROR_MAPS_KEPT:
            del self._errors[next(iter(self._errors))]
        return (self.model.subtractor(temps), error, cards,
                (self.fingerprint, "model"))

    def for_set(self, rows: pd.DataFrame, temperature: float):
        """``(subtract, stderr, cards, refs)`` for :func:`utils.stack.master.make_master`,
        or None."""
        if self.model is not None and self.model.covers(temperature, self.tolerance):
            return self.model_terms(rows)
        nearest = self.nearest_master(temperature)
        if nearest is not None:
            t_bias, path = nearest
            data, err = read_master_error(path, masked=False)
            cards = {kw.BIASFILE: (path.name, "master bias subtracted"),
                     kw.BIASTEMP: (t_bias, "[degC] temperature of that master bias"),
                     kw.SUBTRACT: ("bias", "master bias, same for every frame")}
            return data, err, cards, (str(path),)
        return None


def read_master_error(path: str | Path, *, masked: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A master's image and its ``UNCERT`` (float32; NaN where ``MASK`` is set when
    ``masked``)."""
    from astropy.io import fits

    data, _ = read_image(path)
    data = np.asarray(data, np.float32)
    with fits.open(path, memmap=False) as hdul:
        names = {h.name for h in hdul}
        err = np.asarray(hdul["UNCERT"].data, dtype=np.float32) if "UNCERT" in names else \
            np.zeros(data.shape, np.float32)
        if masked and "MASK" in names:
            data = np.where(np.asarray(hdul["MASK"].data) != 0, np.float32(np.nan), data)
    return data, err


def bias_reference(index: DatasetIndex, out_dir: Path, *, model_path: str = "",
                   stage: str = "", temp_bin: float = 1.0, tolerance: float = 2.0,
                   combine: CombineSettings = CombineSettings(),
                   progress_bar: bool = False, dose: float | None = None,
                   what: str = "darks", reuse=None, lean: bool = False) -> BiasReference:
    """The bias model given by the user, else one fitted from the tree's bias frames.

    Bias masters made from the tree go to ``out_dir/bias_masters/`` and a fitted model
    to ``out_dir/bias_model.fits``; ``reuse`` (``{INHASH: path}``, see
    :func:`utils.stack.master.find_masters`) gives masters already built from the same frames.
    ``lean``: the model read as a :class:`~utils.models.bias_model.BiasLineModel` (A and B in
    memory, its errors read by row blocks when a set asks), for callers that only subtract
    it (the flat pipeline); the same numbers and fingerprint.

    Raises
    ------
    UserError
        No ``model_path`` and no usable bias frame in the tree.
    """
    if model_path:
        model_path = resolve_bias_model(model_path, stage_tag(stage, math.nan if dose is None
                                                              else dose))
        model = (BiasLineModel if lean else BiasModel).read(model_path)
        logger.info("bias: model %s (%.1f..%.1f degC)", model_path, model.t_min, model.t_max)
        return BiasReference(model, [], tolerance, str(model_path))
    rows = select_frames(index, "BIAS", stage, dose=dose,
                         purpose=f"the bias under the {what}")
    if rows.empty:
        raise UserError(f"missing bias: no usable bias frames next to the {what} and no "
                        "--bias-model; give --bias-model OUT/bias_model.fits from the bias "
                        "pipeline (python bias_pipeline/run_pipeline.py)")
    masters = []
    for key, part in calibration_groups(rows, temp_width=temp_bin):
        path = Path(out_dir) / BIAS_FOLDER / f"master_bias_{number_text(key.temperature)}C.fits"
        header, _ = make_master(part, path, combine, product="MASTER_BIAS",
                                progress_bar=progress_bar, reuse=reuse,
                                extra={kw.CALTYPE: ("BIAS", "calibration type"),
                                       kw.IMAGETYP: ("MASTER BIAS", "frame type")})
        masters.append((kw.get_float(header, kw.TAVG, key.temperature), path))
    temps = np.array([t for t, _ in masters])
    if np.unique(np.round(temps, 3)).size < 2:
        logger.info("bias: one temperature (%.1f degC): nearest-master subtraction only",
                    temps[0])
        return BiasReference(None, masters, tolerance, str(masters[0][1]))
    path = Path(out_dir) / "bias_model.fits"
    digest = hashlib.sha1("".join(str(read_header(p).get(kw.INHASH, p))
                                  for _, p in masters).encode()).hexdigest()[:16]
    if existing_product(path, digest) is not None:  # same masters: the same model, kept
        model = (BiasLineModel if lean else BiasModel).read(path)
        logger.info("bias: model of the same %d masters kept: %s", len(masters), path)
        return BiasReference(model, masters, tolerance, str(path))
    model, _ = fit_bias_model(MasterStack([p for _, p in masters], temps), cross_validate=False)
    path = model.write(path, {kw.INHASH: (digest, "hash of the input masters")})
    if lean:  # the written A and B (float32: the same bytes), the rest left in the file
        model = BiasLineModel.read(path)
    logger.info("bias: model fitted from %d bias masters (%.1f..%.1f degC): %s", len(masters),
                temps.min(), temps.max(), path)
    return BiasReference(model, masters, tolerance, str(path))


def build_dark_master(key, rows: pd.DataFrame, bias: BiasReference, path: Path,
                      combine: CombineSettings, *, reuse=None, progress_bar: bool = False):
    """The bias-subtracted master of one dark set (``key``: its temperature bin and
    exposure), bias removed frame by frame at each frame's temperature, kept when unchanged.

    Returns
    -------
    (astropy.io.fits.Header, bool) or None
        The master's header and whether it was (re)written; None without a bias within
        the tolerance.
    """
    ref = bias.for_set(rows, key.temperature)
    if ref is None:
        return None
    subtract, stderr, cards, refs = ref
    cards.update({kw.CALTYPE: ("DARK", "calibration type"),
                  kw.IMAGETYP: ("MASTER DARK", "bias-subtracted dark signal"),
                  kw.TBIN: (key.temperature, "[degC] temperature bin label"),
                  kw.EXPTIME: (key.exptime, "[s] exposure time of the set")})
    return make_master(rows, path, combine, product="MASTER_DARK", subtract=subtract,
                       sub_stderr=stderr, extra=cards, refs=refs, reuse=reuse,
                       progress_bar=progress_bar)


@dataclass
class ScaledDark:
    """A dark image at the wanted exposure, and how it was made.

    Attributes
    ----------
    data, err : numpy.ndarray
        Dark signal and its one-sigma error [adu], finite everywhere.
    scale : float
        ``exptime / exptime of the master used for most pixels``.
    source : float
        [s] exposure of that master.
    n_other : int
        Pixels taken from another exposure's master (flagged in the nearest one).
    n_population : int
        Pixels flagged in every master: the median dark rate of the others x exptime.
    """

    data: np.ndarray
    err: np.ndarray
    scale: float
    source: float
    n_other: int
    n_population: int


def scaled_dark(candidates: list[tuple[float, np.ndarray, np.ndarray]],
                exptime: float) -> ScaledDark:
    """Dark signal at ``exptime`` [s] from bias-subtracted dark masters of one temperature.

    Dark signal grows with exposure time, so a master at ``t_d`` scaled by
    ``exptime / t_d`` estimates it; the master of the nearest exposure (in ratio) is
    used, and each pixel it lacks (NaN: masked, saturated in every frame) comes from the
    next-nearest one; pixels no master has get the median rate of the valid pixels
    times ``exptime``.  Never NaN.

    Parameters
    ----------
    candidates : list of (exptime [s], data [adu], err [adu])
        Dark masters of one temperature (NaN where not valid).
    exptime : float
        [s] exposure wanted.

    Examples
    --------
    >>> d = np.array([[10.0, np.nan]]); e = np.ones((1, 2))
    >>> s = scaled_dark([(1.0, d, e), (4.0, np.array([[40.0, 400.0]]), e)], 2.0)
    >>> s.data.tolist(), s.source, s.n_other
    ([[20.0, 200.0]], 1.0, 1)
    """
    return _scaled_dark([(t_d, lambda d=d, e=e: (d, e)) for t_d, d, e in candidates], exptime)


def scaled_dark_files(masters: list[tuple[float, str | Path]], exptime: float) -> ScaledDark:
    """:func:`scaled_dark` of the dark masters ``(exptime [s], path)``, each read only when
    needed: the nearest exposure's always, the others only for pixels it lacks (one at a
    time) -- not every exposure's image and error at once (~34 MB each at 2048 x 2048)."""
    return _scaled_dark([(t_d, functools.partial(read_master_error, path))
                         for t_d, path in masters], exptime)


def _scaled_dark(candidates, exptime: float) -> ScaledDark:
    """:func:`scaled_dark` with each master's ``(data, err)`` given by a loader."""
    if not candidates:
        raise ValueError("no dark master to scale")
    order = sorted(candidates, key=lambda c: abs(math.log(c[0] / exptime)))
    t0, load = order[0]
    d0, e0 = load()
    # each pixel is float32(float64(master) x ratio) of the master it comes from: made by
    # pixel blocks straight into the float32 results (no full-frame float64 images)
    data, err = np.empty(np.shape(d0), np.float32), np.empty(np.shape(e0), np.float32)
    for out, image in ((data, d0), (err, e0)):
        flat, src = out.reshape(-1), np.ravel(image)
        for blk in pixel_blocks(flat.size):
            flat[blk] = src[blk].astype(np.float64) * (exptime / t0)
    del d0, e0
    missing = ~np.isfinite(data) | ~np.isfinite(err)
    n_other = 0
    for t_d, load in order[1:]:
        if not missing.any():
            break
        d, e = load()
        fill = missing & np.isfinite(d) & np.isfinite(e)
        data[fill] = np.asarray(d, np.float64)[fill] * (exptime / t_d)
        err[fill] = np.asarray(e, np.float64)[fill] * (exptime / t_d)
        n_other += int(fill.sum())
        missing &= ~fill
        del d, e
    n_pop = int(missing.sum())
    if n_pop:
        rates = []
        for t_d, load in order:
            d = np.asarray(load()[0], np.float64)
            rates.append(d[np.isfinite(d)] / t_d)
        rates = np.concatenate(rates) if rates else np.zeros(1)
        rate = float(np.median(rates)) if rates.size else 0.0
        spread = float(np.std(rates)) if rates.size > 1 else 0.0
        data[missing] = rate * exptime
        err[missing] = spread * exptime  # a pixel of the population: its spread, not its error
    return ScaledDark(data, err, exptime / t0, t0, n_other, n_pop)


__all__ = ["select_frames", "BiasReference", "bias_reference", "build_dark_master",
           "resolve_bias_model",
           "read_master_error",
           "ScaledDark", "scaled_dark", "scaled_dark_files", "BIAS_FOLDER"]
