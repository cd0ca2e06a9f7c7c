"""Analyses built on the shared core: index processing (masters, per-frame statistics,
trend plots) now; radiation, dose and operation analyses on the roadmap."""
