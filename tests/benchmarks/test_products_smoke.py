"""The products benchmark still runs (a smoke run; timings are never asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "products.py"


@pytest.mark.slow
def test_products_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-curvlinops", "--no-memory"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for problem in ("mlp", "cnn", "transformer"):
        assert f"### {problem}" in completed.stdout
    assert "fails" not in completed.stdout  # every operator ran on every problem, transformer included
    assert completed.stdout.count("| GGN, cached") == 3
