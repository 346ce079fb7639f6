"""``curvkit report --quick`` on the default: every reported number against dense float64 references."""

from __future__ import annotations

import numpy
import pytest
import scipy.stats
import torch

import curvkit
from curvkit import reference
from curvkit.report.budget import SHARES

REFERENCES = {
    "hessian": reference.hessian_matrix,
    "ggn": reference.ggn_matrix,
    "ef": reference.empirical_fisher_matrix,
}
FLOAT32_SLACK = 1e-5
"""Relative difference of a float32 operator's numbers from the float64 references, times ‖A‖."""


@pytest.fixture(scope="module")
def dense(default_problem_float64) -> dict[str, torch.Tensor]:
    model, loss_function, params, data = default_problem_float64
    return {name: build(model, loss_function, params, data) for name, build in REFERENCES.items()}


@pytest.fixture(scope="module")
def spectra(dense) -> dict[str, torch.Tensor]:
    """Eigenvalues of each dense reference, descending."""
    return {name: torch.linalg.eigvalsh(matrix).flip(0) for name, matrix in dense.items()}


def test_every_analysis_ran_or_says_why(default_report):
    _, metrics = default_report
    statuses = {key: analysis["status"] for key, analysis in metrics["analyses"].items()}
    # every analysis of this curvkit (builds without KFAC or the sketches: tests/report/test_analyses.py)
    expected_ok = {
        "parameters",
        "loss_and_gradient",
        "eigenvalues",
        "traces",
        "densities",
        "kfac",
        "sketch",
        "dense",
    }
    assert {key for key, status in statuses.items() if status == "ok"} >= expected_ok


def test_settings_and_problem_are_recorded(default_report):
    out, metrics = default_report
    settings = metrics["settings"]
    assert settings == {
        "model": "mlp",
        "out": str(out),
        "device": None,
        "dtype": None,
        "seed": 0,
        "params": None,
        "top_k": 8,
        "budget": 1000,
        "quick": True,
        "dense": True,
    }
    problem = metrics["problem"]
    assert (problem["num_parameters"], problem["num_data"], problem["dtype"]) == (2410, 512, "float32")
    assert [layer["entries"] for layer in problem["layers"]] == [64 * 24 + 24, 24 * 24 + 24, 24 * 10 + 10]


def test_budget_is_kept(default_report):
    _, metrics = default_report
    budget = metrics["budget"]
    assert sum(budget["used"].values()) <= budget["total"] == 1000
    for key, used in budget["used"].items():
        assert used <= int(1000 * SHARES[key]) == budget["shares"][key]
        assert used == metrics["analyses"][key]["products"]
    assert budget["outside_budget"] == {"dense": 4 * 2410}  # D products per dense matrix


def test_loss_and_gradient(default_report, default_problem_float64):
    _, metrics = default_report
    model, loss_function, params, data = default_problem_float64
    X, y = torch.cat([X for X, _ in data]), torch.cat([y for _, y in data])
    loss = loss_function(model(X), y)
    gradient = torch.autograd.grad(loss, params)
    numbers = metrics["analyses"]["loss_and_gradient"]["numbers"]
    assert numbers["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert numbers["gradient_norm"] == pytest.approx(
        torch.cat([g.flatten() for g in gradient]).norm().item(), rel=1e-4
    )


@pytest.mark.parametrize("name", ["hessian", "ggn"])
def test_top_eigenvalues_within_their_residuals(default_report, spectra, name):
    """A symmetric matrix has an eigenvalue within ‖Au − θu‖ of θ: the top-k must be the top-k."""
    _, metrics = default_report
    result = metrics["analyses"]["eigenvalues"]["numbers"][name]
    values, residuals = numpy.array(result["eigenvalues"]), numpy.array(result["residual_norms"])
    exact = spectra[name][: len(values)].numpy()
    slack = FLOAT32_SLACK * abs(exact[0])
    assert len(values) == 8
    assert abs(values[0] - exact[0]) <= residuals[0] + slack  # the largest eigenvalue
    assert numpy.all(numpy.abs(values - exact) <= residuals + slack)
    assert numpy.all(residuals <= 9 * result["tol"] * abs(values[0]))  # lanczos_eigsh: (k + 1) tol max|θ|


@pytest.mark.parametrize("name", ["hessian", "ggn", "ef"])
def test_trace_within_its_error_bar(default_report, dense, name):
    _, metrics = default_report
    result = metrics["analyses"]["traces"]["numbers"][name]
    exact = dense[name].trace().item()
    assert abs(result["estimate"] - exact) <= result["error_bar"]
    assert result["estimate"] == pytest.approx(numpy.mean(result["runs"]))
    assert 0 < result["error_bar"] < 0.5 * abs(exact)  # an error bar that says something


@pytest.mark.parametrize("name", ["hessian", "ggn"])
def test_spectral_densities_cover_the_spectrum(default_report, spectra, name):
    """Each density spans the spectrum and has unit mass, less what its kernel loses at the ends.

    Every node carries a Gaussian of width σ = 2 / ((ncv − 1) √(8 ln κ)) on the spectrum padded by
    ``margin = 0.05`` and mapped to [−1, 1]; a node at an end of the spectrum (a null space) lies
    2 margin / (1 + 2 margin) inside the grid and loses the Gaussian's tail beyond it.
    """
    _, metrics = default_report
    result = metrics["analyses"]["densities"]["numbers"][name]
    inside = 2 * 0.05 / (1 + 2 * 0.05)
    for prefix, kappa in (("", 3.0), ("log_", 1.04)):
        grid, density = numpy.array(result[f"{prefix}grid"]), numpy.array(result[f"{prefix}density"])
        sigma = 2 / ((result["ncv"] - 1) * numpy.sqrt(8 * numpy.log(kappa)))
        most_lost = scipy.stats.norm.cdf(-inside / sigma)
        assert numpy.all(density >= 0)
        assert 1 - most_lost - 0.01 <= _integral(density, grid) <= 1.01
    grid, log_grid = numpy.array(result["grid"]), numpy.array(result["log_grid"])
    assert grid[0] <= spectra[name][-1].item() and spectra[name][0].item() <= grid[-1]
    magnitudes = numpy.log(spectra[name].abs().numpy() + result["epsilon"])
    assert log_grid[0] <= magnitudes.min() and magnitudes.max() <= log_grid[-1]


def test_dense_numbers(default_report, dense, spectra):
    _, metrics = default_report
    numbers = metrics["analyses"]["dense"]["numbers"]
    for name, matrix in dense.items():
        scale = spectra[name].abs().max().item()
        assert numbers[name]["trace"] == pytest.approx(matrix.trace().item(), abs=FLOAT32_SLACK * scale * 10)
        assert numpy.allclose(
            numbers[name]["top_eigenvalues"], spectra[name][:8].numpy(), atol=FLOAT32_SLACK * scale
        )
        assert numbers[name]["frobenius_norm"] == pytest.approx(
            torch.linalg.matrix_norm(matrix).item(), rel=1e-5
        )


def test_kfac_against_dense(default_report, default_problem_float64, dense):
    """KFAC's exact error and its apost_error interval against a dense computation."""
    _, metrics = default_report
    model, loss_function, params, data = default_problem_float64
    kfac = curvkit.KFACLinearOperator(model, loss_function, params, data, fisher_type="type-2").to_dense()
    exact = (torch.linalg.matrix_norm(dense["ggn"] - kfac) / torch.linalg.matrix_norm(dense["ggn"])).item()
    assert metrics["analyses"]["dense"]["numbers"]["kfac_relative_error"] == pytest.approx(exact, rel=1e-4)
    top = torch.linalg.eigvalsh(kfac).flip(0)[:8].numpy()
    reported = metrics["analyses"]["kfac"]["numbers"]
    eigen = reported["eigenvalues"]
    assert numpy.all(
        numpy.abs(numpy.array(eigen["eigenvalues"]) - top)
        <= numpy.array(eigen["residual_norms"]) + FLOAT32_SLACK * top[0]
    )
    low, high = reported["relative_error"]["interval"]
    assert low <= exact <= high


def test_sketch_against_dense(default_report, dense, spectra):
    """Weyl: each sketched eigenvalue is within ‖H − sketch‖₂ ≤ ‖H − sketch‖_F of the exact one."""
    _, metrics = default_report
    numbers = metrics["analyses"]["sketch"]["numbers"]
    sketched = numpy.sort(
        numpy.concatenate([numbers["eigenvalues"], numpy.zeros(2410 - numbers["outer_dims"])])
    )[::-1]
    bound = numbers["relative_error"]["interval"][1] * torch.linalg.matrix_norm(dense["hessian"]).item()
    assert numpy.all(numpy.abs(sketched - spectra["hessian"].numpy()) <= bound)


def _integral(values: numpy.ndarray, grid: numpy.ndarray) -> float:
    """The trapezoidal rule (NumPy 1.24 has no ``trapezoid``, NumPy 2 deprecates ``trapz``)."""
    return float(numpy.sum((values[1:] + values[:-1]) / 2 * numpy.diff(grid)))
