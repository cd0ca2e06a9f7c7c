"""Raw camera frames and the per-attempt camera configuration.

A raw frame is a headerless, row-major array of ``HEIGHT x WIDTH`` samples:
unsigned 16-bit (unsigned 8-bit when ``BIT_DEPTH <= 8``), little-endian unless
the configuration says otherwise.  A file whose size does not match is never
padded or truncated: :func:`read_raw` raises :class:`~utils.errors.RawSizeError`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RawSizeError, UnreadableFrameError
from .frame_log import decode_text, parse_number

logger = logging.getLogger(__name__)

#: Config file names, in order of preference.
CONFIG_NAMES = ("configFile.txt", "config.txt")
#: Geometry assumed when an attempt has no config file (the old camera default).
DEFAULT_WIDTH = 2048
DEFAULT_HEIGHT = 2048
DEFAULT_BIT_DEPTH = 16

_BYTEORDER_WORDS = {"little": "<", "le": "<", "<": "<", "big": ">", "be": ">", ">": ">"}


@dataclass(frozen=True)
class CameraConfig:
    """Geometry and every entry of an attempt's ``configFile.txt``.

    Attributes
    ----------
    width, height : int
        Frame size in pixels.
    bit_depth : int
        Bits per stored sample word (16 -> uint16; <= 8 -> uint8).
    byteorder : str
        ``'<'`` little-endian (default) or ``'>'`` big-endian.
    entries : dict
        Every ``key -> value`` (strings, original key spelling).
    path : Path or None
        The file read, None when defaults were used.
    problems : tuple of str
        Lines that could not be used, and defaults applied.
    """

    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    bit_depth: int = DEFAULT_BIT_DEPTH
    byteorder: str = "<"
    entries: dict = field(default_factory=dict)
    path: Path | None = None
    problems: tuple = ()

    @property
    def dtype(self) -> np.dtype:
        """On-disk sample type."""
        return np.dtype(f"{self.byteorder}u2") if self.bit_depth > 8 else np.dtype("u1")

    @property
    def frame_bytes(self) -> int:
        """Expected size of one raw frame in bytes."""
        return self.width * self.height * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        """Human-readable sample type, e.g. ``uint16le``."""
        if self.dtype.itemsize == 1:
            return "uint8"
        return "uint16le" if self.byteorder == "<" else "uint16be"


def parse_config_text(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse ``key=value`` / ``key: value`` lines; ``#`` comments and blanks ignored.

    Returns
    -------
    entries : dict
        Keys and values, stripped, in file order.
    problems : list of str
        ``"line N: ..."`` for lines with no separator.

    Examples
    --------
    >>> parse_config_text("# camera\\nWIDTH: 64\\nheight = 48\\n")[0]
    {'WIDTH': '64', 'height': '48'}
    """
    entries: dict[str, str] = {}
    problems: list[str] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";", "//")):
            continue
        positions = [p for p in (line.find("="), line.find(":")) if p > 0]
        if not positions:
            problems.append(f"line {number}: no '=' or ':' in {line[:40]!r}")
            continue
        cut = min(positions)
        key, value = line[:cut].strip(), line[cut + 1:].strip()
        if not key:
            continue
        if key in entries and entries[key] != value:
            problems.append(f"line {number}: {key} given again ({entries[key]!r} on line "
                            f"{lines[key]}, now {value!r}); the last one is used")
        entries[key] = value
        lines[key] = number
    return entries, problems


def _lookup(entries: dict[str, str], *names: str) -> tuple[str, str] | None:
    """``(key as written in the file, value)`` of the first of ``names`` present.

    Keys match whatever their case and separators (``BIT_DEPTH``, ``bit depth``, ``BitDepth``).
    """
    lowered = {re.sub(r"[\s_-]", "", k.lower()): k for k in entries}
    for name in names:
        if name in lowered:
            key = lowered[name]
            return key, entries[key]
    return None


def read_camera_config(folder: str | os.PathLike, *, byteorder: str = "<") -> CameraConfig:
    """Read the camera config of an attempt folder (``configFile.txt``, else ``config.txt``).

    Missing file or missing geometry keys fall back to 2048 x 2048, 16 bit,
    and the fact is recorded in ``problems`` (the caller logs it once).

    Parameters
    ----------
    folder : path-like
        Attempt folder.
    byteorder : str, optional
        Default byte order when the config has no ``BYTE_ORDER``/``ENDIANNESS`` key.
    """
    folder = Path(folder)
    path = next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)
    problems: list[str] = []
    entries: dict[str, str] = {}
    if path is None:
        problems.append(f"no {' or '.join(CONFIG_NAMES)}; assuming {DEFAULT_WIDTH}x"
                        f"{DEFAULT_HEIGHT}, {DEFAULT_BIT_DEPTH}-bit")
    else:
        try:
            text, _ = decode_text(path.read_bytes())
        except OSError as err:
            problems.append(f"cannot read ({err.strerror or err}); using defaults")
            text = ""
        entries, bad = parse_config_text(text)
        problems.extend(bad)

    def integer(names, default, label, largest=1 << 20):
        found = _lookup(entries, *names)
        if found is None:
            if path is not None:
                problems.append(f"no {label} key; assuming {default}")
            return default
        key, raw = found
        value = parse_number(raw)
        if value is None or not math.isfinite(value) or not value.is_integer():
            problems.append(f"{key}={raw!r} is not a whole number; assuming {default}")
            return default
        if not 0 < value <= largest:
            problems.append(f"{key}={raw!r} is out of range (1..{largest}); assuming {default}")
            return default
        return int(value)

    width = integer(("width", "imagewidth", "sizex"), DEFAULT_WIDTH, "WIDTH")
    height = integer(("height", "imageheight", "sizey"), DEFAULT_HEIGHT, "HEIGHT")
    bit_depth = integer(("bitdepth", "bits", "bitsperpixel"), DEFAULT_BIT_DEPTH, "BIT_DEPTH",
                        largest=16)
    found = _lookup(entries, "byteorder", "endianness", "endian")
    order = byteorder
    if found is not None:
        key, order_text = found
        order = _BYTEORDER_WORDS.get(order_text.strip().lower(), None)
        if order is None:
            order = byteorder
            problems.append(f"{key}={order_text!r} not understood (little or big); assuming "
                            f"{'little' if byteorder == '<' else 'big'}-endian")
    return CameraConfig(width, height, bit_depth, order, entries, path, tuple(problems))


def read_raw(path: str | os.PathLike, config: CameraConfig,
             buffer: np.ndarray | None = None) -> np.ndarray:
    """Read one raw frame as a native-endian ``(height, width)`` array.

    Parameters
    ----------
    path : path-like
        The raw file.
    config : CameraConfig
        Its geometry and sample type.
    buffer : numpy.ndarray, optional
        C-contiguous array of ``config.frame_bytes`` bytes to read into (the result is a
        view of it, for a native byte order): a converter reusing one buffer from frame to
        frame saves the page faults of a fresh array per frame.

    Raises
    ------
    RawSizeError
        The file size is not ``width * height * bytes_per_sample``.
    UnreadableFrameError
        The file cannot be read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnreadableFrameError(path, f"cannot stat ({err})") from err
    if size != config.frame_bytes:
        raise RawSizeError(
            path, f"size {size} bytes, expected {config.frame_bytes} "
                  f"({config.width}x{config.height} {config.dtype_name}); "
                  "check WIDTH/HEIGHT/BIT_DEPTH in the config or re-copy the file")
    if buffer is not None and (buffer.nbytes != size or not buffer.flags.c_contiguous
                               or not buffer.flags.writeable):
        raise ValueError(f"buffer must be a writeable C-contiguous array of {size} bytes")
    try:
        if buffer is None:
            data = np.fromfile(path, dtype=config.dtype)
            got = data.size * data.itemsize
        else:
            data = buffer.reshape(-1).view(config.dtype)
            got = _read_into(path, memoryview(data).cast("B"))
    except OSError as err:
        raise UnreadableFrameError(path, f"cannot read ({err})") from err
    if got != size:
        raise UnreadableFrameError(path, "short read")
    data = data.reshape(config.height, config.width)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="), copy=False)
    return data


def _read_into(path: Path, view: memoryview) -> int:
    """Fill ``view`` from the start of the file; bytes read (fewer at a short file)."""
    got = 0
    with open(path, "rb", buffering=0) as handle:
        while got < len(view):
            n = handle.readinto(view[got:])
            if not n:
                break
            got += n
    return got
