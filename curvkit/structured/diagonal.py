"""A diagonal operator ``diag(d)``."""

from __future__ import annotations

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_tensor
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result


class DiagonalLinearOperator(ClosedForms, LinearOperator):
    """A diagonal matrix ``diag(d)``.

    Args:
        diagonal: The diagonal ``d`` (tensor or NumPy array of shape ``[n]``).

    Example:
        >>> import torch
        >>> D = DiagonalLinearOperator(torch.tensor([2.0, 3.0]))
        >>> D.trace(), D.det()
        (tensor(5.), tensor(6.))
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

    def trace(self) -> Tensor:
        return as_result(self.diagonal.to(torch.float64).sum(), self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        diagonal = self.diagonal.to(torch.float64)
        return as_result(diagonal.sign().prod(), self), as_result(diagonal.abs().log().sum(), self)

    def frobenius_norm(self) -> Tensor:
        return as_result(torch.linalg.vector_norm(self.diagonal.to(torch.float64)), self)
