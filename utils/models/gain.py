"""The measured system gain as a small product: ``gain.json``, read by every later step.

The flat pipeline measures the system gain K from the photon-transfer curve
(EMVA 1288) and writes it with :func:`write_gain`; the dark pipeline and the
radiation analyses read it with :func:`read_gain` (or :func:`resolve_gain`, which
also takes a number given on the command line) so that dark current and
hot-pixel thresholds are in electrons from a measurement, and every product
says where its gain came from (``GAINUSED``, ``GAINSRC`` cards).

Units.  Like every ``--gain`` option of this toolkit, the gain is quoted in
electrons per **ADC count** (the datasheet number); products are in stored
ADU, so electrons = value / ADUSCALE x gain (:func:`utils.adu.electrons_per_adu`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import adu
from .. import headers as kw
from ..errors import ConfigError, InputPathError
from ..io.fitsio import software_version, utc_now, write_json

#: File name of the product.
GAIN_FILE = "gain.json"


@dataclass(frozen=True)
class Gain:
    """A system gain and where it came from.

    Attributes
    ----------
    gain : float
        [e-/ADC count] system gain K.
    gain_err : float
        [e-/ADC count] one-sigma error of ``gain`` (NaN when not measured, e.g. given by hand).
    adc_bits : int
        Converter bits of the data it was measured on.
    method : str
        How it was obtained, e.g. ``"photon transfer (EMVA 1288)"`` or ``"command line"``.
    source : str
        File or option it came from (for headers and reports).
    read_noise_e : float
        [e-] temporal read noise measured with it (NaN when unknown).
    extra : dict
        Further measured numbers (saturation onset, linearity error...), JSON-serialisable.
    """

    gain: float
    gain_err: float = math.nan
    adc_bits: int = adu.DEFAULT_ADC_BITS
    method: str = "command line"
    source: str = "--gain"
    read_noise_e: float = math.nan
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (isinstance(self.gain, (int, float)) and math.isfinite(self.gain) and self.gain > 0):
            raise ConfigError(f"gain must be a finite number > 0 e-/ADC count, got {self.gain!r}")

    @property
    def e_per_adu(self) -> float:
        """Electrons per stored ADU (``gain / ADUSCALE``)."""
        return adu.electrons_per_adu(self.gain, self.adc_bits)

    def cards(self) -> list[tuple[str, object, str]]:
        """Header cards recording the gain used by a product."""
        return [(kw.GAINUSED, float(self.gain), "[e-/ADC count] system gain used"),
                ("GAINERR", float(self.gain_err) if math.isfinite(self.gain_err) else "NAN",
                 "[e-/ADC count] one-sigma error of GAINUSED"),
                ("GAINSRC", f"{self.method}: {self.source}"[:68], "where the gain came from")]


def write_gain(gain: Gain, path: str | os.PathLike) -> Path:
    """Write ``gain.json`` atomically (``path`` may be a folder)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / GAIN_FILE
    record = asdict(gain)
    record.update(unit="e-/ADC count", e_per_adu=gain.e_per_adu, adu_scale=adu.adu_scale(
        gain.adc_bits), software=software_version(), written=utc_now())
    return write_json(record, path, sort_keys=True)


def read_gain(path: str | os.PathLike) -> Gain:
    """Read a ``gain.json`` (or the one inside a folder).

    Raises
    ------
    InputPathError
        Missing or unreadable file, or one without a valid ``gain``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / GAIN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputPathError(f"{path}: cannot read the gain product ({err}); make it with the "
                             "flat pipeline (python flat_pipeline/run_pipeline.py) or give "
                             "--gain") from err
    try:
        return Gain(gain=float(record["gain"]),
                    gain_err=math.nan if record.get("gain_err") is None
                    else float(record["gain_err"]),
                    adc_bits=int(record.get("adc_bits", adu.DEFAULT_ADC_BITS)),
                    method=str(record.get("method", "unknown")), source=str(path),
                    read_noise_e=math.nan if record.get("read_noise_e") is None
                    else float(record["read_noise_e"]),
                    extra=dict(record.get("extra") or {}))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise InputPathError(f"{path}: not a gain product ({err}); make it with the flat "
                             "pipeline or give --gain") from err


def resolve_gain(value: float | str | None, adc_bits: int = adu.DEFAULT_ADC_BITS) -> Gain | None:
    """A gain from a command-line value: a number [e-/ADC count], a ``gain.json`` path, or None.

    Examples
    --------
    >>> resolve_gain(2.0).e_per_adu
    0.125
    >>> resolve_gain(None) is None
    True
    """
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return read_gain(value)
    return Gain(gain=number, adc_bits=adc_bits)


__all__ = ["Gain", "GAIN_FILE", "write_gain", "read_gain", "resolve_gain"]
