"""Diagonal estimators (Hutchinson, XDiag) and the squared Frobenius norm."""

from __future__ import annotations

import numpy
import pytest
import torch
from linalg_matrices import CountingOperator, generator, low_rank_plus_noise, random_symmetric
from scipy.sparse.linalg import aslinearoperator

from curvkit.linalg import HutchinsonDiagonalEstimator, hutchinson_diag, hutchinson_squared_fro, xdiag
from curvkit.linalg._random import random_block

SEEDS = range(20)


def mean_error(estimator, A, num_matvecs) -> float:
    exact = A.diagonal()
    return float(numpy.mean([float((estimator(A, num_matvecs, seed=s) - exact).norm()) for s in SEEDS]))


def test_hutchinson_diag_error_decays_like_one_over_sqrt_m():
    A = random_symmetric(100)
    ratio = mean_error(hutchinson_diag, A, 10) / mean_error(hutchinson_diag, A, 160)
    assert 3 < ratio < 5.5  # theory: sqrt(16) = 4


def test_hutchinson_diag_exact_on_diagonal():
    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    torch.testing.assert_close(hutchinson_diag(A, 1, seed=0), A.diagonal())


def test_xdiag_beats_hutchinson_on_low_rank_plus_noise():
    A = low_rank_plus_noise(n=200, rank=10)
    for num_matvecs in (30, 60):
        assert mean_error(xdiag, A, num_matvecs) < mean_error(hutchinson_diag, A, num_matvecs) / 10


def test_xdiag_equals_its_definition_for_nonsymmetric_matrices():
    A = torch.randn(30, 30, dtype=torch.float64, generator=generator(4))
    m = 5
    Omega = random_block(30, m, "rademacher", generator(2), torch.float64, None)
    Y, identity, estimates = A @ Omega, torch.eye(30, dtype=torch.float64), []
    for i in range(m):
        Q = torch.linalg.qr(Y[:, [j for j in range(m) if j != i]]).Q
        P = Q @ Q.T
        estimates.append(torch.diag(P @ A) + Omega[:, i] * ((identity - P) @ A @ Omega[:, i]))
    torch.testing.assert_close(xdiag(A, 2 * m, seed=2), torch.stack(estimates).mean(0))


def test_xdiag_uses_transpose_products():
    A = CountingOperator(torch.randn(20, 20, dtype=torch.float64, generator=generator(0)))
    xdiag(A, 8, seed=0)
    assert (A.num_calls, A.num_columns) == (2, 8)


def test_diagonal_class_returns_numpy_for_numpy_and_tensor_for_tensors():
    A = random_symmetric(10)
    assert isinstance(HutchinsonDiagonalEstimator(A.numpy(), seed=0).sample(), numpy.ndarray)
    assert isinstance(
        HutchinsonDiagonalEstimator(aslinearoperator(A.numpy()), seed=0).sample(), numpy.ndarray
    )
    sample = HutchinsonDiagonalEstimator(A, seed=0).sample("normal")
    assert isinstance(sample, torch.Tensor) and sample.shape == (10,)


def test_diagonal_class_averages_to_diagonal():
    A = random_symmetric(10)
    estimator = HutchinsonDiagonalEstimator(A, seed=0)
    average = torch.stack([estimator.sample() for _ in range(3000)]).mean(0)
    torch.testing.assert_close(average, A.diagonal(), atol=0.1, rtol=0)


@pytest.mark.parametrize("estimator", [hutchinson_diag, xdiag, hutchinson_squared_fro])
def test_distribution_may_be_given_by_position_as_in_curvlinops(estimator):
    A = random_symmetric(12)
    by_keyword = estimator(A, 6, distribution="normal", seed=3)
    assert torch.equal(estimator(A, 6, "normal", seed=3), by_keyword)
    assert not torch.equal(estimator(A, 6, "rademacher", seed=3), by_keyword)


@pytest.mark.parametrize("estimator", [hutchinson_diag, xdiag])
def test_diagonal_bad_input(estimator):
    with pytest.raises(ValueError, match="A must be a square operator"):
        estimator(torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match="distribution must be one of"):
        estimator(torch.eye(3), 4, distribution="uniform")
    with pytest.raises(ValueError, match="A must be a square operator"):
        HutchinsonDiagonalEstimator(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="distribution must be one of"):
        HutchinsonDiagonalEstimator(torch.eye(3)).sample("uniform")


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_squared_fro_rectangular_unbiased_and_decaying(distribution):
    A = torch.randn(40, 25, dtype=torch.float64, generator=generator(0))
    exact = float((A**2).sum())

    def error(num_matvecs):
        return numpy.mean(
            [
                abs(float(hutchinson_squared_fro(A, num_matvecs, distribution=distribution, seed=s)) - exact)
                for s in SEEDS
            ]
        )

    assert error(4) / error(64) > 2.5  # theory: 4
    estimates = [float(hutchinson_squared_fro(A, 1, distribution=distribution, seed=s)) for s in range(2000)]
    assert numpy.mean(estimates) == pytest.approx(exact, rel=0.05)


def test_squared_fro_bad_input():
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchinson_squared_fro(torch.eye(3), 0)
    with pytest.raises(ValueError, match="distribution must be one of"):
        hutchinson_squared_fro(torch.eye(3), 2, distribution="sphere")
