"""The data-parallel benchmark still runs (a smoke run; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "distributed.py"


@pytest.mark.slow
def test_distributed_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for operator in ("Hessian", "GGN"):
        for configuration in ("1 process", "1 process, group of 1", "2 processes"):
            assert f"| {operator} | {configuration} |" in completed.stdout
