"""Each analysis on its own: the KFAC and sketch wiring (with stand-ins), failures, skips and the budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy
import pytest
import stand_ins
import torch
from torch import nn

from curvkit import reference
from curvkit.report import ReportSettings, build_report
from curvkit.report.analyses import ANALYSES, Analysis
from curvkit.report.budget import share_of
from curvkit.report.problem import prepared_problem
from curvkit.report.runner import run_analysis

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
from report_user_model import regression

BY_KEY = {analysis.key: analysis for analysis in ANALYSES}


def small_problem(settings: ReportSettings, loss_function=None):
    model, mse, data = regression()
    return prepared_problem("regression", model, loss_function or mse, data, "test", settings)


@pytest.fixture
def settings(tmp_path: Path) -> ReportSettings:
    return ReportSettings(model="x.py:f", out=tmp_path, dtype="float64", budget=1000).checked()


@pytest.fixture
def problem(settings):
    return small_problem(settings)


def run(key, problem, settings):
    return run_analysis(BY_KEY[key], problem, settings, {})


def test_kfac_wiring(monkeypatch, problem, settings):
    stand_ins.install(monkeypatch)
    result = run("kfac", problem, settings)
    assert result.status == "ok", result.message
    assert stand_ins.BlockDiagonalGGN.created == [
        {"fisher_type": "type-2", "loss_average": "batch", "process_group": None}
    ]
    assert result.products <= share_of("kfac", 1000)
    block_diagonal = stand_ins.BlockDiagonalGGN(
        problem.model, problem.loss_function, problem.param_list, problem.data
    )
    ggn = reference.ggn_matrix(problem.model, problem.loss_function, problem.param_list, problem.data)
    numbers = result.findings.numbers
    exact_top = torch.linalg.eigvalsh(block_diagonal.matrix).flip(0)[:8].numpy()
    eigen = numbers["eigenvalues"]
    tolerance = numpy.array(eigen["residual_norms"]) + 1e-12 * exact_top[0]
    assert numpy.all(numpy.abs(numpy.array(eigen["eigenvalues"]) - exact_top) <= tolerance)
    exact_error = (
        torch.linalg.matrix_norm(ggn - block_diagonal.matrix) / torch.linalg.matrix_norm(ggn)
    ).item()
    low, high = numbers["relative_error"]["interval"]
    assert low <= exact_error <= high
    assert numbers["relative_error"]["num_meas"] == 30
    assert "curvkit.sketch.a_posteriori.apost_error" in result.findings.functions


def test_kfac_without_apost_error(monkeypatch, problem, settings):
    stand_ins.remove(monkeypatch)
    stand_ins.install(monkeypatch, sketch=False)
    result = run("kfac", problem, settings)
    assert result.status == "ok"
    assert result.findings.numbers["relative_error"]["status"] == "not computed"
    assert result.findings.notes == [
        "Relative error against the GGN not estimated: "
        "curvkit.sketch.a_posteriori.apost_error is not available in this version of curvkit."
    ]


def test_sketch_wiring(monkeypatch, problem, settings):
    stand_ins.install(monkeypatch)
    result = run("sketch", problem, settings)
    assert result.status == "ok", result.message
    share = share_of("sketch", 1000)
    numbers = result.findings.numbers
    assert numbers["outer_dims"] == (share - 30) // 2
    assert result.products == 2 * numbers["outer_dims"] + 30 <= share
    values, vectors = stand_ins.seigh.last
    hessian = reference.hessian_matrix(problem.model, problem.loss_function, problem.param_list, problem.data)
    approximation = vectors @ torch.diag(values) @ vectors.T
    exact_error = (
        torch.linalg.matrix_norm(hessian - approximation) / torch.linalg.matrix_norm(hessian)
    ).item()
    low, high = numbers["relative_error"]["interval"]
    assert low <= exact_error <= high
    assert numpy.allclose(sorted(numpy.abs(numbers["eigenvalues"]))[::-1], values.abs().numpy())


def test_dense_with_kfac(monkeypatch, problem, settings):
    stand_ins.install(monkeypatch)
    result = run("dense", problem, settings)
    assert result.status == "ok"
    assert result.products == 4 * problem.dim
    block_diagonal = stand_ins.BlockDiagonalGGN(
        problem.model, problem.loss_function, problem.param_list, problem.data
    )
    ggn = reference.ggn_matrix(problem.model, problem.loss_function, problem.param_list, problem.data)
    exact_error = (
        torch.linalg.matrix_norm(ggn - block_diagonal.matrix) / torch.linalg.matrix_norm(ggn)
    ).item()
    assert result.findings.numbers["kfac_relative_error"] == pytest.approx(exact_error, rel=1e-10)
    assert "KFAC keeps only blocks on the diagonal" in result.findings.figures[0].caption


@pytest.mark.parametrize(
    "key, what", [("kfac", "KFACLinearOperator"), ("sketch", "curvkit.sketch.algorithms.seigh")]
)
def test_not_available(monkeypatch, problem, settings, key, what):
    stand_ins.remove(monkeypatch)
    result = run(key, problem, settings)
    assert (result.status, result.message) == (
        "not available",
        f"{what} is not available in this version of curvkit.",
    )
    assert result.products == 0 and result.findings.figures == []


def test_one_matrix_failing_leaves_the_others(settings):
    """Class weights: Hessian and GGN exist, the empirical Fisher does not (curvkit refuses it)."""
    problem = small_problem(settings, nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0])))
    problem.data = [(X, y.argmax(1)) for X, y in problem.data]
    result = run("traces", problem, settings)
    assert result.status == "ok"
    numbers = result.findings.numbers
    assert numbers["ef"]["status"] == "failed"
    assert numbers["ef"]["message"].startswith("NotImplementedError: loss_func with weight/pos_weight")
    assert {"estimate", "error_bar"} <= set(numbers["hessian"]) and {"estimate", "error_bar"} <= set(
        numbers["ggn"]
    )
    assert result.findings.notes == [f"empirical Fisher: {numbers['ef']['message']}"]
    assert [row.quantity for row in result.findings.summary] == ["trace of the Hessian", "trace of the GGN"]


def test_budget_too_small_skips(problem, tmp_path):
    settings = ReportSettings(model="x.py:f", out=tmp_path, budget=20, dense=False).checked()
    results = {key: run(key, problem, settings) for key in ("eigenvalues", "traces", "densities")}
    for result in results.values():
        assert result.status == "skipped"
        assert result.message.endswith("raise --budget.")
        assert result.products == 0
    assert (
        "Lanczos for 8 eigenvalues needs at least 36 products, its share is 3"
        in results["eigenvalues"].message
    )


def test_dense_skips(monkeypatch, problem, tmp_path):
    settings = ReportSettings(model="x.py:f", out=tmp_path, dense=False).checked()
    assert (run("dense", problem, settings).status, run("dense", problem, settings).message) == (
        "skipped",
        "--no-dense.",
    )
    monkeypatch.setattr("curvkit.report.analyses.dense.MAX_DENSE_DIM", 100)
    settings = ReportSettings(model="x.py:f", out=tmp_path).checked()
    result = run("dense", problem, settings)
    assert result.status == "skipped"
    assert result.message == "D = 931 parameters is above 100: dense matrices only for small models."


def test_a_failing_analysis_does_not_stop_the_others(monkeypatch, tmp_path):
    def broken(context):
        raise ZeroDivisionError("division by zero")

    analyses = (
        BY_KEY["parameters"],
        Analysis("broken", "Broken", broken, budgeted=False),
        BY_KEY["loss_and_gradient"],
    )
    monkeypatch.setattr("curvkit.report.runner.ANALYSES", analyses)
    (tmp_path / "m.py").write_text("from report_user_model import regression\n")
    index = build_report(
        ReportSettings(model=str(tmp_path / "m.py") + ":regression", out=tmp_path), progressbar=False
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [a["status"] for a in metrics["analyses"].values()] == ["ok", "failed", "ok"]
    assert metrics["analyses"]["broken"]["message"] == "ZeroDivisionError: division by zero"
    assert "<b>failed</b>: ZeroDivisionError: division by zero" in index.read_text()
