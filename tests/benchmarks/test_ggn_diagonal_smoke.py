"""The GGN-diagonal benchmark still runs (a smoke run; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "ggn_diagonal.py"


@pytest.mark.slow
def test_ggn_diagonal_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    rows = [
        line for line in completed.stdout.splitlines() if line.startswith("| ") and "gradient" not in line
    ]
    problems = [row for row in rows if row.startswith(("| MLP", "| CNN", "| Transformer"))]
    assert len(problems) == 3
    for row in problems:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        float(cells[1]), float(cells[3]), float(cells[5])  # curvkit exact, mc, probe: numbers
        assert cells[2] == cells[4] == "–"  # BackPACK: not asked for
