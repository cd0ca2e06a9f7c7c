"""Leave-one-temperature-out refits of the dark models, for their evaluation
(:func:`dark_pipeline.evaluation.evaluate`): ``holdout(T)`` fits the 1-D or 2-D model
without temperature bin T and returns its prediction and error functions.  The dark
pipeline makes them (:func:`dark_pipeline.pipeline.run`); they are fitted on a pixel sample
and warm-started from the full model's population values."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from utils.errors import UserError
from utils.stack.tiles import ArrayRows

from .model_2d import BiasErrors, SamplePoints, fit_model_2d, shared_bias_covariance
from .rates import rate_sample
from .temperature_model import fit_temperature_model

if TYPE_CHECKING:
    from .model_2d import DarkModel2D
    from .pipeline import DarkSettings

__all__ = ["holdout_1d", "holdout_2d", "population_shape"]


def holdout_1d(rates, settings: DarkSettings, adc_bits: int, pixels=None, start=None):
    """``holdout(T)``: the 1-D model fitted without temperature bin T (None if impossible),
    on the pixels ``pixels`` (flat indices; default every pixel); ``start``: the full
    model's population B [1/degC], where the refit's population joint fit starts."""
    rates = [r.loaded() for r in rates] if pixels is None else rate_sample(rates, pixels)

    def fit_without(label):
        rest = [r for r in rates if r.temperature != label]
        if len({round(r.tavg, 3) for r in rest}) < 2:
            return None
        try:
            m = fit_temperature_model(rest, settings.t_ref, adc_bits=adc_bits, quiet=True,
                                      population_start=start)
        except UserError:
            return None
        return (lambda t, x: m.rate(t) * x), (lambda t, x: m.rate_err(t) * x)
    return fit_without


def holdout_2d(stack, settings: DarkSettings, adc_bits: int, bias_model=None, start=None):
    """``holdout(T)``: the 2-D model fitted without the masters of temperature bin T (on the
    pixels of ``stack``: give a :meth:`~dark_pipeline.rates.SignalStack.sample`, which is
    not used after this call);
    ``start``: the full model's population (gamma, B), where the refit's joint fit starts
    (:func:`population_shape`).

    With a bias model it returns a third function, ``cov(T, t)``: the covariance of the
    prediction's error with the error of a master there subtracted with the same bias
    model (:func:`~dark_pipeline.model_2d.shared_bias_covariance`; both carry the bias
    model's errors), which the evaluation takes out of the variance of their difference.
    Without it the held-out pulls of the warm, short exposures had std ~0.90 although the
    prediction's and the master's own errors were right against the simulator's truth (pull
    std 1.02-1.04 and 1.01-1.02; 256^2 bench campaign).

    The sample's masters are read once here (:class:`~dark_pipeline.model_2d.SamplePoints`:
    signal, total and subtracted-bias errors, 28 MB for 36 masters of 65536 pixels) and
    the sample's own images dropped (the 5 images of every master, 47 MB): each refit
    takes its masters' points from them (the same values as its own read), and the bias
    model's errors at the sample's pixels, gathered once too."""
    if stack.pixels is None:
        raise ValueError("the leave-one-out refits take a pixel sample (SignalStack.sample)")
    points = SamplePoints.read(stack)
    at_sample = None
    if bias_model is not None:  # the bias model's errors at the sample's pixels, read once
        errors = bias_model if isinstance(bias_model, BiasErrors) else BiasErrors.of(bias_model)
        at_sample = errors.at(stack.pixels)
    # read: the sample's images are not held through the evaluation; the refits' bias
    # errors are the sample's own (1, n) maps (no pixel indices to take them at)
    stack = replace(stack, rows=ArrayRows({"SUBERR": points.suberr}), pixels=None)

    def fit_without(label):
        keep = [i for i, m in enumerate(stack.masters) if m.temperature != label]
        rest = stack.select(keep)
        try:
            m2 = fit_model_2d(rest, settings.t_ref, min_snr=settings.min_snr, adc_bits=adc_bits,
                              quiet=True, bias_model=at_sample, population_start=start,
                              keep_gain=True, points=points.select(keep))
        except UserError:
            return None
        if m2.shared_gain is None:
            return m2.signal, m2.signal_err
        return m2.signal, m2.signal_err, lambda temperature, exptime: shared_bias_covariance(
            m2, at_sample, temperature, exptime)
    return fit_without


def population_shape(model2: DarkModel2D) -> tuple[float, float]:
    """The population (gamma, B [1/degC]) of a 2-D model: its refits' warm start."""
    return float(model2.fit.population_gamma), float(model2.fit.population_rate)
