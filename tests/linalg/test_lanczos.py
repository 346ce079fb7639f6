"""The Lanczos process: orthonormal basis, Krylov relation, restarts; and the random blocks."""

from __future__ import annotations

import pytest
import torch
from linalg_matrices import generator, random_symmetric

from curvkit.linalg._random import as_generator, random_block
from curvkit.linalg.lanczos import LanczosProcess
from curvkit.linear_operator import DenseLinearOperator


def test_krylov_relation_orthonormality_and_tridiagonal_projection():
    A = random_symmetric(60)
    process = LanczosProcess(DenseLinearOperator(A), torch.ones(60, dtype=torch.float64), max_dim=20)
    for _ in range(20):
        assert process.step()
    V, H = process.V[:20].T, process.H
    torch.testing.assert_close(V.T @ V, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(H, V.T @ A @ V, atol=1e-12, rtol=0)
    torch.testing.assert_close(H, H.triu(-1).tril(1), atol=1e-12, rtol=0)
    residual = A @ V - V @ H
    torch.testing.assert_close(residual[:, :-1], torch.zeros(60, 19, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(residual[:, -1], process.beta * process.V[20], atol=1e-12, rtol=0)
    values, S, residuals = process.ritz_pairs()
    ritz_residuals = (A @ process.ritz_vectors(S) - process.ritz_vectors(S) * values).norm(dim=0)
    torch.testing.assert_close(ritz_residuals, residuals, atol=1e-10, rtol=0)


def test_thick_restart_keeps_the_krylov_relation():
    A = random_symmetric(60)
    process = LanczosProcess(DenseLinearOperator(A), torch.ones(60, dtype=torch.float64), 12, generator(0))
    for _ in range(12):
        process.step()
    process.restart(torch.tensor([0, 1, 10, 11]))
    for _ in range(6):
        process.step()
    m = process.size
    V, H = process.V[:m].T, process.H[:m, :m]
    torch.testing.assert_close(V.T @ V, torch.eye(m, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(H, V.T @ A @ V, atol=1e-12, rtol=0)


def test_breakdown_stops_or_restarts():
    A = DenseLinearOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)))
    start = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    stopping = LanczosProcess(A, start, max_dim=4)
    assert stopping.step() and not stopping.step()
    assert stopping.broke_down and stopping.size == 2
    restarting = LanczosProcess(A, start, max_dim=4, generator=generator(0))
    assert restarting.step() and restarting.step()  # the second finds the invariant span{e1, e2}
    assert restarting.broke_down and not restarting.probed_complement
    assert restarting.step() and restarting.probed_complement
    restarting.step()
    torch.testing.assert_close(restarting.ritz_pairs().values, torch.tensor([1.0, 2.0, 3.0, 4.0]).double())


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_random_blocks(distribution):
    block = random_block(2000, 50, distribution, generator(0), torch.float64, None)
    if distribution == "rademacher":
        assert set(block.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(block.mean())) < 0.01 and float(block.var()) == pytest.approx(1.0, abs=0.02)
    again = random_block(2000, 50, distribution, generator(0), torch.float64, None)
    assert torch.equal(block, again)


def test_as_generator():
    g = torch.Generator()
    assert as_generator(g) is g
    assert torch.equal(torch.rand(3, generator=as_generator(4)), torch.rand(3, generator=as_generator(4)))
    with pytest.raises(TypeError, match=r"seed must be an int, a torch\.Generator or None"):
        as_generator(1.5)
    with pytest.raises(ValueError, match="distribution must be one of"):
        random_block(3, 3, "cauchy", g, torch.float64, None)


def test_grow_keeps_the_basis():
    A = random_symmetric(40)
    process = LanczosProcess(DenseLinearOperator(A), torch.ones(40, dtype=torch.float64), 5)
    for _ in range(5):
        process.step()
    process.grow(12)
    for _ in range(7):
        process.step()
    V = process.V[:12].T
    torch.testing.assert_close(V.T @ V, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(process.H, V.T @ A @ V, atol=1e-12, rtol=0)


def test_locked_vectors_deflate_the_operator():
    """With locked eigenvectors the process is Lanczos on their complement: it finds the rest."""
    A = random_symmetric(30)
    eigenvalues, eigenvectors = torch.linalg.eigh(A)
    locked = eigenvectors[:, -4:].T.contiguous()
    start = torch.ones(30, dtype=torch.float64)
    process = LanczosProcess(DenseLinearOperator(A), start, 26, generator(0), locked)
    assert process.dim == 26
    while process.size < process.dim:
        process.step()
    V = process.V[:26]
    torch.testing.assert_close(V @ locked.T, torch.zeros(26, 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(process.ritz_pairs().values, eigenvalues[:-4])
    restart = process.random_complement(V[:20], 3)
    torch.testing.assert_close(restart.T @ restart, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(locked @ restart, torch.zeros(4, 3, dtype=torch.float64), atol=1e-12, rtol=0)
