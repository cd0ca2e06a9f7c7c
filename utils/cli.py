"""Command-line conventions shared by every entry point.

* kebab-case flags, with the old snake_case spellings accepted as hidden
  aliases (``--output_dir`` still works for ``--output-dir``);
* ``--help`` shows an example (the module docstring's ``Example`` block);
* ``-v/--verbose`` and ``--log-level`` set logging, which only entry points do;
* :func:`run_cli` turns a :class:`~utils.errors.UserError` into one log line
  and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .errors import FrameError, UserError

logger = logging.getLogger(__name__)

#: Exit status of a user error (bad path, malformed input).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130
#: Operating-system errors that are the user's to fix, and what to do about them.
_USER_ERRNOS = {
    errno.EACCES: "check the permissions of that file or folder",
    errno.EPERM: "check the permissions of that file or folder",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.ENOSPC: "the disk is full: free space or choose another output folder; re-run to "
                  "finish (complete products are kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output folder",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example layout and hides the snake_case aliases from ``--help``."""

    def _format_action_invocation(self, action):
        if action.option_strings:
            shown = [s for s in action.option_strings if not _is_alias(s)]
            action = argparse.Action(shown or action.option_strings, action.dest,
                                     nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        # no "(default: None)" after a help text that already says what the default is, and
        # none for flags and unset options
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _is_alias(option: str) -> bool:
    return option.startswith("--") and "_" in option[2:]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that adds a snake_case alias to every kebab-case flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        """One line, exit status 2: the usage block argparse prints first (up to 40 lines for
        the pipelines) pushed the message to the end of a screenful."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_argument(self, *names, **kwargs):  # noqa: D102 - same contract as argparse
        extra = [n.replace("-", "_").replace("__", "--", 1) for n in names
                 if n.startswith("--") and "-" in n[2:]]
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float  # 'nan' or 'inf' is never a meaningful setting
        return super().add_argument(*names, *extra, **kwargs)


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``/``inf`` rejected with a usage error)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


finite_float.__name__ = "finite number"  # argparse shows it: "invalid finite number value"


def make_parser(prog: str, doc: str | None) -> ArgumentParser:
    """Build a parser whose description is the module docstring (which holds an example).

    Parameters
    ----------
    prog : str
        Program name shown in usage lines, e.g. ``python -m utils.raw_to_fits``.
    doc : str
        Module docstring; its first paragraph and ``Example`` block are shown by ``--help``.
    """
    parser = ArgumentParser(prog=invoked_as(prog), description=doc)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: info, -vv: debug)")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="explicit log level (overrides -v)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars")
    return parser


def _module_of(prog: str) -> str:
    """Module name of a documented command (``python utils/raw_to_fits.py`` -> dotted name)."""
    target = prog.split()[-1]
    return target[:-3].replace("/", ".") if target.endswith(".py") else target


def invoked_as(prog: str) -> str:
    """The usage name of a command as the user started it.

    ``prog`` is the documented form (``python run_calibration.py`` or ``python -m
    utils.raw_to_fits``); when this very command is the running ``__main__``, the form
    actually used is shown instead (``python -m run_calibration``,
    ``python utils/raw_to_fits.py``).
    """
    module = _module_of(prog)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return f"python -m {module}" if spec.name == module else prog
    main_file = getattr(main, "__file__", None)
    if main_file and sys.argv and sys.argv[0]:
        if Path(main_file).resolve().as_posix().endswith("/" + module.replace(".", "/") + ".py"):
            return f"python {sys.argv[0]}"
    return prog


class _TqdmHandler(logging.StreamHandler):
    """Logging handler that writes through tqdm so progress bars stay intact."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: int = 0, level: str | None = None) -> None:
    """Configure the root logger; called by entry points only.

    Parameters
    ----------
    verbose : int
        0 gives INFO for this toolkit (warnings for libraries), 1 INFO, 2+ DEBUG.
    level : str, optional
        Explicit level name, overriding ``verbose``.
    """
    if level is None:
        level = "DEBUG" if verbose >= 2 else "INFO"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TqdmHandler):
            root.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("matplotlib", "numba", "PIL", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, configure logging and run ``main(args)``.

    Returns the exit status: 0 on success, 2 on a :class:`UserError` or a
    :class:`~utils.errors.FrameError` that reached the top (logged as one line
    naming the file, no traceback), 130 on Ctrl-C.  An operating-system error the user
    must fix (no permission, read-only file system, disk full) is a user error
    too.  Other exceptions propagate with their traceback: they are bugs.
    """
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "log_level", None))
    try:
        run = main
        if getattr(args, "scheduler", None) is not None:
            from . import scheduler

            # --scheduler/--dask-address (utils.scheduler.add_options): tasks run there
            def run(a, _main=main):
                with scheduler.using(scheduler.from_options(a.scheduler, a.dask_address)):
                    return _main(a)
        if getattr(args, "plots", None) is not None:
            from .plotting import figure_output

            # figures of the whole command rendered beside it, all written before it returns
            with figure_output(args.plots):
                status = run(args)
        else:
            status = run(args)
    except UserError as err:
        logger.error("%s", " ".join(str(err).split("\n")))
        return EXIT_USER_ERROR
    except FrameError as err:
        # a bad frame given directly (a mask, a model) or one no batch loop could set aside:
        # raised on purpose with the file and the reason, so a user error, not a crash
        logger.error("%s: %s", err.path, " ".join(err.reason.split("\n")))
        return EXIT_USER_ERROR
    except OSError as err:
        if err.errno not in _USER_ERRNOS:
            raise
        where = err.filename if err.filename is not None else "a file"
        logger.error("%s: %s; %s", where, err.strerror or err, _USER_ERRNOS[err.errno])
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        logger.error("interrupted; completed products are kept, re-run to finish the rest")
        return EXIT_INTERRUPTED
    return int(status or 0)


#: What the running step works on (e.g. ``radiating_D20kR``), named by collected warnings.
_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("log_context", default="")


@contextlib.contextmanager
def log_context(label: str):
    """Warnings collected inside the block (in this thread) name ``label``: the same
    pipeline run for every (stage, dose step) says the same words, and warnings.log could
    not tell the ten 'no photon-transfer gain' lines of an irradiation run apart."""
    token = _CONTEXT.set(label)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class WarningCollector(logging.Handler):
    """Keeps every WARNING (and worse) record of a run, to write them next to its products.

    Orchestrators attach one for the length of a run and write ``warnings.log`` (one line per
    record) with :meth:`write`; the campaign report lists them under data quality.
    """

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            where = _CONTEXT.get()
            self.lines.append(f"{record.levelname} {record.name}: "
                              + (f"[{where}] " if where else "") + record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)

    def distinct(self) -> list[str]:
        """The collected lines once each, in first-seen order, a repeated one ending in
        ``(N times)``: steps that measure the same group say the same thing (an irradiation
        run's warnings.log held 63 lines, 10 of them one photon-transfer message).

        Examples
        --------
        >>> w = WarningCollector()
        >>> w.lines = ["WARNING a: x", "WARNING b: y", "WARNING a: x"]
        >>> w.distinct()
        ['WARNING a: x (2 times)', 'WARNING b: y']
        """
        counts: dict[str, int] = {}
        for line in self.lines:
            line = line.replace("\n", " ")
            counts[line] = counts.get(line, 0) + 1
        return [line if n == 1 else f"{line} ({n} times)" for line, n in counts.items()]

    def write(self, path) -> None:
        """Write the distinct lines (:meth:`distinct`) atomically to ``path`` (an empty file
        when none)."""
        from .io.fitsio import write_text

        write_text("".join(line + "\n" for line in self.distinct()), path)
