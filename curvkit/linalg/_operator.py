"""Argument checks shared by the routines of :mod:`curvkit.linalg`."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import torch

from curvkit.linear_operator import LinearOperator, as_linear_operator


def square_operator(A: Any, name: str = "A") -> LinearOperator:
    """Accept anything with ``@`` and ``.shape`` that is square, as a curvkit operator.

    Raises:
        ValueError: If the operator is not square.
        TypeError: If ``A`` is not an operator.
    """
    operator = as_linear_operator(A)
    if operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{name} must be a square operator, got shape {tuple(operator.shape)}.")
    return operator


def working_dtype(A: LinearOperator) -> torch.dtype:
    """The dtype to compute in: the operator's, else torch's default (adaptive operators)."""
    return A.dtype if A.dtype is not None else torch.get_default_dtype()


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``≥ minimum``.

    Raises:
        ValueError: Otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return int(value)


def nonnegative_float(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number ``≥ 0``.

    Raises:
        ValueError: Otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    return float(value)
