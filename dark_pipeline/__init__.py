"""Dark calibration: bias-subtracted masters, dark rates, per-pixel dark-current models in
temperature (1-D) and temperature x exposure (2-D), hot pixels, synthetic darks, evaluation.

Command: ``dark_pipeline/run_pipeline.py`` (its modes' order is stated once in
:func:`dark_pipeline.pipeline.run`).  Everything shared (FITS I/O, index,
stacking, fitting, the bias model) comes from :mod:`utils`.
"""
