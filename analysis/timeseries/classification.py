"""Classes of outlier pixels of the outgassing/destruction analysis, with the rules explicit.

Each outlier pixel carries the *labels* of the comparisons that found it
(a temperature bin such as ``T20.0``, or an irradiation stage such as ``Pre``,
``Radiating``, ``Post``, and ``IgnoreTemp`` for the pass that compares flats
across temperatures) and the *times* of the flats in which it was found.

Rules (:func:`classify`), in order:

1. **Sensor Damage**: found under at least two distinct condition labels.
   A change that shows at several temperatures (or stages) is in the sensor.
2. **Likely Sensor**: found under exactly one condition label, at two or
   more distinct times: persistent, but seen at one condition only.
3. **Temperature**: everything else: found once, or only when flats of
   different temperatures are compared (``IgnoreTemp`` alone): the
   difference is explained by temperature.

``IgnoreTemp`` is not a condition label.  The old toolkit counted it as one
and let it veto rule 1 (":func:`classify_legacy`"): a damaged pixel, which is
found in every pass including the ignore-temperature one, was forced to
"Temperature".  That is the one intended difference.
"""

from __future__ import annotations

from typing import Iterable

SENSOR_DAMAGE = "Sensor Damage"
LIKELY_SENSOR = "Likely Sensor"
TEMPERATURE = "Temperature"
CLASSES = (SENSOR_DAMAGE, LIKELY_SENSOR, TEMPERATURE)
#: Label of the pass that ignores temperature.
IGNORE_TEMP = "IgnoreTemp"


def classify(labels: Iterable[str], times: Iterable) -> str:
    """Class of an outlier pixel from its labels and times (rules in the module docstring).

    Examples
    --------
    >>> classify(["Pre", "Post"], [1.0, 5.0])
    'Sensor Damage'
    >>> classify(["Radiating", "Radiating", "IgnoreTemp"], [2.0, 3.0, 3.0])
    'Likely Sensor'
    >>> classify(["Post"], [4.0]), classify(["IgnoreTemp"], [1.0, 2.0])
    ('Temperature', 'Temperature')
    >>> classify(["T0.0", "T20.0", "IgnoreTemp"], [1.0, 2.0, 2.0])
    'Sensor Damage'
    """
    conditions = {str(label) for label in labels} - {IGNORE_TEMP}
    distinct_times = {t for t in times}
    if len(conditions) >= 2:
        return SENSOR_DAMAGE
    if len(conditions) == 1 and len(distinct_times) >= 2:
        return LIKELY_SENSOR
    return TEMPERATURE


def classify_legacy(labels: Iterable[str], times: Iterable) -> str:
    """The old toolkit's rule, kept to document the difference (an ``IgnoreTemp`` label vetoes
    Sensor Damage).

    Examples
    --------
    >>> classify_legacy(["T0.0", "T20.0", "IgnoreTemp"], [1.0, 2.0, 2.0])
    'Temperature'
    >>> classify_legacy(["Pre", "Radiating", "Post"], [1.0, 2.0, 3.0])
    'Sensor Damage'
    """
    labels = {str(label) for label in labels}
    distinct_times = {t for t in times}
    if len(labels) > 1 and IGNORE_TEMP not in labels:
        return SENSOR_DAMAGE
    if len(labels) == 1 and IGNORE_TEMP not in labels and len(distinct_times) > 1:
        return LIKELY_SENSOR
    return TEMPERATURE


__all__ = ["classify", "classify_legacy", "CLASSES", "SENSOR_DAMAGE", "LIKELY_SENSOR",
           "TEMPERATURE", "IGNORE_TEMP"]
