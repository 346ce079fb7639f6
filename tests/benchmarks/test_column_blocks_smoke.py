"""The column-blocks benchmark still runs (a smoke run; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "column_blocks.py"


@pytest.mark.slow
def test_column_blocks_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for operator in ("HessianLinearOperator", "GGNLinearOperator"):
        for block in ("all", "16"):
            assert f"| {operator} | {block} |" in completed.stdout
