"""Eigendecompositions of factors with a rank bound: the same decomposition as ``eigh``, in ``O(n² r)``."""

import math

import pytest
import torch
from structured_factors import matrix, psd

from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator
from curvkit.structured import _factors as factors_module
from curvkit.structured._factors import eigh64
from curvkit.structured._low_rank import (
    OVERSAMPLING,
    low_rank_eigh,
    orthonormal_complement,
    takes_low_rank_route,
)


def second_moment(size: int, rows: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """``XᵀX / r`` of ``r`` rows of uneven scales (as layer inputs), summed in ``dtype``, symmetric."""
    X = (matrix(rows, size, seed) * torch.linspace(0.01, 3.0, size, dtype=torch.float64)).to(dtype)
    product = X.T @ X / rows
    return (product + product.T) / 2


def reconstruction_error(values: torch.Tensor, vectors: torch.Tensor, factor: torch.Tensor) -> float:
    vectors, factor = vectors.to(torch.float64), factor.to(torch.float64)
    rebuilt = vectors @ torch.diag(values) @ vectors.T
    return float(torch.linalg.matrix_norm(rebuilt - factor) / torch.linalg.matrix_norm(factor))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_low_rank_route_is_as_accurate_as_eigh(dtype):
    """Eigenvalues, orthonormal eigenvectors and the factor they rebuild, against ``eigh``'s."""
    size, rows = 200, 12
    factor = second_moment(size, rows, dtype)
    assert takes_low_rank_route(size, rows)
    values, vectors = eigh64(factor, rank=rows)
    expected_values, expected_vectors = eigh64(factor)
    eps = torch.finfo(dtype).eps
    assert values.shape == (size,) and vectors.shape == (size, size) and vectors.dtype == dtype
    assert bool((values[: size - rows - OVERSAMPLING] == 0).all())  # the complement's, exactly
    torch.testing.assert_close(values, expected_values, rtol=0, atol=50 * eps * float(expected_values[-1]))
    identity = torch.eye(size, dtype=torch.float64)
    torch.testing.assert_close(vectors.double().T @ vectors.double(), identity, rtol=0, atol=20 * eps)
    assert reconstruction_error(values, vectors, factor) < 10 * max(
        reconstruction_error(expected_values, expected_vectors, factor), eps
    )


def test_a_bound_below_the_rank_is_detected():
    """The range then misses part of the factor: ``low_rank_eigh`` says so, ``eigh64`` decomposes it whole."""
    size, rows = 200, 40
    factor = second_moment(size, rows, torch.float64)
    assert low_rank_eigh(factor, 20, torch.float64) is None
    values, vectors = eigh64(factor, rank=20)
    assert reconstruction_error(values, vectors, factor) < 1e-13
    assert int((values > 1e-12 * float(values[-1])).sum()) == rows


def test_route_taken_only_where_it_pays(monkeypatch):
    calls = []
    monkeypatch.setattr(factors_module, "low_rank_eigh", lambda *args: calls.append(args[1:]))
    for size, rank in [(200, 12), (200, 60), (200, None), (40, 2)]:
        eigh64(second_moment(size, 30, torch.float64), rank=rank)
    assert calls == [(12, torch.float64)]
    assert takes_low_rank_route(200, 40) and not takes_low_rank_route(200, 41)
    assert not takes_low_rank_route(200, None)


def test_half_precision_rounding_takes_the_full_route():
    """A bfloat16 factor's rounding is above float32's tolerance: ``eigh`` whole, not a coarse result."""
    factor = second_moment(200, 12, torch.bfloat16)
    assert low_rank_eigh(factor.double(), 12, torch.bfloat16) is None


@pytest.mark.parametrize(
    "columns",
    [
        torch.linalg.qr(matrix(30, 6, 0)).Q,
        torch.eye(30, dtype=torch.float64)[:, [0, 3, 7]],  # reflectors with τ = 0 among them
        torch.eye(30, dtype=torch.float64)[:, [4, 1]],
    ],
    ids=["random", "unit columns", "unit columns, permuted"],
)
def test_orthonormal_complement(columns):
    complement = orthonormal_complement(columns)
    whole = torch.cat([complement, columns], dim=1)
    torch.testing.assert_close(whole.T @ whole, torch.eye(30, dtype=torch.float64), rtol=0, atol=1e-14)


def test_decomposition_is_the_same_on_every_call():
    factor = second_moment(200, 12, torch.float32)
    first, second = eigh64(factor, rank=12), eigh64(factor, rank=12)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------ through KFAC's algebra
def _low_rank_kfac(ranks: bool) -> KroneckerFactoredLinearOperator:
    """A linear layer ``[4, 60]`` whose input factor has rank 5 and a bias; ranks given or not."""
    weight, bias = torch.zeros(4, 60, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    output_factor, input_factor = psd(4, 1), second_moment(60, 5, torch.float64, seed=2)
    bounds = {"output_rank": 6, "input_rank": 5} if ranks else {}
    weight_block = KroneckerBlock((0,), output_factor, input_factor, **bounds)
    blocks = [weight_block, KroneckerBlock((1,), output_factor)]
    return KroneckerFactoredLinearOperator([weight, bias], blocks)


def test_eigendecomposition_and_exact_inverse_with_rank_bounds(monkeypatch):
    routes = []
    original = factors_module.low_rank_eigh
    spy = lambda *args: routes.append(args[1]) or original(*args)  # noqa: E731
    monkeypatch.setattr(factors_module, "low_rank_eigh", spy)
    with_bounds, without = _low_rank_kfac(ranks=True), _low_rank_kfac(ranks=False)
    torch.testing.assert_close(
        with_bounds.eigendecomposed().to_dense(), without.to_dense(), rtol=1e-12, atol=1e-14
    )
    inverse = with_bounds.inverse(damping=1e-3, use_exact_damping=True).to_dense()
    torch.testing.assert_close(inverse, without.inverse(damping=1e-3, use_exact_damping=True).to_dense())
    assert routes == [5, 5]  # the input factor (60 rows, rank 5), once per decomposition; G is too small


def test_rank_bounds_are_kept_and_saved():
    operator = _low_rank_kfac(ranks=True)
    assert (operator.blocks[0].output_rank, operator.blocks[0].input_rank) == (6, 5)
    assert (operator.blocks[1].output_rank, operator.blocks[1].input_rank) == (None, None)
    state = operator.state_dict()
    assert state["blocks"][0]["input_rank"] == 5
    loaded = KroneckerFactoredLinearOperator.from_state_dict(state)
    assert loaded.blocks[0].input_rank == 5
    # a state dict saved before the bounds existed loads, without them
    for entry in state["blocks"]:
        del entry["output_rank"], entry["input_rank"]
    assert KroneckerFactoredLinearOperator.from_state_dict(state).blocks[0].input_rank is None


@pytest.mark.parametrize("rank", [-1, True, 2.5])
def test_bad_rank_bound(rank):
    weight = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"blocks\[0\].input_rank must be a non-negative integer"):
        block = KroneckerBlock((0,), psd(3, 0), psd(5, 1), input_rank=rank)
        KroneckerFactoredLinearOperator([weight], [block])


def test_a_rank_bound_below_the_size_makes_the_determinant_zero_at_once(monkeypatch):
    """A factor summed from fewer rows than its size is singular: ``logdet`` is ``-inf``, no ``eigvalsh``."""
    bounded = _low_rank_kfac(ranks=True)
    monkeypatch.setattr(torch.linalg, "eigvalsh", None)  # any eigenvalue computation would fail
    assert bounded.logdet().item() == -math.inf and bounded.det().item() == 0.0
    monkeypatch.undo()
    full_rank = KroneckerFactoredLinearOperator(
        [torch.zeros(4, 6, dtype=torch.float64)],
        [KroneckerBlock((0,), psd(4, 1), psd(6, 2), output_rank=4, input_rank=6)],
    )
    expected = torch.linalg.slogdet(full_rank.to_dense())[1]
    torch.testing.assert_close(full_rank.logdet(), expected)  # bounds at the sizes: computed


@pytest.mark.parametrize("heuristic", [False, True], ids=["damping", "pi heuristic"])
def test_damped_inverse_of_factors_with_rank_bounds(heuristic, monkeypatch):
    """``(F + δ I)⁻¹`` from ``F``'s eigenpairs on its range is the Cholesky inverse; ``δ = 0`` raises."""
    routes = []
    original = factors_module.ritz_pairs
    spy = lambda *args: routes.append(args[1]) or original(*args)  # noqa: E731
    monkeypatch.setattr(factors_module, "ritz_pairs", spy)
    options = {"damping": 1e-2, "use_heuristic_damping": heuristic}
    with_bounds, without = _low_rank_kfac(ranks=True), _low_rank_kfac(ranks=False)
    inverse = with_bounds.inverse(**options).to_dense()
    torch.testing.assert_close(inverse, without.inverse(**options).to_dense(), rtol=1e-10, atol=1e-10)
    assert routes == [5]  # the input factor's; G (4 rows) is too small for the route
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        _low_rank_kfac(ranks=True).inverse(damping=0.0) @ torch.ones(244, dtype=torch.float64)
