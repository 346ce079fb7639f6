"""benchmarks/kronecker.py still runs (a smoke run; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.mark.slow
def test_kronecker_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "kronecker.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    for row in (
        "| mlp | W, b apart | 16 |",
        "| mlp | [W b] joined | 1 |",
        "| mlp | linear 784→256 | 128 × 1 | Gramian |",
    ):
        assert row in completed.stdout
