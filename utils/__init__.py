"""Shared core of the CMOS calibration toolkit.

Everything that more than one pipeline or analysis needs lives here, once:
FITS I/O and atomic writes (:mod:`utils.fitsio`), raw frame reading
(:mod:`utils.raw`), raw-to-FITS conversion (:mod:`utils.raw_to_fits`), the
dataset index (:mod:`utils.index`, CLI :mod:`utils.index_dataset`), header
keyword knowledge (:mod:`utils.headers`), ADU conventions (:mod:`utils.adu`),
calibration sets (:mod:`utils.grouping`), streaming stacking
(:mod:`utils.stacking`), statistics (:mod:`utils.stats`), per-pixel fits
(:mod:`utils.fitting`),
the synthetic campaign simulator (:mod:`utils.simulate`), command-line helpers
(:mod:`utils.cli`) and the error types (:mod:`utils.errors`).
"""

__version__ = "0.1.0"

#: Name written into product headers as the software that made them.
SOFTWARE_NAME = "cmos-calib"
