"""The lazy algebra of linear operators: sums, scalings, products and transposes.

``A + B``, ``c * A``, ``A @ B`` and ``A.T`` build these; none forms a matrix. Each passes the
structural tags on by rule (a sum is symmetric if all terms are, ``c A`` keeps positive
semi-definiteness for ``c ≥ 0``, ...). Public home: :mod:`curvkit.linear_operator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from numbers import Real
from typing import Any

import numpy
from torch import Tensor

from curvkit._layout import TensorListLayout
from curvkit.linear_operator import LinearOperator


def _common(values: Sequence[Any], what: str) -> Any:
    """The one non-``None`` value among ``values`` (``None`` if all are), else a clear error."""
    concrete = {value for value in values if value is not None}
    if len(concrete) > 1:
        raise ValueError(f"Cannot combine operators with different {what}s: {sorted(map(str, concrete))}.")
    return concrete.pop() if concrete else None


def _smallest_limit(own: int | None, operators: Sequence[LinearOperator]) -> int | None:
    """The smallest of ``own`` and the operands' ``columns_per_product`` (``None``: none)."""
    limits = [own, *(operator.columns_per_product for operator in operators)]
    return min((limit for limit in limits if limit is not None), default=None)


def _layouts(operators: Sequence[LinearOperator], attribute: str) -> TensorListLayout | None:
    layouts = {getattr(operator, attribute) for operator in operators} - {None}
    return layouts.pop() if len(layouts) == 1 else None


class SumLinearOperator(LinearOperator):
    """``A_1 + ... + A_p`` (lazy)."""

    def __init__(self, operators: Sequence[LinearOperator]):
        shapes = {operator.shape for operator in operators}
        if len(shapes) != 1:
            raise ValueError(f"Cannot add operators of different shapes {sorted(shapes)}.")
        flattened = [
            op
            for operator in operators
            for op in (operator.operators if isinstance(operator, SumLinearOperator) else [operator])
        ]
        super().__init__(
            shapes.pop(),
            dtype=_common([op.dtype for op in flattened], "dtype"),
            device=_common([op.device for op in flattened], "device"),
            symmetric=all(op.is_symmetric for op in flattened),
            psd=all(op.is_psd for op in flattened),
            in_layout=_layouts(flattened, "in_layout"),
            out_layout=_layouts(flattened, "out_layout"),
        )
        self.operators = flattened

    @property
    def columns_per_product(self) -> int | None:
        return _smallest_limit(self.max_columns, self.operators)

    def _matmat(self, X: Tensor) -> Tensor:
        return sum(op.matmat(X) for op in self.operators)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return sum(op.rmatmat(X) for op in self.operators)


class ScaledLinearOperator(LinearOperator):
    """``c A`` (lazy).

    Raises:
        TypeError: If ``scalar`` is not a real number (complex ones included).
        ValueError: If ``scalar`` is not finite.
    """

    def __init__(self, operator: LinearOperator, scalar: Real):
        if not isinstance(scalar, Real):
            raise TypeError(f"scalar must be a real number (curvkit's operators are real), got {scalar!r}.")
        if not numpy.isfinite(scalar):
            raise ValueError(f"scalar must be a finite real number, got {scalar!r}.")
        super().__init__(
            operator.shape,
            dtype=operator.dtype,
            device=operator.device,
            symmetric=operator.is_symmetric,
            psd=operator.is_psd and scalar >= 0,
            in_layout=operator.in_layout,
            out_layout=operator.out_layout,
        )
        self.operator, self.scalar = operator, float(scalar)

    @property
    def columns_per_product(self) -> int | None:
        return _smallest_limit(self.max_columns, [self.operator])

    def _matmat(self, X: Tensor) -> Tensor:
        return self.scalar * self.operator.matmat(X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self.scalar * self.operator.rmatmat(X)


class ProductLinearOperator(LinearOperator):
    """``A_1 A_2 ... A_p`` (lazy), applied right to left."""

    def __init__(self, operators: Sequence[LinearOperator]):
        for left, right in pairwise(operators):
            if left.shape[1] != right.shape[0]:
                raise ValueError(f"Cannot multiply operators of shapes {left.shape} and {right.shape}.")
        super().__init__(
            (operators[0].shape[0], operators[-1].shape[1]),
            dtype=_common([op.dtype for op in operators], "dtype"),
            device=_common([op.device for op in operators], "device"),
            in_layout=operators[-1].in_layout,
            out_layout=operators[0].out_layout,
        )
        self.operators = list(operators)

    @property
    def columns_per_product(self) -> int | None:
        return _smallest_limit(self.max_columns, self.operators)

    def _matmat(self, X: Tensor) -> Tensor:
        for operator in reversed(self.operators):
            X = operator.matmat(X)
        return X

    def _rmatmat(self, X: Tensor) -> Tensor:
        for operator in self.operators:
            X = operator.rmatmat(X)
        return X


class TransposedLinearOperator(LinearOperator):
    """``Aᵀ`` (lazy); its transpose is ``A`` again."""

    def __init__(self, operator: LinearOperator):
        super().__init__(
            operator.shape[::-1],
            dtype=operator.dtype,
            device=operator.device,
            in_layout=operator.out_layout,
            out_layout=operator.in_layout,
        )
        self.operator = operator

    def _matmat(self, X: Tensor) -> Tensor:
        return self.operator.rmatmat(X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self.operator.matmat(X)

    @property
    def max_columns(self) -> int | None:
        """``A``'s: ``A.T`` is a new view each time, so the setting lives on ``A``."""
        return self.operator.max_columns

    @max_columns.setter
    def max_columns(self, value: int | None) -> None:
        self.operator.max_columns = value

    @property
    def columns_per_product(self) -> int | None:
        return self.operator.columns_per_product

    @property
    def T(self) -> LinearOperator:
        return self.operator
