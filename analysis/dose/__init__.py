"""Dose analysis of an irradiation campaign, one module per concept.

:mod:`.summary` (groups, masters, ``dose_summary.csv``, dose rates),
:mod:`.models` (STD vs MEAN, dose-rate effect and model, dose model, base-level
trend, stage base-level differences), :mod:`.precision` (photometric and pixel
precision), :mod:`.stage_differences` (first step vs pre, post vs last step),
:mod:`.dynamic_range` (dynamic range, baseline, magnitude; relative precision),
:mod:`.plots` (figures) and :mod:`.pipeline` (the order, and the writing).  The
command is :mod:`analysis.dose_analysis`.
"""
