"""PyTorch-native linear operators and their lazy algebra.

A :class:`LinearOperator` represents a matrix ``A ∈ ℝᵐˣⁿ`` by its action ``X ↦ A X`` on
``[n, k]`` tensors, without forming ``A``. A subclass implements one method, :meth:`_matmat`
(plus :meth:`_rmatmat`, the action of ``Aᵀ``, unless it is declared symmetric); everything else
— vectors, NumPy arrays, lists of tensors, algebra, dense and SciPy export — is derived here.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from numbers import Number
from typing import Any

import numpy
import torch
from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator
from torch import Tensor

from curvkit._boundary import as_tensor, numpy_dtype_of, to_numpy, torch_dtype_of
from curvkit._layout import TensorListLayout


class LinearOperator:
    """Base class of curvkit's linear operators.

    Shape, dtype, device and the structural tags ``is_symmetric`` / ``is_psd`` are fixed when
    the operator is built and passed on by rule through the algebra (``A + B`` is symmetric
    if both are; ``c * A`` keeps positive semi-definiteness for ``c ≥ 0``; ...).

    ``dtype=None`` and ``device=None`` mark an operator that adapts to its input (such as
    the identity); combined with another operator, it takes that operator's dtype and device.

    Products accept:

    - ``A @ x`` with a torch tensor of shape ``[n]`` or ``[n, k]``: a tensor on ``A.device``;
    - ``A @ x`` with a NumPy array: a NumPy array (a float64 input to a float32 operator is
      converted with one ``UserWarning``);
    - ``A @ [t_1, ..., t_P]`` with parameter-shaped tensors (``[*shape]`` or ``[*shape, k]``),
      when the operator acts on a list-of-tensors space (curvature operators do): a list;
    - ``x @ A`` (left products, computed as ``(Aᵀ xᵀ)ᵀ``) and ``A @ B`` for operators, NumPy
      arrays, SciPy linear operators or anything with ``@`` and ``.shape``.

    Args:
        shape: ``(m, n)``.
        dtype: The dtype inputs are converted to, or ``None`` to adapt.
        device: The device computations run on, or ``None`` to adapt.
        symmetric: Whether ``A = Aᵀ``. Then :meth:`_rmatmat` need not be implemented.
        psd: Whether ``A`` is symmetric positive semi-definite.
        in_layout: Optional list-of-tensors layout of the input space (``ℝⁿ``).
        out_layout: Optional list-of-tensors layout of the output space (``ℝᵐ``).
    """

    __array_ufunc__ = None  # let ``ndarray @ A`` fall through to ``A.__rmatmul__``

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        symmetric: bool = False,
        psd: bool = False,
        in_layout: TensorListLayout | None = None,
        out_layout: TensorListLayout | None = None,
    ):
        if len(shape) != 2 or any(not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"shape must be a pair of non-negative integers, got {shape!r}.")
        if (symmetric or psd) and shape[0] != shape[1]:
            raise ValueError(f"A symmetric operator must be square, got shape {shape}.")
        self._shape = (int(shape[0]), int(shape[1]))
        self._dtype = dtype
        self._device = None if device is None else torch.device(device)
        self._is_psd = bool(psd)
        self._is_symmetric = bool(symmetric or psd)
        self._in_layout = in_layout
        self._out_layout = out_layout

    # ----------------------------------------------------------------- the contract
    def _matmat(self, X: Tensor) -> Tensor:
        """Return ``A X`` for ``X`` of shape ``[n, k]`` (dtype and device already matched)."""
        raise NotImplementedError

    def _rmatmat(self, X: Tensor) -> Tensor:
        """Return ``Aᵀ X`` for ``X`` of shape ``[m, k]``. Symmetric operators need not implement it."""
        if self._is_symmetric:
            return self._matmat(X)
        raise NotImplementedError(f"{type(self).__name__} does not implement its transpose.")

    # ----------------------------------------------------------------- metadata
    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype | None:
        return self._dtype

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def is_symmetric(self) -> bool:
        return self._is_symmetric

    @property
    def is_psd(self) -> bool:
        return self._is_psd

    @property
    def in_layout(self) -> TensorListLayout | None:
        return self._in_layout

    @property
    def out_layout(self) -> TensorListLayout | None:
        return self._out_layout

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"<{type(self).__name__} of shape {self.shape[0]}x{self.shape[1]}, {dtype} on {self.device}>"

    # ----------------------------------------------------------------- products
    def matmat(self, X: Tensor) -> Tensor:
        """``A X`` for a tensor ``X`` of shape ``[n, k]``, with the input checks of ``@``."""
        return self._apply(X, transpose=False)

    def rmatmat(self, X: Tensor) -> Tensor:
        """``Aᵀ X`` for a tensor ``X`` of shape ``[m, k]``, with the input checks of ``@``."""
        return self._apply(X, transpose=True)

    def _apply(self, x: Any, transpose: bool) -> Any:
        """Multiply ``A`` (or ``Aᵀ``) onto a tensor, array or tensor list, returning the same kind."""
        out_dim, in_dim = self.shape[::-1] if transpose else self.shape
        in_layout, out_layout = (
            (self.out_layout, self.in_layout) if transpose else (self.in_layout, self.out_layout)
        )
        product = self._rmatmat if transpose else self._matmat
        if isinstance(x, (list, tuple)) and all(isinstance(t, Tensor) for t in x):
            if in_layout is None:
                raise TypeError(
                    f"{type(self).__name__} accepts no list of tensors: its input is a flat vector."
                )
            matrix, is_vector = in_layout.flatten_user_list(x, name="x")
            matrix = as_tensor(matrix, self.dtype, self.device, name="x")
            result = product(matrix)
            return result if out_layout is None else out_layout.unflatten_to_user_list(result, is_vector)
        is_numpy = isinstance(x, numpy.ndarray)
        if not (is_numpy or isinstance(x, Tensor)):
            raise TypeError(f"Cannot multiply {type(self).__name__} with {type(x).__name__}.")
        if x.ndim not in (1, 2) or x.shape[0] != in_dim:
            raise ValueError(
                f"x must have shape [{in_dim}] or [{in_dim}, k] to multiply an operator of shape "
                f"{self.shape}{' from the left' if transpose else ''}, got {list(x.shape)}."
            )
        matrix = as_tensor(x, self.dtype, self.device, name="x")
        result = product(matrix if x.ndim == 2 else matrix.unsqueeze(1))
        if result.shape != (out_dim, matrix.shape[1] if x.ndim == 2 else 1):
            raise RuntimeError(
                f"{type(self).__name__} returned a result of wrong shape {list(result.shape)}."
            )
        result = result if x.ndim == 2 else result.squeeze(1)
        return to_numpy(result) if is_numpy else result

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, (Tensor, numpy.ndarray, list, tuple)):
            return self._apply(other, transpose=False)
        if hasattr(other, "shape") and hasattr(other, "__matmul__"):
            return ProductLinearOperator([self, as_linear_operator(other)])
        return NotImplemented

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, (Tensor, numpy.ndarray)):
            if other.ndim not in (1, 2):
                raise ValueError(f"x @ A needs x of shape [m] or [k, m], got {list(other.shape)}.")
            if other.ndim == 1:
                return self._apply(other, transpose=True)
            return self._apply(other.T, transpose=True).T
        if hasattr(other, "shape") and hasattr(other, "__matmul__"):
            return ProductLinearOperator([as_linear_operator(other), self])
        return NotImplemented

    # ----------------------------------------------------------------- algebra
    @property
    def T(self) -> LinearOperator:
        """The transpose ``Aᵀ`` (lazy)."""
        return self if self.is_symmetric else TransposedLinearOperator(self)

    def adjoint(self) -> LinearOperator:
        """The adjoint, equal to the transpose for real operators."""
        return self.T

    def __add__(self, other: Any) -> LinearOperator:
        if isinstance(other, Number) or not hasattr(other, "shape"):
            return NotImplemented
        return SumLinearOperator([self, as_linear_operator(other)])

    def __radd__(self, other: Any) -> LinearOperator:
        if isinstance(other, Number) or not hasattr(other, "shape"):
            return NotImplemented
        return SumLinearOperator([as_linear_operator(other), self])

    def __sub__(self, other: Any) -> LinearOperator:
        if isinstance(other, Number) or not hasattr(other, "shape"):
            return NotImplemented
        return self + (-1.0) * as_linear_operator(other)

    def __rsub__(self, other: Any) -> LinearOperator:
        if isinstance(other, Number) or not hasattr(other, "shape"):
            return NotImplemented
        return as_linear_operator(other) + (-1.0) * self

    def __mul__(self, scalar: Any) -> LinearOperator:
        if isinstance(scalar, Tensor) and scalar.numel() == 1:
            scalar = scalar.item()
        if not isinstance(scalar, Number):
            return NotImplemented
        return ScaledLinearOperator(self, scalar)

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> LinearOperator:
        if isinstance(scalar, Tensor) and scalar.numel() == 1:
            scalar = scalar.item()
        if not isinstance(scalar, Number):
            return NotImplemented
        if scalar == 0:
            raise ZeroDivisionError("Cannot divide a linear operator by zero.")
        return ScaledLinearOperator(self, 1.0 / scalar)

    def __neg__(self) -> LinearOperator:
        return ScaledLinearOperator(self, -1.0)

    # ----------------------------------------------------------------- export
    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """Form the matrix by multiplying onto blocks of ``chunk_size`` identity columns.

        Args:
            chunk_size: Columns per product; smaller values use less memory.

        Returns:
            The ``[m, n]`` matrix on the operator's device.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
        dtype = self.dtype or torch.get_default_dtype()
        num_columns = self.shape[1]
        blocks = []
        for start in range(0, num_columns, chunk_size):
            stop = min(start + chunk_size, num_columns)
            identity_block = torch.zeros(num_columns, stop - start, dtype=dtype, device=self.device)
            identity_block[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
            blocks.append(self._matmat(identity_block))
        return (
            torch.cat(blocks, dim=1) if blocks else torch.zeros(self.shape, dtype=dtype, device=self.device)
        )

    def to_scipy(self) -> ScipyLinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` view (for ``eigsh``, ``cg``, ``lsmr``, ...)."""
        dtype = numpy_dtype_of(self.dtype or torch.get_default_dtype())
        return ScipyLinearOperator(
            shape=self.shape,
            dtype=dtype,
            matvec=lambda x: self._apply(numpy.asarray(x, dtype=dtype).ravel(), transpose=False),
            rmatvec=lambda x: self._apply(numpy.asarray(x, dtype=dtype).ravel(), transpose=True),
            matmat=lambda X: self._apply(numpy.asarray(X, dtype=dtype), transpose=False),
            rmatmat=lambda X: self._apply(numpy.asarray(X, dtype=dtype), transpose=True),
        )


# =============================================================================== wrappers
class DenseLinearOperator(LinearOperator):
    """A dense matrix (torch tensor or NumPy array) as a linear operator.

    Args:
        matrix: ``[m, n]`` matrix. A NumPy array is converted to a tensor once.
        symmetric: Declare the matrix symmetric (not checked).
        psd: Declare the matrix positive semi-definite (not checked).
    """

    def __init__(self, matrix: Tensor | numpy.ndarray, *, symmetric: bool = False, psd: bool = False):
        matrix = as_tensor(matrix, None, None, name="matrix")
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-dimensional, got shape {list(matrix.shape)}.")
        super().__init__(
            tuple(matrix.shape), dtype=matrix.dtype, device=matrix.device, symmetric=symmetric, psd=psd
        )
        self.matrix = matrix

    def _matmat(self, X: Tensor) -> Tensor:
        return self.matrix @ X

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self.matrix.T @ X

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        return self.matrix.clone()


class _ForeignLinearOperator(LinearOperator):
    """Anything with ``@`` and ``.shape`` (a SciPy ``LinearOperator``, say), used through NumPy."""

    def __init__(self, foreign: Any):
        dtype = getattr(foreign, "dtype", None)
        super().__init__(
            tuple(int(s) for s in foreign.shape), dtype=None if dtype is None else torch_dtype_of(dtype)
        )
        self.foreign = foreign

    def _product(self, operand: Any, X: Tensor) -> Tensor:
        result = numpy.asarray(operand @ to_numpy(X))
        return torch.as_tensor(result).to(dtype=X.dtype, device=X.device)

    def _matmat(self, X: Tensor) -> Tensor:
        return self._product(self.foreign, X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._product(self.foreign.T, X)


def as_linear_operator(operator: Any) -> LinearOperator:
    """Accept a curvkit operator, a torch tensor, a NumPy array or anything with ``@`` and ``.shape``.

    Raises:
        TypeError: If ``operator`` supports neither ``@`` nor ``.shape``.
    """
    if isinstance(operator, LinearOperator):
        return operator
    if isinstance(operator, (Tensor, numpy.ndarray)):
        return DenseLinearOperator(operator)
    if hasattr(operator, "shape") and hasattr(operator, "__matmul__") and len(operator.shape) == 2:
        return _ForeignLinearOperator(operator)
    raise TypeError(f"Expected a linear operator (with @ and a 2-d .shape), got {type(operator).__name__}.")


# =============================================================================== algebra
def _common(values: Sequence[Any], what: str) -> Any:
    """The one non-``None`` value among ``values`` (``None`` if all are), else a clear error."""
    concrete = {value for value in values if value is not None}
    if len(concrete) > 1:
        raise ValueError(f"Cannot combine operators with different {what}s: {sorted(map(str, concrete))}.")
    return concrete.pop() if concrete else None


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

    def _matmat(self, X: Tensor) -> Tensor:
        return sum(op.matmat(X) for op in self.operators)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return sum(op.rmatmat(X) for op in self.operators)


class ScaledLinearOperator(LinearOperator):
    """``c A`` (lazy)."""

    def __init__(self, operator: LinearOperator, scalar: Number):
        if isinstance(scalar, complex) or not numpy.isfinite(scalar):
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
    def T(self) -> LinearOperator:
        return self.operator
