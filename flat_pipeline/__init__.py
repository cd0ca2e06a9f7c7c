"""Flat calibration: reduced and normalised flats, master flats per flat level, illumination
(vignetting) model about a fitted optical centre, PRNU and response defects, photon-transfer
gain, per-pixel flat model over temperature and exposure time, evaluation.

Command: ``flat_pipeline/run_pipeline.py`` (its modes' order is stated once in
:func:`flat_pipeline.pipeline.run`).  Everything shared (FITS I/O, index, stacking, the
bias and dark references, fits, the illumination and photon-transfer models, the gain
product) comes from :mod:`utils`.
"""
