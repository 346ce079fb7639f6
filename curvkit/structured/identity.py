"""The identity operator; damping is ``A + damping * IdentityLinearOperator(A.shape[0])``.

The identity adapts to its partner's dtype and device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result


class IdentityLinearOperator(ClosedForms, LinearOperator):
    """The identity ``I ∈ ℝⁿˣⁿ``.

    Args:
        dim: ``n`` (any non-negative integer, NumPy ones too).
        dtype: Optional dtype; by default the identity adapts to what it is combined with.
        device: Optional device; adapts by default.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 2.0]))
        >>> damped = A + 0.5 * IdentityLinearOperator(2)
        >>> damped @ torch.ones(2)
        tensor([1.5000, 2.5000])
    """

    def __init__(self, dim: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        dim = as_integer(dim, "dim", minimum=0)
        super().__init__((dim, dim), dtype=dtype, device=device, psd=True)

    def _matmat(self, X: Tensor) -> Tensor:
        return X.clone()

    def trace(self) -> Tensor:
        return as_result(self.shape[0], self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        return as_result(1.0, self), as_result(0.0, self)

    def frobenius_norm(self) -> Tensor:
        return as_result(math.sqrt(self.shape[0]), self)
