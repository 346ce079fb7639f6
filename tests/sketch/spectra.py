"""Symmetric test matrices with prescribed spectra, and the error bounds sketches must meet."""

from __future__ import annotations

import math

import torch
from torch import Tensor

N = 120

SPECTRA = {
    "fast_decay": lambda n: 0.6 ** torch.arange(n, dtype=torch.float64),
    "slow_decay": lambda n: 1.0 / (1.0 + torch.arange(n, dtype=torch.float64)),
    "indefinite": lambda n: 0.7 ** torch.arange(n, dtype=torch.float64) * (-1.0) ** torch.arange(n),
    "low_rank": lambda n: torch.cat(
        [torch.linspace(3.0, -2.0, 12, dtype=torch.float64), torch.zeros(n - 12)]
    ),
    "psd_low_rank": lambda n: torch.cat(
        [torch.linspace(3.0, 0.5, 12, dtype=torch.float64), torch.zeros(n - 12)]
    ),
}
"""Eigenvalues (any order); ``low_rank`` has rank 12, with both signs."""

PSD = {"fast_decay", "slow_decay", "psd_low_rank"}


def symmetric_matrix(spectrum: str, n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``U diag(λ) Uᵀ`` with Haar-random ``U`` (float64), and ``λ``."""
    generator = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator)).Q
    values = SPECTRA[spectrum](n)
    return (U * values) @ U.T, values


def tail(values: Tensor, r: int) -> float:
    """``(Σ_{j > r} λ_j²)^{1/2}``, the Frobenius error of the best rank-``r`` approximation."""
    ordered = values.abs().sort(descending=True).values
    return float(ordered[r:].square().sum().sqrt())


def hmt_bound(values: Tensor, k: int) -> float:
    r"""Halko et al. (2011, Thm. 10.5) for ``A - QQᵀAQQᵀ``, Gaussian ``Ω`` with ``k`` columns.

    ``E‖(I - QQᵀ)A‖_F ≤ min_r (1 + r/(k - r - 1))^{1/2} tail_r`` over ``r ≤ k - 2``, and
    ``‖A - QQᵀAQQᵀ‖_F ≤ 2 ‖(I - QQᵀ)A‖_F`` for symmetric ``A``.
    """
    return 2 * min(math.sqrt(1 + r / (k - r - 1)) * tail(values, r) for r in range(0, k - 1))


def nystrom_nuclear_bound(values: Tensor, k: int) -> float:
    r"""Tropp et al. (2017, Thm. 4.1), PSD Nyström: ``E‖A - Â‖_* ≤ min_r (1 + r/(k - r - 1)) Σ_{j>r} λ_j``."""
    ordered = values.abs().sort(descending=True).values
    return min((1 + r / (k - r - 1)) * float(ordered[r:].sum()) for r in range(0, k - 1))


def oversampled_bound(values: Tensor, k: int, inner: int) -> float:
    r"""Tropp et al. (2017, "Practical sketching", Thm. 4.3), in Frobenius norm, as a bound on the mean.

    ``E‖A - Â‖²_F ≤ (1 + k/(N - k - 1)) min_r (1 + r/(k - r - 1)) tail_r²``, and twice that for the
    symmetric version (two sides of the outer basis).
    """
    outer = min((1 + r / (k - r - 1)) * tail(values, r) ** 2 for r in range(0, k - 1))
    return 2 * math.sqrt((1 + k / (inner - k - 1)) * outer)


class TorchOnly:
    """A foreign operator as skerch's users write them: ``.shape`` and ``@`` on torch tensors (both sides).

    Counts the columns it multiplies; refuses NumPy arrays, so a NumPy round trip would fail.
    """

    def __init__(self, matrix: Tensor):
        self.matrix, self.shape, self.num_columns = matrix, tuple(matrix.shape), 0

    def __matmul__(self, X: Tensor) -> Tensor:
        assert isinstance(X, Tensor)
        self.num_columns += X.shape[1] if X.ndim == 2 else 1
        return self.matrix @ X

    def __rmatmul__(self, X: Tensor) -> Tensor:
        assert isinstance(X, Tensor)
        self.num_columns += X.shape[0] if X.ndim == 2 else 1
        return X @ self.matrix


def relative_error(values: Tensor, vectors: Tensor, A: Tensor) -> float:
    """``‖A - U diag(λ) Uᵀ‖_F / ‖A‖_F`` in float64."""
    U = vectors.double()
    return float(torch.linalg.matrix_norm(A - (U * values.double()) @ U.T) / torch.linalg.matrix_norm(A))
