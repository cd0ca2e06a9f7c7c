"""Every FITS header keyword this toolkit reads or writes, and how to read them.

Pipelines never index ``header["EXPTIME"]`` directly: they call the accessors
here (:func:`exptime`, :func:`sensor_temperature`, ...), which know the
aliases, the units and what "missing" means.  Keyword names are defined once,
as module constants.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

# --- per-frame keywords written by the converter -----------------------------------------
CALTYPE = "CALTYPE"      # BIAS, DARK, FLAT (section of the campaign), OPER
IMAGETYP = "IMAGETYP"    # standard frame type, same words as CALTYPE
FRAMENUM = "FRAMENUM"    # frame number within its attempt
TIMESTAMP = "TIMESTMP"   # [s] acquisition time from the per-frame log
DATE_OBS = "DATE-OBS"    # ISO time of acquisition (when TIMESTMP is a Unix time)
EXPTIME = "EXPTIME"      # [s] requested exposure time
REXPTIME = "REXPTIME"    # [s] real exposure time reported by the camera
GAIN = "GAIN"            # camera gain setting (ExpGain)
TEMP = "TEMP"            # [degC] sensor temperature
TEMP_0 = "TEMP_0"        # [degC] temperature at the start of the attempt
EQTEMP = "EQTEMP"        # [degC] external / equipment temperature
DELTMP = "DELTMP"        # [degC] temperature change reported by the log
POWCONS = "POWCONS"      # power consumption reported by the log
FILETEMP = "FILETEMP"    # [degC] temperature parsed from the raw file name
PATHTEMP = "PATHTEMP"    # [degC] temperature parsed from folder names below the section root
PATHEXP = "PATHEXP"      # [s] exposure parsed from folder names below the section root
TEMPSRC = "TEMPSRC"      # where TEMP came from: log, filename, folder
EXPSRC = "EXPSRC"        # where EXPTIME came from: log, filename, folder
DOSE = "DOSE"            # [krad] accumulated dose
DOSERATE = "DOSERATE"    # [krad/s] dose rate
RADLEVEL = "RADLEVEL"    # radiation level measured by the sensor (log RadiationLevel)
STAGE = "STAGE"          # irradiation stage: pre, radiating, post
ATTEMPT = "ATTEMPT"      # attempt folder name
RAWFILE = "RAWFILE"      # raw file name the frame came from
RAWSIZE = "RAWSIZE"      # [byte] size of that raw file
RAWDTYPE = "RAWDTYPE"    # sample type of the raw file, e.g. uint16le
CNVHASH = "CNVHASH"      # hash of what a conversion used: raw size and time, config, log values

# --- pixel statistics of a converted frame: measured at conversion, read back by the index ---
FRNPIX = "FRNPIX"        # pixels the statistics cover (NAXIS1 x NAXIS2)
FRNZERO = "FRNZERO"      # pixels exactly 0
FRNSAT = "FRNSAT"        # pixels >= FRSATLEV
FRSATLEV = "FRSATLEV"    # [adu] saturation level FRNSAT counts against
FRMEAN = "FRMEAN"        # [adu] mean of the pixels
FRMEDIAN = "FRMEDIAN"    # [adu] median
FRSTD = "FRSTD"          # [adu] standard deviation (ddof=0)
FRP16 = "FRP16"          # [adu] 16th percentile
FRP84 = "FRP84"          # [adu] 84th percentile
FRMIN, FRMAX = "FRMIN", "FRMAX"  # [adu] smallest and largest pixel
#: Every card of the frame statistics, in write order.
FRAME_STATS = (FRNPIX, FRNZERO, FRNSAT, FRSATLEV, FRMEAN, FRMEDIAN, FRSTD, FRP16, FRP84,
               FRMIN, FRMAX)

# --- ADU convention (see utils.adu) ---------------------------------------------------------
ADCBITS = "ADCBITS"
ADUSCALE = "ADUSCALE"
SATLEVEL = "SATLEVEL"
BUNIT = "BUNIT"

# --- provenance on every product ------------------------------------------------------------
PIPEVER = "PIPEVER"      # software name and version
DATE = "DATE"            # creation time of the file (UTC, ISO)
PRODUCT = "PRODUCT"      # what the file is: FRAME, MASTER_BIAS, ...

# --- masters (utils.stack.combine) ---------------------------------------------------------------
NCOMBINE = "NCOMBINE"    # frames combined
COMBMETH = "COMBMETH"    # mean, median, sigclip
CLIPLO = "CLIPLO"        # lower clipping threshold [sigma]
CLIPHI = "CLIPHI"        # upper clipping threshold [sigma]
CLIPITER = "CLIPITER"    # maximum clipping iterations
CLIPCEN = "CLIPCEN"      # centre estimator of the clipping
CLIPDEV = "CLIPDEV"      # scale estimator of the clipping
MINACC = "MINACC"        # minimum accepted samples for a valid pixel
SCALEMTH = "SCALEMTH"    # per-frame scaling applied before combining
SUBTRACT = "SUBTRACT"    # what was subtracted from each frame before combining
TMIN, TMAX, TAVG = "TMIN", "TMAX", "TAVG"  # [degC] input temperatures
EMIN, EMAX, EAVG = "EMIN", "EMAX", "EAVG"  # [s] input exposure times
MEAN, MEDIAN, STD = "MEAN", "MEDIAN", "STD"  # statistics of the master image (valid pixels)
NMASKED = "NMASKED"      # masked pixels in the master
NREJECT = "NREJECT"      # samples rejected by clipping, all pixels
NOISEMIN = "NOISEMIN"    # [adu] NOISE of a pixel whose accepted samples are all equal
BIASFILE = "BIASFILE"    # master bias subtracted
BIASTEMP = "BIASTEMP"    # [degC] temperature of that master bias
DARKFILE = "DARKFILE"    # master dark subtracted
DARKTEMP = "DARKTEMP"    # [degC] temperature of that master dark
DARKEXP = "DARKEXP"      # [s] exposure of that master dark
FLATNORM = "FLATNORM"    # [adu] normalisation level divided out of a flat
TBIN = "TBIN"            # [degC] centre of the temperature bin of a master
TBINW = "TBINW"          # [degC] width of that bin
INHASH = "INHASH"        # hash of a product's inputs and settings (skip unchanged on re-runs)
TREF = "TREF"            # [degC] reference temperature of a model
ERRSCALE = "ERRSCALE"    # global factor applied to noise-map errors of a fit
ERRSHARE = "ERRSHARE"    # model errors hold an error shared between its points (sandwich)
GAINUSED = "GAINUSED"    # [e-/ADC count] gain used for electron units

# --- per-frame log columns -> (keyword, divisor) --------------------------------------------
# Keys are lower-case column names.  ExpTime/RealExpTime are microseconds in the logs: the
# value is divided by 1e6 (50000 / 1e6 is 0.05; 50000 * 1e-6 is 0.049999999999999996, which
# then showed in every header, index and table of that set).
LOG_COLUMNS: dict[str, tuple[str, float]] = {
    "framenum": (FRAMENUM, 1.0),
    "frame": (FRAMENUM, 1.0),
    "timestamp": (TIMESTAMP, 1.0),
    "time": (TIMESTAMP, 1.0),
    "exttemperature": (EQTEMP, 1.0),
    "exptime": (EXPTIME, 1e6),
    "realexptime": (REXPTIME, 1e6),
    "expgain": (GAIN, 1.0),
    "gain": (GAIN, 1.0),
    "temperature": (TEMP, 1.0),
    "initialtemp": (TEMP_0, 1.0),
    "deltatemperature": (DELTMP, 1.0),
    "powercons": (POWCONS, 1.0),
    "dose": (DOSE, 1.0),
    "radiationlevel": (RADLEVEL, 1.0),
}
#: Alternative names of the sensor-temperature column (lower case).  Only these map to TEMP:
#: a set point or an enclosure temperature must never masquerade as the sensor's.
SENSOR_TEMP_ALIASES = (
    "temperature", "ccdtemp", "ccd_temp", "ccdtemperature", "chiptemp", "chip_temp",
    "chiptemperature", "sensortemp", "sensor_temp", "sensortemperature", "temp",
)
for _alias in SENSOR_TEMP_ALIASES:
    LOG_COLUMNS.setdefault(_alias, (TEMP, 1.0))

_KEY_CHARS = re.compile(r"[^A-Z0-9_-]")


def fits_keyword(name: str) -> str:
    """Return a valid FITS keyword for an arbitrary column or config name.

    Upper-cases, turns spaces into ``_`` and drops characters FITS forbids.
    Names longer than 8 characters become ``HIERARCH`` keywords instead of
    being truncated (the old code turned ``BIT_DEPTH`` into ``BIT_DEPT`` and
    let different names collide).

    Examples
    --------
    >>> fits_keyword("bit depth")
    'HIERARCH BIT_DEPTH'
    >>> fits_keyword("Width")
    'WIDTH'
    """
    key = _KEY_CHARS.sub("", name.strip().upper().replace(" ", "_"))
    if not key:
        raise ValueError(f"{name!r} has no character usable in a FITS keyword")
    return key if len(key) <= 8 else f"HIERARCH {key}"


def log_column_keyword(column: str) -> tuple[str, float]:
    """Map a per-frame log column to ``(keyword, divisor)`` (the value in the header's unit is
    the log's value / divisor); unknown columns keep their name."""
    known = LOG_COLUMNS.get(column.strip().lower())
    if known is not None:
        return known
    return fits_keyword(column), 1.0


def _finite(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def get_float(header: Mapping, key: str, default: float = math.nan) -> float:
    """Return ``header[key]`` as a finite float, else ``default``."""
    if key not in header:
        return default
    value = _finite(header[key])
    return default if math.isnan(value) else value


def exptime(header: Mapping) -> float:
    """Exposure time in seconds, NaN when absent (never silently 0)."""
    return get_float(header, EXPTIME)


def sensor_temperature(header: Mapping) -> float:
    """Sensor temperature in degC, NaN when absent.

    Deliberately does not fall back to ``EQTEMP`` (the enclosure temperature):
    the old index did, and mixed two different physical quantities.
    """
    return get_float(header, TEMP)


def frame_number(header: Mapping) -> float:
    """Frame number within its attempt, NaN when absent."""
    return get_float(header, FRAMENUM)


def timestamp(header: Mapping) -> float:
    """Acquisition time in seconds, NaN when absent (also reads legacy ``TIMESTAMP``)."""
    for key in (TIMESTAMP, "TIMESTAMP", "TIME"):
        value = get_float(header, key)
        if not math.isnan(value):
            return value
    return math.nan


def caltype(header: Mapping) -> str:
    """Calibration type (``BIAS``, ``DARK``, ``FLAT``...) or an empty string."""
    for key in (CALTYPE, IMAGETYP):
        if key in header and str(header[key]).strip():
            return str(header[key]).strip().upper()
    return ""


def dose(header: Mapping) -> float:
    """Accumulated dose in krad, NaN when absent."""
    return get_float(header, DOSE)
