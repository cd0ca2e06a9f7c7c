"""Bias calibration pipeline (roadmap: see README "Roadmap").

Will hold only what is specific to bias calibration and a single ``pipeline.run()``
stating the step order; everything shared (FITS I/O, index, stacking, fitting,
masks) comes from :mod:`utils`.
"""
