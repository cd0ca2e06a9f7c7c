"""The one place that decides the ADU convention.

The camera digitises 12 bits and stores each sample as a 16-bit word equal to
the 12-bit count times 16 (full scale 4095 x 16 = 65520).  The old toolkit
divided by 16 in some scripts and not in others.  Here the rule is:

* every product (converted frame, master, model, table) is in **stored 16-bit
  ADU** (``BUNIT = 'adu'``), exactly the numbers found in the raw files;
* every product header records ``ADCBITS`` (bits of the converter) and
  ``ADUSCALE`` (stored ADU per ADC count, 16 for the 12-bit camera), so
  ``value / ADUSCALE`` gives 12-bit-equivalent counts when a report needs them.
"""

from __future__ import annotations

import numpy as np

from . import headers as kw

#: Bits of each stored sample word.
STORED_BITS = 16
#: Bits of the camera's analogue-to-digital converter when nothing else is known.
DEFAULT_ADC_BITS = 12
#: Unit string of every ADU product (FITS/astropy spelling).
UNIT = "adu"
#: Unit string of dark-current rates.
RATE_UNIT = "adu / s"


def adu_scale(adc_bits: int) -> int:
    """Return the stored-ADU per ADC-count factor, ``2**(16 - adc_bits)``.

    Parameters
    ----------
    adc_bits : int
        Bits of the converter (1-16).

    Returns
    -------
    int
        16 for a 12-bit converter stored in 16-bit words, 1 for 16 bits.

    Examples
    --------
    >>> adu_scale(12)
    16
    """
    if not 1 <= int(adc_bits) <= STORED_BITS:
        raise ValueError(f"adc_bits must be within 1..{STORED_BITS}, got {adc_bits}")
    return 2 ** (STORED_BITS - int(adc_bits))


def saturation_level(adc_bits: int) -> float:
    """Return the largest stored value the ADC can produce, in stored ADU.

    Examples
    --------
    >>> saturation_level(12)
    65520.0
    """
    return float((2 ** int(adc_bits) - 1) * adu_scale(adc_bits))


def frame_saturation(header) -> float:
    """Saturation level [stored ADU] a frame's pixels are counted against: the header's
    ``SATLEVEL``, else :func:`saturation_level` of its ``ADCBITS`` (12 bits when absent).

    Examples
    --------
    >>> frame_saturation({"ADCBITS": 16}), frame_saturation({"SATLEVEL": 60000})
    (65535.0, 60000.0)
    """
    bits = int(kw.get_float(header, kw.ADCBITS, DEFAULT_ADC_BITS))
    return kw.get_float(header, kw.SATLEVEL, saturation_level(bits))


def detect_adc_bits(data: np.ndarray, default: int = DEFAULT_ADC_BITS) -> int:
    """Infer the converter depth from the low bits of stored samples.

    A frame whose samples are all multiples of ``2**k`` was written by a
    ``16 - k`` bit converter.  An all-zero frame carries no information and
    returns ``default``.

    Parameters
    ----------
    data : numpy.ndarray
        Integer samples as stored (uint16 or uint8).
    default : int, optional
        Depth to assume when the frame is all zeros. Default is 12.

    Returns
    -------
    int
        Converter bits, between ``16 - 15`` and 16.
    """
    data = np.asarray(data)
    if data.dtype.itemsize == 1:
        return 8
    return adc_bits_from_bits(int(np.bitwise_or.reduce(data.ravel().astype(np.uint16, copy=False))),
                              default)


def adc_bits_from_bits(combined: int, default: int = DEFAULT_ADC_BITS) -> int:
    """Converter depth from the bitwise OR of all 16-bit samples of a frame.

    See :func:`detect_adc_bits`.

    Examples
    --------
    >>> adc_bits_from_bits(0xFFF0), adc_bits_from_bits(0)
    (12, 12)
    """
    if combined == 0:
        return int(default)
    low_zero_bits = (combined & -combined).bit_length() - 1
    return STORED_BITS - min(low_zero_bits, STORED_BITS - 1)


def electrons_per_adu(gain: float, adc_bits: int) -> float:
    """Electrons per *stored* ADU for a gain quoted per ADC count (the datasheet convention).

    ``--gain`` options of every command take e-/ADC count, the number a camera
    datasheet or a photon-transfer curve of 12-bit data gives; products are in
    stored ADU, so the factor divides by :func:`adu_scale`.

    Examples
    --------
    >>> electrons_per_adu(2.0, 12)
    0.125
    """
    if not gain > 0:
        raise ValueError(f"gain must be > 0 e-/ADC count, got {gain}")
    return float(gain) / adu_scale(adc_bits)


def quantum(adc_bits: int, scale: float = 1.0) -> float:
    """One ADC step in stored ADU, times the frames' ``scale`` [stored ADU x scale].

    Examples
    --------
    >>> quantum(12), quantum(12, 0.5)
    (16.0, 8.0)
    """
    return float(adu_scale(adc_bits)) * abs(float(scale))


def clip_floor(adc_bits: int, scale: float = 1.0) -> float:
    """Smallest meaningful clipping scale of stacked samples: two ADC steps [stored ADU x scale].

    Quantised samples cannot resolve a spread below about one step; when over
    half of a pixel's samples share one value (or nearly: a per-frame bias
    subtraction shifts them by a fraction of a step), their MAD collapses and
    a clip on it would reject good samples.  Two steps keep the default 4-sigma
    clip at least eight steps wide (a 3-sigma one six), far below any cosmic ray
    or RTS jump.

    Examples
    --------
    >>> clip_floor(12)
    32.0
    """
    return 2.0 * quantum(adc_bits, scale)


def scaling_cards(adc_bits: int) -> list[tuple[str, object, str]]:
    """Header cards recording the ADU convention of a product."""
    return [
        (kw.ADCBITS, int(adc_bits), "bits of the camera ADC"),
        (kw.ADUSCALE, adu_scale(adc_bits), "stored ADU per ADC count (divide for ADC units)"),
        (kw.SATLEVEL, saturation_level(adc_bits), "[adu] saturation level, stored units"),
    ]
