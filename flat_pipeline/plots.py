"""Figures of the flat pipeline.  Each ``plot_*`` takes computed results and an optional ``ax``;
it draws, labels both axes with units and returns the axes; the pipeline saves.  A figure of
full-frame maps is also split in two: ``*_data`` reduces the result to what is drawn (in the
main process), ``plot_*_data`` draws that (in the render process; see
:func:`utils.plotting.FigureWriter.save`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.io.tokens import number_text
from utils.plotting import (
    finish_axes,
    histogram,
    image_view,
    new_axes,
    show_histogram,
    show_image,
    subplots,
)

#: Longest side of an image drawn [px]: larger frames are block-averaged first (a figure
#: shows no more, and resampling a 2048 x 2048 image costs more than the rest of it).
DISPLAY_SIDE = 512


def image_data(image: np.ndarray, *, reduce=np.nanmean, percentiles=(1.0, 99.0),
               symmetric: bool = False) -> dict:
    """What :func:`_image` draws of ``image``: the :class:`~utils.plotting.ImageView` of the
    image block-reduced to ``DISPLAY_SIDE`` (colour limits from the reduced image), and the
    reduced frame's size [px] (None when not reduced) -- small, for the render process."""
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    f = max(1, int(np.ceil(max(h, w) / DISPLAY_SIDE)))
    small = image
    if f > 1:
        import warnings

        hh, ww = (h // f) * f, (w // f) * f
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
            small = reduce(image[:hh, :ww].reshape(hh // f, f, ww // f, f), axis=(1, 3))
    return {"view": image_view(small, percentiles=percentiles, symmetric=symmetric),
            "frame": (hh, ww) if f > 1 else None}


def _image(image, *, reduce=np.nanmean, percentiles=(1.0, 99.0), symmetric: bool = False,
           **kwargs):
    """:func:`utils.plotting.show_image` of ``image`` block-reduced to ``DISPLAY_SIDE`` (or of
    its :func:`image_data`), with the axes still in the frame's pixel coordinates."""
    data = image if isinstance(image, dict) else image_data(
        image, reduce=reduce, percentiles=percentiles, symmetric=symmetric)
    ax = show_image(data["view"], **kwargs)
    if data["frame"] is not None:
        hh, ww = data["frame"]
        ax.images[-1].set_extent((-0.5, ww - 0.5, -0.5, hh - 0.5))
        ax.set_xlim(-0.5, ww - 0.5)
        ax.set_ylim(-0.5, hh - 0.5)
    return ax


__all__ = ["plot_frame_levels", "plot_ptc", "plot_linearity", "plot_illumination_profile",
           "plot_illumination_map", "plot_prnu_map", "plot_prnu_histogram", "plot_defects",
           "plot_model_map", "plot_evaluation", "plot_error_maps", "plot_master", "image_data",
           "illumination_profile_data", "plot_illumination_profile_data",
           "illumination_map_data", "plot_illumination_map_data", "prnu_map_data",
           "plot_prnu_map_data", "prnu_histogram_data", "plot_prnu_histogram_data",
           "defects_data", "plot_defects_data", "model_map_data", "plot_model_map_data",
           "master_data", "plot_master_data"]


def plot_frame_levels(qc: pd.DataFrame, *, ax=None):
    """Level per second of exposure of every flat, by set; excluded frames marked."""
    ax = new_axes(ax, figsize=(7.2, 4.4))
    measured = qc[np.isfinite(qc["LEVEL_RATE"])].reset_index(drop=True)
    for n, ((tbin, exptime), part) in enumerate(measured.groupby(["TBIN", "EXPTIME"])):
        used = part["STATUS"] == "used"
        ax.plot(part.index[used], part["LEVEL_RATE"][used], "o", ms=4, color=f"C{n % 10}",
                label=f"{number_text(tbin, 'g')} degC, {exptime:g} s")
    # after the sets, and only when there are any: an 'excluded' entry sat between the first
    # two sets of the legend even when no frame was excluded
    excluded = measured["STATUS"] != "used"
    if excluded.any():
        ax.plot(measured.index[excluded], measured["LEVEL_RATE"][excluded], "x", ms=8,
                color="k", label="excluded")
    return finish_axes(ax, "frame (in set order) [index]", "level per second [adu/s]",
                       "flat levels by set (x: excluded by the frame QC)")


def plot_ptc(ptc, pairs: pd.DataFrame | None = None, *, axes=None):
    """Photon-transfer curve: temporal variance vs mean signal, fit and level pulls."""
    if axes is None:
        _, axes = subplots(2, 1, figsize=(7.2, 6.4), sharex=True, height_ratios=(3, 1))
    ax, axp = axes
    levels = ptc.levels
    if pairs is not None and len(pairs):
        ax.plot(pairs["MEAN"], pairs["VAR"], ".", ms=3, color="0.6", label="frame pairs")
    if len(levels):
        used = levels["USED"].astype(bool)
        ax.errorbar(levels["MEAN"][used], levels["VAR"][used], yerr=levels["VAR_ERR"][used],
                    fmt="o", color="C0", capsize=2, label="levels in the fit")
        ax.errorbar(levels["MEAN"][~used], levels["VAR"][~used], yerr=levels["VAR_ERR"][~used],
                    fmt="o", mfc="none", color="C1", capsize=2, label="levels left out")
        if ptc.measured:
            x = np.linspace(0, float(levels["MEAN"].max()), 100)
            ax.plot(x, ptc.intercept + x * ptc.scale / ptc.gain, "k-", lw=1,
                    label=f"K = {ptc.gain:.4f} +- {ptc.gain_err:.4f} e-/ADC count")
            axp.plot(levels["MEAN"][used], levels["PULL"][used], "o", color="C0",
                     label="fitted levels")
        if np.isfinite(ptc.saturation_adu):
            ax.axvline(ptc.saturation_adu, ls="--", color="C3", lw=1, label="saturation onset")
    axp.axhline(0, color="k", lw=0.8)
    finish_axes(ax, "mean signal [adu]", "temporal variance [adu^2]", "photon transfer (EMVA 1288)")
    finish_axes(axp, "mean signal [adu]", "pull [sigma]", "", legend=False)
    return axes


def plot_linearity(ptc, *, axes=None):
    """Mean signal vs exposure time with its straight line, and the deviations [%]."""
    if axes is None:
        _, axes = subplots(2, 1, figsize=(7.2, 6.0), sharex=True, height_ratios=(3, 1))
    ax, axd = axes
    lin = ptc.linearity
    if len(lin):
        ax.plot(lin["EXPTIME"], lin["MEAN"], "o", label="levels (5-95 % of saturation)")
        ax.plot(lin["EXPTIME"], lin["FIT"], "k-", lw=1, label="straight line")
        axd.plot(lin["EXPTIME"], lin["DEVIATION"], "o")
    axd.axhline(0, color="k", lw=0.8)
    finish_axes(ax, "exposure time [s]", "mean signal [adu]",
                f"linearity error {ptc.linearity_error:.3f} %" if len(lin)
                else "linearity (too few levels)")
    finish_axes(axd, "exposure time [s]", "deviation [%]", "", legend=False)
    return axes


def illumination_profile_data(master: np.ndarray, ill, *, sample: int = 20000,
                              seed: int = 0) -> dict:
    """What :func:`plot_illumination_profile` draws: the sampled pixels' distances, data and
    model values, and the texts."""
    h, w = master.shape
    x0, y0 = ill.model.centre
    c0 = ill.model.value("c0")
    data = (master / np.float32(c0)).ravel()
    model = ill.relative.ravel()
    ok = np.flatnonzero(np.isfinite(data) & np.isfinite(model))
    if ok.size > sample:
        ok = np.random.default_rng(seed).choice(ok, sample, replace=False)
    # the distance of the plotted pixels only (full-frame index grids: ~200 MB at 2048^2)
    y, x = np.divmod(ok, w)
    r = np.hypot(x - x0, y - y0)
    order = np.argsort(r)
    fall, err = ill.model.corner_falloff()
    return {"r": r, "data": data[ok], "r_sorted": r[order], "model_sorted": model[ok[order]],
            "title": f"{ill.tag}: centre ({x0:.1f}, {y0:.1f}) px\n"  # one line was clipped
                     f"corner fall-off {fall:.2f} +- {err:.2f} %"}


def plot_illumination_profile_data(data: dict, *, ax=None):
    """The figure of :func:`illumination_profile_data`."""
    ax = new_axes(ax)
    ax.plot(data["r"], data["data"], ".", ms=1.5, alpha=0.3, color="0.5",
            label="master / C0 (pixels)")
    ax.plot(data["r_sorted"], data["model_sorted"], "-", color="C3", lw=1, label="model V")
    return finish_axes(ax, "distance to the optical centre [px]",
                       "relative illumination [1]", data["title"])


def plot_illumination_profile(master: np.ndarray, ill, *, ax=None, sample: int = 20000,
                              seed: int = 0):
    """Relative illumination of a pixel sample vs distance to the optical centre, with the
    model's."""
    return plot_illumination_profile_data(
        illumination_profile_data(master, ill, sample=sample, seed=seed), ax=ax)


def illumination_map_data(ill) -> dict:
    """What :func:`plot_illumination_map` draws."""
    return {"image": image_data(ill.relative), "centre": tuple(ill.model.centre),
            "tag": ill.tag}


def plot_illumination_map_data(data: dict, *, ax=None):
    """The map of :func:`illumination_map_data`."""
    ax = _image(data["image"], ax=ax, unit="1", label="V",
                title=f"illumination relative to the optical centre ({data['tag']})")
    x0, y0 = data["centre"]
    ax.plot([x0], [y0], "r+", ms=12, label="optical centre")
    ax.legend(fontsize="small")
    return ax


def plot_illumination_map(ill, *, ax=None):
    """The relative illumination V with the optical centre."""
    return plot_illumination_map_data(illumination_map_data(ill), ax=ax)


def prnu_map_data(prnu) -> dict:
    """What :func:`plot_prnu_map` draws."""
    return {"image": image_data(prnu.data)}


def plot_prnu_map_data(data: dict, *, ax=None):
    """The map of :func:`prnu_map_data`."""
    return _image(data["image"], ax=ax, unit="1", label="response",
                  title="photo-response non-uniformity (master / illumination model)")


def plot_prnu_map(prnu, *, ax=None):
    """Combined PRNU map (response relative to the smooth illumination)."""
    return plot_prnu_map_data(prnu_map_data(prnu), ax=ax)


def prnu_histogram_data(prnu, stats: dict) -> dict:
    """What :func:`plot_prnu_histogram` draws (a :class:`~utils.plotting.Histogram`)."""
    from utils.stack.stats import exact_nanmedian  # made here, in the main process

    values = 100.0 * (prnu.data - 1.0)
    return {"values": histogram(values[np.isfinite(values)]), "xlabel": "response - 1 [%]",
            "title": f"PRNU {stats.get('PRNU_PCT', np.nan):.3f} +- "
                     f"{stats.get('PRNU_ERR_PCT', np.nan):.3f} % (EMVA 1288)",
            "markers": {"median": exact_nanmedian(values)}}  # np.nanmedian's


def plot_prnu_histogram_data(data: dict, *, ax=None):
    """The histogram of :func:`prnu_histogram_data`."""
    ax = show_histogram(ax=ax, **data)
    ax.set_ylabel("pixels [count]")
    return ax


def plot_prnu_histogram(prnu, stats: dict, *, ax=None):
    """Histogram of the response deviations [%], with the EMVA PRNU."""
    return plot_prnu_histogram_data(prnu_histogram_data(prnu, stats), ax=ax)


def defects_data(bits: np.ndarray) -> dict:
    """What :func:`plot_defects` draws."""
    return {"image": image_data(bits.astype(float), reduce=np.nanmax, percentiles=(0.0, 100.0)),
            "count": int((bits != 0).sum())}


def plot_defects_data(data: dict, *, ax=None):
    """The map of :func:`defects_data`."""
    return _image(data["image"], ax=ax, unit="bits 1 dead, 2 cold, 4 column", label="defect",
                  title=f"response defects ({data['count']} pixels)", cmap="magma")


def plot_defects(bits: np.ndarray, *, ax=None):
    """Defect map: dead, cold, column defect bits."""
    return plot_defects_data(defects_data(bits), ax=ax)


def model_map_data(model, j: int) -> dict:
    """What :func:`plot_model_map` draws."""
    name = "ABC"[j]
    what = (f"flat at {number_text(model.t_ref, '.2f')} degC, {model.exp_ref:g} s",
            "temperature coefficient", "exposure-time coefficient")[j]
    dropped = f"\nnot fitted: {model.dropped[name]}" if name in model.dropped else ""
    return {"image": image_data(model.coef[j], symmetric=j > 0),
            "unit": ("1", "1/degC", "1/s")[j], "label": name,
            "title": f"flat model {name}: {what}{dropped}"}


def plot_model_map_data(data: dict, *, ax=None):
    """The map of :func:`model_map_data`."""
    return _image(data["image"], ax=ax, unit=data["unit"], label=data["label"],
                  title=data["title"])


def plot_model_map(model, j: int, *, ax=None):
    """Map of A [1], B [1/degC] or C [1/s] of the flat model (a term not fitted says why on a
    second title line)."""
    return plot_model_map_data(model_map_data(model, j), ax=ax)


def plot_evaluation(table: pd.DataFrame, *, axes=None):
    """MAE [1] and pull standard deviation of every master."""
    if axes is None:
        _, axes = subplots(2, 1, figsize=(7.2, 6.0), sharex=True)
    ax, axp = axes
    x = np.arange(len(table))
    ax.bar(x, table["MAE"], color="C0", label="MAE")
    axp.plot(x, table["PULL_STD"], "o", color="C1", label="pull std (leave-one-out)")
    axp.axhline(1.0, color="k", lw=0.8, ls="--", label="expected 1")
    axp.set_xticks(x, [str(t) for t in table["TAG"]], rotation=45, ha="right", fontsize=7)
    exact = "PULL_MODEL" in table and len(table) > 0 and \
        table["PULL_MODEL"].astype(str).str.startswith("none: exact fit").all()
    title = "flat model vs each master"
    if exact:  # the residuals are rounding: no test of the model (qamodes review)
        title += "\nexact fit (as many masters as terms): residuals are rounding"
        axp.text(0.5, 0.25, "no pull: the model passes through every master",
                 transform=axp.transAxes, ha="center", va="center",
                 bbox={"facecolor": "white", "edgecolor": "none"})
    finish_axes(ax, "master [tag]", "mean absolute error [1]", title)
    finish_axes(axp, "master [tag]", "pull standard deviation [1]", "")
    return axes


def plot_error_maps(maps: dict, which: int, *, title: str, unit: str, axes=None):
    """Grid of reduced per-master error maps (``which`` 0: |r| [1], 1: APE [%])."""
    tags = list(maps)
    ncol = min(4, max(1, len(tags)))
    nrow = -(-len(tags) // ncol)
    if axes is None:
        _, axes = subplots(nrow, ncol, figsize=(2.8 * ncol + 1, 2.4 * nrow + 0.6),
                           squeeze=False)
    values = np.concatenate([v[which][np.isfinite(v[which])].ravel() for v in maps.values()]
                            or [np.zeros(1)])
    top = float(np.percentile(values, 99)) if values.size else 1.0
    im = None
    for n, ax in enumerate(np.ravel(axes)):
        if n >= len(tags):
            ax.set_axis_off()
            continue
        im = ax.imshow(maps[tags[n]][which], origin="lower", vmin=0, vmax=top or 1.0,
                       interpolation="nearest", cmap="magma")
        ax.set_title(tags[n], fontsize=8)
        ax.set_xlabel("column [block]", fontsize=7)
        ax.set_ylabel("row [block]", fontsize=7)
        ax.tick_params(labelsize=6)
    if im is not None:
        np.ravel(axes)[0].figure.colorbar(im, ax=axes, label=f"{title} [{unit}]", shrink=0.8)
    np.ravel(axes)[0].figure.suptitle(title)
    return axes


def master_data(data: np.ndarray, tag: str) -> dict:
    """What :func:`plot_master` draws."""
    return {"image": image_data(data), "tag": tag}


def plot_master_data(data: dict, *, ax=None):
    """The map of :func:`master_data`."""
    return _image(data["image"], ax=ax, unit="1", label="flat",
                  title=f"master flat {data['tag']}")


def plot_master(data: np.ndarray, tag: str, *, ax=None):
    """A normalised master flat."""
    return plot_master_data(master_data(data, tag), ax=ax)
