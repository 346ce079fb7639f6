"""PyTorch-native linear operators and their lazy algebra.

A :class:`LinearOperator` represents a matrix ``A ∈ ℝᵐˣⁿ`` by its action ``X ↦ A X`` on
``[n, k]`` tensors, without forming ``A``. A subclass implements one method, :meth:`_matmat`
(plus :meth:`_rmatmat`, the action of ``Aᵀ``, unless it is declared symmetric); everything else
— vectors, NumPy arrays, lists of tensors, autograd, dense and SciPy export — is derived here;
the lazy algebra (``A + B``, ``c A``, ``A B``, ``Aᵀ``) lives in :mod:`curvkit._algebra`.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import numpy
import torch
from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator
from torch import Tensor

from curvkit._boundary import as_integer, as_tensor, real_scalar, scipy_view, to_numpy, torch_dtype_of
from curvkit._column_blocks import PROBE_COLUMNS, ColumnBlocks
from curvkit._differentiable import AdjointBackward, may_carry_tangent
from curvkit._layout import TensorListLayout


def _with_index(device: torch.device) -> torch.device:
    """``device`` with its index filled in (``cuda`` → ``cuda:0`` if that is the current device).

    PyTorch places tensors on indexed devices and ``torch.device("cuda") != torch.device("cuda:0")``,
    so operators built with either must hold the same one to be combined.
    """
    if device.index is not None or device.type in ("cpu", "meta"):
        return device
    return torch.empty(0, device=device).device


class LinearOperator(ColumnBlocks):
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

    Products are differentiable in ``x``: a product is linear, so its backward pass is the
    adjoint product, ``∂⟨ḡ, A x⟩/∂x = Aᵀ ḡ`` (twice differentiable too), and its forward-mode
    derivative (``torch.autograd.forward_ad``, ``torch.func.jvp``) the product with the tangent.
    Operators that take derivatives themselves (the curvature operators) support
    ``torch.autograd``'s reverse mode only; forward mode and ``torch.func`` transforms are not
    supported there and mostly raise a PyTorch error (PyTorch nests neither inside their own
    derivatives). The operator
    itself is a constant: no gradient flows into the tensors (matrix, model parameters) it was
    built from.

    Operators are real (curvature matrices are): complex dtypes, inputs and scalars raise a
    ``TypeError``. Dimensions may be any integers (NumPy ones too). NumPy has no ``bfloat16``:
    NumPy results of a ``bfloat16`` operator are float32 arrays.

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
        if len(shape) != 2:
            raise ValueError(f"shape must be a pair of non-negative integers, got {shape!r}.")
        shape = (as_integer(shape[0], "shape[0]", minimum=0), as_integer(shape[1], "shape[1]", minimum=0))
        if (symmetric or psd) and shape[0] != shape[1]:
            raise ValueError(f"A symmetric operator must be square, got shape {shape}.")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or torch_dtype_of(dtype) != dtype):
            raise TypeError(f"dtype must be a real floating-point torch dtype or None, got {dtype!r}.")
        self._shape = shape
        self._dtype = dtype
        self._device = None if device is None else _with_index(torch.device(device))
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

    def _product(self, X: Tensor, transpose: bool) -> Tensor:
        """``A X`` (or ``Aᵀ X``) for an ``[n, k]`` tensor: the one path of every product.

        Computed on ``X`` detached, without recording anything (an operator that takes derivatives
        inside, a curvature operator, records nothing on ``X``), then, if ``X`` requires grad,
        attached to its graph as one node whose backward is the adjoint product.
        """
        expected = (self.shape[1] if transpose else self.shape[0], X.shape[1])
        if X.shape[1] == 0:  # nothing to multiply: no pass over data, no empty vmap
            return X.new_zeros(expected)
        multiply = self._rmatmat if transpose else self._matmat
        with torch.no_grad():
            unmeasured = self._memory_budget is not None and self._budget_columns is None
            num_blocks = self._num_blocks(X.shape[1])
            if unmeasured and X.shape[1] > PROBE_COLUMNS:
                result = self._probed(multiply, X.detach(), expected)
            elif num_blocks == 1:  # called here, not in a helper: warnings' stack levels count on it
                result = self._checked(multiply(X.detach()), expected)
            else:
                result = self._in_blocks(multiply, X.detach(), num_blocks, expected)
        if (X.requires_grad and torch.is_grad_enabled()) or may_carry_tangent(X):
            result = AdjointBackward.apply(self, transpose, X, result)
        return result

    def _apply(self, x: Any, transpose: bool) -> Any:
        """Multiply ``A`` (or ``Aᵀ``) onto a tensor, array or tensor list, returning the same kind."""
        in_dim = self.shape[0] if transpose else self.shape[1]
        in_layout, out_layout = (
            (self.out_layout, self.in_layout) if transpose else (self.in_layout, self.out_layout)
        )
        if isinstance(x, (list, tuple)) and all(isinstance(t, Tensor) for t in x):
            # a space without structure is a list of one flat vector, as in curvlinops
            out_dim = self.shape[1] if transpose else self.shape[0]
            in_layout = in_layout or TensorListLayout([(in_dim,)])
            out_layout = out_layout or TensorListLayout([(out_dim,)])
            matrix, is_vector = in_layout.flatten_user_list(x, name="x")
            result = self._product(as_tensor(matrix, self.dtype, self.device, name="x"), transpose)
            return out_layout.unflatten_to_user_list(result, is_vector)
        is_numpy = isinstance(x, numpy.ndarray)
        if not (is_numpy or isinstance(x, Tensor)):
            raise TypeError(f"Cannot multiply {type(self).__name__} with {type(x).__name__}.")
        if x.ndim not in (1, 2) or x.shape[0] != in_dim:
            raise ValueError(
                f"x must have shape [{in_dim}] or [{in_dim}, k] to multiply "
                f"{'the transpose of ' if transpose else ''}an operator of shape {self.shape}, "
                f"got {list(x.shape)}."
            )
        matrix = as_tensor(x, self.dtype, self.device, name="x")
        result = self._product(matrix if x.ndim == 2 else matrix.unsqueeze(1), transpose)
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
            if other.ndim not in (1, 2) or other.shape[-1] != self.shape[0]:
                raise ValueError(
                    f"x must have shape [{self.shape[0]}] or [k, {self.shape[0]}] to multiply an "
                    f"operator of shape {self.shape} from the left, got {list(other.shape)}."
                )
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
        """The adjoint, equal to the transpose (operators are real)."""
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
        scalar = real_scalar(scalar)
        return NotImplemented if scalar is None else ScaledLinearOperator(self, scalar)

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> LinearOperator:
        scalar = real_scalar(scalar)
        if scalar is None:
            return NotImplemented
        if scalar == 0:
            raise ValueError("Cannot divide a linear operator by zero.")
        return self * (1.0 / scalar)  # a subclass's own multiple (a diagonal stays diagonal)

    def __neg__(self) -> LinearOperator:
        return ScaledLinearOperator(self, -1.0)

    # ----------------------------------------------------------------- export
    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """Form the matrix by multiplying onto blocks of ``chunk_size`` identity columns.

        Adaptive operators (``dtype=None``) form it in torch's default dtype.

        Args:
            chunk_size: Columns per product; smaller values use less memory.

        Returns:
            The ``[m, n]`` matrix on the operator's device.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
        dtype = self.dtype or torch.get_default_dtype()
        num_columns = self.shape[1]
        # written block by block into the result: no second copy of the matrix for a concatenation
        dense = torch.zeros(self.shape, dtype=dtype, device=self.device)
        for start in range(0, num_columns, chunk_size):
            stop = min(start + chunk_size, num_columns)
            identity_block = torch.zeros(num_columns, stop - start, dtype=dtype, device=self.device)
            identity_block[start:stop].fill_diagonal_(1.0)
            dense[:, start:stop] = self._product(identity_block, transpose=False)
        return dense

    def to_scipy(self, dtype: Any = None) -> ScipyLinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` view (for ``eigsh``, ``cg``, ``lsmr``, ...).

        The view's ``dtype`` is ``dtype`` if given (a NumPy floating-point dtype, as curvlinops
        takes it), else the operator's: float64 for one that adapts (``dtype=None``), float32
        for ``bfloat16`` (NumPy has none). Products compute in the operator's dtype
        (an adaptive one: the view's) and return arrays of ``numpy.result_type(x.dtype, dtype)``,
        as a NumPy matrix of that dtype would, without the precision warning of ``@``: a
        float32 operator gives float64 products for float64 vectors (SciPy's solvers need
        that, see :func:`curvkit._boundary.scipy_view`).

        Example:
            >>> import numpy, torch
            >>> view = DenseLinearOperator(torch.eye(2)).to_scipy()
            >>> view.dtype, view.matvec(numpy.ones(2)).dtype
            (dtype('float32'), dtype('float64'))
        """
        return scipy_view(self.shape, self.dtype, self.device, self._apply, dtype)


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
        return self.matrix.detach().clone()


class _ForeignLinearOperator(LinearOperator):
    """Anything with ``@`` and ``.shape`` (a SciPy ``LinearOperator``, say), used through NumPy.

    An integer (or boolean) one computes in torch's default dtype, as integer arrays do.

    Args:
        foreign: The object.
        dtype: Its precision where it has no ``.dtype`` but the caller found it out; ``None``:
            its ``.dtype``, or none (adapt to the input).
    """

    def __init__(self, foreign: Any, dtype: torch.dtype | None = None):
        dtype = dtype if dtype is not None else getattr(foreign, "dtype", None)
        super().__init__(
            tuple(int(s) for s in foreign.shape), dtype=None if dtype is None else torch_dtype_of(dtype)
        )
        self.foreign = foreign

    def _through_numpy(self, operand: Any, X: Tensor) -> Tensor:
        result = as_tensor(numpy.asarray(operand @ to_numpy(X)), None, X.device, name="result")
        return result.to(X.dtype)

    def _matmat(self, X: Tensor) -> Tensor:
        return self._through_numpy(self.foreign, X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._through_numpy(self.foreign.T, X)


def as_linear_operator(operator: Any) -> LinearOperator:
    """Accept a curvkit operator, a torch tensor, a NumPy array or anything with ``@`` and ``.shape``.

    Raises:
        TypeError: If ``operator`` lacks ``@`` or a 2-d ``.shape``.
    """
    if isinstance(operator, LinearOperator):
        return operator
    if isinstance(operator, (Tensor, numpy.ndarray)):
        return DenseLinearOperator(operator)
    if hasattr(operator, "shape") and hasattr(operator, "__matmul__") and len(operator.shape) == 2:
        return _ForeignLinearOperator(operator)
    raise TypeError(f"Expected a linear operator (with @ and a 2-d .shape), got {type(operator).__name__}.")


# The lazy algebra subclasses the base above, which builds it in ``A + B``, ``c * A``, ``A @ B``
# and ``A.T``; importing it last keeps ``curvkit.linear_operator`` its public home.
from curvkit._algebra import (  # noqa: E402
    ProductLinearOperator,
    ScaledLinearOperator,
    SumLinearOperator,
    TransposedLinearOperator,
)
