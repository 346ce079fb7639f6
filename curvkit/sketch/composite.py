"""skerch's ``CompositeLinOp`` and ``DiagonalLinOp`` as curvkit operators (so the algebra applies to them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from curvkit.linear_operator import ProductLinearOperator, as_linear_operator
from curvkit.structured import DiagonalLinearOperator


class CompositeLinOp(ProductLinearOperator):
    """The product ``o_1 @ o_2 @ …`` of named operators, applied right to left without forming it.

    A sketched decomposition ``Q diag(λ) Qᵀ`` as ``CompositeLinOp([("Q", Q), ("Lbd",
    DiagonalLinOp(λ)), ("Qt", Q.T)])`` multiplies in ``O(n k)`` per column. Any operand with
    ``.shape`` and ``@`` (tensors, NumPy arrays, curvkit and SciPy operators) is accepted; they
    must share dtype and device.

    Args:
        named_operators: ``[(name, operator), …]`` in the order of the product.

    Raises:
        ValueError: If it is empty, an entry is not a ``(str, operator)`` pair, or the shapes,
            dtypes or devices do not chain.

    Example:
        >>> import torch
        >>> Q = torch.eye(3)[:, :2]
        >>> op = CompositeLinOp((("Q", Q), ("Lbd", DiagonalLinOp(torch.tensor([2.0, 3.0]))), ("Qt", Q.T)))
        >>> op, (op @ torch.ones(3)).tolist()
        (Q @ Lbd @ Qt, [2.0, 3.0, 0.0])
    """

    def __init__(self, named_operators: Sequence[tuple[str, Any]]):
        pairs = list(named_operators)
        if not pairs or not all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str) for pair in pairs
        ):
            raise ValueError(
                "named_operators must be a non-empty sequence of (name, operator) pairs, "
                f"got {named_operators!r}."
            )
        self.names = [name for name, _ in pairs]
        super().__init__([as_linear_operator(operator) for _, operator in pairs])

    def __repr__(self) -> str:
        return " @ ".join(self.names)


class DiagonalLinOp(DiagonalLinearOperator):
    """``diag(d)`` for a vector ``d`` of length ``n``: ``O(n)`` memory and work per column.

    Args:
        diag: The diagonal (tensor or NumPy array ``[n]``).
    """

    def __init__(self, diag: Tensor):
        super().__init__(diag)

    def to_matrix(self) -> Tensor:
        """The dense ``[n, n]`` matrix."""
        return self.to_dense()
