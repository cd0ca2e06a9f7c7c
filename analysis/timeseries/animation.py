"""Animations of a decimated, display-resolution sequence: GIF always, MP4 when ffmpeg exists.

GIFs use matplotlib's ``PillowWriter`` (Pillow comes with matplotlib, so no new
dependency).  MP4 needs an ``ffmpeg`` executable; without one the MP4 is
skipped with a log line, never an error.  Files are written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.io.fitsio import atomic_path

logger = logging.getLogger(__name__)


def ffmpeg_available() -> bool:
    """True when matplotlib finds an ``ffmpeg`` executable."""
    import matplotlib.animation as animation

    return bool(animation.writers.is_available("ffmpeg"))


def _writer(path: Path, fps: float):
    """Matplotlib's Pillow (GIF) or FFMpeg (MP4) writer, fed the canvas as it is.

    The stock writers re-draw the whole figure for every frame (a ``savefig``);
    here only the image and caption are re-drawn onto a cached background
    (blitting), which is an order of magnitude faster for long sequences.
    """
    import matplotlib.animation as animation
    from PIL import Image

    class _BlitPillow(animation.PillowWriter):
        def grab_frame(self, **savefig_kwargs):
            canvas = self.fig.canvas
            self._frames.append(Image.frombuffer("RGBA", canvas.get_width_height(),
                                                 bytes(canvas.buffer_rgba()), "raw", "RGBA",
                                                 0, 1))

    class _BlitFFMpeg(animation.FFMpegWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.frame_format = "rgba"

        def grab_frame(self, **savefig_kwargs):
            self._proc.stdin.write(bytes(self.fig.canvas.buffer_rgba()))

    return _BlitPillow(fps=fps) if path.suffix.lower() == ".gif" else _BlitFFMpeg(fps=fps)


def write_animation(images: np.ndarray, captions: Sequence[str], path: str | os.PathLike, *,
                    fps: float, unit: str, label: str, title: str, vmin: float, vmax: float,
                    cmap: str = "gray", factor: int = 1) -> Path:
    """Write ``images`` (``(M, h, w)``) as an animation (format from the suffix: .gif or .mp4).

    Parameters
    ----------
    images : numpy.ndarray
        Display frames.
    captions : sequence of str
        One caption per frame (e.g. time and dose rate).
    path : path-like
        Destination, ``.gif`` or ``.mp4``.
    fps : float
        Frames per second.
    unit, label : str
        Colour-bar unit and quantity.
    title : str
        Figure title.
    vmin, vmax : float
        Fixed colour limits (the same for every frame).
    cmap : str, optional
        Colour map.
    factor : int, optional
        Pixels per display pixel (axes are labelled in sensor pixels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 5.0), dpi=90)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.1, top=0.92)
    h, w = images.shape[1:]
    extent = (-0.5, w * factor - 0.5, -0.5, h * factor - 0.5)
    im = ax.imshow(images[0], origin="lower", interpolation="nearest", cmap=cmap, vmin=vmin,
                   vmax=vmax, extent=extent, animated=True)
    ax.set_xlabel("column [px]")
    ax.set_ylabel("row [px]")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=f"{label} [{unit}]", shrink=0.85,
                 extend=colour_extend(images, vmin, vmax))
    text = ax.text(0.02, 0.97, captions[0], transform=ax.transAxes, va="top", ha="left",
                   color="yellow", fontsize=8, animated=True,
                   bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
    writer = _writer(path, fps)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            with writer.saving(fig, str(tmp), dpi=fig.dpi):
                fig.canvas.draw()  # everything but the animated image and caption
                background = fig.canvas.copy_from_bbox(fig.bbox)
                for image, caption in zip(images, captions):
                    fig.canvas.restore_region(background)
                    im.set_data(image)
                    text.set_text(caption)
                    ax.draw_artist(im)
                    ax.draw_artist(text)
                    writer.grab_frame()
    finally:
        plt.close(fig)
    return path


def colour_extend(images: np.ndarray, vmin: float, vmax: float) -> str:
    """Matplotlib ``extend`` of a colour bar: which ends the data pass (values there are
    drawn in the end colour, and the bar's arrow says so).

    Examples
    --------
    >>> colour_extend(np.array([0.0, 5.0, 900.0]), 0.0, 150.0)
    'max'
    >>> colour_extend(np.array([-1.0, 5.0]), 0.0, 150.0), colour_extend(np.ones(2), 0.0, 2.0)
    ('min', 'neither')
    """
    finite = np.asarray(images, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return "neither"
    low, high = bool(finite.min() < vmin), bool(finite.max() > vmax)
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (low, high), "neither")


def write_animations(images: np.ndarray, captions: Sequence[str], gif_path: str | os.PathLike,
                     **kwargs) -> list[Path]:
    """The GIF, and the MP4 beside it when ffmpeg is available (the caller says once per run
    when it is not: :func:`note_missing_ffmpeg`)."""
    written = [write_animation(images, captions, gif_path, **kwargs)]
    if ffmpeg_available():
        written.append(write_animation(images, captions, Path(gif_path).with_suffix(".mp4"),
                                       **kwargs))
    return written


def note_missing_ffmpeg() -> None:
    """One log line when there is no ffmpeg: the animations are GIFs only."""
    if not ffmpeg_available():
        logger.info("no ffmpeg executable: animations written as GIF only (no .mp4; the GIFs "
                    "have the same frames)")


__all__ = ["write_animation", "write_animations", "ffmpeg_available", "note_missing_ffmpeg",
           "colour_extend"]
