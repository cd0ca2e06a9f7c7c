"""Analyses built on the shared core: index processing (masters, per-frame statistics,
trend plots) and the time-series analyses (operation sequences under the beam, new
structures in flats, outgassing/destruction, RTS pixels; computation in
:mod:`analysis.timeseries`); radiation and dose analyses on the roadmap."""
