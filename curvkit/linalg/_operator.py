"""Argument checks shared by the routines of :mod:`curvkit.linalg`."""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit._boundary import numpy_dtype_of, torch_dtype_of
from curvkit._precision import HALF_PRECISIONS
from curvkit.linear_operator import LinearOperator, _ForeignLinearOperator, as_linear_operator


def _product_dtype(A: Any) -> torch.dtype | None:
    """The precision of a foreign operator: that of its product with a zero block of torch's default dtype.

    The block is a NumPy array, as every product of a foreign operator is, of torch's default
    dtype, the precision such operators were computed in so far: so the probe cannot fail where
    products did not. NumPy and PyTorch promote to the wider type, so a float64 operator answers
    float64. ``None`` if the answer is not a real floating-point array.
    """
    default = torch.get_default_dtype()
    result = A @ numpy.zeros((int(A.shape[1]), 1), dtype=numpy_dtype_of(default))
    try:
        dtype = torch_dtype_of(result.dtype if isinstance(result, Tensor) else numpy.asarray(result).dtype)
    except TypeError:
        return None
    return torch.promote_types(dtype, default) if dtype.is_floating_point else None


class Float32View(LinearOperator):
    """A half-precision operator (float16, bfloat16) as the randomized routines see it: float32.

    Products run in the operator's precision, with inputs and results converted, so that the
    orthogonalizations, QR, Cholesky and eigendecompositions around them run in float32: PyTorch
    has no half-precision kernels for most of them, and half precision would lose the
    orthogonality they rely on.
    """

    def __init__(self, operator: LinearOperator):
        super().__init__(
            operator.shape,
            dtype=torch.float32,
            device=operator.device,
            symmetric=operator.is_symmetric,
            psd=operator.is_psd,
        )
        self.operator = operator

    @property
    def columns_per_product(self) -> int | None:
        return self.operator.columns_per_product

    def _matmat(self, X: Tensor) -> Tensor:
        return self.operator.matmat(X.to(self.operator.dtype)).to(torch.float32)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self.operator.rmatmat(X.to(self.operator.dtype)).to(torch.float32)


def linalg_operator(A: Any, name: str = "A", *, square: bool = True, typed: bool = False) -> LinearOperator:
    """Accept anything with ``@`` and ``.shape`` as a curvkit operator.

    Args:
        A: Tensor, NumPy array, curvkit or SciPy operator, or any object with ``@`` and ``.shape``.
        name: The argument's name, for error messages.
        square: Whether to require a square operator.
        typed: Whether the routine needs the operator's dtype (to draw random vectors in it).
            A foreign object without ``.dtype`` then costs one product, with a zero block, that
            reveals its precision (:func:`_product_dtype`); otherwise it would be computed in
            torch's default dtype (float32), losing the digits of a float64 operator. A
            half-precision operator is seen in float32 (:class:`Float32View`).

    Raises:
        ValueError: If ``square`` and the operator is not square.
        TypeError: If ``A`` is not an operator.
    """
    foreign = not isinstance(A, (LinearOperator, Tensor, numpy.ndarray))
    operator = as_linear_operator(A)
    if square and operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{name} must be a square operator, got shape {tuple(operator.shape)}.")
    if typed and foreign and operator.dtype is None:
        dtype = _product_dtype(A)
        operator = operator if dtype is None else _ForeignLinearOperator(A, dtype)
    return seen_in_float32(operator) if typed else operator


def seen_in_float32(operator: LinearOperator) -> LinearOperator:
    """A half-precision operator as a :class:`Float32View`, any other as it is."""
    return Float32View(operator) if operator.dtype in HALF_PRECISIONS else operator


def square_operator(A: Any, name: str = "A", *, typed: bool = False) -> LinearOperator:
    """:func:`linalg_operator` for a square operator.

    Raises:
        ValueError: If the operator is not square.
        TypeError: If ``A`` is not an operator.
    """
    return linalg_operator(A, name, square=True, typed=typed)


def working_dtype(A: LinearOperator) -> torch.dtype:
    """The dtype to compute in: the operator's, else torch's default.

    Operators without dtype are curvkit operators that adapt to their input (such as the
    identity), and foreign objects not passed through ``linalg_operator(..., typed=True)``.
    """
    return A.dtype if A.dtype is not None else torch.get_default_dtype()


def product_eps(A: LinearOperator) -> float:
    """The relative rounding of ``A``'s products, below which no residual can be resolved.

    That of its dtype, or of the half precision a float32 view multiplies in.
    """
    dtype = A.operator.dtype if isinstance(A, Float32View) else working_dtype(A)
    return torch.finfo(dtype).eps


def needs_transpose(routine: str, product: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    """``product(X)``, a product that involves ``Aᵀ``, with a clear error if ``A`` has no transpose.

    A foreign object without ``.T``, or a curvkit operator that implements neither ``_rmatmat``
    nor ``symmetric=True``, fails with an ``AttributeError`` or ``NotImplementedError`` deep in
    the product; this names the routine and the remedies.

    Raises:
        TypeError: If the operator cannot multiply with its transpose.
    """
    try:
        return product(X)
    except (AttributeError, NotImplementedError) as error:
        raise TypeError(
            f"{routine} needs products with the transpose Aᵀ, which the operator failed to provide "
            f"({type(error).__name__}: {error}). Give it a .T that supports @, or subclass "
            "curvkit.LinearOperator implementing _rmatmat (or declaring symmetric=True if A = Aᵀ)."
        ) from error


def finite_float(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number (a 0-d tensor or array too).

    Raises:
        ValueError: Otherwise (NaN, infinity, strings, booleans, complex numbers, ...).
    """
    if isinstance(value, (Tensor, numpy.ndarray)) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}.")
    return float(value)
