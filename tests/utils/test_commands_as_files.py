"""README: every script also runs as a file (``python utils/index_dataset.py ...``) or as a
module.  utils/index_dataset.py used relative imports and, run as a file, ended in
'ImportError: attempted relative import with no known parent package'."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["utils/index_dataset.py", "utils/raw_to_fits.py",
                                    "utils/simulate.py"])
def test_utils_commands_run_as_files(script, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, check=False)
    assert run.returncode == 0, run.stderr[-500:]
    assert "Example" in run.stdout
