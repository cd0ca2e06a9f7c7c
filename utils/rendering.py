"""Where figures are rendered: PNG files written off the critical path of a run.

Inside :func:`figure_output` (the commands open one from their ``--plots`` option) a
figure is rendered to PNG by a separate process at the lowest priority while the run goes
on; the pool is drained when the block ends.  The pipelines send it a *drawing*
(:func:`drawing`: :class:`functools.partial` of a ``plot_*`` function and the small data it
draws -- an :class:`utils.plotting.ImageView` of a map, a :class:`utils.plotting.Histogram`
of values, a table), and the figure is built there too; a figure drawn here (a lambda's) is
pickled and sent -- small either way: images are display copies.  ``--plots`` chooses how
many are drawn (:data:`LEVELS`); a figure that fails to draw or to render is logged as a
warning and never stops the run or loses a product.  :mod:`utils.plotting` re-exports the
public names (``plotting.save``, ``plotting.figure_output``...).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import pickle
import sys
import threading
import time
import types
from concurrent.futures import Future
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Figure levels of ``--plots``, from fewest to most.
LEVELS = ("none", "summary", "all")
#: Figures waiting for the renderer; with this many, or :data:`MAX_PENDING_BYTES` of them,
#: :meth:`FigureWriter.save` renders the next one in its own process instead of queueing it
#: (bounds the memory the pickled figures hold, and keeps the main process busy rather than
#: waiting).  Drawings are small (a heatmap's 5 kB): with the renderer drawing them too, a
#: burst of 10 (the dark heatmaps) queues rather than taking the main process's time.
MAX_PENDING = 24
#: Bytes of the figures waiting for the renderer that make :meth:`FigureWriter.save`
#: render the next one here (8 figures of a 1 MB display copy: the former bound of 8).
MAX_PENDING_BYTES = 8 * 2**20
#: Niceness added to the rendering process (the lowest priority): on a machine whose cores
#: the computation keeps busy, the kernel gives them to it first and the figures take the
#: idle moments; the run waits for the last of them at its end, when nothing else runs (the
#: 1024^2 bench campaign on 2 cores: 44.1, 44.4 s -> 42.6, 41.7 s wall, figures written as
#: before, none rendered in the main process).
RENDER_NICENESS = 19
#: Garbage-collection thresholds of the rendering process (Python's are 700, 10, 10): a
#: figure allocates ~10^5 objects, so the default collected ~14 times a figure, walking
#: matplotlib's long-lived objects each time (0.46 s of the 47 campaign figures' 8 s; 0.18 s
#: with these, the process's peak RSS 136 -> 144 MB).  Closed figures are freed by reference
#: counting either way.
RENDER_GC_THRESHOLDS = (50_000, 50, 100)


# --- figures to PNG -------------------------------------------------------------

def _figure_of(drawn):
    """The figure of what a ``plot_*`` function returned (axes, array of axes, figure)."""
    if hasattr(drawn, "savefig"):
        return drawn
    first = np.ravel(np.asarray(drawn, dtype=object))[0] if isinstance(
        drawn, (list, tuple, np.ndarray)) else drawn
    return first.figure


#: zlib level of the PNGs' unfiltered rows (:mod:`utils.io.png`): level 1 deflates the 47
#: figures of the 1024^2 bench campaign to 5.61 MB in 0.32 s CPU, level 3 to 5.43 MB in 0.43 s
#: (PIL's encoder at level 3, with its adaptive row filters, wrote 7.08 MB in 0.65 s).
PNG_COMPRESS_LEVEL = 1


def write_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render ``fig`` to a PNG at ``dpi`` (atomically) and close it; the same pixels as
    ``fig.savefig``, in about 20 % less time.  Every PNG of the project is written here
    (also through :func:`utils.io.fitsio.save_figure`).

    ``fig.savefig`` of a constrained-layout figure draws it twice: once with drawing
    disabled, only so that the layout runs (and every tick, label and line is computed for
    nothing), then for real.  Here the layout engine runs on its own, then one draw; the
    image (opaque: RGB, a quarter fewer bytes) is encoded by :func:`utils.io.png.encode_rgb`
    (unfiltered rows at :data:`PNG_COMPRESS_LEVEL`; the pixels PIL would write, in half its
    time).
    A figure without a layout engine, or not opaque, goes through ``savefig`` (a figure
    without a layout engine cropped to its artists).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (closed afterwards, also on error).
    path : str or os.PathLike
        The PNG written.
    dpi : int, optional
        Resolution [dot/inch]. Default is 110.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .io.atomic import atomic_path  # not utils.io.fitsio: the renderer needs no astropy
    from .io.png import write_rgb

    engine = fig.get_layout_engine()
    if engine is None:
        return _savefig(fig, path, dpi)
    canvas = fig.canvas  # pyplot's Agg canvas: plt.close finds the figure through it
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    try:
        fig.set_dpi(dpi)
        _share_renderer(canvas)
        _edge_spines_out_of_layout(fig)
        engine.execute(fig)  # what savefig's first, disabled draw is for
        fig.set_layout_engine("none")
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        if not (rgba[..., 3] == 255).all():  # a transparent figure: as matplotlib writes it
            fig.set_layout_engine(engine)
            return _savefig(fig, path, dpi)
        software = f"Matplotlib version{matplotlib.__version__}, https://matplotlib.org/"
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            write_rgb(file, rgba, dpi=dpi, text={"Software": software},
                      level=PNG_COMPRESS_LEVEL)
    finally:
        plt.close(fig)
    return Path(path)


#: Agg renderers kept for the next figures of the same size, per thread (:func:`_share_renderer`).
_RENDERERS = threading.local()
#: Most renderers kept per thread (distinct figure sizes; ~1 MB of pixels each).
MAX_SHARED_RENDERERS = 8


def _share_renderer(canvas) -> None:
    """Give ``canvas`` the Agg renderer of the last figure of its size and dpi drawn here.

    matplotlib caches the size of every text it measures per renderer, and an Agg canvas makes
    a new renderer for each figure, so every figure measured its tick labels, titles and
    labels afresh (FreeType layouts, ~0.6 ms each).  A renderer is cleared at the start of
    each draw and its measurements depend only on the text, font and dpi, so the pixels are
    the same; the campaign's 47 figures measure ~1200 texts -> a few hundred (render CPU
    -6 %).  Per thread: a renderer must not draw two figures at once.  A canvas that keeps
    its renderer otherwise (another matplotlib) just makes its own, as before.
    """
    width, height = canvas.get_width_height(physical=True)
    key = (width, height, canvas.figure.dpi)  # FigureCanvasAgg.get_renderer's own key
    kept = getattr(_RENDERERS, "by_key", None)
    if kept is None:
        kept = _RENDERERS.by_key = {}
    renderer = kept.get(key)
    if renderer is None:
        while len(kept) >= MAX_SHARED_RENDERERS:
            kept.pop(next(iter(kept)))
        kept[key] = canvas.get_renderer()
    else:
        canvas.renderer, canvas._lastKey = renderer, key


def _edge_spines_out_of_layout(fig) -> None:
    """Leave the spines on the axes' edges out of the layout's measurements.

    A spine's extent is the axes' edge and its ticks' marks, which the layout measures anyway
    (the axes and the axis with its tick labels) -- except half the spine's width beyond the
    edge (0.4 pt), within the layout's padding (3 pt).  Measuring a spine updates its axis'
    ticks again: a fifth of the tick updates of a figure's layout passes.  A spine moved away
    from the edge (``set_position``) stays measured.
    """
    edge = (None, ("outward", 0), ("outward", 0.0))  # None: not set, the edge
    for ax in fig.axes:
        for spine in ax.spines.values():
            # a colour bar's outline is its axes' edge; an axes' spine is unless moved
            # (get_position would reset the axis' ticks: the stored position is read)
            if spine.spine_type == "colorbar" or (
                    spine.spine_type in ("left", "right", "top", "bottom")
                    and getattr(spine, "_position", "moved") in edge):
                spine.set_in_layout(False)


def _savefig(fig, path: str | os.PathLike, dpi: int) -> Path:
    """``fig.savefig`` as PNG (atomically), cropped to its artists when it has no layout
    engine (``bbox_inches="tight"``: a second layout pass), then closed."""
    import matplotlib.pyplot as plt

    from .io.atomic import atomic_path

    tight = {} if fig.get_layout_engine() is not None else {"bbox_inches": "tight"}
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **tight)
    finally:
        plt.close(fig)
    return Path(path)


def drawing(plot, /, *args, **kwargs) -> functools.partial:
    """A drawing for :func:`save`: ``plot(*args, **kwargs)``, called in the process that
    renders the figure.

    ``plot`` must be a module-level function (picklable) and the arguments small: what the
    figure shows, not the result it was computed from (see :class:`ImageView`,
    :class:`Histogram`).

    Examples
    --------
    >>> from utils.plotting import histogram, show_histogram
    >>> drawing(show_histogram, histogram([1.0, 2.0]), xlabel="x [s]", title="t").func.__name__
    'show_histogram'
    """
    return functools.partial(plot, *args, **kwargs)


class NotDrawn(Exception):
    """A drawing (:class:`functools.partial`) failed in the process rendering it."""


def _drawn_figure(draw):
    """The figure ``draw()`` draws; a figure it leaves half drawn when it fails is closed
    (the render process draws hundreds)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        return _figure_of(draw())
    except Exception:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
        raise


def _render(payload: bytes, path: str, dpi: int) -> tuple[str, float]:
    """Worker side: unpickle a figure, or a drawing (:class:`functools.partial`) and draw
    it, and save it as PNG (atomically); the path and the CPU time it took [s] (logged by
    the parent: a worker's log goes nowhere).  A drawing that fails raises
    :class:`NotDrawn`."""
    import matplotlib

    matplotlib.use("Agg")
    start = time.process_time()
    fig = pickle.loads(payload)
    if isinstance(fig, functools.partial):
        try:
            fig = _drawn_figure(fig)
        except Exception as err:  # noqa: BLE001 - told to the parent, which logs it
            raise NotDrawn(f"{type(err).__name__}: {err}") from None
    written = write_png(fig, path, dpi=dpi)
    return str(written), time.process_time() - start


def _warm() -> int:
    """Worker start-up: lower the process's priority (:data:`RENDER_NICENESS`), collect its
    garbage less often (:data:`RENDER_GC_THRESHOLDS`) and import matplotlib once, before
    the first figure arrives."""
    import matplotlib

    with contextlib.suppress(OSError):  # a platform or sandbox without nice: as before
        os.nice(RENDER_NICENESS)
    gc.set_threshold(*RENDER_GC_THRESHOLDS)

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    return os.getpid()


@contextlib.contextmanager
def _bare_main():
    """Hide the ``__main__`` module while a spawned worker starts.

    A spawned process re-imports the parent's main module (``run_calibration.py``
    imports every pipeline: numba, astropy, pandas, ~250 MB); the renderer needs
    none of it.  Swapped only for the start of the pool's process.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


class FigureWriter:
    """Draws figures of a level and saves them, rendered in a process pool or here.

    Parameters
    ----------
    level : str, optional
        One of :data:`LEVELS`. Default is ``summary``.
    workers : int, optional
        Rendering processes; 0 renders in this process (synchronously). Default is 0.

    Examples
    --------
    >>> writer = FigureWriter("none")
    >>> writer.wants("summary"), writer.save(lambda: None, "x.png") is None
    (False, True)
    """

    def __init__(self, level: str = "summary", workers: int = 0):
        if level not in LEVELS:
            raise ValueError(f"plots must be one of {', '.join(LEVELS)}, not {level!r}")
        self.level, self.workers = level, int(workers)
        self._pool = None
        self._pending: list = []
        self.failed: list[Path] = []

    def wants(self, level: str = "summary") -> bool:
        """Whether figures of ``level`` (``summary`` or ``all``) are drawn."""
        return self.level != "none" and LEVELS.index(self.level) >= LEVELS.index(level)

    def save(self, draw, path: str | os.PathLike, *, level: str = "summary",
             dpi: int = 110) -> Path | None:
        """Draw and save ``path`` as PNG.

        ``draw`` is one of:

        * a drawing, :class:`functools.partial` of a module-level ``plot_*`` function and
          the small data it draws (an :class:`ImageView` rather than a full map, a
          :class:`Histogram` rather than the values): pickled as it is and drawn in the
          render process, so the figure is built off the critical path;
        * a callable (a lambda, built here): ``draw()`` returns the drawn axes or figure --
          or a drawing, then sent as above (data prepared here only when ``level`` is
          wanted);
        * already drawn axes or a figure.

        Returns the path, or None when the level is not wanted or drawing here failed
        (logged as a warning: a figure never stops a run).  In a pool the PNG is written a
        little later (a drawing that fails there is logged the same way); :meth:`close`
        waits for it.
        """
        if not self.wants(level):
            if not callable(draw):
                _close(draw)
            return None
        path = Path(path)
        try:
            drawn = draw if isinstance(draw, functools.partial) else (
                draw() if callable(draw) else draw)
            subject = drawn if isinstance(drawn, functools.partial) else _figure_of(drawn)
        except Exception as err:  # noqa: BLE001 - a figure must never lose a product
            logger.warning("figure %s not drawn: %s: %s", path, type(err).__name__, err)
            self.failed.append(path)
            return None
        if not self.workers:
            return self._render_here(subject, path, dpi)
        while self._pending and self._pending[0][1].done():
            self._collect(self._pending.pop(0))
        if len(self._pending) >= MAX_PENDING or sum(
                len(item[2]) for item in self._pending if len(item) > 2) >= MAX_PENDING_BYTES:
            # the renderer is behind: render this one here rather than wait for it idle
            # (a burst of figures then takes both processes, not one)
            return self._render_here(subject, path, dpi)
        try:
            payload = pickle.dumps(subject, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - an unpicklable artist: render it here
            logger.debug("figure %s rendered in the main process: %s", path, err)
            return self._render_here(subject, path, dpi)
        try:
            future = self._executor().submit(_render, payload, str(path), dpi)
        except Exception as err:  # noqa: BLE001 - a dead renderer: draw here from now on
            logger.warning("figure renderer unavailable (%s: %s); figures are rendered in the "
                           "main process", type(err).__name__, err)
            self.workers = 0
            return self._render_here(subject, path, dpi)
        logger.debug("figure %s sent to the renderer: %s, %d bytes", path,
                     "drawing" if isinstance(subject, functools.partial) else "figure",
                     len(payload))
        _close(subject)
        self._pending.append((path, future, payload, dpi))
        return path

    def _render_here(self, subject, path: Path, dpi: int) -> Path | None:
        """Draw (a drawing) and render ``subject`` in this process."""
        if isinstance(subject, functools.partial):
            try:
                subject = _drawn_figure(subject)
            except Exception as err:  # noqa: BLE001 - a figure must never lose a product
                logger.warning("figure %s not drawn: %s: %s", path, type(err).__name__, err)
                self.failed.append(path)
                return None
        start = time.process_time()
        try:
            written = write_png(subject, path, dpi=dpi)
            logger.debug("figure %s rendered here in %.3f s CPU", path,
                         time.process_time() - start)
            return written
        except Exception as err:  # noqa: BLE001
            _close(subject)
            logger.warning("figure %s not rendered: %s: %s", path, type(err).__name__, err)
            self.failed.append(path)
            return None

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
            with _bare_main():  # the workers start now, without the parent's main module
                for future in [self._pool.submit(_warm) for _ in range(self.workers)]:
                    future.result()
        return self._pool

    def _collect(self, item) -> None:
        path, future = item[:2]
        try:
            _, seconds = future.result()
            logger.debug("figure %s rendered in %.3f s CPU", path, seconds)
        except NotDrawn as err:
            logger.warning("figure %s not drawn: %s", path, err)
            self.failed.append(path)
        except Exception as err:  # noqa: BLE001
            logger.warning("figure %s not rendered: %s: %s", path, type(err).__name__, err)
            self.failed.append(path)

    def wait(self) -> None:
        """Wait until every figure submitted so far is written (or has failed).

        While waiting, this process renders the figures queued last that the renderer has
        not taken yet (cancelled there first), so the two share the backlog: the run's end
        waits for the flat pipeline's last figures with nothing else to do.
        """
        while self._pending:
            if not self._pending[0][1].done():
                self._render_queued_here()
            self._collect(self._pending.pop(0))

    def _render_queued_here(self) -> None:
        """Render here, last first, the pending figures that the pool has not started."""
        for n in range(len(self._pending) - 1, 0, -1):
            if len(self._pending[n]) < 4 or self._pending[n][1].done():
                continue  # rendered here already, or by the pool
            path, future, payload, dpi = self._pending[n]
            if not future.cancel():  # already handed to the renderer: so are those before
                return
            done: Future = Future()
            try:
                done.set_result(_render(payload, str(path), dpi))
            except Exception as err:  # noqa: BLE001 - reported by _collect as from the pool
                done.set_exception(err)
            self._pending[n] = (path, done)
            if self._pending[0][1].done():
                return

    def wait_under(self, folder: str | os.PathLike) -> None:
        """Wait until every figure submitted so far below ``folder`` is written (or failed);
        the others keep rendering."""
        folder = Path(folder).resolve()
        others = []
        for item in self._pending:
            path = Path(item[0]).resolve()
            if path == folder or folder in path.parents:
                self._collect(item)
            else:
                others.append(item)
        self._pending = others

    def close(self) -> None:
        """Wait for the pending figures and stop the pool."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _close(drawn) -> None:
    if drawn is None or isinstance(drawn, functools.partial):
        return
    import matplotlib.pyplot as plt

    try:
        plt.close(_figure_of(drawn))
    except (AttributeError, IndexError, TypeError):
        pass


_ACTIVE: list[FigureWriter] = []
_DEFAULT = FigureWriter("summary")


def figures() -> FigureWriter:
    """The writer of the innermost :func:`figure_output` block, else a synchronous one at
    level ``summary`` (library calls, tests)."""
    return _ACTIVE[-1] if _ACTIVE else _DEFAULT


def save(draw, path: str | os.PathLike, *, level: str = "summary", dpi: int = 110
         ) -> Path | None:
    """:meth:`FigureWriter.save` of the current writer (see :func:`figures`)."""
    return figures().save(draw, path, level=level, dpi=dpi)


def wants(level: str = "summary") -> bool:
    """Whether the current writer draws figures of ``level``."""
    return figures().wants(level)


@contextlib.contextmanager
def figure_output(level: str = "summary", workers: int | None = None):
    """Figures of the block drawn at ``level`` and rendered by ``workers`` processes.

    Parameters
    ----------
    level : str, optional
        One of :data:`LEVELS`. Default is ``summary``.
    workers : int, optional
        Rendering processes (0: in this process). Default: 1 when more than one CPU is
        available, else 0.

    Yields
    ------
    FigureWriter
        The block's writer; every figure is written when the block ends.
    """
    if workers is None:
        workers = 1 if (os.cpu_count() or 1) > 1 and level != "none" else 0
    writer = FigureWriter(level, workers)
    _ACTIVE.append(writer)
    try:
        yield writer
    finally:
        _ACTIVE.remove(writer)
        writer.close()


def add_plots_option(parser) -> None:
    """``--plots {none,summary,all}`` and the old ``--no-save-plots`` (= ``--plots none``)."""
    parser.add_argument("--plots", choices=list(LEVELS), default="summary",
                        help="figures drawn: none, summary (those a report needs) or all "
                             "(also one per master and per (T, t) set)")
    parser.add_argument("--no-save-plots", dest="plots", action="store_const", const="none",
                        help="same as --plots none")
