"""The bare factor pass still runs and still computes curvkit's factors (timings are never asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kfac_bare_pass.py"


@pytest.mark.slow
def test_bare_pass_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr  # the script asserts its factors are curvkit's
    rows = [line.strip("|").split("|") for line in completed.stdout.splitlines() if line.startswith("| ")]
    names = [row[0].strip() for row in rows[1:]]  # under the header
    assert names[:2] == ["gradient", "curvkit 'mc'"] and len(names) == 6
    assert float(rows[1][2]) == 1.0  # the gradient, over itself
