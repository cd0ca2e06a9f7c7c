"""Shared core of the CMOS calibration toolkit.

Everything that more than one pipeline or analysis needs lives here, once,
grouped by concern:

* cross-cutting modules at the top: header keyword names and accessors
  (:mod:`utils.headers`), the ADU convention (:mod:`utils.adu`), error types
  (:mod:`utils.errors`), settings (:mod:`utils.settings`), command-line
  conventions (:mod:`utils.cli`), progress bars, plotting helpers and the
  run record that makes re-runs skip complete work;
* :mod:`utils.io`: files on disk -- FITS I/O and atomic writes
  (:mod:`~utils.io.fitsio`), raw frames and camera configs (:mod:`~utils.io.raw`),
  per-frame logs (:mod:`~utils.io.frame_log`), folder and file-name tokens,
  attempt discovery, raw-to-FITS conversion (:mod:`~utils.io.conversion`) and the
  dataset index (:mod:`~utils.io.index`);
* :mod:`utils.stack`: robust statistics (:mod:`~utils.stack.stats`), calibration
  sets (:mod:`~utils.stack.grouping`), the streaming combine engine
  (:mod:`~utils.stack.combine` and its kernels) and master files
  (:mod:`~utils.stack.master`);
* :mod:`utils.models`: per-pixel fits (:mod:`~utils.models.linear`,
  :mod:`~utils.models.nonlinear`) and the calibration models built on them
  (bias model, read noise);
* :mod:`utils.sim`: the seeded campaign simulator with its ground truth.

The commands ``python -m utils.raw_to_fits``, ``python -m utils.index_dataset``
and ``python -m utils.simulate`` are thin modules at the top of the package.
"""

__version__ = "0.1.0"

#: Name written into product headers as the software that made them.
SOFTWARE_NAME = "cmos-calib"
