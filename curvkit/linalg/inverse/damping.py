"""Damping: ``A + δ I`` with a checked ``δ ≥ 0``."""

from __future__ import annotations

from typing import Any

from curvkit._boundary import nonnegative_float
from curvkit.linalg._operator import square_operator
from curvkit.linear_operator import LinearOperator
from curvkit.structured import IdentityLinearOperator


def damped(A: Any, damping: float) -> LinearOperator:
    r"""Return :math:`\mathbf{A} + \delta\mathbf{I}` (lazy), the usual way to make curvature invertible.

    The same as ``A + damping * IdentityLinearOperator(A.shape[0])``, which the operator
    algebra supports directly; this helper also refuses a negative or non-finite damping, which
    would make a PSD matrix indefinite. For PSD ``A`` the result is tagged PSD.

    Args:
        A: Square operator.
        damping: :math:`\delta \ge 0`.

    Returns:
        The damped operator.

    Raises:
        ValueError: If ``A`` is not square or ``damping`` is negative or not finite.

    Example:
        >>> import torch
        >>> damped(torch.zeros(2, 2), 0.5) @ torch.ones(2)
        tensor([0.5000, 0.5000])
    """
    A = square_operator(A)
    damping = nonnegative_float(damping, "damping")
    return A + damping * IdentityLinearOperator(A.shape[0])
