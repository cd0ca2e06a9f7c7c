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
import logging
import sys
from typing import Callable, Sequence

from tqdm import tqdm

from .errors import UserError

logger = logging.getLogger(__name__)

#: Exit status of a user error (bad path, malformed input).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example layout and hides the snake_case aliases from ``--help``."""

    def _format_action_invocation(self, action):
        if action.option_strings:
            shown = [s for s in action.option_strings if not _is_alias(s)]
            action = argparse.Action(shown or action.option_strings, action.dest,
                                     nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(action)


def _is_alias(option: str) -> bool:
    return option.startswith("--") and "_" in option[2:]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that adds a snake_case alias to every kebab-case flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):  # noqa: D102 - same contract as argparse
        extra = [n.replace("-", "_").replace("__", "--", 1) for n in names
                 if n.startswith("--") and "-" in n[2:]]
        return super().add_argument(*names, *extra, **kwargs)


def make_parser(prog: str, doc: str | None) -> ArgumentParser:
    """Build a parser whose description is the module docstring (which holds an example).

    Parameters
    ----------
    prog : str
        Program name shown in usage lines, e.g. ``python -m utils.raw_to_fits``.
    doc : str
        Module docstring; its first paragraph and ``Example`` block are shown by ``--help``.
    """
    parser = ArgumentParser(prog=prog, description=doc)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: info, -vv: debug)")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="explicit log level (overrides -v)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars")
    return parser


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

    Returns the exit status: 0 on success, 2 on a :class:`UserError` (logged as
    one line, no traceback), 130 on Ctrl-C.  Unexpected exceptions propagate
    with their traceback: they are bugs, not user errors.
    """
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "log_level", None))
    try:
        status = main(args)
    except UserError as err:
        logger.error("%s", err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        logger.error("interrupted; completed products are kept, re-run to finish the rest")
        return EXIT_INTERRUPTED
    return int(status or 0)


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
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)

    def write(self, path) -> None:
        """Write the collected lines atomically to ``path`` (an empty file when none)."""
        from .io.fitsio import write_text

        write_text("".join(line.replace("\n", " ") + "\n" for line in self.lines), path)
