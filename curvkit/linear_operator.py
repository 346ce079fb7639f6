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
from curvkit._differentiable import AdjointBackward, may_carry_tangent
from curvkit._layout import TensorListLayout
from curvkit._memory import PeakMemory, measurable
from curvkit._pages import empty_block

PROBE_COLUMNS = 2
"""Columns of the product that measures what a column costs under a :attr:`LinearOperator.memory_budget`."""


def _with_index(device: torch.device) -> torch.device:
    """``device`` with its index filled in (``cuda`` → ``cuda:0`` if that is the current device).

    PyTorch places tensors on indexed devices and ``torch.device("cuda") != torch.device("cuda:0")``,
    so operators built with either must hold the same one to be combined.
    """
    if device.index is not None or device.type in ("cpu", "meta"):
        return device
    return torch.empty(0, device=device).device


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
    _max_columns: int | None = None
    _memory_budget: int | None = None
    _budget_columns: int | None = None  # the block width the budget allows, found by the probe

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

    @property
    def max_columns(self) -> int | None:
        """Most columns multiplied at once (``None``: no limit); wider inputs go in balanced blocks.

        ``k`` columns go in ``⌈k / max_columns⌉`` blocks of nearly equal width (7 columns with
        ``max_columns=3``: 3, 2, 2), so no lone column takes a single-vector path of its own.

        A curvature product with ``k`` columns holds ``k`` copies of the model's activations
        (``vmap`` over the columns), so its memory grows with ``k``: a CNN of 97,290 parameters on
        64 images of 3×32×32 takes 2.9 GiB of extra memory for a 64-column Hessian product, and
        0.8 GiB in blocks of 16 (``benchmarks/column_blocks.py``). Each block costs one more
        primal pass over the data; on that CNN, blocks of 8 to 32 took 0.92–0.96 times as long as
        the whole product for the Hessian, 1.0–1.1 times for the GGN, with glibc's mapping of
        large allocations off (``MALLOC_MMAP_THRESHOLD_`` raised). With glibc's defaults, every
        tensor over 32 MiB faults its pages in afresh, and blocks save time as well.
        Every block is the same matrix: the Monte-Carlo Fisher re-seeds its draw per product.
        It acts where it is set: on a curvature operator inside ``H + damping * I``, set it on
        ``H``; ``A.T.max_columns`` is ``A``'s.

        Raises:
            ValueError: If set to anything but a positive integer or ``None``.
        """
        return self._max_columns

    @max_columns.setter
    def max_columns(self, value: int | None) -> None:
        self._max_columns = None if value is None else as_integer(value, "max_columns", minimum=1)

    @property
    def memory_budget(self) -> int | None:
        """Bytes a product may use beyond its input and result (``None``: no budget).

        With a budget, the first product with more than :data:`PROBE_COLUMNS` columns multiplies
        its first :data:`PROBE_COLUMNS` columns alone and measures the peak memory they add
        (:mod:`curvkit._memory`: the allocator's peak on CUDA, the resident set's high-water
        mark on Linux CPUs); that peak, over the probe's width, is taken as the cost of a column
        (fixed costs included, so it errs on the safe side), and this and every later product
        go in blocks of at most ``budget // cost`` columns (at least one). Wide products —
        ``to_dense()``, the sketches, block Lanczos, the estimators' blocks of random vectors
        (:attr:`columns_per_product`) — then stay within the budget. :attr:`max_columns`, if
        smaller, still applies. Setting the budget again measures again.

        Raises:
            ValueError: If set to anything but a positive integer or ``None``.
            RuntimeError: On a product with a budget, where peak memory cannot be measured.
        """
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | None) -> None:
        self._memory_budget = None if value is None else as_integer(value, "memory_budget", minimum=1)
        self._budget_columns = None

    def _column_limit(self) -> int | None:
        """The smaller of :attr:`max_columns` and the budget's block width (``None``: no limit)."""
        limits = [limit for limit in (self._max_columns, self._budget_columns) if limit is not None]
        return min(limits) if limits else None

    @property
    def columns_per_product(self) -> int | None:
        """Most columns that a product with this operator, or with one it is built from, takes at once.

        The operator's :attr:`max_columns` (or the block width its :attr:`memory_budget` allows,
        once measured, if smaller), or, for an operator built from others (sums,
        scalings, products, transposes), the smallest limit among it and them; ``None`` if
        nothing is limited. The randomized routines of :mod:`curvkit.linalg` draw and multiply
        their random vectors in blocks of this width, so that ``A.max_columns`` bounds their
        memory too.
        """
        return self._column_limit()

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

    def _probed(self, multiply: Any, X: Tensor, expected: tuple[int, int]) -> Tensor:
        """The product, its first :data:`PROBE_COLUMNS` columns measured to set the budget's width.

        Raises:
            RuntimeError: If peak memory cannot be measured on the operator's device.
        """
        device = X.device
        if not measurable(device):
            raise RuntimeError(
                f"memory_budget is set, but peak memory cannot be measured on {device} here (CUDA, "
                "or a CPU under Linux). Set max_columns instead."
            )
        with PeakMemory(device) as peak:
            first = self._checked(multiply(X[:, :PROBE_COLUMNS]), (expected[0], PROBE_COLUMNS))
        per_column = max(peak.bytes / PROBE_COLUMNS, 1.0)
        self._budget_columns = self._agreed_width(max(int(self._memory_budget // per_column), 1))
        rest, expected_rest = X[:, PROBE_COLUMNS:], (expected[0], expected[1] - PROBE_COLUMNS)
        num_blocks = self._num_blocks(rest.shape[1])
        if num_blocks == 1:
            return torch.cat([first, self._checked(multiply(rest), expected_rest)], dim=1)
        return torch.cat([first, self._in_blocks(multiply, rest, num_blocks, expected_rest)], dim=1)

    def _agreed_width(self, width: int) -> int:
        """The budget's block width; data-parallel operators take the smallest over their ranks."""
        return width

    def _num_blocks(self, num_columns: int) -> int:
        """``⌈k / limit⌉`` blocks for ``k`` columns, with :meth:`_column_limit` (1 without one)."""
        limit = self._column_limit()
        return 1 if limit is None else -(-num_columns // limit)

    def _in_blocks(self, multiply: Any, X: Tensor, num_blocks: int, expected: tuple[int, int]) -> Tensor:
        """``multiply`` on ``num_blocks`` balanced blocks of ``X``'s columns (no lone remainder column).

        The columns are handled as the rows of ``Xᵀ``: ``X`` is transposed once (unless it is
        already stored column by column), each block is a view of its rows, and each block's
        result is written into the rows of the result, which is returned transposed. Splitting a
        row-major ``X`` into contiguous column blocks and concatenating their results instead
        costs two strided copies per block.
        """
        columns = X if X.stride(0) == 1 else X.T.contiguous().T
        result_rows = empty_block((expected[1], expected[0]), X.dtype, X.device)
        start = 0
        for block in columns.tensor_split(num_blocks, dim=1):
            width = block.shape[1]
            result_rows[start : start + width] = self._checked(multiply(block), (expected[0], width)).T
            start += width
        return result_rows.T

    def _checked(self, result: Tensor, expected: tuple[int, int]) -> Tensor:
        """``result`` if it has the ``expected`` shape.

        Raises:
            RuntimeError: Naming the subclass, if it returned another shape.
        """
        if result.shape != expected:
            raise RuntimeError(
                f"{type(self).__name__} returned a result of shape {list(result.shape)}, "
                f"expected {list(expected)}."
            )
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
        return ScaledLinearOperator(self, 1.0 / scalar)

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

    def to_scipy(self) -> ScipyLinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` view (for ``eigsh``, ``cg``, ``lsmr``, ...).

        The view's ``dtype`` is the operator's: float64 for one that adapts (``dtype=None``),
        float32 for ``bfloat16`` (NumPy has none). Products compute in the operator's dtype
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
        return scipy_view(self.shape, self.dtype, self.device, self._apply)


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
