"""The sketch tutorial benchmark still runs (a smoke run on a small MLP; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sketch_tutorial.py"


@pytest.mark.slow
def test_sketch_tutorial_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for row in ("total s", "products s", "orthogonalization s", "eigenproblem s", "peak RSS MB"):
        assert f"| {row} |" in completed.stdout
    assert "| estimated relative error |" in completed.stdout
