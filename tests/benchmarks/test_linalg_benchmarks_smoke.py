"""The linear algebra benchmarks still run (smoke runs; no timing is asserted, only their checks)."""

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


@pytest.mark.slow
def test_kfac_large_benchmark_quick_run():
    output = run("kfac_large.py", "--quick")
    for row in ("'mc'", "'type-2'", "'empirical'", "'forward-only'", "EKFAC: correction pass"):
        assert f"| {row} |" in output
    # the exact damped inverse's backward error in float32, and exactly symmetric factors
    backward_error = float(output.split("‖ / ‖b‖ = ")[1].split(";")[0])
    assert backward_error < 1e-4
    assert "|F − Fᵀ| = 0.0e+00" in output
