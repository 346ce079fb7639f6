r"""A weight and its bias as one matrix ``[W b]``: the permutation between the two flattenings.

curvkit flattens a layer's parameters one after the other, ``(vec W, b)``; KFAC with
``separate_weight_and_bias=False`` treats them as one matrix ``[W b] ∈ ℝ^{out × (in + 1)}``,
whose row-major flattening interleaves them (row ``i`` is ``W[i, :]`` then ``b[i]``), and whose
input factor is the second moment of the inputs with a 1 appended (the input the bias sees).
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms


class JoinedWeightBiasLinearOperator(ClosedForms, LinearOperator):
    r"""``Pᵀ B P`` for ``B`` acting on ``vec([W b])`` and ``P: (vec W, b) ↦ vec([W b])``.

    ``P`` is a permutation, so trace, determinant and Frobenius norm are ``B``'s (which must
    have closed forms for those to work); products copy the columns into the joined layout and
    back, without forming ``P``.

    Args:
        operator: ``B``, square of size ``out · (in + 1)``.
        out_features: ``out``, the length of the bias.

    Raises:
        ValueError: If ``operator`` is not square or its size is not a multiple of ``out_features``
            with at least one weight column.

    Example:
        >>> import torch
        >>> from curvkit.linear_operator import DenseLinearOperator
        >>> joined = JoinedWeightBiasLinearOperator(DenseLinearOperator(torch.eye(6)), out_features=2)
        >>> W, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([5.0, 6.0])
        >>> joined @ torch.cat([W.flatten(), b])
        tensor([1., 2., 3., 4., 5., 6.])
    """

    def __init__(self, operator: LinearOperator, out_features: int):
        out_features = as_integer(out_features, "out_features", minimum=1)
        rows, columns = operator.shape
        if rows != columns or rows % out_features or rows // out_features < 2:
            raise ValueError(
                f"operator must be square of size out_features · (in + 1) with in ≥ 1, got shape "
                f"{operator.shape} for out_features={out_features}."
            )
        super().__init__(
            operator.shape,
            dtype=operator.dtype,
            device=operator.device,
            symmetric=operator.is_symmetric,
            psd=operator.is_psd,
        )
        self.operator = operator
        self.out_features, self.in_features = out_features, rows // out_features - 1

    def _joined(self, X: Tensor) -> Tensor:
        """``P X``: ``(vec W, b)`` columns into ``vec([W b])`` columns (stored column by column)."""
        out, k = self.out_features, X.shape[1]
        weight, bias = X.T.split([out * self.in_features, out], dim=1)
        joined = torch.cat([weight.reshape(k, out, self.in_features), bias.reshape(k, out, 1)], dim=2)
        return joined.reshape(k, -1).T

    def _separated(self, Y: Tensor) -> Tensor:
        """``Pᵀ Y``: ``vec([W b])`` columns back into ``(vec W, b)`` columns (stored column by column)."""
        out, k = self.out_features, Y.shape[1]
        matrices = Y.T.reshape(k, out, self.in_features + 1)
        return torch.cat([matrices[:, :, :-1].reshape(k, -1), matrices[:, :, -1]], dim=1).T

    def _matmat(self, X: Tensor) -> Tensor:
        return self._separated(self.operator.matmat(self._joined(X)))

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._separated(self.operator.rmatmat(self._joined(X)))

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        joined_dense = self.operator.to_dense(chunk_size)
        positions = self._joined(
            torch.arange(self.shape[0], device=joined_dense.device).unsqueeze(1)
        ).squeeze(1)
        # row p of vec([W b]) holds entry positions[p] of (vec W, b): invert that permutation
        order = torch.empty_like(positions)
        order[positions] = torch.arange(self.shape[0], device=joined_dense.device)
        return joined_dense[order][:, order]

    def trace(self) -> Tensor:
        return self.operator.trace()

    def slogdet(self) -> tuple[Tensor, Tensor]:
        return self.operator.slogdet()

    def frobenius_norm(self) -> Tensor:
        return self.operator.frobenius_norm()
