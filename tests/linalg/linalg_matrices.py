"""Matrices with known trace, diagonal and spectrum for the linalg tests (float64, seeded)."""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit.linear_operator import LinearOperator

DTYPE = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(n: int, seed: int) -> Tensor:
    return torch.linalg.qr(torch.randn(n, n, dtype=DTYPE, generator=generator(seed))).Q


def with_spectrum(eigenvalues: Tensor, seed: int = 0) -> Tensor:
    """``Q diag(eigenvalues) Qᵀ`` for a random orthogonal ``Q``."""
    Q = random_orthogonal(eigenvalues.numel(), seed)
    return (Q * eigenvalues.to(DTYPE)) @ Q.T


def low_rank_plus_noise(n: int = 300, rank: int = 10, seed: int = 0) -> Tensor:
    """PSD: ``rank`` large eigenvalues (100, ..., 10) on top of a flat bulk at 0.05."""
    eigenvalues = torch.full((n,), 0.05, dtype=DTYPE)
    eigenvalues[:rank] = torch.linspace(100.0, 10.0, rank, dtype=DTYPE)
    return with_spectrum(eigenvalues, seed)


def random_symmetric(n: int, seed: int = 0) -> Tensor:
    A = torch.randn(n, n, dtype=DTYPE, generator=generator(seed))
    return (A + A.T) / 2


class CountingOperator(LinearOperator):
    """A dense matrix that counts its products (calls and columns)."""

    def __init__(self, matrix: Tensor, symmetric: bool = False):
        super().__init__(tuple(matrix.shape), dtype=matrix.dtype, device=matrix.device, symmetric=symmetric)
        self.matrix = matrix
        self.num_calls = 0
        self.num_columns = 0

    def _matmat(self, X: Tensor) -> Tensor:
        self.num_calls += 1
        self.num_columns += X.shape[1]
        return self.matrix @ X

    def _rmatmat(self, X: Tensor) -> Tensor:
        self.num_calls += 1
        self.num_columns += X.shape[1]
        return self.matrix.T @ X
