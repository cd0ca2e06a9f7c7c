"""Error types shared by every pipeline.

Two families matter to a user:

* :class:`UserError` and subclasses: a problem the user can fix (a wrong path,
  a malformed config, an empty folder).  Command-line entry points catch them,
  log a single line naming the file and what to do, and exit with status 2,
  never with a traceback.
* :class:`FrameError` and subclasses: one bad frame among many (wrong size,
  unreadable, missing temperature).  Batch loops record it in the index with
  its reason and go on; it never silently disappears.
"""


class CalibError(Exception):
    """Base class of every error raised on purpose by this toolkit."""


class UserError(CalibError):
    """Something the user can fix; CLIs print it in one line and exit 2."""


class InputPathError(UserError):
    """A required input file or folder is missing or empty."""


class ConfigError(UserError):
    """A configuration file or setting is malformed or inconsistent."""


class TableError(UserError):
    """A CSV table (log, index) is missing required columns or unreadable."""


class OutputPathError(UserError):
    """An output file or folder cannot be written (it is a file, a folder, or not writable)."""


class FrameError(CalibError):
    """A single frame cannot be used; it is flagged, not dropped."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class RawSizeError(FrameError):
    """A raw file's byte size does not match WIDTH x HEIGHT x sample size."""


class UnreadableFrameError(FrameError):
    """A FITS or raw file cannot be opened or decoded."""


class MissingKeywordError(FrameError):
    """A physics keyword (temperature, exposure time...) is absent or not a number."""


class InsufficientFramesError(CalibError):
    """Too few usable frames to build a product."""
