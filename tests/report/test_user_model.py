"""``curvkit report --model file.py:function`` from a temporary directory, against dense references."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy
import pytest
import torch

from curvkit import reference
from curvkit.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "report_user_model.py"


def _example_problem(directory: Path):
    spec = importlib.util.spec_from_file_location("example_for_reference", directory / EXAMPLE.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.regression()


@pytest.fixture
def user_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple:
    shutil.copy(EXAMPLE, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    argv = ["report", "--model", f"{EXAMPLE.name}:regression", "--quick", "--dtype", "float64"]
    argv += ["--params", r"^[24]\.", "--top-k", "4", "--seed", "3", "--out", "out"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    return tmp_path, output, json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_user_model_report(user_report):
    directory, output, metrics = user_report
    index = directory / "out" / "index.html"
    assert output.splitlines()[-1] == f"The report is in {index.resolve()}"
    assert metrics["settings"]["dtype"] == "float64" and metrics["settings"]["seed"] == 3
    problem = metrics["problem"]
    assert problem["num_parameters"] == 16 * 32 + 16 + 3 * 16 + 3
    assert problem["dtype"] == "float64" and problem["num_data"] == 200
    selected = [
        p["name"] for p in metrics["analyses"]["parameters"]["numbers"]["parameters"] if p["selected"]
    ]
    assert selected == ["2.weight", "2.bias", "4.weight", "4.bias"]

    model, loss_function, data = _example_problem(directory)
    model = model.double()
    data = [(X.double(), y.double()) for X, y in data]
    params = [p for name, p in model.named_parameters() if name.startswith(("2.", "4."))]
    hessian = reference.hessian_matrix(model, loss_function, params, data)
    ggn = reference.ggn_matrix(model, loss_function, params, data)
    for name, matrix in (("hessian", hessian), ("ggn", ggn)):
        exact = torch.linalg.eigvalsh(matrix).flip(0)[:4].numpy()
        result = metrics["analyses"]["eigenvalues"]["numbers"][name]
        # float64 throughout: the residual bound alone, with rounding of the order of 1e-12 ‖A‖
        assert numpy.all(
            numpy.abs(numpy.array(result["eigenvalues"]) - exact)
            <= numpy.array(result["residual_norms"]) + 1e-12 * exact[0]
        )
        assert result["tol"] == 1e-8
        trace = metrics["analyses"]["traces"]["numbers"][name]
        assert abs(trace["estimate"] - matrix.trace().item()) <= trace["error_bar"]
        assert metrics["analyses"]["dense"]["numbers"][name]["trace"] == pytest.approx(
            matrix.trace().item(), rel=1e-10
        )
