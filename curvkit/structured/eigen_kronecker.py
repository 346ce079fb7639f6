r"""A matrix diagonal in a Kronecker-factored eigenbasis: ``(Q_L ⊗ Q_R) diag(vec Λ) (Q_L ⊗ Q_R)ᵀ``.

This is EKFAC's block (George et al. 2018, "Fast Approximate Natural Gradient Descent in a
Kronecker-factored Eigenbasis"): the basis of KFAC's eigenvectors, and eigenvalues that are either
KFAC's own, ``Λ = λ_L λ_Rᵀ`` (the block then equals ``L ⊗ R``), or corrected ones. With
``Λ ↦ (Λ + δ)⁻¹`` it is also KFAC's exactly damped inverse ``(L ⊗ R + δ I)⁻¹`` (Grosse et al.
2023, eq. 21).
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result
from curvkit.structured._factors import kronecker_on_matrices, scaled_to_one, transposed


class EigenKroneckerLinearOperator(ClosedForms, LinearOperator):
    r"""``(Q_L ⊗ Q_R) diag(vec Λ) (Q_L ⊗ Q_R)ᵀ`` on row-major flattened ``m × n`` matrices.

    ``Λ[i, j]`` is the eigenvalue of the eigenvector ``Q_L[:, i] ⊗ Q_R[:, j]`` (row-major, as in
    :class:`~curvkit.structured.KroneckerLinearOperator`: ``vec(Λ) = λ_L ⊗ λ_R`` for KFAC's
    eigenvalues). A product rotates into the eigenbasis, scales, and rotates back: four matrix
    products; on a CPU with ``Λ`` divided by a power of two near its largest entry (exact) and the
    result multiplied by it, entries of ``Λ`` below ``ε²`` of the largest left out (no subnormal
    numbers: :func:`~curvkit.structured._factors.scaled_to_one`).
    Closed forms come from ``Λ`` alone: ``tr = Σ Λ``, ``log det = Σ log Λ``,
    ``‖·‖_F = ‖Λ‖_F``.

    Args:
        eigenvalues: ``Λ``, shape ``[m, n]``.
        left_eigenvectors: ``Q_L ∈ ℝ^{m × m}`` with orthonormal columns (not checked), or ``None``
            for the identity (the eigenbasis of a diagonal factor).
        right_eigenvectors: ``Q_R ∈ ℝ^{n × n}``, or ``None`` for the identity.

    Raises:
        TypeError: If a tensor is not a real floating-point tensor.
        ValueError: If the shapes do not match, ``Λ`` has non-finite entries, or the tensors differ
            in dtype or device.

    Example:
        >>> import torch
        >>> G = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> A = torch.eye(3, dtype=torch.float64)
        >>> (values_G, Q_G), (values_A, Q_A) = torch.linalg.eigh(G), torch.linalg.eigh(A)
        >>> E = EigenKroneckerLinearOperator(torch.outer(values_G, values_A), Q_G, Q_A)
        >>> torch.allclose(E.to_dense(), torch.kron(G, A))
        True
    """

    def __init__(
        self, eigenvalues: Tensor, left_eigenvectors: Tensor | None, right_eigenvectors: Tensor | None
    ):
        _check_tensor(eigenvalues, "eigenvalues", ndim=2)
        if not bool(torch.isfinite(eigenvalues).all()):
            raise ValueError("eigenvalues has non-finite entries (inf or nan).")
        rows, columns = eigenvalues.shape
        for vectors, dim, name in (
            (left_eigenvectors, rows, "left_eigenvectors"),
            (right_eigenvectors, columns, "right_eigenvectors"),
        ):
            if vectors is None:
                continue
            _check_tensor(vectors, name, ndim=2)
            if tuple(vectors.shape) != (dim, dim):
                raise ValueError(
                    f"{name} must have shape [{dim}, {dim}] to match eigenvalues of shape "
                    f"{list(eigenvalues.shape)}, got {list(vectors.shape)}."
                )
            if vectors.dtype != eigenvalues.dtype or vectors.device != eigenvalues.device:
                raise ValueError(
                    f"{name} must have the dtype and device of eigenvalues ({eigenvalues.dtype} on "
                    f"{eigenvalues.device}), got {vectors.dtype} on {vectors.device}."
                )
        super().__init__(
            (rows * columns, rows * columns),
            dtype=eigenvalues.dtype,
            device=eigenvalues.device,
            symmetric=True,
            psd=bool((eigenvalues >= 0).all()),
        )
        self.eigenvalues = eigenvalues
        self.left_eigenvectors, self.right_eigenvectors = left_eigenvectors, right_eigenvectors

    def with_eigenvalues(self, eigenvalues: Tensor) -> EigenKroneckerLinearOperator:
        """The same eigenbasis with other eigenvalues (of the same shape), e.g. ``(Λ + δ)⁻¹``."""
        if eigenvalues.shape != self.eigenvalues.shape:
            raise ValueError(
                f"eigenvalues must have shape {list(self.eigenvalues.shape)}, got {list(eigenvalues.shape)}."
            )
        return EigenKroneckerLinearOperator(eigenvalues, self.left_eigenvectors, self.right_eigenvectors)

    def _matmat(self, X: Tensor) -> Tensor:
        k, (rows, columns) = X.shape[1], self.eigenvalues.shape
        left, right = self.left_eigenvectors, self.right_eigenvectors
        rotated = kronecker_on_matrices(transposed(left), transposed(right), X.T.reshape(k, rows, columns))
        # scaled to 1, down to ε² (less than ε² of the largest in any result): EKFAC's corrections
        # of a few examples are mostly rounding, tens of orders of magnitude below the largest
        eigenvalues, scale = scaled_to_one(self.eigenvalues, torch.finfo(self.eigenvalues.dtype).eps ** 2)
        result = kronecker_on_matrices(left, right, rotated * eigenvalues)
        if scale != 1.0:
            result.mul_(scale)
        return result.reshape(k, rows * columns).T

    def trace(self) -> Tensor:
        return as_result(self.eigenvalues.to(torch.float64).sum(), self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        values = self.eigenvalues.to(torch.float64)
        return as_result(values.sign().prod(), self), as_result(values.abs().log().sum(), self)

    def frobenius_norm(self) -> Tensor:
        return as_result(torch.linalg.vector_norm(self.eigenvalues.to(torch.float64)), self)


def _check_tensor(tensor: object, name: str, ndim: int) -> None:
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point torch.Tensor, got {type(tensor).__name__}.")
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {list(tensor.shape)}.")
