"""Structured operators that are cheap to apply: identity and diagonal.

Damping is a one-liner through the algebra: ``A + damping * IdentityLinearOperator(A.shape[0])``.
The identity adapts to its partner's dtype and device.
"""

from __future__ import annotations

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_integer, as_tensor
from curvkit.linear_operator import LinearOperator


class IdentityLinearOperator(LinearOperator):
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


class DiagonalLinearOperator(LinearOperator):
    """A diagonal matrix ``diag(d)``.

    Args:
        diagonal: The diagonal ``d`` (tensor or NumPy array of shape ``[n]``).
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
