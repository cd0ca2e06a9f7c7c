"""Dark-current rate per pixel and temperature bin: the slope of dark signal vs exposure time.

At each temperature the bias-subtracted masters ``S_k`` at exposures ``t_k``
are fitted per pixel with ``S = offset + rate * t`` (weighted least squares,
closed form), so whatever does not grow with exposure -- residual bias, an
exposure-independent glow -- ends in the offset and never in the rate.

Errors.  A master's per-pixel error is ``sqrt(v_k / n_k)``, with the pixel's
temporal variance ``v = v0 + K S`` modelled by photon transfer over every master of the
run (:mod:`dark_pipeline.noise_model`: v0 pooled over all the pixel's masters, one
sensor-wide K, and for S the signal the other half of the masters predicts, so that no
error follows its own point's noise).  With three or more exposures, one frame-wide
factor ``ERRSCALE`` = sqrt(median chi2/dof / its expected median) then calibrates the
rate errors (as in the bias model).
With a single exposure the rate is the bias-subtracted signal divided by the
exposure (``RATEMETH = 'single exposure'``, offset assumed 0): flagged,
because residual bias then counts as dark current.  Its error is then the master's and
the subtracted bias's (``SUBERR``) in quadrature, over the exposure; the bias error is
shared between temperature bins subtracted with one bias model, which the 1-D model's
population fit takes into account (:func:`dark_pipeline.model_2d.rate_bias_errors`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.io.fitsio import provenance_cards, read_pixels, set_card, write_product
from utils.io.tokens import number_text
from utils.io.write_behind import WriteBehind
from utils.memory import release_free_memory
from utils.models.linear import fit_line_per_pixel
from utils.stack.stats import chi2_median_ratio, exact_median
from utils.stack.tiles import (
    PIXEL_BLOCK,
    TILE_SHARE,
    ArrayRows,
    ProductRows,
    gather_sample,
    pixel_sample,
    row_tiles,
    tile_rows,
)

from .masters import DarkMaster
from .noise_model import NoiseModel, _noise_model, halves_of, noise_model_errors

logger = logging.getLogger(__name__)

#: Folder of the rate maps below the output folder.
RATE_FOLDER = "dark_rates"
METHOD_SLOPE = "slope vs exposure"
METHOD_SINGLE = "single exposure"
#: Images of a written rate map the models read back: the rate and its error.
RATE_IMAGES = ("PRIMARY", "UNCERT")


@dataclass
class RateMap:
    """Dark rate of every pixel at one temperature bin.

    Attributes
    ----------
    temperature : float
        [degC] bin label.
    tavg : float
        [degC] temperature the rate refers to: the masters' mean temperatures weighted as
        the slope weights them (the plain mean with a single exposure).
    rate, rate_err : numpy.ndarray or None
        [adu/s] rate and its one-sigma error (None once written and dropped: then read
        back from :attr:`path`, see :meth:`loaded`, :func:`rate_rows`, :func:`rate_sample`).
    offset, offset_err : numpy.ndarray
        [adu] signal at zero exposure and its error (0 with one exposure).
    chi2dof : numpy.ndarray
        Reduced chi-square of the line (NaN with fewer than three exposures).
    exptimes : tuple of float
        [s] exposures fitted.
    method : str
        :data:`METHOD_SLOPE` or :data:`METHOD_SINGLE`.
    err_scale : float
        Frame-wide factor applied to the noise-model errors.
    nexp : numpy.ndarray or None
        Exposures used per pixel (int8).  (The pipeline drops ``offset``, ``offset_err``,
        ``chi2dof`` and ``nexp`` once the map is written.)  Where only one is valid (the longer ones
        saturated or masked) the rate is that master's signal / exposure, offset 0.
    path : pathlib.Path or None
        The written map (:func:`write_rate`), when it was written.
    """

    temperature: float
    tavg: float
    rate: np.ndarray
    rate_err: np.ndarray
    offset: np.ndarray
    offset_err: np.ndarray
    chi2dof: np.ndarray
    exptimes: tuple
    method: str
    err_scale: float = 1.0
    nexp: np.ndarray | None = None
    path: Path | None = None

    def loaded(self) -> RateMap:
        """This map with ``rate`` and ``rate_err`` in memory: itself, or with the two read
        back from :attr:`path` (float32 as written: the same values)."""
        if self.rate is not None and self.rate_err is not None:
            return self
        rows = ProductRows([self.path], RATE_IMAGES)
        height = rows.shape[0]
        return replace(self, rate=rows.read("PRIMARY", 0, height)[0],
                       rate_err=rows.read("UNCERT", 0, height)[0])


def rate_rows(rates: list[RateMap]) -> ProductRows:
    """Reader of rows of the written rate maps' rate (``PRIMARY``) and error (``UNCERT``),
    one plane per map in the order of ``rates`` (the stacking engine's block reader)."""
    return ProductRows([r.path for r in rates], RATE_IMAGES)


def gather_pixels(rows, names, pixels: np.ndarray, fills: dict | None = None) -> ArrayRows:
    """The flat pixels ``pixels`` (increasing) of the images ``names`` of every plane of
    ``rows``, as an :class:`~utils.stack.tiles.ArrayRows` of shape ``(K, 1, n)`` (``fills``:
    the value of an image a product lacks, default NaN): what
    :func:`~utils.stack.tiles.gather_sample` gives, the same values.  Of files
    (:class:`~utils.stack.tiles.ProductRows`) only those pixels are read
    (:func:`~utils.io.fitsio.read_pixels`): a stride sample holds pixels of every row, whose
    full reading was ~4x the time (1 s of the dark stage's one-core time at 2048^2)."""
    fills = fills or {}
    if not isinstance(rows, ProductRows):
        return gather_sample(rows, names, pixels, max(1, PIXEL_BLOCK // rows.shape[1]),
                             fills=fills)
    out = {}
    for name in names:
        out[name] = np.empty((len(rows), 1, pixels.size), np.float32)
        for k, lay in enumerate(rows.layouts[name]):
            if lay is None:
                out[name][k, 0] = fills.get(name, np.nan)
            else:
                read_pixels(lay, pixels, out=out[name][k, 0])
    return ArrayRows(out)


def rate_sample(rates: list[RateMap], pixels: np.ndarray) -> list[RateMap]:
    """The maps at the flat pixel indices ``pixels`` (increasing) only, as ``(1, n)`` maps:
    taken from the maps in memory, or read back by rows from their files."""
    if all(r.rate is not None and r.rate_err is not None for r in rates):
        return [replace(r, rate=r.rate.reshape(-1)[pixels][None],
                        rate_err=r.rate_err.reshape(-1)[pixels][None]) for r in rates]
    sample = gather_pixels(rate_rows(rates), RATE_IMAGES, pixels)
    return [replace(r, rate=sample.images["PRIMARY"][k], rate_err=sample.images["UNCERT"][k])
            for k, r in enumerate(rates)]


#: Tiles the noise model measures at a time (threads), each of that share of the budget.
NOISE_WORKERS = 2

#: Images of a dark master the fits read, tile by tile.
_IMAGES = ("PRIMARY", "MASK", "NOISE", "NCOMB", "SUBERR")


@dataclass
class SignalStack:
    """The dark masters, read tile by tile by every step that needs their pixels.

    No ``(K, H, W)`` array is held: :meth:`tile` reads rows of every master with the
    stacking engine's block reader (:class:`utils.stack.tiles.ProductRows`), and
    :meth:`row_tiles` cuts the frame so a tile of all masters fits ``memory_limit``.

    Attributes
    ----------
    masters : list of DarkMaster
        The masters, in the order of the planes.
    bias_keys : list of str
        ``BIASFILE|SUBTRACT`` of each master: which bias it shares with others.
    rows : ProductRows
        Reader of the masters' images.
    noise : NoiseModel
        The noise model of every master's errors (measured over all masters).
    planes : list of int
        Planes of ``rows`` this stack holds (a :meth:`select` keeps the reader).
    memory_limit : float
        [byte] budget of one tile's working set.
    pixels : numpy.ndarray or None
        Flat indices in the frame of the pixels of a :meth:`sample` (shape ``(1, n)``).
    """

    masters: list[DarkMaster]
    bias_keys: list[str]
    rows: ProductRows
    noise: NoiseModel
    planes: list[int]
    memory_limit: float = 256e6
    pixels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every master."""
        return self.rows.shape

    @property
    def temps(self) -> np.ndarray:
        """[degC] mean frame temperature of each master."""
        return np.array([m.tavg for m in self.masters])

    @property
    def exptimes(self) -> np.ndarray:
        """[s] exposure time of each master."""
        return np.array([m.exptime for m in self.masters])

    def groups(self) -> dict[float, list[int]]:
        """Indices of the masters of each temperature bin, in increasing exposure time."""
        out: dict[float, list[int]] = {}
        for i in np.argsort(self.exptimes, kind="stable"):
            out.setdefault(self.masters[i].temperature, []).append(int(i))
        return dict(sorted(out.items()))

    def select(self, keep) -> SignalStack:
        """The masters ``keep`` (indices) only, with the same noise model."""
        keep = list(keep)
        return SignalStack([self.masters[i] for i in keep], [self.bias_keys[i] for i in keep],
                           self.rows, self.noise, [self.planes[i] for i in keep],
                           self.memory_limit, self.pixels)

    def row_tiles(self, images: int = 3, planes: int | None = None):
        """``(r0, r1)`` tiles of the frame sized so ``images`` stacks of ``planes`` masters
        (default: all of them) fit :attr:`memory_limit`."""
        rows = tile_rows(len(self.planes) if planes is None else planes, self.shape,
                         self.memory_limit, images=images)
        return row_tiles(self.shape[0], rows)

    def read(self, r0: int, r1: int, idx=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``r0:r1`` of the masters ``idx`` (default all): signal (NaN where masked),
        noise-model error and subtracted-bias error [adu], each ``(K, r1 - r0, W)`` float32."""
        idx = range(len(self.planes)) if idx is None else list(idx)
        planes = [self.planes[i] for i in idx]
        data = self.rows.read("PRIMARY", r0, r1, planes=planes)
        mask = self.rows.read("MASK", r0, r1, fill=0.0, planes=planes)
        data[mask != 0] = np.nan
        del mask
        noise = self.rows.read("NOISE", r0, r1, planes=planes)
        count = self.rows.read("NCOMB", r0, r1, fill=1.0, planes=planes)
        suberr = self.rows.read("SUBERR", r0, r1, fill=0.0, planes=planes)
        if self.noise.v0 is not None:
            err = self.noise.errors(data, noise, count, r0, r1, planes)
        else:
            err = np.empty_like(data)
            by_t: dict[float, list[int]] = {}
            for j, i in enumerate(idx):
                by_t.setdefault(self.masters[i].temperature, []).append(j)
            for js in by_t.values():
                err[js] = noise_model_errors(np.array([self.masters[idx[j]].exptime
                                                       for j in js]), noise[js], count[js])
        return data, err, suberr

    def sample(self, max_pixels: int) -> tuple[SignalStack, np.ndarray]:
        """A stride sample of at most ``max_pixels`` pixels of every master, in memory:
        ``(stack of shape (1, n), flat pixel indices)`` (every pixel of a small frame)."""
        idx = pixel_sample(self.shape, max_pixels)
        rows = gather_pixels(self.rows, _IMAGES, idx,
                             fills={"MASK": 0.0, "NCOMB": 1.0, "SUBERR": 0.0})
        noise = self.noise if self.noise.v0 is None else self.noise.at(idx)
        return SignalStack(self.masters, self.bias_keys, rows, noise, self.planes,
                           self.memory_limit, idx), idx

    def read_master(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Master ``i`` whole: signal, noise-model error, subtracted-bias error, ``(H, W)``
        (read by row tiles: the mask, noise and count images are never whole in memory)."""
        out = tuple(np.empty(self.shape, np.float32) for _ in range(3))
        for r0, r1 in self.master_tiles():
            for full, part in zip(out, self.read_master_rows(i, r0, r1)):
                full[r0:r1] = part
        return out

    def master_tiles(self, min_tiles: int = 1) -> list[tuple[int, int]]:
        """``(r0, r1)`` row tiles in which one master is read (:meth:`read_master_rows`),
        at least ``min_tiles`` of them when the frame has as many rows (so threads can
        share them)."""
        rows = tile_rows(1, self.shape, self.memory_limit, images=6)
        rows = max(1, min(rows, -(-self.shape[0] // max(1, min_tiles))))
        return list(row_tiles(self.shape[0], rows))

    def read_master_rows(self, i: int, r0: int, r1: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``r0:r1`` of master ``i``: signal, noise-model error, subtracted-bias error,
        each ``(r1 - r0, W)`` float32 (thread-safe: every read opens its own descriptor)."""
        return tuple(part[0] for part in self.read(r0, r1, [i]))


def total_err(noise_err: np.ndarray, suberr: np.ndarray) -> np.ndarray:
    """Noise-model and subtracted-bias errors in quadrature [adu], float32."""
    return np.sqrt(noise_err * noise_err + suberr * suberr)


def load_stack(masters: list[DarkMaster], memory_limit: float = 1e9) -> SignalStack:
    """Open every master for tile reads and measure the noise model of their errors.

    The errors come from one photon-transfer model per pixel over all masters (three
    passes over row tiles, :mod:`dark_pipeline.noise_model`) when the masters span a signal range;
    else from a variance line per temperature bin (per tile).  ``memory_limit`` [byte] is
    the run's budget;
    a tile's working set is sized to :data:`TILE_SHARE` of it.
    """
    memory_limit = memory_limit * TILE_SHARE
    n = len(masters)
    rows = ProductRows([m.path for m in masters], _IMAGES)
    keys = []
    for m in masters:
        header = fits.getheader(m.path)
        keys.append(str(header.get(kw.BIASFILE, "")) + "|" + str(header.get(kw.SUBTRACT, "")))

    # signal, noise, count and (pass 2) the subtracted bias's error of every master, by
    # tiles of half the budget, two at a time (the same model as one at a time)
    tiles = list(row_tiles(rows.shape[0], tile_rows(n, rows.shape,
                                                    memory_limit / NOISE_WORKERS, images=4)))
    model = _noise_model(lambda r0, r1: _signal_noise_count(rows, r0, r1), tiles, n,
                         halves=halves_of([m.temperature for m in masters],
                                          [m.exptime for m in masters]),
                         read_suberr=lambda r0, r1: rows.read("SUBERR", r0, r1, fill=0.0),
                         groups=bias_groups(keys, [m.temperature for m in masters]),
                         workers=NOISE_WORKERS)
    if model is not None:
        logger.info("dark noise model: read variance per pixel pooled over %d masters, shot "
                    "noise %.3g adu per electron", n, model.gain)
    else:
        model = NoiseModel()
    return SignalStack(list(masters), keys, rows, model, list(range(n)), memory_limit)


def bias_groups(keys: list[str], temperatures) -> list:
    """Which masters share one subtracted bias value (so one error): those subtracted with
    one bias master (``BIASFILE|bias``), or with the bias model at one temperature bin."""
    return [key if key.endswith("|bias") else (key, float(t))
            for key, t in zip(keys, temperatures)]


def _signal_noise_count(rows: ProductRows, r0: int, r1: int):
    data = rows.read("PRIMARY", r0, r1)
    data[rows.read("MASK", r0, r1, fill=0.0) != 0] = np.nan
    return data, rows.read("NOISE", r0, r1), rows.read("NCOMB", r0, r1, fill=1.0)


def measure_rate(stack: SignalStack, idx: list[int]) -> RateMap:
    """Rate map of the masters ``idx`` of one temperature bin (see module notes), fitted
    tile by tile."""
    masters = [stack.masters[i] for i in idx]
    exptimes = np.array([m.exptime for m in masters])
    temps = np.array([m.tavg for m in masters])
    tavg = float(np.average(temps, weights=[m.ncombine for m in masters]))
    shape = stack.shape
    width = shape[1]
    single_exposure = np.unique(exptimes).size < 2
    maps = {name: np.empty(shape, np.float32) for name in
            ("slope", "slope_err", "intercept", "intercept_err", "chi2")}
    nexp = np.empty(shape, np.int8)
    full_npts = np.empty(shape, bool)
    pick_err = None  # errors of the pixels measured from one exposure (not rescaled)
    samples = []
    for r0, r1 in stack.row_tiles(images=2, planes=len(idx)):
        data, sigma, suberr = stack.read(r0, r1, idx)
        if single_exposure:
            # signal / exposure holds the subtracted bias's error as well as the master's
            # noise (a slope over exposures does not: the bias is in its offset)
            maps["slope"][r0:r1] = data[-1] / float(exptimes[-1])
            maps["slope_err"][r0:r1] = total_err(sigma[-1], suberr[-1]) / float(exptimes[-1])
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = fit_line_per_pixel(exptimes, data, sigma, x_ref=0.0)
        for name in maps:
            maps[name][r0:r1] = getattr(fit, name)
        valid = np.isfinite(data) & np.isfinite(sigma)
        nexp[r0:r1] = valid.sum(0)
        full_npts[r0:r1] = nexp[r0:r1] == exptimes.size
        # the same pixels as a stride of 97 over the whole frame: tiles start anywhere (a
        # copy: a view kept every tile's errors alive, all of them, 64 MB at 2048^2)
        first = (-r0 * width) % 97
        samples.append(sigma.reshape(sigma.shape[0], -1)[:, first::97].copy())
        single = nexp[r0:r1] == 1   # a line through one point is not a measurement
        if single.any():
            # the longer exposures saturated (a hot pixel) or were masked: the one valid
            # master still measures the rate, with the offset taken as 0
            k = np.argmax(valid, axis=0)
            pick = np.take_along_axis(data, k[None], 0)[0] / exptimes[k]
            pick_err_t = np.take_along_axis(total_err(sigma, suberr), k[None], 0)[0] \
                / exptimes[k]
            maps["slope"][r0:r1] = np.where(single, pick, maps["slope"][r0:r1])
            if pick_err is None:
                pick_err = np.full(shape, np.nan, np.float32)
            pick_err[r0:r1] = np.where(single, pick_err_t, np.nan)
    if single_exposure:
        t = float(exptimes[-1])
        logger.warning("dark %.1f degC: one exposure time (%gs); rate = signal / exposure, "
                       "residual bias would count as dark current", masters[0].temperature, t)
        zeros = np.zeros(shape, np.float32)
        return RateMap(masters[0].temperature, tavg, maps["slope"], maps["slope_err"], zeros,
                       zeros, np.full(shape, np.nan, np.float32), (t,), METHOD_SINGLE)
    chi2 = maps["chi2"]
    scale = 1.0
    good = np.isfinite(chi2) & full_npts
    if exptimes.size >= 3 and good.sum() >= 10:
        scale = math.sqrt(exact_median(chi2[good]) / chi2_median_ratio(exptimes.size - 2))
    s = np.float32(scale)
    # the slope is sum_k c_k S_k with sum_k c_k t_k = 1: it measures the rate at the temperature
    # sum_k c_k t_k T_k, which can differ from the plain mean by a few 0.01 degC
    sample = np.concatenate(samples, axis=1)  # typical errors: a sample suffices
    w = 1.0 / np.nanmedian(sample, axis=1) ** 2
    t_w = np.sum(w * exptimes) / np.sum(w)
    c = w * (exptimes - t_w) / np.sum(w * (exptimes - t_w) ** 2)
    tavg = float(np.sum(c * exptimes * temps))
    rate, rate_err = maps["slope"], maps["slope_err"]
    single = nexp == 1
    rate_err = rate_err * s
    if single.any():
        rate_err = np.where(single, pick_err, rate_err).astype(np.float32)
        logger.info("dark %.1f degC: %d pixels measured from one exposure only (the others "
                    "saturated or masked)", masters[0].temperature, int(single.sum()))
    return RateMap(masters[0].temperature, tavg, rate, rate_err, maps["intercept"],
                   maps["intercept_err"] * s, chi2 / (s * s), tuple(float(t) for t in exptimes),
                   METHOD_SLOPE, scale, nexp)


def measure_rates(stack: SignalStack) -> list[RateMap]:
    """One :class:`RateMap` per temperature bin, in increasing temperature."""
    return [measure_rate(stack, idx) for idx in stack.groups().values()]


def rate_file(folder: Path, temperature: float) -> Path:
    """``<folder>/dark_rate_T<T:.1f>C.fits``."""
    return Path(folder) / f"dark_rate_T{number_text(temperature)}C.fits"


def write_rate(rate: RateMap, path: Path, adc_bits: int = adu.DEFAULT_ADC_BITS) -> Path:
    """Rate map [adu/s] with ``UNCERT``, ``MASK`` and the ``OFFSET``, ``OFFSETERR``, ``CHI2DOF``
    extensions."""
    header = fits.Header()
    for key, value, comment in provenance_cards("DARK_RATE"):
        set_card(header, key, value, comment)
    for key, value, comment in (
            (kw.TBIN, rate.temperature, "[degC] temperature bin label"),
            (kw.TAVG, rate.tavg, "[degC] mean temperature of the frames"),
            ("RATEMETH", rate.method, "how the rate was measured"),
            ("NEXP", len(rate.exptimes), "exposure times fitted"),
            ("EXPTIMES", " ".join(f"{t:g}" for t in rate.exptimes), "[s] exposure times"),
            (kw.ERRSCALE, rate.err_scale, "noise-model errors multiplied by this"),
            ("MODEL", "S = OFFSET + RATE * t", "per pixel, weighted least squares")):
        set_card(header, key, value, comment)
    for key, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, key, value, comment)
    return write_product(path, rate.rate, header, unit=adu.RATE_UNIT, uncertainty=rate.rate_err,
                         mask=~np.isfinite(rate.rate),
                         images={"OFFSET": (rate.offset, adu.UNIT),
                                 "OFFSETERR": (rate.offset_err, adu.UNIT),
                                 "CHI2DOF": (rate.chi2dof, ""),
                                 **({"NEXP": (rate.nexp, "")} if rate.nexp is not None
                                    else {})})


def rate_maps(stack: SignalStack, out_dir: Path, adc_bits: int, files: list) -> list[RateMap]:
    """Rate map of every temperature bin, written to ``dark_rates/`` as it is measured.

    The maps are dropped once written (their :attr:`RateMap.path` kept): the 1-D model, the
    hot-pixel counts and the dark-current table read rate and error back from the files, by
    rows or one map at a time (:meth:`RateMap.loaded`), so no ``(K, H, W)`` stack of them
    is held (2 float32 maps per temperature: 300 MB at 2048^2 x 9 T).  Each map is written
    by one background thread while the next is measured (the writes were one core's work
    beside an idle one: ~1.2 s at 2048^2), so at most two maps are held, the one written
    and the one measured; the files and the list keep the bins' order.
    """
    out: list[RateMap] = []

    def write(r: RateMap) -> None:  # in the writer's thread, one map after the other
        path = write_rate(r, rate_file(out_dir / RATE_FOLDER, r.temperature), adc_bits)
        files.append(path)
        out.append(replace(r, rate=None, rate_err=None, offset=None, offset_err=None,
                           chi2dof=None, nexp=None, path=path))

    with WriteBehind(depth=1) as writer:
        for idx in stack.groups().values():
            r = measure_rate(stack, idx)
            writer.drain()  # the previous map written (its error raised here) ...
            release_free_memory()  # ... and its memory returned before this one is held
            writer.submit(lambda r=r: write(r))
            del r
        writer.drain()
    release_free_memory()
    return out


__all__ = ["RateMap", "SignalStack", "load_stack", "total_err", "measure_rate",
           "measure_rates", "rate_file", "write_rate", "rate_maps", "rate_rows", "rate_sample",
           "RATE_FOLDER", "RATE_IMAGES", "METHOD_SLOPE", "METHOD_SINGLE"]
