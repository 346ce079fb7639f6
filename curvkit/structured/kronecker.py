r"""The Kronecker product ``L ⊗ R`` of two square factors, acting on row-major flattened matrices.

**The order, against curvkit's flattening.** curvkit flattens a parameter the way PyTorch
stores it, row by row: a weight ``W ∈ ℝ^{out × in}`` becomes ``vec(W)`` with entry
``W[i, j]`` at position ``i · in + j``. For that flattening

.. math::
    (\mathbf{L} \otimes \mathbf{R}) \operatorname{vec}(\mathbf{W})
    = \operatorname{vec}(\mathbf{L} \mathbf{W} \mathbf{R}^\top),
    \qquad
    (\mathbf{L} \otimes \mathbf{R})_{(i, j), (k, l)} = L_{ik} R_{jl},

so the factor of the *rows* (KFAC's output-gradient factor ``G``, ``out × out``) comes first and
the factor of the *columns* (the input factor ``A``, ``in × in``) second: a linear layer's KFAC
block is ``G ⊗ A``, the matrix ``torch.kron(G, A)``. Papers and curvlinops' documentation write
``A ⊗ G`` because they stack columns (``vec(L W Rᵀ) = (R ⊗ L) vec(W)`` column-major); the two
describe the same approximation, permuted. A convolution's weight ``[out, in, *kernel]`` is the
matrix ``[out, in · ∏ kernel]`` (its row-major flattening is the same), so ``A`` runs over
(channel, kernel position) in that order — the order of :func:`torch.nn.functional.unfold`'s
patches. An ``nn.Embedding`` stores ``[num_embeddings, dim]``, inputs along the rows, so its block
is ``A ⊗ G``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result
from curvkit.structured._factors import (
    checked_factor,
    dense,
    is_symmetric,
    kronecker_product,
    slogdet64,
    squared_frobenius64,
    trace64,
    transposed,
)


class KroneckerLinearOperator(ClosedForms, LinearOperator):
    r"""``L ⊗ R`` on row-major flattened matrices ``M ∈ ℝ^{m × n}``: ``(L ⊗ R) vec(M) = vec(L M Rᵀ)``.

    A product with ``k`` columns costs two matrix products, ``O(m n k (m + n))``, instead of the
    ``O(m² n² k)`` of the dense ``torch.kron(L, R)``, which is never formed (except by
    :meth:`to_dense`). Closed forms (Van Loan 2000, "The ubiquitous Kronecker product"):
    ``tr(L ⊗ R) = tr L · tr R``, ``det(L ⊗ R) = det(L)ⁿ det(R)ᵐ``, ``‖L ⊗ R‖_F = ‖L‖_F ‖R‖_F``.
    See the module docstring for the order against curvkit's parameter flattening.

    Args:
        left: ``L``, a square matrix ``[m, m]`` or a diagonal ``[m]`` (given by its entries).
        right: ``R``, ``[n, n]`` or ``[n]``, of ``left``'s dtype and device.
        psd: Declare both factors positive semi-definite (not checked; they must be symmetric).
            Log-determinants then come from clamped eigenvalues, so a factor singular up to
            rounding gives ``-inf`` rather than ``nan``.
        checked: The caller guarantees finite, exactly symmetric factors (KFAC's blocks, which
            symmetrize them): their checks are skipped (on a 2049² factor they cost about as
            much as computing it).

    Raises:
        TypeError: If a factor is not a real floating-point tensor.
        ValueError: If a factor is not square or has non-finite entries, if the factors differ
            in dtype or device, or if ``psd`` is declared for factors that are not symmetric.

    Example:
        >>> import torch
        >>> G, A = torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.tensor([3.0, 1.0, 2.0])
        >>> W = torch.arange(6.0).reshape(2, 3)
        >>> K = KroneckerLinearOperator(G, A)
        >>> torch.equal(K @ W.flatten(), (G @ W @ torch.diag(A)).flatten())
        True
        >>> torch.equal(K.to_dense(), torch.kron(G, torch.diag(A))), K.trace().item()
        (True, 24.0)
    """

    def __init__(self, left: Tensor, right: Tensor, *, psd: bool = False, checked: bool = False):
        if not checked:
            left, right = checked_factor(left, "left"), checked_factor(right, "right")
        if left.dtype != right.dtype or left.device != right.device:
            raise ValueError(
                f"left and right must have the same dtype and device, got {left.dtype} on {left.device} "
                f"and {right.dtype} on {right.device}."
            )
        # checked: the caller's factors are finite and symmetric (KFAC's, symmetrized); an exact
        # comparison with the transpose costs as much as the symmetrization itself
        symmetric = checked or (is_symmetric(left) and is_symmetric(right))
        if psd and not symmetric:
            raise ValueError(
                "psd=True declares symmetric positive semi-definite factors, but a factor is not symmetric."
            )
        dim = left.shape[0] * right.shape[0]
        super().__init__((dim, dim), dtype=left.dtype, device=left.device, symmetric=symmetric, psd=psd)
        self.left, self.right = left, right

    def _matmat(self, X: Tensor) -> Tensor:
        return kronecker_product(
            self.left, self.right, X, self.left.shape[0], self.right.shape[0], self.is_symmetric
        )

    def _rmatmat(self, X: Tensor) -> Tensor:
        return kronecker_product(
            transposed(self.left), transposed(self.right), X, self.left.shape[0], self.right.shape[0]
        )

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        # contiguous: torch.kron fails on some strided inputs (2.13: a column-major with a row-major one)
        return torch.kron(dense(self.left).contiguous(), dense(self.right).contiguous())

    def trace(self) -> Tensor:
        return as_result(trace64(self.left) * trace64(self.right), self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        (sign_left, log_left), (sign_right, log_right) = (
            slogdet64(self.left, self.is_psd),
            slogdet64(self.right, self.is_psd),
        )
        m, n = self.left.shape[0], self.right.shape[0]
        sign = sign_left**n * sign_right**m
        logabsdet = n * log_left + m * log_right if m * n else torch.tensor(0.0, dtype=torch.float64)
        return as_result(sign, self), as_result(logabsdet, self)

    def frobenius_norm(self) -> Tensor:
        return as_result((squared_frobenius64(self.left) * squared_frobenius64(self.right)).sqrt(), self)
