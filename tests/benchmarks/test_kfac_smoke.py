"""The KFAC benchmark still runs (a smoke run without the comparison venvs; timings are never asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kfac.py"


@pytest.mark.slow
def test_kfac_benchmark_quick_run():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "failed" not in completed.stdout  # curvkit measured every row on both problems
    for problem in ("mlp", "cnn"):
        assert f"### {problem}" in completed.stdout
    rows = [line.strip("|").split("|") for line in completed.stdout.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in row] for row in rows if not row[0].strip().startswith(("×", "---"))]
    assert len(rows) == 2 * 12 + 1  # the CNN has the 'reduce' row too
    for row in rows:
        float(row[1])  # curvkit's figure is a number
        assert row[4] == row[6] == "–"  # curvlinops and BackPACK: not asked for
        # the factor rows' multiply-add floor (arithmetic_floor.py), the others none
        assert (row[3] != "–") == row[0].startswith("factors '"), row
    for problem_rows in (rows[:12], rows[12:]):
        floor = {row[0]: float(row[3]) for row in problem_rows if row[3] != "–"}
        # no columns pulled back < one column < C − 1 columns
        assert floor["factors 'forward-only'"] < floor["factors 'mc'"] == floor["factors 'empirical'"]
        assert floor["factors 'mc'"] < floor["factors 'type-2'"]
