"""Time-series and anomaly analyses: the computation behind the four commands.

* operation sequences under the beam: :mod:`.sequence` (order, times),
  :mod:`.transients` (two streamed passes: temporal statistics, outliers, events,
  transients), :mod:`.radiation` (logs on the frames' zero point), :mod:`.operation`
  (the run), :mod:`.plots_operation`, :mod:`.animation`;
* flats over time: :mod:`.reduction` (validity, bias/dark removal),
  :mod:`.flat_compare` (normalised differences and their noise model),
  :mod:`.regions` (connected detections), :mod:`.structure`, :mod:`.outgassing`,
  :mod:`.classification`, :mod:`.plots_flats`;
* RTS pixels: :mod:`.rts` (streamed search), :mod:`.rts_kernels` (hidden Markov fits),
  :mod:`.rts_campaign` (the run), :mod:`.plots_rts`.

The commands are ``analysis/operation_analysis.py``, ``structure_analysis.py``,
``outgassing_analysis.py`` and ``rts_analysis.py``.
"""
