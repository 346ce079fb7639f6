"""Inverse operators: CG, Neumann, LSMR, and damping."""

from __future__ import annotations

import warnings

import numpy
import pytest
import torch
from linalg_matrices import CountingOperator, generator, random_symmetric, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvkit.linalg import (
    CGInverseLinearOperator,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    conjugate_gradient,
    damped,
)
from curvkit.linear_operator import DenseLinearOperator
from curvkit.structured import DiagonalLinearOperator, IdentityLinearOperator


def spd(n: int = 40, condition: float = 100.0, seed: int = 0) -> torch.Tensor:
    return with_spectrum(torch.logspace(0, numpy.log10(condition), n, dtype=torch.float64), seed)


def rhs(n: int, k: int | None = None, seed: int = 1) -> torch.Tensor:
    shape = (n,) if k is None else (n, k)
    return torch.randn(*shape, dtype=torch.float64, generator=generator(seed))


# ----------------------------------------------------------------------- CG
def test_cg_matches_dense_solve_for_vectors_and_batched_columns():
    A = spd()
    A_inv = CGInverseLinearOperator(A)
    A_inv.set_cg_hyperparameters(tol=1e-12)
    b, B = rhs(40), rhs(40, 5)
    torch.testing.assert_close(A_inv @ b, torch.linalg.solve(A, b))
    torch.testing.assert_close(A_inv @ B, torch.linalg.solve(A, B))
    # each column gets its own step sizes: batched equals column-by-column
    torch.testing.assert_close(A_inv @ B, torch.stack([A_inv @ B[:, j] for j in range(5)], 1))


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_cg_tolerance_is_relative_to_the_right_hand_side(scale):
    """``tol`` bounds ``‖r‖ / ‖b‖``: the same accuracy for right-hand sides of any norm (an absolute
    test would return zeros for ``b = 10⁻⁶ · 1``)."""
    A = spd()
    b = scale * torch.ones(40, dtype=torch.float64)
    A_inv = CGInverseLinearOperator(A)
    A_inv.set_cg_hyperparameters(tol=1e-8)
    x = A_inv @ b
    assert float(torch.linalg.vector_norm(b - A @ x)) <= 1e-8 * float(torch.linalg.vector_norm(b))
    expected = torch.linalg.solve(A, b)
    assert float(torch.linalg.vector_norm(x - expected)) <= 1e-6 * float(torch.linalg.vector_norm(expected))


def test_cg_skips_converged_columns():
    A = CountingOperator(spd(), symmetric=True)
    B = torch.stack([torch.zeros(40, dtype=torch.float64), rhs(40)], 1)
    A_inv = CGInverseLinearOperator(A)
    A_inv.set_cg_hyperparameters(tol=1e-10)
    A_inv @ B
    assert A.num_columns == A.num_calls  # only the non-zero column is multiplied


def test_cg_with_preconditioner_converges_in_fewer_iterations():
    diagonal = torch.logspace(0, 4, 60, dtype=torch.float64)
    A = torch.diag(diagonal) + 0.1 * with_spectrum(
        torch.rand(60, dtype=torch.float64, generator=generator(0))
    )
    b = rhs(60)
    iterations = {}
    for name, M in (("none", None), ("jacobi", DiagonalLinearOperator(1 / A.diagonal()))):
        counter = []
        A_inv = CGInverseLinearOperator(A)
        A_inv.set_cg_hyperparameters(tol=1e-10, M=M, callback=counter.append)
        torch.testing.assert_close(A_inv @ b, torch.linalg.solve(A, b))
        iterations[name] = len(counter)
    assert iterations["jacobi"] < iterations["none"] / 2


def test_cg_with_x0_atol_numpy_and_scipy():
    A = spd()
    b = rhs(40)
    x = torch.linalg.solve(A, b)
    counter = []
    A_inv = CGInverseLinearOperator(aslinearoperator(A.numpy()))
    A_inv.set_cg_hyperparameters(x0=x.numpy(), callback=counter.append)
    numpy.testing.assert_allclose(A_inv @ b.numpy(), x.numpy())
    assert counter == []  # the initial guess already solves the system
    A_inv.set_cg_hyperparameters(tol=0.0, atol=1e-9)
    numpy.testing.assert_allclose(A_inv @ b.numpy(), x.numpy(), atol=1e-7)


def test_cg_on_damped_operator():
    A = with_spectrum(torch.cat([torch.zeros(10), torch.ones(20)]).double())  # singular PSD
    damped_A = damped(DenseLinearOperator(A, psd=True), 0.5)
    assert damped_A.is_psd
    A_inv = CGInverseLinearOperator(damped_A)
    A_inv.set_cg_hyperparameters(tol=1e-12)
    b = rhs(30)
    expected = torch.linalg.solve(A + 0.5 * torch.eye(30, dtype=torch.float64), b)
    torch.testing.assert_close(A_inv @ b, expected)
    torch.testing.assert_close(CGInverseLinearOperator(A + 0.5 * IdentityLinearOperator(30)) @ b, expected)


def test_cg_errors():
    with pytest.raises(ValueError, match="A must be a square operator"):
        CGInverseLinearOperator(torch.zeros(3, 4))
    A_inv = CGInverseLinearOperator(torch.eye(3))
    for kwargs, match in [
        ({"tol": -1.0}, "tol must be"),
        ({"atol": -1e-3}, "atol must be"),
        ({"maxiter": 0}, "maxiter must be"),
        ({"x0": torch.zeros(4)}, "x0 must have shape"),
        ({"M": torch.eye(4)}, "M must have shape"),
        ({"callback": 3}, "callback must be callable"),
    ]:
        with pytest.raises(ValueError, match=match):
            A_inv.set_cg_hyperparameters(**kwargs)
    with pytest.raises(RuntimeError, match="NaN"):
        CGInverseLinearOperator(torch.full((3, 3), float("nan"))) @ torch.ones(3)
    with pytest.raises(RuntimeError, match="not positive definite"):
        CGInverseLinearOperator(-torch.eye(3)) @ torch.ones(3)
    with pytest.raises(RuntimeError, match="not positive definite"):
        CGInverseLinearOperator(random_symmetric(20)) @ rhs(20)


def test_cg_warns_when_not_converged():
    A_inv = CGInverseLinearOperator(spd(condition=1e4))
    A_inv.set_cg_hyperparameters(maxiter=2, tol=1e-12)
    with pytest.warns(UserWarning, match="CG did not converge within maxiter=2"):
        A_inv @ rhs(40)


def test_negative_damping_is_refused():
    with pytest.raises(ValueError, match="damping must be a finite non-negative number"):
        damped(torch.eye(3), -0.1)
    with pytest.raises(ValueError, match="damping must be"):
        damped(torch.eye(3), float("nan"))
    with pytest.raises(ValueError, match="A must be a square operator"):
        damped(torch.zeros(3, 2), 0.1)
    # the plain algebra with a negative damping makes the matrix indefinite: CG says so
    with pytest.raises(RuntimeError, match="not positive definite"):
        CGInverseLinearOperator(
            torch.eye(3, dtype=torch.float64) - 2.0 * IdentityLinearOperator(3)
        ) @ torch.ones(3, dtype=torch.float64)


# ----------------------------------------------------------------------- Neumann
@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_neumann_converges_for_eigenvalues_in_zero_two_over_scale(scale):
    upper = 0.95 * 2 / scale
    A = with_spectrum(torch.linspace(0.3 * upper, upper, 20, dtype=torch.float64))
    b = rhs(20)
    A_inv = NeumannInverseLinearOperator(A, num_terms=200, scale=scale)
    torch.testing.assert_close(A_inv @ b, torch.linalg.solve(A, b))
    # truncation error follows max_i |1 - scale λ_i|^(K+1) / λ_i
    coarse = NeumannInverseLinearOperator(A, num_terms=10, scale=scale) @ b
    bound = 0.95**11 / (0.3 * upper) * float(b.norm()) * 1.5
    assert float((coarse - torch.linalg.solve(A, b)).norm()) < bound


def test_neumann_raises_on_divergence_and_checks_hyperparameters():
    A = with_spectrum(torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64))  # 3 > 2 / scale
    with pytest.raises(RuntimeError, match="Neumann series diverges"):
        NeumannInverseLinearOperator(A, num_terms=100) @ torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Neumann series diverges"):
        NeumannInverseLinearOperator(1e200 * A, num_terms=3) @ torch.ones(3, dtype=torch.float64)
    unchecked = NeumannInverseLinearOperator(A, num_terms=30, check_nan=False) @ torch.ones(
        3, dtype=torch.float64
    )
    assert float(unchecked.abs().max()) > 1e6
    NeumannInverseLinearOperator(A, scale=0.5) @ torch.ones(3, dtype=torch.float64)  # fixed by the scale
    with pytest.raises(ValueError, match="num_terms must be"):
        NeumannInverseLinearOperator(A, num_terms=-1)
    with pytest.raises(ValueError, match="scale must be a positive"):
        NeumannInverseLinearOperator(A, scale=0.0)
    with pytest.raises(ValueError, match="A must be a square operator"):
        NeumannInverseLinearOperator(torch.zeros(2, 3))


def _nonsymmetric(n: int = 20) -> torch.Tensor:
    """Symmetric part with eigenvalues in [0.5, 1.5] plus a skew part: the series converges."""
    R = torch.randn(n, n, dtype=torch.float64, generator=generator(2)) / n**0.5
    return with_spectrum(torch.linspace(0.5, 1.5, n, dtype=torch.float64)) + 0.2 * (R - R.T)


@pytest.mark.parametrize("matrix", ["symmetric tensor", "nonsymmetric"])
def test_neumann_transpose_is_the_series_of_the_transpose(matrix):
    symmetric = with_spectrum(torch.linspace(0.5, 1.5, 20, dtype=torch.float64))
    A = symmetric if matrix == "symmetric tensor" else _nonsymmetric()
    A_inv = NeumannInverseLinearOperator(A, num_terms=300)
    expected = torch.linalg.solve(A.T, rhs(20, 3))
    torch.testing.assert_close(A_inv.T @ rhs(20, 3), expected)
    torch.testing.assert_close(rhs(20, 3).T @ A_inv, expected.T)
    torch.testing.assert_close(A_inv.T.to_dense(), torch.linalg.inv(A).T)


def test_neumann_growing_terms_raise_for_symmetric_and_warn_otherwise():
    """λ_max = 4 > 2 / 0.55: |1 - 0.55 · 4| = 1.2, the terms grow slowly (far below GROWTH_LIMIT)."""
    A = with_spectrum(torch.linspace(0.5, 4.0, 40, dtype=torch.float64))
    b = rhs(40)
    with pytest.raises(RuntimeError, match="larger than the one before"):
        NeumannInverseLinearOperator(DenseLinearOperator(A, symmetric=True), num_terms=30, scale=0.55) @ b
    with pytest.warns(
        UserWarning, match="times larger than the first: the series seems to diverge"
    ) as record:
        NeumannInverseLinearOperator(A, num_terms=30, scale=0.55) @ b
    assert record[0].filename == __file__  # points at the product in user code
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NeumannInverseLinearOperator(DenseLinearOperator(A, symmetric=True), num_terms=30, scale=0.45) @ b
        NeumannInverseLinearOperator(A, num_terms=30, scale=0.45) @ b
        NeumannInverseLinearOperator(A, num_terms=30, scale=0.55, check_nan=False) @ b


def test_neumann_tolerates_transient_growth_of_nonnormal_operators():
    """(I - B)^k has a 20 k 0.5^(k-1) entry: the terms grow twentyfold, then the series converges."""
    B = torch.tensor([[0.5, 20.0], [0.0, 0.5]], dtype=torch.float64)
    b = torch.ones(2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(
            NeumannInverseLinearOperator(B, num_terms=100) @ b, torch.linalg.solve(B, b)
        )


# ----------------------------------------------------------------------- LSMR
@pytest.mark.parametrize("shape", [(30, 20), (20, 30)])
def test_lsmr_is_the_pseudo_inverse(shape):
    A = torch.randn(*shape, dtype=torch.float64, generator=generator(0))
    A_pinv = LSMRInverseLinearOperator(A)
    A_pinv.set_lsmr_hyperparameters(atol=1e-12, btol=1e-12)
    assert A_pinv.shape == shape[::-1]
    torch.testing.assert_close(A_pinv @ rhs(shape[0], 3), torch.linalg.pinv(A) @ rhs(shape[0], 3))
    torch.testing.assert_close(A_pinv.T @ rhs(shape[1], 2), torch.linalg.pinv(A).T @ rhs(shape[1], 2))


def test_lsmr_rank_deficient_and_indefinite():
    low_rank = torch.randn(25, 4, dtype=torch.float64, generator=generator(0)) @ torch.randn(
        4, 25, dtype=torch.float64, generator=generator(1)
    )
    A_pinv = LSMRInverseLinearOperator(low_rank)
    A_pinv.set_lsmr_hyperparameters(atol=1e-12, btol=1e-12)
    torch.testing.assert_close(A_pinv @ rhs(25), torch.linalg.pinv(low_rank) @ rhs(25))
    indefinite = with_spectrum(torch.linspace(-2, 3, 31, dtype=torch.float64)[torch.arange(31) != 12])
    A_inv = LSMRInverseLinearOperator(DenseLinearOperator(indefinite, symmetric=True))
    A_inv.set_lsmr_hyperparameters(atol=1e-12, btol=1e-12, maxiter=500)
    assert A_inv.is_symmetric
    torch.testing.assert_close(A_inv @ rhs(30), torch.linalg.solve(indefinite, rhs(30)))


def test_lsmr_hyperparameters():
    A_pinv = LSMRInverseLinearOperator(torch.eye(3))
    with pytest.raises(ValueError, match="atol must be"):
        A_pinv.set_lsmr_hyperparameters(atol=-1.0)
    with pytest.raises(ValueError, match="btol must be"):
        A_pinv.set_lsmr_hyperparameters(btol=-1.0)
    with pytest.raises(ValueError, match="conlim must be positive"):
        A_pinv.set_lsmr_hyperparameters(conlim=0.0)
    with pytest.raises(ValueError, match="maxiter must be"):
        A_pinv.set_lsmr_hyperparameters(maxiter=0)
    A_pinv = LSMRInverseLinearOperator(with_spectrum(torch.logspace(0, 6, 30, dtype=torch.float64)))
    A_pinv.set_lsmr_hyperparameters(atol=1e-14, btol=1e-14, maxiter=3)
    with pytest.warns(UserWarning, match="LSMR did not converge within maxiter=3"):
        A_pinv @ rhs(30)
    with pytest.raises(RuntimeError, match="NaN"):
        LSMRInverseLinearOperator(torch.full((3, 3), float("nan"))) @ torch.ones(3)


def test_cg_preconditioner_follows_the_operator():
    """A float64 NumPy preconditioner of a float32 system is converted once, not mixed into every step."""
    A = with_spectrum(torch.linspace(1.0, 10.0, 20, dtype=torch.float64))
    b = rhs(20).float()
    inverse = CGInverseLinearOperator(DenseLinearOperator(A.float()))
    with pytest.warns(UserWarning, match="M is float64, while the linear operator is float32"):
        inverse.set_cg_hyperparameters(M=numpy.diag(1.0 / numpy.diag(A.numpy())), tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converted once above, not at every step
        x = inverse @ b
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.linalg.solve(A, b.double()).float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="M must have A's dtype"):
        inverse.set_cg_hyperparameters(M=DenseLinearOperator(A))


def test_conjugate_gradient_takes_one_initial_guess_for_every_column():
    A = with_spectrum(torch.linspace(1.0, 10.0, 12, dtype=torch.float64))
    B = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    guess = torch.linalg.solve(A, B[:, 0])
    X = conjugate_gradient(DenseLinearOperator(A), B, x0=guess, tol=1e-12)
    torch.testing.assert_close(A @ X, B)


# ------------------------------------------------- hyperparameters as constructor keywords
def test_cg_takes_its_hyperparameters_by_scipys_or_gpytorchs_names():
    """curvlinops 3.0.1 passes ``CGInverseLinearOperator(A, **kwargs)`` to GPyTorch's ``linear_cg``."""
    A, B = spd(), rhs(40, 3)
    by_method = CGInverseLinearOperator(A)
    by_method.set_cg_hyperparameters(tol=1e-3, maxiter=4, x0=B[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not converged in 4 iterations
        expected = by_method @ B
        for keywords in (
            {"tol": 1e-3, "maxiter": 4, "x0": B[:, 0]},
            {"tolerance": 1e-3, "max_iter": 4, "initial_guess": B[:, 0], "eps": 0, "max_tridiag_iter": 4},
        ):
            torch.testing.assert_close(CGInverseLinearOperator(A, **keywords) @ B, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("keywords", "error", "match"),
    [
        (
            {"preconditioner": lambda x: x},
            TypeError,
            r"unexpected keyword argument\(s\) \['preconditioner'\].*pass M",
        ),
        ({"n_tridiag": 2}, TypeError, r"\['n_tridiag'\]"),
        ({"max_iter": 3, "maxiter": 3}, TypeError, "'maxiter' twice"),
        ({"eps": -1.0}, ValueError, "eps must be a finite non-negative number"),
        ({"tolerance": -1.0}, ValueError, "tol must be"),
    ],
)
def test_cg_keywords_are_checked(keywords, error, match):
    with pytest.raises(error, match=match):
        CGInverseLinearOperator(spd(), **keywords)


def test_lsmr_takes_its_hyperparameters_as_keywords():
    A = with_spectrum(torch.logspace(0, 6, 30, dtype=torch.float64))
    with pytest.warns(UserWarning, match="LSMR did not converge within maxiter=3"):
        LSMRInverseLinearOperator(A, atol=1e-14, btol=1e-14, maxiter=3) @ rhs(30)
    with pytest.raises(TypeError, match="damp"):
        LSMRInverseLinearOperator(A, damp=1.0)
