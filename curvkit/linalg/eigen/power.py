"""Power iteration for the dominant eigenpair."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from curvkit._boundary import as_integer, nonnegative_float
from curvkit.linalg._dots import column_dots, norm
from curvkit.linalg._operator import product_eps, square_operator, working_dtype
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, as_generator, random_block
from curvkit.linear_operator import LinearOperator


def power_iteration(
    A: Any, *, tol: float = 1e-4, max_iterations: int = 1000, seed: Seed = None, progressbar: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Estimate the eigenvalue of largest magnitude and its eigenvector by power iteration.

    Iterates :math:`\mathbf{v} \leftarrow \mathbf{A}\mathbf{v} / \|\mathbf{A}\mathbf{v}\|` from a
    random unit vector and stops once the Rayleigh quotient :math:`\lambda = \mathbf{v}^\top
    \mathbf{A}\mathbf{v}` has a small residual,

    .. math::
        \|\mathbf{A}\mathbf{v} - \lambda\mathbf{v}\| \le \mathrm{tol} \cdot |\lambda|,

    which guarantees an eigenvalue within :math:`\mathrm{tol}\,|\lambda|` of :math:`\lambda`
    (for symmetric :math:`\mathbf{A}`). Convergence is linear with rate
    :math:`|\lambda_2 / \lambda_1|`; for PSD curvature (GGN, Fisher) the dominant eigenvalue is
    the largest one. :func:`~curvkit.linalg.lanczos_eigsh` converges faster for the same products.

    Args:
        A: Symmetric square operator.
        tol: Relative residual tolerance, ``≥ 0`` (at least the products' precision: for a
            half-precision operator, its rounding).
        max_iterations: Maximum number of products with ``A``, ``≥ 1``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The eigenvalue (0-dimensional tensor) and the unit eigenvector ``[dim]``.

    Raises:
        ValueError: If ``A`` is not square or an argument is out of range.
        RuntimeError: On NaN, or if it did not converge within ``max_iterations``.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, -5.0, 2.0], dtype=torch.float64))
        >>> value, vector = power_iteration(A, tol=1e-10, seed=0)
        >>> round(float(value), 6)
        -5.0
    """
    A = square_operator(A, typed=True)
    tol = max(nonnegative_float(tol, "tol"), product_eps(A))  # none finer than the products' rounding
    as_integer(max_iterations, "max_iterations", minimum=1)
    generator = as_generator(seed, A.device)
    v = random_block(A.shape[0], 1, "normal", generator, working_dtype(A), A.device)
    v = v / norm(v)
    with product_progress(A, progressbar, "power_iteration", max_iterations) as counted:
        return _iterate(counted, v, tol, max_iterations)


def _iterate(A: LinearOperator, v: Tensor, tol: float, max_iterations: int) -> tuple[Tensor, Tensor]:
    """Power iteration from the unit vector ``v`` (``[n, 1]``), on checked arguments."""
    residual = float("inf")
    for _ in range(max_iterations):
        w = A.matmat(v)
        value = column_dots(v, w)[0].to(w.dtype)  # sums in float64: exact to rounding for any dim
        residual = norm(w - value * v)
        if residual != residual:
            raise RuntimeError("power_iteration: the operator returned NaN.")
        if residual <= tol * abs(float(value)):
            return value, v.squeeze(1)
        length = norm(w)
        if length == 0.0:
            return value, v.squeeze(1)  # A v = 0: v is an eigenvector with eigenvalue 0
        v = w / length
    raise RuntimeError(
        f"power_iteration did not converge to tol={tol:g} within max_iterations={max_iterations} "
        f"(residual {residual:.3e})."
    )
