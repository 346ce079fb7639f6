"""The linalg routines on curvature operators of the zoo, against dense references."""

from __future__ import annotations

import numpy
import pytest
import torch
from scipy.sparse.linalg import eigsh
from zoo import make_problem_from_id

from curvkit import GGNLinearOperator, HessianLinearOperator
from curvkit.linalg import (
    CGInverseLinearOperator,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    damped,
    hutchpp_trace,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    power_iteration,
    xdiag,
    xtrace,
)
from curvkit.structured import IdentityLinearOperator
from curvkit.submatrix import SubmatrixLinearOperator

PROBLEMS = ["mlp-ce-mean-three-list", "cnn-mse-sum-three-list", "shared-bce-mean-three-list"]
CHEAP_PROBLEMS = ["mlp-ce-mean-three-list", "shared-bce-mean-three-list"]


def operator(problem_id: str, kind: str):
    problem = make_problem_from_id(problem_id)
    cls = {"hessian": HessianLinearOperator, "ggn": GGNLinearOperator}[kind]
    return cls(
        problem.model, problem.loss_func, problem.params, problem.data, batch_size_fn=problem.batch_size_fn
    )


@pytest.mark.parametrize("problem_id", CHEAP_PROBLEMS)
@pytest.mark.parametrize("which", ["LA", "SA"])
def test_hessian_eigenpairs_agree_with_scipy_eigsh(problem_id, which, reference_of):
    H = operator(problem_id, "hessian")
    H_dense = reference_of(problem_id, "hessian")
    values, vectors = lanczos_eigsh(H, 3, which=which, tol=1e-10, seed=0)
    scipy_values = numpy.sort(eigsh(H.to_scipy(), k=3, which=which, tol=1e-12)[0])
    numpy.testing.assert_allclose(values.numpy(), scipy_values, atol=1e-8 * abs(scipy_values).max())
    expected = torch.linalg.eigvalsh(H_dense)
    torch.testing.assert_close(values, expected[-3:] if which == "LA" else expected[:3])
    torch.testing.assert_close(H_dense @ vectors, vectors * values, atol=1e-7, rtol=0)


@pytest.mark.parametrize("problem_id", PROBLEMS)
def test_cg_on_damped_ggn_matches_dense_solve(problem_id, reference_of):
    G = operator(problem_id, "ggn")
    G_dense = reference_of(problem_id, "ggn")
    damping = 1e-2 * float(torch.linalg.eigvalsh(G_dense).max())
    G_inv = CGInverseLinearOperator(damped(G, damping))
    G_inv.set_cg_hyperparameters(tol=1e-12)
    B = torch.randn(G.shape[0], 3, dtype=G.dtype, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.solve(G_dense + damping * torch.eye(G.shape[0], dtype=G.dtype), B)
    torch.testing.assert_close(G_inv @ B, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


def test_neumann_and_lsmr_on_curvature(reference_of):
    problem_id = PROBLEMS[0]
    G, G_dense = operator(problem_id, "ggn"), reference_of(problem_id, "ggn")
    top = float(torch.linalg.eigvalsh(G_dense).max())
    damping = 0.5 * top  # condition number ≤ 3: the series converges quickly
    b = torch.randn(G.shape[0], dtype=G.dtype, generator=torch.Generator().manual_seed(1))
    neumann = NeumannInverseLinearOperator(damped(G, damping), num_terms=100, scale=1 / (top + damping))
    expected = torch.linalg.solve(G_dense + damping * torch.eye(G.shape[0], dtype=G.dtype), b)
    torch.testing.assert_close(neumann @ b, expected, rtol=1e-8, atol=1e-10)
    # an indefinite, invertible system: the Hessian shifted into the middle of its widest spectral gap
    H, H_dense = operator(problem_id, "hessian"), reference_of(problem_id, "hessian")
    eigenvalues = torch.linalg.eigvalsh(H_dense)
    widest = int(torch.argmax(eigenvalues.diff()))
    shift = float(eigenvalues[widest] + eigenvalues[widest + 1]) / 2
    identity = torch.eye(H.shape[0], dtype=H.dtype)
    H_inv = LSMRInverseLinearOperator(H - shift * IdentityLinearOperator(H.shape[0]))
    H_inv.set_lsmr_hyperparameters(atol=1e-12, btol=1e-12, maxiter=1000)
    torch.testing.assert_close(
        H_inv @ b, torch.linalg.solve(H_dense - shift * identity, b), rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("problem_id", ["mlp-ce-mean-three-list", "cnn-mse-sum-three-list"])
def test_trace_and_diagonal_exact_on_low_rank_ggn(problem_id, reference_of):
    """The GGN has rank ≤ N·C, below the basis sizes used here: Hutch++ / XTrace / XDiag are exact."""
    G = operator(problem_id, "ggn")
    G_dense = reference_of(problem_id, "ggn")
    rank = int(torch.linalg.matrix_rank(G_dense))
    basis = rank + 2
    assert basis <= G.shape[0] // 2
    exact = float(G_dense.trace())
    assert float(hutchpp_trace(G, 3 * basis, seed=0)) == pytest.approx(exact, rel=1e-8)
    assert float(xtrace(G, 2 * basis, seed=0)) == pytest.approx(exact, rel=1e-6)
    torch.testing.assert_close(xdiag(G, 2 * basis, seed=0), G_dense.diagonal(), rtol=1e-6, atol=1e-8)


def test_spectral_density_and_power_iteration_on_ggn(reference_of):
    problem_id = PROBLEMS[0]
    G, G_dense = operator(problem_id, "ggn"), reference_of(problem_id, "ggn")
    eigenvalues = torch.linalg.eigvalsh(G_dense)
    value, _ = power_iteration(G, tol=1e-8, max_iterations=5000, seed=0)
    assert float(value) == pytest.approx(float(eigenvalues.max()), rel=1e-6)
    grid, density = lanczos_approximate_spectrum(G, ncv=30, num_repeats=5, seed=0)
    width = float(grid[-1] - grid[0])
    assert grid[0] <= float(eigenvalues.min()) and grid[-1] >= float(eigenvalues.max())
    near_zero = numpy.abs(grid) < 0.05 * width
    fraction_near_zero = float((eigenvalues.abs() < 0.05 * width).double().mean())
    assert float(density[near_zero].sum() * (grid[1] - grid[0])) == pytest.approx(fraction_near_zero, abs=0.1)


def test_submatrix_of_hessian(reference_of):
    problem_id = PROBLEMS[0]
    H, H_dense = operator(problem_id, "hessian"), reference_of(problem_id, "hessian")
    rows, cols = [0, 13, 42], [1, 2, 3, 7]
    sub = SubmatrixLinearOperator(H, rows, cols)
    torch.testing.assert_close(sub @ torch.eye(4, dtype=H.dtype), H_dense[rows, :][:, cols])
    torch.testing.assert_close(sub.T @ torch.eye(3, dtype=H.dtype), H_dense[rows, :][:, cols].T)
