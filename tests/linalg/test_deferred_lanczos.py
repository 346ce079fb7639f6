"""Lanczos with deferred block re-orthogonalization: the same projection as full re-orthogonalization."""

from __future__ import annotations

import pytest
import torch
from linalg_matrices import generator, random_symmetric, with_spectrum

from curvkit.linalg.deferred_lanczos import DeferredLanczosProcess
from curvkit.linalg.lanczos import LanczosProcess
from curvkit.linear_operator import DenseLinearOperator, LinearOperator


def outliers(n: int = 400, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Four well-separated outliers over a bulk in [0, 1]: their Ritz pairs converge to machine
    precision within a few steps, which makes the vectors of a block drift from the basis."""
    bulk = torch.rand(n - 4, generator=generator(3), dtype=torch.float64)
    return with_spectrum(torch.cat([torch.tensor([1000.0, 500.0, 100.0, 50.0]).double(), bulk])).to(dtype)


def deferred(A: torch.Tensor, start: torch.Tensor, max_dim: int, block_size: int = 8):
    return DeferredLanczosProcess(DenseLinearOperator(A), start, max_dim, block_size)


def run(process, num_steps: int):
    while process.size < num_steps and process.step():
        pass
    return process


def start_vector(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(n, generator=generator(1), dtype=torch.float64).to(dtype)


def moments(values: torch.Tensor, S: torch.Tensor, scale: float, num_moments: int) -> torch.Tensor:
    """``Σ_k w_k (θ_k / scale)^p`` for ``p < num_moments``: what a quadrature integrates exactly."""
    powers = (values / scale).unsqueeze(0) ** torch.arange(num_moments, dtype=values.dtype).unsqueeze(1)
    return powers @ (S[0] ** 2)


@pytest.mark.parametrize("block_size", [1, 3, 8])
def test_krylov_relation_orthonormality_and_tridiagonal_projection(block_size):
    A = random_symmetric(60)
    process = run(deferred(A, torch.ones(60, dtype=torch.float64), 20, block_size), 20)
    process.ritz_pairs()  # settles the last block
    assert process.size == process.num_matvecs == 20
    V, H = process.V[:20].T, process.M[:20, :20]
    torch.testing.assert_close(V.T @ V, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(H, V.T @ A @ V, atol=1e-12, rtol=0)
    torch.testing.assert_close(H, H.triu(-1).tril(1), atol=1e-12, rtol=0)
    residual = A @ V - V @ H
    torch.testing.assert_close(residual, torch.outer(process.V[20], process.M[20, :20]), atol=1e-12, rtol=0)
    values, S, residuals = process.ritz_pairs()
    ritz_vectors = V @ S
    torch.testing.assert_close(
        (A @ ritz_vectors - ritz_vectors * values).norm(dim=0), residuals, atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("matrix", ["spread", "outliers"])
def test_same_ritz_values_and_quadrature_as_full_reorthogonalization(matrix, dtype):
    """Nodes and the quadrature's moments agree with step-by-step full re-orthogonalization to
    working precision; on the outliers, blocks are cut (and products discarded) to keep it so."""
    A = (
        outliers(dtype=dtype)
        if matrix == "outliers"
        else with_spectrum(torch.linspace(0, 1, 400).double()).to(dtype)
    )
    ncv, eps = 64, torch.finfo(dtype).eps
    start = start_vector(400, dtype)
    full = run(LanczosProcess(DenseLinearOperator(A), start, ncv), ncv)
    blocked = run(deferred(A, start, ncv), ncv)
    full_values, full_S, _ = full.ritz_pairs()
    values, S, _ = blocked.ritz_pairs()
    scale = float(full_values.abs().max())
    torch.testing.assert_close(values, full_values, atol=20 * eps * scale, rtol=0)
    torch.testing.assert_close(
        moments(values, S, scale, 2 * ncv),
        moments(full_values, full_S, scale, 2 * ncv),
        atol=50 * eps,
        rtol=0,
    )
    V = blocked.V[:ncv].double()
    assert float((V @ V.T - torch.eye(ncv, dtype=torch.float64)).abs().max()) < 50 * eps
    if matrix == "outliers":
        assert blocked.num_cuts > 0 and ncv < blocked.num_matvecs <= ncv + blocked.num_cuts * 7
    else:
        assert blocked.num_cuts == 0 and blocked.num_matvecs == ncv and blocked.num_sweeps == ncv // 8


def test_cut_blocks_keep_the_krylov_relation():
    A = outliers()
    process = run(deferred(A, start_vector(400, torch.float64), 48), 48)
    process.ritz_pairs()
    assert process.num_cuts > 0
    V, H = process.V[:48].T, process.M[:48, :48]
    torch.testing.assert_close(V.T @ V, torch.eye(48, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(H, V.T @ A @ V, atol=1e-9, rtol=0)
    residual = A @ V - V @ H
    torch.testing.assert_close(residual, torch.outer(process.V[48], process.M[48, :48]), atol=1e-9, rtol=0)


def test_block_size_halves_at_cuts():
    process = deferred(outliers(dtype=torch.float32), start_vector(400, torch.float32), 120)
    sizes, cuts = [process.block], [0]
    while process.size < 120 and process.step():
        sizes.append(process.block)
        cuts.append(process.num_cuts)
    assert cuts[-1] > 1 and max(sizes) == 8
    for before, after, cut_before, cut_after in zip(sizes, sizes[1:], cuts, cuts[1:]):
        if cut_after > cut_before:
            assert after == max(1, before // 2)


def test_block_size_grows_back_after_quiet_sweeps():
    """From block 1 (as after cuts), sweeps that remove at most √ε double it up to ``block_size``.

    A spread spectrum has no converged Ritz pairs for the pending vectors to drift towards, so
    every sweep is quiet. (Whether a run with cuts later has quiet sweeps depends on the BLAS's
    rounding: seen to differ between torch releases.)
    """
    spread = with_spectrum(torch.linspace(1.0, 2.0, 300, dtype=torch.float64))
    process = deferred(spread, start_vector(300, torch.float64), 40)
    process.block = 1
    sizes = [process.block]
    while process.size < 40 and process.step():
        sizes.append(process.block)
    assert process.num_cuts == 0
    assert sorted(set(sizes)) == [1, 2, 4, 8] and sizes == sorted(sizes)


def test_breakdown_gives_the_exact_quadrature():
    """An invariant Krylov space (three distinct eigenvalues) stops the process with exact nodes."""
    A = with_spectrum(torch.tensor([1.0, 2.0, 5.0]).double().repeat_interleave(20))
    process = run(deferred(A, torch.ones(60, dtype=torch.float64), 10), 10)
    assert process.broke_down and process.size == 3
    with pytest.raises(RuntimeError, match="full"):
        process.next_vector()
    values, S, residuals = process.ritz_pairs()
    torch.testing.assert_close(values, torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    assert float((S[0] ** 2).sum()) == pytest.approx(1.0)
    assert float(residuals.max()) == 0.0


@pytest.mark.parametrize("block_size", [8, 11, 16, 64])
def test_breakdown_inside_a_block_stops_the_process(block_size):
    """Ten distinct eigenvalues (each three times): the Krylov space is invariant after ten steps.
    The local residual of step ten is just above the breakdown threshold (the pending vector's
    drift from the basis), so only the sweep's coupling shows it, wherever the block ends."""
    A = with_spectrum(torch.arange(10).double().repeat(3), seed=1)
    start = torch.randn(30, dtype=torch.float64, generator=generator(1))
    reference = run(LanczosProcess(DenseLinearOperator(A), start, 30), 30)
    assert reference.broke_down and reference.size == 10
    process = run(deferred(A, start, 30, block_size), 30)
    assert process.broke_down and process.size == 10
    assert process.num_matvecs <= 10 + block_size
    values, _, residuals = process.ritz_pairs()
    torch.testing.assert_close(values, torch.arange(10).double(), atol=1e-12, rtol=0)
    assert float(residuals.abs().max()) == 0.0


def test_grow_keeps_the_basis():
    A = random_symmetric(40)
    process = run(deferred(A, torch.ones(40, dtype=torch.float64), 5, 3), 5)
    process.grow(12)
    run(process, 12)
    process.ritz_pairs()
    V = process.V[:12].T
    torch.testing.assert_close(V.T @ V, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(process.M[:12, :12], V.T @ A @ V, atol=1e-12, rtol=0)


def test_nan_products_raise():
    class Broken(LinearOperator):
        def __init__(self):
            super().__init__((5, 5), dtype=torch.float64, device=torch.device("cpu"), symmetric=True)

        def _matmat(self, X):
            return torch.full_like(X, float("nan"))

    with pytest.raises(RuntimeError, match="NaN or infinity"):
        DeferredLanczosProcess(Broken(), torch.ones(5, dtype=torch.float64), 3).step()
