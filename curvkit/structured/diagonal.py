"""A diagonal operator ``diag(d)``."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_tensor, nonnegative_float, real_scalar
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result


class DiagonalLinearOperator(ClosedForms, LinearOperator):
    """A diagonal matrix ``diag(d)``.

    Sums of diagonal operators (of one dtype and device) and their multiples are diagonal
    operators again, and :meth:`inverse` is closed-form.

    Args:
        diagonal: The diagonal ``d`` (tensor or NumPy array of shape ``[n]``).

    Example:
        >>> import torch
        >>> D = DiagonalLinearOperator(torch.tensor([2.0, 3.0]))
        >>> D.trace(), D.det()
        (tensor(5.), tensor(6.))
        >>> (D + 2 * D).inverse(damping=1.0).diagonal
        tensor([0.1429, 0.1000])
    """

    def __init__(self, diagonal: Tensor | numpy.ndarray):
        diagonal = as_tensor(diagonal, None, None, name="diagonal")
        if diagonal.ndim != 1:
            raise ValueError(f"diagonal must be 1-dimensional, got shape {list(diagonal.shape)}.")
        super().__init__(
            (diagonal.numel(), diagonal.numel()),
            dtype=diagonal.dtype,
            device=diagonal.device,
            symmetric=True,
            psd=bool((diagonal >= 0).all()),
        )
        self.diagonal = diagonal

    def _matmat(self, X: Tensor) -> Tensor:
        return self.diagonal.unsqueeze(1) * X

    def __add__(self, other: Any) -> LinearOperator:
        if self._combines_with(other):
            return DiagonalLinearOperator(self.diagonal + other.diagonal)
        return super().__add__(other)

    def __mul__(self, scalar: Any) -> LinearOperator:
        value = real_scalar(scalar)
        return NotImplemented if value is None else DiagonalLinearOperator(value * self.diagonal)

    __rmul__ = __mul__

    def _combines_with(self, other: Any) -> bool:
        """Whether ``self + other`` is diagonal: ``other`` diagonal, of this shape, dtype and device."""
        return (
            isinstance(other, DiagonalLinearOperator)
            and other.shape == self.shape
            and (other.dtype, other.device) == (self.dtype, self.device)
        )

    def inverse(self, damping: float = 0.0) -> DiagonalLinearOperator:
        """``(diag(d) + δ I)⁻¹ = diag(1 / (d + δ))``.

        Args:
            damping: ``δ ≥ 0``.

        Raises:
            ValueError: If ``damping`` is not a finite non-negative number.
            torch.linalg.LinAlgError: If an entry of ``d + δ`` is zero (the matrix is singular).
        """
        damped = self.diagonal + nonnegative_float(damping, "damping")
        if bool((damped == 0).any()):
            raise torch.linalg.LinAlgError(
                f"diag(d) + {damping} I is singular: {int((damped == 0).sum())} of its entries are 0. "
                "Use a positive damping."
            )
        return DiagonalLinearOperator(1.0 / damped)

    def trace(self) -> Tensor:
        return as_result(self.diagonal.to(torch.float64).sum(), self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        diagonal = self.diagonal.to(torch.float64)
        return as_result(diagonal.sign().prod(), self), as_result(diagonal.abs().log().sum(), self)

    def frobenius_norm(self) -> Tensor:
        return as_result(torch.linalg.vector_norm(self.diagonal.to(torch.float64)), self)
