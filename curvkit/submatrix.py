"""Sub-matrices of linear operators: ``A[row_idxs, :][:, col_idxs]`` without forming ``A``."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit.linear_operator import LinearOperator, as_linear_operator


def _check_indices(idxs: Any, bound: int, name: str) -> list[int]:
    """Return ``idxs`` as a list of distinct integers in ``[0, bound)``.

    Raises:
        ValueError: If an index is not an integer, is duplicated, or is out of range.
    """
    if isinstance(idxs, (Tensor, numpy.ndarray)):
        if idxs.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {list(idxs.shape)}.")
        idxs = idxs.tolist()
    if not isinstance(idxs, Sequence) or isinstance(idxs, str):
        raise ValueError(f"{name} must be a list of integers, got {type(idxs).__name__}.")
    bad = [i for i in idxs if isinstance(i, bool) or not isinstance(i, Integral)]
    if bad:
        raise ValueError(f"{name} must contain integers only, got {bad[0]!r}.")
    idxs = [int(i) for i in idxs]
    if len(set(idxs)) != len(idxs):
        duplicates = sorted({i for i in idxs if idxs.count(i) > 1})
        raise ValueError(f"{name} must not contain duplicates, got {duplicates} more than once.")
    outside = [i for i in idxs if not 0 <= i < bound]
    if outside:
        raise ValueError(f"{name} must lie in [0, {bound}), got out-of-range index {outside[0]}.")
    return idxs


class SubmatrixLinearOperator(LinearOperator):
    r"""Class for sub-matrices of linear operators.

    Represents :math:`\mathbf{A}_{\mathcal{R}, \mathcal{C}}` = ``A[row_idxs, :][:, col_idxs]``.
    A product scatters the input into the columns ``col_idxs`` of a zero block, multiplies by
    :math:`\mathbf{A}` and gathers the rows ``row_idxs``:

    .. math::
        \mathbf{A}_{\mathcal{R}, \mathcal{C}}\mathbf{X} = \mathbf{P}_{\mathcal{R}} \mathbf{A}
        \mathbf{P}_{\mathcal{C}}^\top \mathbf{X},

    with selection matrices :math:`\mathbf{P}`; so its cost is that of a product with
    :math:`\mathbf{A}`. The transpose uses :math:`\mathbf{A}^\top` the same way.

    Args:
        A: A linear operator (anything with ``@`` and ``.shape``).
        row_idxs: The sub-matrix's row indices.
        col_idxs: The sub-matrix's column indices.

    Raises:
        ValueError: If the index lists contain duplicate values, non-integers, or out-of-bounds
            indices.

    Example:
        >>> import torch
        >>> A = torch.arange(12.0).reshape(3, 4)
        >>> A_sub = SubmatrixLinearOperator(A, [0, 2], [1, 3])
        >>> A_sub @ torch.eye(2)
        tensor([[ 1.,  3.],
                [ 9., 11.]])
        >>> A_sub.T @ torch.eye(2)
        tensor([[ 1.,  9.],
                [ 3., 11.]])
    """

    def __init__(self, A: Any, row_idxs: Sequence[int], col_idxs: Sequence[int]):
        self._A = as_linear_operator(A)
        super().__init__((0, 0), dtype=self._A.dtype, device=self._A.device)
        self.set_submatrix(row_idxs, col_idxs)

    def set_submatrix(self, row_idxs: Sequence[int], col_idxs: Sequence[int]) -> None:
        """Define the sub-matrix; sets the operator's shape to ``(len(row_idxs), len(col_idxs))``.

        Args:
            row_idxs: The sub-matrix's row indices.
            col_idxs: The sub-matrix's column indices.

        Raises:
            ValueError: If the index lists contain duplicate values, non-integers, or
                out-of-bounds indices.
        """
        num_rows, num_columns = self._A.shape
        rows = _check_indices(row_idxs, num_rows, "row_idxs")
        columns = _check_indices(col_idxs, num_columns, "col_idxs")
        self._row_idxs = torch.tensor(rows, dtype=torch.long, device=self._A.device)
        self._col_idxs = torch.tensor(columns, dtype=torch.long, device=self._A.device)
        self._shape = (len(rows), len(columns))

    @staticmethod
    def _scatter_product(product: Any, X: Tensor, into: Tensor, size: int, out: Tensor) -> Tensor:
        full = torch.zeros(size, X.shape[1], dtype=X.dtype, device=X.device)
        full[into.to(X.device)] = X
        return product(full)[out.to(X.device)]

    def _matmat(self, X: Tensor) -> Tensor:
        return self._scatter_product(self._A.matmat, X, self._col_idxs, self._A.shape[1], self._row_idxs)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._scatter_product(self._A.rmatmat, X, self._row_idxs, self._A.shape[0], self._col_idxs)
