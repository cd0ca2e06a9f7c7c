"""The photon-transfer gain of a stage: pairs of flats and of bias frames -> ``gain.json``.

Pairs are consecutive frames of one flat set (same temperature bin and exposure), measured
on the central region while the levels are (:mod:`flat_pipeline.quality`); a pair with a
frame excluded by the frame QC for anything but saturation is dropped (saturated levels
are kept: the saturation onset is where the curve turns over).  Bias pairs of the same
stage give the read noise.  The fit and its error model are
:func:`utils.models.photon_transfer.fit_photon_transfer`.

Products: ``photon_transfer/ptc_pairs.csv`` (every pair), ``ptc_levels.csv`` (per level:
mean, variance, error, used, model, pull), ``ptc_bias_pairs.csv``, ``linearity.csv`` and
``gain.json`` in the stage's folder (:func:`utils.models.gain.write_gain`), which the dark
pipeline and the dose analyses read with ``--gain PATH``.
"""

from __future__ import annotations

import logging

import pandas as pd

from utils.models.photon_transfer import PhotonTransfer, fit_photon_transfer

from .quality import USED

logger = logging.getLogger(__name__)

PTC_FOLDER = "photon_transfer"


def usable_pairs(pairs: pd.DataFrame, qc: pd.DataFrame) -> pd.DataFrame:
    """The pairs both of whose frames may enter the photon transfer (``PTC`` in the QC)."""
    if pairs.empty:
        return pairs
    ok = set(qc.loc[qc["PTC"].astype(bool), "PATH"].astype(str))
    keep = pairs["PATH_A"].isin(ok) & pairs["PATH_B"].isin(ok)
    dropped = int((~keep).sum())
    if dropped:
        logger.info("photon transfer: %d pair(s) with an excluded frame dropped", dropped)
    return pairs[keep].reset_index(drop=True)


def measure_gain(pairs: pd.DataFrame, qc: pd.DataFrame, bias_pairs: pd.DataFrame | None, *,
                 adc_bits: int, fit_fraction: float = 0.7,
                 max_sat_fraction: float = 1e-3) -> PhotonTransfer:
    """Photon-transfer result of a stage (``note`` says why when no gain was measured)."""
    result = fit_photon_transfer(usable_pairs(pairs, qc), adc_bits=adc_bits,
                                 bias_pairs=bias_pairs, fit_fraction=fit_fraction,
                                 max_sat_fraction=max_sat_fraction)
    if result.measured:
        logger.info("photon transfer: gain %.4f +- %.4f e-/ADC count from %d levels "
                    "(chi2/dof %.2f), read noise %.2f e-, saturation onset %s adu",
                    result.gain, result.gain_err, int(result.levels["USED"].sum()),
                    result.chi2dof, result.read_noise_e,
                    f"{result.saturation_adu:.0f}" if result.saturation_adu == result.saturation_adu
                    else "not reached")
    else:
        logger.warning("no photon-transfer gain: %s", result.note)
    return result


def level_summary(qc: pd.DataFrame) -> int:
    """Number of distinct flat levels (sets) with used frames."""
    used = qc[qc["STATUS"] == USED]
    return int(used.groupby(["TBIN", "EXPTIME"]).ngroups) if len(used) else 0


__all__ = ["measure_gain", "usable_pairs", "level_summary", "PTC_FOLDER"]
