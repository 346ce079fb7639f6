"""Issue 3's benchmarks still run (smoke runs; nothing measured is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def run(script: str, *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.slow
def test_spectral_density_benchmark_quick_run():
    output = run("spectral_density.py", "--quick")
    for row in ("64 Hessian matvecs", "Lanczos re-orthogonalized at every step", "density, boundaries given"):
        assert f"| {row} |" in output


@pytest.mark.slow
def test_trace_estimation_benchmark_quick_run(tmp_path):
    plot = tmp_path / "trace_estimation.png"
    output = run("trace_estimation.py", "--quick", "--seeds", "3", "--plot", str(plot))
    assert "Hutch++" in output and "XTrace" in output
    assert plot.stat().st_size > 0


@pytest.mark.slow
def test_large_model_benchmark_quick_run():
    output = run("large_model.py", "--quick")
    for row in ("hutchinson_trace(G, 30)", "hutchpp_trace(G, 12)"):
        assert f"| {row} |" in output
    assert "lanczos_eigsh(G, k=2)" in output
