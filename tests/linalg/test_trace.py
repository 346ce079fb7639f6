"""Trace estimators: Hutchinson, Hutch++, XTrace (functions and seed-style classes)."""

from __future__ import annotations

import numpy
import pytest
import torch
from linalg_matrices import CountingOperator, generator, low_rank_plus_noise, random_symmetric, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvkit.linalg import (
    HutchinsonTraceEstimator,
    HutchPPTraceEstimator,
    hutchinson_trace,
    hutchpp_trace,
    xtrace,
)
from curvkit.linalg._random import random_block

ESTIMATORS = [hutchinson_trace, hutchpp_trace, xtrace]
SEEDS = range(30)


def outlier_matrix(rank: int = 10, n: int = 300):
    """Low rank (eigenvalues 100 ... 10) plus a noise bulk uniform in [0, 0.1]."""
    eigenvalues = torch.rand(n, generator=generator(1), dtype=torch.float64) * 0.1
    eigenvalues[:rank] = torch.linspace(100.0, 10.0, rank, dtype=torch.float64)
    return with_spectrum(eigenvalues)


def mean_relative_error(estimator, A, num_matvecs, **kwargs) -> float:
    exact = float(torch.as_tensor(A).trace())
    return float(numpy.mean([abs(float(estimator(A, num_matvecs, seed=s, **kwargs)) - exact) for s in SEEDS]))


def test_hutchinson_error_decays_like_one_over_sqrt_m():
    A = random_symmetric(200)
    ratio = mean_relative_error(hutchinson_trace, A, 20) / mean_relative_error(hutchinson_trace, A, 320)
    assert 2.5 < ratio < 6.5  # theory: sqrt(320 / 20) = 4


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_hutchinson_is_unbiased(distribution):
    A = random_symmetric(50)
    estimates = [float(hutchinson_trace(A, 1, distribution=distribution, seed=s)) for s in range(4000)]
    variance_bound = 2 * float((A**2).sum())  # per-sample variance ≤ 2 ‖A‖_F²
    assert abs(numpy.mean(estimates) - float(A.trace())) < 4 * (variance_bound / 4000) ** 0.5


def test_hutchinson_exact_on_diagonal_with_rademacher():
    A = torch.diag(torch.arange(1.0, 31.0, dtype=torch.float64))
    assert float(hutchinson_trace(A, 3, seed=0)) == pytest.approx(465.0, abs=1e-12)


def test_hutchpp_beats_hutchinson_and_xtrace_beats_hutchpp_on_low_rank_plus_noise():
    A = outlier_matrix()
    for num_matvecs in (30, 60):
        hutchinson = mean_relative_error(hutchinson_trace, A, num_matvecs)
        hutchpp = mean_relative_error(hutchpp_trace, A, num_matvecs)
        xtrace_error = mean_relative_error(xtrace, A, num_matvecs)
        assert hutchpp < hutchinson / 10
        assert xtrace_error < hutchpp


def test_hutchpp_error_decays_faster_than_hutchinson_on_decaying_spectrum():
    A = with_spectrum(1.0 / torch.arange(1, 201, dtype=torch.float64) ** 2)
    ratio = mean_relative_error(hutchpp_trace, A, 30) / mean_relative_error(hutchpp_trace, A, 300)
    assert ratio > 10  # O(1/m) or better; Hutchinson would give about sqrt(10)


@pytest.mark.parametrize("estimator", [hutchpp_trace, xtrace])
def test_exact_for_low_rank(estimator):
    A = low_rank_plus_noise(n=80, rank=4) - 0.05 * with_spectrum(torch.ones(80))  # rank 4 exactly
    assert float(estimator(A, 15, seed=0)) == pytest.approx(float(A.trace()), rel=1e-8)


def test_xtrace_equals_its_definition():
    """Average of leave-one-out Hutch++ estimates, computed naively."""
    A = torch.randn(40, 40, dtype=torch.float64, generator=generator(3))
    num_vectors = 6
    Omega = random_block(40, num_vectors, "rademacher", generator(7), torch.float64, None)
    Y, identity, estimates = A @ Omega, torch.eye(40, dtype=torch.float64), []
    for i in range(num_vectors):
        Q = torch.linalg.qr(Y[:, [j for j in range(num_vectors) if j != i]]).Q
        P = identity - Q @ Q.T
        estimates.append(torch.trace(Q.T @ A @ Q) + Omega[:, i] @ P @ A @ P @ Omega[:, i])
    expected = float(torch.stack(estimates).mean())
    assert float(xtrace(A, 2 * num_vectors, seed=7)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_product_per_block(estimator):
    A = CountingOperator(random_symmetric(50), symmetric=True)
    estimator(A, 12, seed=0)
    assert A.num_columns == 12
    assert A.num_calls == {hutchinson_trace: 1, hutchpp_trace: 3, xtrace: 2}[estimator]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_accepts_numpy_scipy_and_operators_and_is_seeded(estimator):
    A = random_symmetric(30)
    reference = float(estimator(A, 9, seed=1))
    assert float(estimator(A.numpy(), 9, seed=1)) == pytest.approx(reference)
    assert float(estimator(aslinearoperator(A.numpy()), 9, seed=1)) == pytest.approx(reference)
    assert float(estimator(CountingOperator(A), 9, seed=torch.Generator().manual_seed(1))) == pytest.approx(
        reference
    )
    assert float(estimator(A, 9, seed=2)) != reference


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_runs_in_operator_dtype(estimator):
    A = random_symmetric(30).float()
    result = estimator(A, 9, seed=0)
    assert result.dtype == torch.float32 and result.ndim == 0


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_distribution_may_be_given_by_position_as_in_curvlinops(estimator):
    A = random_symmetric(12)
    by_keyword = estimator(A, 6, distribution="normal", seed=3)
    assert torch.equal(estimator(A, 6, "normal", seed=3), by_keyword)
    assert not torch.equal(estimator(A, 6, "rademacher", seed=3), by_keyword)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_bad_input(estimator):
    with pytest.raises(ValueError, match="A must be a square operator"):
        estimator(torch.zeros(3, 4), 6)
    with pytest.raises(ValueError, match="distribution must be one of"):
        estimator(torch.eye(3), 6, distribution="uniform")
    with pytest.raises(ValueError, match="num_matvecs"):
        estimator(torch.eye(3), 0)
    with pytest.raises(TypeError, match="seed must be"):
        estimator(torch.eye(3), 6, seed="zero")


def test_budget_limits():
    with pytest.raises(ValueError, match="num_matvecs must be at most 3 · dim"):
        hutchpp_trace(torch.eye(3), 12)
    with pytest.raises(ValueError, match="num_matvecs must be at most 2 · dim"):
        xtrace(torch.eye(3), 8)


def test_seed_none_follows_numpys_global_state():
    A = random_symmetric(20)
    numpy.random.seed(5)
    first = float(hutchinson_trace(A, 1))
    numpy.random.seed(5)
    assert float(hutchinson_trace(A, 1)) == first


# ----------------------------------------------------------------------- classes
def test_hutchinson_class_samples_floats_and_averages_to_trace():
    A = random_symmetric(20)
    estimator = HutchinsonTraceEstimator(A, seed=0)
    samples = [estimator.sample(distribution="normal") for _ in range(2000)]
    assert all(isinstance(sample, float) for sample in samples)
    assert numpy.mean(samples) == pytest.approx(
        float(A.trace()), abs=4 * (2 * float((A**2).sum()) / 2000) ** 0.5
    )


def test_hutchpp_class_caches_the_basis():
    A = CountingOperator(low_rank_plus_noise(n=200, rank=2), symmetric=True)
    estimator = HutchPPTraceEstimator(A, seed=0)  # basis_dim = 1% of 200 = 2
    samples = [estimator.sample() for _ in range(50)]
    assert A.num_columns == 2 * 2 + 50
    assert numpy.mean(samples) == pytest.approx(float(A.matrix.trace()), rel=1e-2)


def test_hutchpp_class_bad_input():
    with pytest.raises(ValueError, match="basis_dim must be at most"):
        HutchPPTraceEstimator(torch.eye(5), basis_dim=6)
    with pytest.raises(ValueError, match="basis_distribution must be one of"):
        HutchPPTraceEstimator(torch.eye(5), basis_distribution="uniform")
    with pytest.raises(ValueError, match="A must be a square operator"):
        HutchPPTraceEstimator(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="distribution must be one of"):
        HutchPPTraceEstimator(torch.eye(5)).sample("uniform")
    with pytest.raises(ValueError, match="A must be a square operator"):
        HutchinsonTraceEstimator(numpy.zeros((5, 4)))


@pytest.mark.parametrize("num_matvecs", [10, 11])
def test_hutchpp_is_unbiased_for_budgets_not_divisible_by_three(num_matvecs):
    """The Hutchinson part averages over its own m - 2k vectors, not over the basis' k."""
    A = with_spectrum(torch.linspace(1.0, 20.0, 80, dtype=torch.float64))  # full rank, flat-ish
    estimates = numpy.array([float(hutchpp_trace(A, num_matvecs, seed=s)) for s in range(300)])
    standard_error = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean() - float(A.trace())) < 4 * standard_error
