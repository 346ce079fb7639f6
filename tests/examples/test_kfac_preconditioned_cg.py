"""The KFAC-preconditioned CG example runs, converges, and needs fewer iterations with KFAC."""

import os
import runpy
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[2] / "examples" / "kfac_preconditioned_cg.py"


def test_kfac_preconditioner_saves_cg_iterations(monkeypatch, capsys):
    monkeypatch.chdir(SCRIPT.parent)
    namespace = runpy.run_path(os.fspath(SCRIPT), run_name="__main__")
    assert torch.get_default_dtype() == torch.float32  # the example leaves the process as it found it
    output = capsys.readouterr().out
    iterations, residuals = namespace["iterations"], namespace["residuals"]
    assert set(iterations) == {"none", "KFAC, exact damping", "KFAC, π-heuristic damping"}
    for name, count in iterations.items():
        assert f"{count:>15}" in output  # printed
        assert residuals[name] <= namespace["TOLERANCE"]  # every solve converged
        if name != "none":  # at least a fifth fewer iterations with KFAC's inverse than without
            assert count <= 0.8 * iterations["none"], (name, count, iterations["none"])
