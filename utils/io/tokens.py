"""Values encoded in file and folder names: temperature, exposure time, dose, frame number
(read from raw names; :func:`number_text`, :func:`error_decimals` and
:func:`value_error_text` write numbers into product names and labels).

The old toolkit ran its regular expressions over the whole absolute path, so
an ``attempt0`` folder read as 0 degC and a temp-dir ``data9s...`` as a 9 s
exposure.  The rules here are narrower:

* folder names count only **below the section root** and only when the
  *whole* component is a token (``T-5``, ``0.5s``, ``10kRads``), so
  ``attempt0`` or ``pytest-3`` never match;
* the **innermost** folder wins (``T20/T0/`` means 0 degC);
* inside file names, tokens are searched with explicit prefixes
  (``T<num>``, ``exp<num>s``, ``f<num>``/``frame<num>``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

_UNUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM = rf"[-+]?{_UNUM}"

# re.ASCII: digits are 0-9 only (Python's \d would also take Arabic-Indic or full-width digits)
_FOLDER_TEMP = re.compile(rf"^[Tt]({_NUM})(?:C|degC)?$", re.ASCII)
_FOLDER_EXP = re.compile(rf"^(?:exp_?)?({_NUM})\s*(?:s|sec|secs)$", re.IGNORECASE | re.ASCII)
_DOSE = re.compile(rf"^({_NUM})\s*kR(?:ad|ads)?$", re.IGNORECASE | re.ASCII)

_FILE_TEMP = re.compile(rf"T(-?{_UNUM})(?![\d.])", re.ASCII)
_FILE_EXP = re.compile(rf"exp_?({_UNUM})s", re.IGNORECASE | re.ASCII)
_FILE_FRAME = re.compile(r"(?<![A-Za-z])(?:frame|f)_?(\d+)", re.IGNORECASE | re.ASCII)
#: Longest frame number taken from a file name (more digits are not a frame counter).
_FRAME_DIGITS = 9


def number_text(value: float, spec: str = ".1f") -> str:
    """``format(value, spec)`` without a negative zero.

    A temperature bin whose median reading is -0.03 degC is the 0 degC bin: its file
    names, legends and ticks read ``T0.0C`` and ``0``, not ``T-0.0C`` and ``-0``.

    Parameters
    ----------
    value : float
        The number (NaN prints as ``nan``).
    spec : str, optional
        Format specification. Default is ``.1f`` (temperature labels, 0.1 degC).

    Returns
    -------
    str

    Examples
    --------
    >>> number_text(-0.03), number_text(-0.0, "g"), number_text(-5.0), number_text(24.96, "g")
    ('0.0', '0', '-5.0', '24.96')
    """
    text = format(float(value), spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def error_decimals(error: float) -> int:
    """Decimal places that show ``error`` to two significant digits (and its value to the
    same place): 0.0035 -> 4, 0.076 -> 3, 2.6 -> 1, 51 -> 0.

    Examples
    --------
    >>> error_decimals(0.0035), error_decimals(51.0)
    (4, 0)
    """
    return max(0, 1 - math.floor(math.log10(abs(error))))


def value_error_text(value: float, error: float | None, unit: str = "") -> str:
    """``value +- error`` with the error to two significant digits and the value to the
    same decimal place (:func:`error_decimals`), for legends, log lines and tables.

    A value alone, 4 significant digits and ``(no error)``, when the error is unknown
    (None, NaN: e.g. a fit with no degree of freedom) or not positive; a unit of ``1`` or
    ``""`` is not written.

    Examples
    --------
    >>> value_error_text(0.009468982, 0.020147), value_error_text(3355.6503, 0.16807, "adu")
    ('0.009 +- 0.020', '3355.65 +- 0.17 adu')
    >>> value_error_text(0.0139435, float("nan")), value_error_text(0.38419, 0.005956, "1")
    ('0.01394 (no error)', '0.3842 +- 0.0060')
    """
    suffix = f" {unit}" if unit not in ("", "1") else ""
    value = float(value)
    if not math.isfinite(value):
        return f"{value}{suffix}"
    if error is None or not math.isfinite(float(error)) or float(error) <= 0:
        return f"{number_text(value, '.4g')} (no error){suffix}"
    error = float(error)
    if abs(value) >= 1e6 or error >= 1e6 or (value and abs(value) < 1e-4 and error < 1e-4):
        return f"{number_text(value, '.3e')} +- {error:.2g}{suffix}"
    d = error_decimals(error)
    return f"{number_text(value, f'.{d}f')} +- {error:.{d}f}{suffix}"


def _to_float(text: str) -> float:
    """A finite float, else NaN (``T1e999`` is no temperature)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def folder_temperature(name: str) -> float:
    """Temperature [degC] of a folder named like ``T-5`` or ``T12.5``, else NaN.

    Examples
    --------
    >>> folder_temperature("T-5"), folder_temperature("attempt0")
    (-5.0, nan)
    """
    m = _FOLDER_TEMP.match(name)
    return _to_float(m.group(1)) if m else math.nan


def folder_exposure(name: str) -> float:
    """Exposure [s] of a folder named like ``0.5s`` or ``exp_1e-3s``, else NaN.

    Examples
    --------
    >>> folder_exposure("0.5s"), folder_exposure("data9s")
    (0.5, nan)
    """
    m = _FOLDER_EXP.match(name)
    value = _to_float(m.group(1)) if m else math.nan
    return value if value >= 0 else math.nan


def folder_dose(name: str) -> float:
    """Dose [krad] of a folder named like ``10kRads``, ``2.5kR`` or ``1kRad``, else NaN.

    Examples
    --------
    >>> folder_dose("10kRads"), folder_dose("10Rads")
    (10.0, nan)
    """
    m = _DOSE.match(name)
    value = _to_float(m.group(1)) if m else math.nan
    return value if value >= 0 else math.nan


def file_temperature(name: str) -> float:
    """Temperature [degC] in a raw file name (``BiasT-10_exp...``), else NaN."""
    m = _FILE_TEMP.search(Path(name).stem)
    return _to_float(m.group(1)) if m else math.nan


def file_exposure(name: str) -> float:
    """Exposure [s] in a file name (``exp0.5s``, ``exp_1.2e-05s``), else NaN."""
    m = _FILE_EXP.search(Path(name).stem)
    return _to_float(m.group(1)) if m else math.nan


def file_frame_number(name: str) -> int | None:
    """Frame number in a file name (``...f12.raw``, ``frame0``), else None."""
    m = _FILE_FRAME.search(Path(name).stem)
    if m is None or len(m.group(1).lstrip("0")) > _FRAME_DIGITS:
        return None
    return int(m.group(1))


@dataclass(frozen=True)
class PathValues:
    """Values read from folder names below a root (innermost folder wins); NaN when absent."""

    temperature: float = math.nan
    exposure: float = math.nan
    dose: float = math.nan


def path_values(path: str | Path, root: str | Path) -> PathValues:
    """Parse temperature, exposure and dose from the folders between ``root`` and ``path``.

    Only components strictly below ``root`` are read; the file name itself is
    not (use the ``file_*`` functions for it).

    Examples
    --------
    >>> path_values("/data/T5/TS2/20Frames/T20/T0/0.5s/attempt0/f.raw", "/data/T5/TS2")
    PathValues(temperature=0.0, exposure=0.5, dose=nan)
    """
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return PathValues()
    folders = parts[:-1] if path.suffix else parts
    temperature = exposure = dose = math.nan
    for name in reversed(folders):
        if math.isnan(temperature):
            temperature = folder_temperature(name)
        if math.isnan(exposure):
            exposure = folder_exposure(name)
        if math.isnan(dose):
            dose = folder_dose(name)
    return PathValues(temperature, exposure, dose)
