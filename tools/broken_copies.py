"""Replay the three broken copies of issue 16 and report which tests kill each one.

Each broken copy plants a known fault (several edits) in a scratch copy of the
repository, runs the tests that must catch it, and lists the tests that fail.
A copy that no test kills makes this command exit 1: the suite lets that wrong
result through again.

* ``dark``: the dark pipeline's modes ``evaluate_dark_current``, ``fit_2d_model``
  and ``evaluate_2d_model`` do nothing (``pass``), the 1-D model's errors are 20 %
  too large and the delivered A is 2.5 % too high;
* ``process_index``: darks are bias-subtracted at T + 0.35 degC (2.8 adu, ~6 sigma
  of the mean dark signal);
* ``run_calibration``: the bias and dark pipelines never run.

Usage (from the repository root; a few minutes per copy on an idle 2-core machine)::

    python -m tools.broken_copies                 # all three
    python -m tools.broken_copies dark --jobs 1   # one of them

It prints, per copy, the killing tests and a final JSON line, and writes
``bench/results/broken_copies.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.mutation import ROOT, _scratch_copy

logger = logging.getLogger("tools.broken_copies")

_DARK_MODES = ("dark_pipeline/pipeline.py",
               '    elif mode == "evaluate_dark_current":\n',
               '    elif mode in ("evaluate_dark_current", "fit_2d_model", "evaluate_2d_model"):\n'
               '        pass\n'
               '    elif mode == "evaluate_dark_current":\n')
_DARK_ERRORS = ("dark_pipeline/temperature_model.py",
                '    _scale_in_place(fit, scale, ("amplitude_err", "rate_err"))\n',
                '    _scale_in_place(fit, scale * 1.2, ("amplitude_err", "rate_err"))\n')
_DARK_AMPLITUDE = ("dark_pipeline/temperature_model.py",
                   "    model = DarkModel1D(fit, scale, None, inputs, adc_bits, common)\n",
                   "    fit = dataclasses.replace(fit, amplitude=fit.amplitude * 1.025)\n"
                   "    model = DarkModel1D(fit, scale, None, inputs, adc_bits, common)\n")
_DARK_TESTS = ["tests/dark_pipeline"]

#: ``name -> (edits, tests)``; an edit is ``(file, old text, new text)`` and ``old`` must occur
#: exactly once in the file (so a refactor that moves the code makes this tool fail loudly
#: instead of silently planting nothing).  ``dark`` is the broken copy of the issue; its three
#: faults are also replayed one by one (``dark/...``) so that each is shown to be caught.
BROKEN: dict[str, tuple[list[tuple[str, str, str]], list[str]]] = {
    "dark": ([_DARK_MODES, _DARK_ERRORS, _DARK_AMPLITUDE], _DARK_TESTS),
    "dark/modes": ([_DARK_MODES], _DARK_TESTS),
    "dark/errors": ([_DARK_ERRORS], _DARK_TESTS),
    "dark/amplitude": ([_DARK_AMPLITUDE], _DARK_TESTS),
    "process_index": ([
        ("analysis/masters.py",
         "subtract=bias.subtractor(temps),",
         "subtract=bias.subtractor(temps + 0.35),"),
    ], ["tests/analysis/test_process_index.py"]),
    "run_calibration": ([  # run_calibration runs the pipelines through stage_pipelines
        ("analysis/stage_pipelines.py",
         '    for stage, dose in groups_with(table, "BIAS", groups):\n',
         "    for stage, dose in []:\n"),
        ("analysis/stage_pipelines.py",
         '    for stage, dose in groups_with(table, "DARK", groups):\n',
         "    for stage, dose in []:\n"),
    ], ["tests/test_run_calibration.py"]),
}


def plant(repo: Path, edits) -> None:
    """Apply ``edits`` in ``repo``; every ``old`` text must occur exactly once."""
    for rel, old, new in edits:
        path = repo / rel
        text = path.read_text(encoding="utf-8")
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"{rel}: the text to break occurs {count} times, not once: "
                             f"{old.strip()!r}; update tools/broken_copies.py")
        path.write_text(text.replace(old, new), encoding="utf-8")


def run_tests(repo: Path, tests: list[str], timeout: float) -> tuple[int, list[str], float]:
    """``(exit code, failing test ids, seconds)`` of the tests in ``repo``."""
    env = dict(os.environ, PYTHONPATH=str(repo), NUMBA_CACHE_DIR=str(repo / ".numba"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfE", *tests], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)))
    return proc.returncode, failed, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: python -m tools.broken_copies dark")
    parser.add_argument("copies", nargs="*", metavar="COPY",
                        help=f"broken copies to replay: {', '.join(BROKEN)} (default: all)")
    parser.add_argument("--timeout", type=float, default=1800, help="[s] per copy")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" /
                                                "broken_copies.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = sorted(set(args.copies) - set(BROKEN))
    if unknown:
        parser.error(f"unknown broken copies {unknown}; choose from {list(BROKEN)}")
    work = Path(tempfile.mkdtemp(prefix="broken-copies-"))
    results = {}
    try:
        for name in args.copies or list(BROKEN):
            edits, tests = BROKEN[name]
            repo = work / name.replace("/", "-")
            _scratch_copy(repo)
            plant(repo, edits)
            code, failed, seconds = run_tests(repo, tests, args.timeout)
            killed = code != 0
            results[name] = {"killed": killed, "exit": code, "killing_tests": failed,
                             "tests_run": tests, "seconds": round(seconds, 1)}
            logger.info("%s: %s in %.0f s (pytest exit %d)%s", name,
                        "KILLED" if killed else "SURVIVED", seconds, code,
                        "".join(f"\n    {test}" for test in failed))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v["killed"] for k, v in results.items()}))
    return 0 if all(v["killed"] for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
