"""Bias calibration: masters per temperature, the per-pixel bias(T) model, read noise.

Commands: ``bias_pipeline/run_pipeline.py`` (the pipeline; its order is stated
once in :func:`bias_pipeline.pipeline.run`), ``bias_pipeline.generate_bias``
(a synthetic master bias at any temperature) and
``bias_pipeline.bias_temp_analysis`` (per-temperature statistics).  Everything
shared (FITS I/O, index, stacking, fitting, the bias model product) comes
from :mod:`utils`.
"""
