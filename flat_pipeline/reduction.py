"""Flat frames and what is subtracted from them: the bias at each frame's own temperature and
the dark signal at its own (temperature, exposure time).

* :func:`flat_groups`: the flat frames of each (stage, dose step); nothing is ever stacked
  or fitted across two of them.
* Bias: :func:`utils.stack.references.bias_reference` (``--bias-model``, else the tree's
  own bias frames of the same stage and dose step).
* Dark (:func:`dark_source`), in this order: ``--dark-model`` (the dark pipeline's 2-D
  model ``S = A t^gamma exp(B (T - TREF))``, or its 1-D rate model times t) evaluated at
  each frame's T and t; ``--dark-files-json`` (the old list of ``{original_path,
  temperature, exposure}``) or the tree's own dark frames, made into bias-subtracted
  dark masters per (temperature bin, exposure) -- a flat set then takes the master of the
  same exposure at the nearest temperature within ``--dark-temp-tolerance``, or one of
  another exposure scaled (:func:`utils.stack.references.scaled_dark`, which never
  leaves a hole under a saturated hot pixel); else none.  A set without a dark is
  reported and, only with ``--allow-bias-only``, reduced with the bias alone and flagged.
* :class:`Reference`: per set, the ``subtract(i, start, stop)`` rows (bias + dark) the
  stacking engine calls frame by frame and row block by row block, the bias rows alone
  (photon transfer), and the one-sigma error of what is subtracted.
* :func:`write_frames`: reduced (or normalised, or vignetting-corrected) frames, one in
  memory at a time -- written only in ``reduce_only``/``normalize_only``/
  ``vignetting_only`` or with ``--save-reduced``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.errors import ConfigError, InputPathError, UserError
from utils.io.fitsio import provenance_cards, read_image, set_card, write_product
from utils.io.index import DatasetIndex
from utils.io.tokens import number_text
from utils.models.dark_model import DarkSignalModel
from utils.stack.grouping import GroupKey, calibration_groups, text_column
from utils.stack.master import CombineSettings, quadrature_sum
from utils.stack.references import (
    BiasReference,
    build_dark_master,
    scaled_dark_files,
    select_frames,
)

logger = logging.getLogger(__name__)

#: Folder of the dark masters made from the tree's (or the JSON list's) dark frames.
DARK_FOLDER = "dark_masters"
#: Header cards not copied from an input frame to a product made from it.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
               "BUNIT", "CHECKSUM", "DATASUM", "PRODUCT", "PIPEVER", "DATE", "COMMENT",
               "HISTORY", ""}


# --- frames -------------------------------------------------------------------------------------

@dataclass
class FlatGroup:
    """The flat frames of one (stage, dose step).

    Attributes
    ----------
    key : GroupKey
        ``stage`` and ``dose`` (NaN outside a radiating stage); ``stage_dir`` names the
        sub-folder of its products.
    rows : pandas.DataFrame
        Every flat index row of the group (bad ones too: they are reported).
    """

    key: GroupKey
    rows: pd.DataFrame

    @property
    def label(self) -> str:
        """``pre``, ``radiating_10krad`` ... or ``all`` (for logs)."""
        return self.key.stage_dir or "all"


def flat_groups(index: DatasetIndex, stage: str = "", dose: float | None = None
                ) -> list[FlatGroup]:
    """Flat frames split by (stage, dose step), restricted to ``stage`` / ``dose`` when given.

    Raises
    ------
    InputPathError
        No flat frame at all (or none in the stage / dose step asked for).
    """
    table = index.table
    flats = table[table["CALTYPE"] == "FLAT"].copy()
    if flats.empty:
        counts = ", ".join(f"{c or '?'}: {n}" for c, n in table["CALTYPE"].value_counts().items())
        raise InputPathError(f"no flat frames among {len(table)} frames ({counts}); flats are "
                             "recognised from CALTYPE/IMAGETYP (FLAT) or a Flats/TestSection3 "
                             "folder")
    flats["STAGE"] = text_column(flats["STAGE"])
    dose_col = pd.to_numeric(flats["DOSE"], errors="coerce")
    flats["_DOSE"] = np.where(flats["STAGE"] == "radiating", dose_col, np.nan)
    if stage:
        flats = flats[flats["STAGE"] == stage]
    if dose is not None and math.isfinite(dose):
        flats = flats[np.isclose(flats["_DOSE"], dose)]
    if flats.empty:
        what = f"stage {stage!r}" + (f", dose {dose:g} krad" if dose is not None else "")
        raise InputPathError(f"no flat frames in {what}; stages present: "
                             + ", ".join(sorted(set(text_column(table["STAGE"])) - {""})))
    groups = []
    for (st, d), part in flats.groupby(["STAGE", "_DOSE"], dropna=False, sort=True):
        groups.append(FlatGroup(GroupKey(str(st), float(d), "FLAT", math.nan),
                                part.drop(columns="_DOSE")))
    return groups


def frame_shape(rows: pd.DataFrame, what: str = "flat frames") -> tuple[int, int]:
    """``(height, width)`` shared by ``rows``; a one-line error when they differ."""
    shapes = rows.groupby(["NAXIS1", "NAXIS2"]).size()
    if len(shapes) > 1:
        detail = ", ".join(f"{int(w)}x{int(h)}: {n} frames" for (w, h), n in shapes.items())
        raise UserError(f"{what} of different shapes ({detail}); give frames of one sensor mode")
    (w, h), = shapes.index
    return int(h), int(w)


def flat_sets(rows: pd.DataFrame, temp_bin: float, exp_tolerance: float
              ) -> list[tuple[GroupKey, pd.DataFrame]]:
    """Flat frames split into (temperature bin, exposure time) sets: one per flat level."""
    return [(k, part) for k, part in calibration_groups(rows, temp_width=temp_bin,
                                                          exp_tolerance=exp_tolerance)
            if k.caltype == "FLAT"]


# --- darks --------------------------------------------------------------------------------------

def _evaluated(holder, name: str) -> np.ndarray:
    """``holder.<name>``, an array or a callable giving it: called once, when first needed
    (the frame QC pass needs no errors: ~0.3 s of dark-model error maps not made there)."""
    value = getattr(holder, name)
    if callable(value):
        value = value()
        setattr(holder, name, value)
    return value


@dataclass
class DarkForSet:
    """The dark under one flat set."""

    rows: object                 # callable (i, start, stop) -> rows [adu], float64
    error: object                # [adu] its one-sigma error: array, or callable giving it
    cards: dict
    ref: str                     # identity (for the masters' hash)

    @property
    def err(self) -> np.ndarray:
        """[adu] one-sigma error of the subtracted dark (made when first asked for)."""
        return _evaluated(self, "error")


@dataclass
class DarkSource:
    """Where the dark under the flats comes from.

    Attributes
    ----------
    kind : str
        ``"model"``, ``"masters"`` or ``"none"``.
    description : str
        For logs, headers and the summary.
    model : DarkSignalModel or None
    masters : list of (temperature bin [degC], mean temperature [degC], exptime [s], path)
    tolerance : float
        [degC] largest distance to the model's range or to a dark master.
    files : list of dict
        The dark frames used (``original_path, temperature, exposure``).
    """

    kind: str
    description: str
    model: DarkSignalModel | None = None
    masters: list = field(default_factory=list)
    tolerance: float = 2.0
    files: list = field(default_factory=list)
    _cache: dict = field(default_factory=dict)
    _identity: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identity of the darks (content of the model, or the masters' paths); made once."""
        if "fingerprint" not in self._identity:
            digest = hashlib.sha1(self.description.encode())
            if self.model is not None:
                self.model.digest_into(digest)
            for m in self.masters:
                digest.update(str(m).encode())
            self._identity["fingerprint"] = digest.hexdigest()[:16]
        return self._identity["fingerprint"]

    def check_shape(self, shape: tuple[int, int]) -> None:
        """One-line error when a dark model does not match the flats' shape."""
        if self.model is not None and self.model.shape != shape:
            raise UserError(f"dark model {self.model.path} is {self.model.shape[1]}x"
                            f"{self.model.shape[0]} but the flat frames are "
                            f"{shape[1]}x{shape[0]}")

    def for_set(self, rows: pd.DataFrame, temperature: float, exptime: float
                ) -> tuple[DarkForSet | None, str]:
        """The dark of a flat set at (``temperature`` bin [degC], ``exptime`` [s]), or
        ``(None, reason)``."""
        temps = rows["TEMP"].to_numpy(float)
        exps = rows["EXPTIME"].to_numpy(float)
        if self.kind == "model":
            model = self.model
            if not model.covers(temperature, self.tolerance):
                return None, (f"the dark model covers {number_text(model.t_min)}.."
                              f"{number_text(model.t_max)} degC, not "
                              f"{number_text(temperature, 'g')} degC (+- {self.tolerance:g})")
            t_mean, x_mean = float(np.mean(temps)), float(np.mean(exps))
            key = ("model", round(t_mean, 3), round(x_mean, 9))
            if key not in self._cache:
                self._cache.clear()  # one set's maps at a time: memory must not grow with sets
                self._cache[key] = [model.linearised(t_mean, x_mean), None]
            entry = self._cache[key]
            (signal, d_temp, d_time) = entry[0]

            def err(entry=entry, t_mean=t_mean, x_mean=x_mean):
                if entry[1] is None:  # the error map once per set, and only when used
                    entry[1] = model.signal_err(t_mean, x_mean)
                return entry[1]
            d_t = (temps - t_mean).astype(np.float32)
            d_x = (exps - x_mean).astype(np.float32)

            def dark_rows(i, start, stop):
                # the dark at frame i's own (T, t): to first order about the set's mean, whose
                # frames differ by ~0.1 degC (second order: ~1e-4 of the dark)
                return signal[start:stop] + d_t[i] * d_temp[start:stop] \
                    + d_x[i] * d_time[start:stop]
            cards = {kw.DARKFILE: (model.path.name, f"dark model ({model.kind}) at each "
                                                   "frame's T and t"),
                     "DARKSRC": ("model", "dark subtracted from the dark model")}
            return DarkForSet(dark_rows, err, cards, f"model:{self.fingerprint}"), ""
        if self.kind == "masters":
            near = [m for m in self.masters if abs(m[0] - temperature) <= self.tolerance]
            if not near:
                have = ", ".join(sorted({f"{m[0]:g}" for m in self.masters})) or "none"
                return None, (f"no dark master within {self.tolerance:g} degC of "
                              f"{number_text(temperature, 'g')} degC (darks at {have} degC)")
            t_bin = min(near, key=lambda m: abs(m[0] - temperature))[0]
            same_t = [m for m in near if m[0] == t_bin]
            key = (t_bin, round(float(exptime), 9))
            if key not in self._cache:
                self._cache.clear()
                self._cache[key] = scaled_dark_files([(m[2], m[3]) for m in same_t], exptime)
            sd = self._cache[key]
            source = next(m for m in same_t if m[2] == sd.source)
            image = sd.data

            def dark_rows(i, start, stop):
                return image[start:stop]
            cards = {kw.DARKFILE: (Path(source[3]).name, "master dark subtracted"),
                     kw.DARKTEMP: (float(source[1]), "[degC] mean temperature of that master"),
                     kw.DARKEXP: (float(source[2]), "[s] exposure of that master dark"),
                     "DARKSCL": (float(sd.scale), "dark master scaled by EXPTIME / DARKEXP"),
                     "DARKFILL": (sd.n_other + sd.n_population,
                                  "pixels masked in it: other exposure or median rate"),
                     "DARKSRC": ("masters", "dark from dark masters of the same tree")}
            return DarkForSet(dark_rows, sd.err, cards,
                              f"masters:{t_bin}:{exptime:g}:{self.fingerprint}"), ""
        return None, self.description


def darks_from_json(path: str | os.PathLike) -> pd.DataFrame:
    """Index-like rows of the darks listed in the old ``--dark-files-json`` format."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the dark list ({err}); give a JSON list of "
                          "{original_path, temperature, exposure}") from err
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: the dark list must be a non-empty JSON list of "
                          "{original_path, temperature, exposure}")
    rows = []
    for n, item in enumerate(items):
        try:
            frame = Path(item["original_path"])
            temperature, exposure = float(item["temperature"]), float(item["exposure"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: entry {n} is not {{original_path, temperature, "
                              f"exposure}} ({err})") from err
        frame = frame if frame.is_absolute() else path.parent / frame
        if not frame.is_file():
            raise InputPathError(f"{frame}: dark frame of {path} (entry {n}) not found")
        rows.append({"PATH": str(frame), "TEMP": temperature, "EXPTIME": exposure})
    table = pd.DataFrame(rows)
    for column, value in (("CALTYPE", "DARK"), ("STAGE", ""), ("DOSE", np.nan),
                          ("ATTEMPT", ""), ("BADFITS", False), ("REASON", "")):
        table[column] = value
    return table


def dark_source(index: DatasetIndex, group: FlatGroup, out_dir: Path, bias: BiasReference, *,
                dark_model: str = "", dark_files_json: str = "", temp_bin: float = 1.0,
                exp_tolerance: float = 0.01, tolerance: float = 2.0,
                combine: CombineSettings = CombineSettings(),
                progress_bar: bool = False) -> DarkSource:
    """The dark under a group's flats (see module notes); dark masters go to
    ``out_dir/dark_masters``."""
    if dark_model:
        model = DarkSignalModel.read(dark_model)
        logger.info("dark: %s model %s (%.1f..%.1f degC; %d pixels without a fit take the "
                    "population's)", model.kind.upper(), dark_model, model.t_min, model.t_max,
                    model.n_filled)
        return DarkSource("model", f"dark model {dark_model}", model=model, tolerance=tolerance)
    if dark_files_json:
        rows = darks_from_json(dark_files_json)
        origin = str(dark_files_json)
    else:
        dose = group.key.dose if group.key.stage == "radiating" else None
        rows = select_frames(index, "DARK", group.key.stage, dose=dose,
                             purpose="the darks under the flats")
        origin = "the tree's dark frames"
    if rows.empty:
        return DarkSource("none", "no dark frames next to the flats and no --dark-model",
                          tolerance=tolerance)
    masters = []
    for key, part in calibration_groups(rows, temp_width=temp_bin, exp_tolerance=exp_tolerance):
        if key.caltype != "DARK":
            continue
        path = out_dir / DARK_FOLDER / f"master_dark_{key.tag}.fits"
        made = build_dark_master(key, part, bias, path, combine, progress_bar=progress_bar)
        if made is None:
            logger.warning("dark set %s: no bias within %g degC; not used under the flats",
                           key.tag, bias.tolerance)
            continue
        header, _ = made
        masters.append((key.temperature, kw.get_float(header, kw.TAVG, key.temperature),
                        key.exptime, path))
    files = [{"original_path": str(p), "temperature": float(t), "exposure": float(e)}
             for p, t, e in zip(rows["PATH"], rows["TEMP"], rows["EXPTIME"])]
    if not masters:
        return DarkSource("none", f"no dark master could be made from {origin}",
                          tolerance=tolerance, files=files)
    logger.info("dark: %d masters from %s (%s degC; %s s)", len(masters), origin,
                ", ".join(sorted({f"{m[0]:g}" for m in masters})),
                ", ".join(sorted({f"{m[2]:g}" for m in masters}, key=float)))
    return DarkSource("masters", f"dark masters from {origin}", masters=masters,
                      tolerance=tolerance, files=files)


# --- bias + dark under one set ------------------------------------------------------------------

@dataclass
class Reference:
    """What is subtracted from the frames of one flat set.

    Attributes
    ----------
    bias_rows : callable
        ``(i, start, stop) -> rows`` of the bias of frame ``i`` [adu].
    dark : DarkForSet or None
        The dark (None: bias only).
    no_dark : str
        Why there is no dark ('' when there is one).
    error : numpy.ndarray or callable
        [adu] one-sigma error of bias + dark, in quadrature (:attr:`err`), or what gives it
        when first asked for.
    cards : dict
        Header cards saying what was subtracted.
    refs : tuple
        Identities of what was subtracted (for the masters' hash).
    bias_refs : tuple
        Identities of the bias alone (what the photon-transfer pairs depend on).
    """

    bias_rows: object
    dark: DarkForSet | None
    no_dark: str
    error: object
    cards: dict
    refs: tuple
    bias_refs: tuple = ()

    @property
    def err(self) -> np.ndarray:
        """[adu] one-sigma error of bias + dark (made when first asked for)."""
        return _evaluated(self, "error")

    def subtract(self, i: int, start: int, stop: int) -> np.ndarray:
        """Bias + dark rows of frame ``i`` [adu] (thread-safe)."""
        rows = np.asarray(self.bias_rows(i, start, stop), dtype=np.float64)
        if self.dark is not None:
            rows = rows + self.dark.rows(i, start, stop)
        return rows

    def image(self, i: int, height: int) -> np.ndarray:
        """The whole bias + dark image of frame ``i`` [adu], float32."""
        return self.subtract(i, 0, height).astype(np.float32)


def reference_for_set(rows: pd.DataFrame, key: GroupKey, bias: BiasReference,
                      darks: DarkSource) -> tuple[Reference | None, str]:
    """The :class:`Reference` of one flat set, or ``(None, reason)`` without a bias.

    Without a dark the reference is the bias alone and says why in ``no_dark``: such
    frames still give photon-transfer pairs (which need the bias only), and are
    stacked only with ``--allow-bias-only``."""
    ref = bias.for_set(rows, key.temperature)
    if ref is None:
        return None, (f"no bias within {bias.tolerance:g} degC of "
                      f"{number_text(key.temperature, 'g')} degC")
    sub, stderr, cards, refs = ref
    if callable(sub):
        bias_rows = sub
    else:
        image = np.asarray(sub, dtype=np.float32)

        def bias_rows(i, start, stop):
            return image[start:stop]
    dark, why = darks.for_set(rows, key.temperature, key.exptime)
    cards = dict(cards)
    bias_refs = tuple(refs)
    if dark is None:
        cards[kw.DARKFILE] = ("none", "no dark: bias only (--allow-bias-only)")
        cards["DARKSRC"] = ("none", "dark current not removed")
        err = np.asarray(stderr, np.float32)
    else:
        cards.update(dark.cards)
        cards[kw.SUBTRACT] = (str(cards[kw.SUBTRACT][0]) + "+dark", "subtracted per frame")
        def err(stderr=stderr, dark=dark):
            return quadrature_sum(stderr, dark.err)
        refs = tuple(refs) + (dark.ref,)
    return Reference(bias_rows, dark, why if dark is None else "", err, cards, tuple(refs),
                     bias_refs), ""


# --- frames written one by one ------------------------------------------------------------------

def _frame_cards(header: fits.Header) -> list[tuple[str, object, str]]:
    """The input frame's own cards worth keeping on a product made from it (long names as
    ``HIERARCH`` cards, as in the frame)."""
    out = []
    for c in header.cards:
        key = c.keyword
        if key in _STRUCTURAL or key.startswith("NAXIS"):
            continue
        if len(key) > 8 or not all(ch.isalnum() or ch in "_-" for ch in key):
            key = "HIERARCH " + key
        out.append((key, c.value, c.comment))
    return out


def output_names(paths: list[str], suffix: str) -> dict[str, str]:
    """``{path: <stem>_<suffix>.fits}``, with ``_<n>`` added where stems repeat."""
    names, seen = {}, {}
    for p in paths:
        stem = Path(p).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names[p] = f"{stem}_{suffix}.fits" if n == 0 else f"{stem}_{n}_{suffix}.fits"
    return names


def write_frames(rows: pd.DataFrame, reference: Reference, folder: Path, *, step: str,
                 names: dict[str, str], levels: np.ndarray | None = None,
                 illumination: np.ndarray | None = None, adc_bits: int = adu.DEFAULT_ADC_BITS,
                 extra: dict | None = None) -> list[Path]:
    """Write each frame of a set reduced (``step='raw_reduced'``), then normalised by its
    ``levels`` [adu] (``'normalized'``), then divided by the relative ``illumination``
    (``'vignetting_corrected'``); one frame in memory at a time.

    ``UNCERT`` is the error of what was subtracted (and divided), not the frame's own
    noise: a single frame's noise is in the photon-transfer products.
    """
    written = []
    for i, path in enumerate(rows["PATH"].astype(str)):
        data, header = read_image(path)
        data = np.asarray(data, dtype=np.float32)
        height = data.shape[0]
        out = data - reference.image(i, height)
        err = reference.err.astype(np.float32)
        unit = adu.UNIT
        cards = [("FLATSTEP", step, "flat pipeline step (old FLAT_PIPE_STEP)")]
        if levels is not None:
            level = float(levels[i])
            out, err, unit = out / np.float32(level), err / np.float32(level), ""
            cards.append((kw.FLATNORM, level, "[adu] level divided out"))
        if illumination is not None:
            out = out / illumination
            err = err / illumination
            cards.append(("FLATVIGN", "fitted model", "divided by the relative illumination"))
        product = fits.Header()
        for key, value, comment in provenance_cards(f"FLAT_{step.upper()}"):
            set_card(product, key, value, comment)
        for key, value, comment in _frame_cards(header):
            if key not in product:
                set_card(product, key, value, comment)
        for key, (value, comment) in (reference.cards | (extra or {})).items():
            set_card(product, key, value, comment)
        for key, value, comment in cards:
            set_card(product, key, value, comment)
        set_card(product, "UNCERTIS", "subtracted reference", "UNCERT: error of bias+dark only")
        set_card(product, "SRCFILE", Path(path).name, "input frame")
        for key, value, comment in adu.scaling_cards(adc_bits):
            set_card(product, key, value, comment)
        written.append(write_product(folder / names[path], out, product, unit=unit,
                                     uncertainty=err, mask=~np.isfinite(out)))
    return written


__all__ = ["FlatGroup", "flat_groups", "frame_shape", "flat_sets", "DarkSource", "dark_source",
           "DarkForSet", "Reference", "reference_for_set", "write_frames", "output_names",
           "darks_from_json",
           "DARK_FOLDER"]
