"""Inverse-matrix products by the conjugate gradient method, batched over right-hand sides."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any
from warnings import warn

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_integer, as_tensor, nonnegative_float
from curvkit.linalg._dots import column_dots, norms
from curvkit.linalg._operator import square_operator
from curvkit.linalg._progress import product_progress
from curvkit.linear_operator import DenseLinearOperator, LinearOperator, as_linear_operator


def conjugate_gradient(
    A: LinearOperator,
    B: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: LinearOperator | None = None,
    callback: Callable[[Tensor], Any] | None = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Solve :math:`\mathbf{A}\mathbf{X} = \mathbf{B}` column by column with (preconditioned) CG.

    All columns iterate together, each with its own step sizes
    :math:`\alpha_j = \mathbf{r}_j^\top\mathbf{z}_j / \mathbf{p}_j^\top\mathbf{A}\mathbf{p}_j` and
    :math:`\beta_j`, and one product of :math:`\mathbf{A}` with the block of search directions of
    the columns that have not converged yet per iteration. Column :math:`j` has converged when
    :math:`\|\mathbf{r}_j\| \le \max(\mathrm{tol} \cdot \|\mathbf{b}_j\|, \mathrm{atol})` (SciPy's rule).

    Hestenes, M. R., & Stiefel, E. (1952). Methods of conjugate gradients for solving linear
    systems. Journal of Research of the National Bureau of Standards.

    Args:
        A: Symmetric positive definite operator ``[n, n]``.
        B: Right-hand sides ``[n, k]`` (dtype and device of ``A``).
        x0: Initial guess ``[n]`` (the same for every column), ``[n, 1]`` or ``[n, k]``.
            Default: zeros.
        tol: Relative tolerance.
        atol: Absolute tolerance.
        maxiter: Maximum number of iterations. Default: ``10 · n``.
        M: Preconditioner, an operator approximating :math:`\mathbf{A}^{-1}` (SPD).
        callback: Called with the current iterate ``[n, k]`` after each iteration.
        progressbar: Show one progress bar for the solve, counting products.

    Returns:
        The solutions ``[n, k]``. Columns that did not converge in ``maxiter`` iterations are
        returned as they are, with a ``UserWarning``.

    Raises:
        RuntimeError: If NaN or infinity appears, or a direction of non-positive curvature
            :math:`\mathbf{p}^\top\mathbf{A}\mathbf{p} \le 0` shows that ``A`` is not positive definite.
    """
    maxiter = 10 * A.shape[0] if maxiter is None else maxiter
    with product_progress(A, progressbar, "conjugate_gradient") as A:
        return _iterate(A, B, x0, tol, atol, maxiter, M, callback)


def _iterate(
    A: LinearOperator,
    B: Tensor,
    x0: Tensor | None,
    tol: float,
    atol: float,
    maxiter: int,
    M: LinearOperator | None,
    callback: Callable[[Tensor], Any] | None,
) -> Tensor:
    """The iterations of :func:`conjugate_gradient`."""
    if x0 is not None and x0.ndim == 1:
        x0 = x0.unsqueeze(1)  # [n]: the same guess for every column
    X = torch.zeros_like(B) if x0 is None else x0.expand_as(B).clone()
    R = B - A.matmat(X) if x0 is not None else B.clone()
    threshold = torch.clamp(tol * norms(B, 0), min=atol)
    Z = R if M is None else M.matmat(R)
    P = Z.clone()
    rz = column_dots(R, Z)  # inner products and norms summed in float64 (curvkit.linalg._dots)
    for _ in range(maxiter):
        active = torch.nonzero(norms(R, 0) > threshold).squeeze(1)
        if active.numel() == 0:
            return X
        # while every column iterates, views: gathering and scattering columns cost more than A's product
        active = slice(None) if active.numel() == B.shape[1] else active
        P_active = P[:, active]
        AP = A.matmat(P_active)
        curvature = column_dots(P_active, AP)
        if not bool(torch.isfinite(curvature).all()):
            raise RuntimeError("CG encountered NaN or infinity; check A (and M) for non-finite values.")
        if bool((curvature <= 0).any()):
            raise RuntimeError(
                "CG found a direction p with pᵀAp ≤ 0: A is not positive definite. "
                "Add damping (A + damping · I with damping > 0) or use LSMRInverseLinearOperator."
            )
        alpha = (rz[active] / curvature).to(X.dtype)
        X[:, active] += alpha * P_active
        R[:, active] -= alpha * AP
        Z_active = R[:, active] if M is None else M.matmat(R[:, active])
        rz_new = column_dots(R[:, active], Z_active)
        P[:, active] = Z_active + (rz_new / rz[active]).to(X.dtype) * P_active
        rz[active] = rz_new
        if callback is not None:
            callback(X)
    residual = norms(R, 0)
    if bool((residual > threshold).any()):
        warn(
            f"CG did not converge within maxiter={maxiter} iterations: the largest residual norm "
            f"relative to its tolerance is {float((residual / threshold).max()):.3g}.",
            UserWarning,
            stacklevel=3,
        )
    return X


class CGInverseLinearOperator(LinearOperator):
    r"""Class for inverse linear operators via conjugate gradients.

    Represents :math:`\mathbf{A}^{-1}` for a symmetric positive definite :math:`\mathbf{A}`;
    ``A_inv @ B`` solves :math:`\mathbf{A}\mathbf{X} = \mathbf{B}` with :func:`conjugate_gradient`
    in PyTorch, on the operator's device, batched over the columns of ``B``. A positive
    semi-definite curvature matrix is made definite by damping, e.g.
    ``CGInverseLinearOperator(damped(GGN, 1e-3))`` (see :func:`~curvkit.linalg.damped`).

    Args:
        A: Linear operator whose inverse is formed. Must be symmetric and positive definite.
        **cg_hyperparameters: Set at once: those of :meth:`set_cg_hyperparameters`, or the names
            curvlinops 3.0.1 hands on to GPyTorch's ``linear_cg``: ``max_iter`` (``maxiter``),
            ``tolerance`` (``tol``; met by every column here, where GPyTorch stops once the
            columns' relative residuals average below it, after at least 10 iterations),
            ``initial_guess`` (``x0``). Its guards against division by zero (``eps``,
            ``stop_updating_after``) and ``max_tridiag_iter`` (a tridiagonalization for
            log-determinants, which no solve uses) are checked and have no counterpart: a column
            stops when it meets the tolerance, and a direction of non-positive curvature raises.

    Raises:
        ValueError: If ``A`` is not square, or a hyperparameter is invalid.
        TypeError: For another keyword (GPyTorch's ``preconditioner`` closure and
            ``n_tridiag`` included: pass ``M`` for a preconditioner).

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> A_inv = CGInverseLinearOperator(A)
        >>> A_inv.set_cg_hyperparameters(tol=1e-10)
        >>> torch.allclose(A @ (A_inv @ torch.tensor([1.0, 2.0], dtype=torch.float64)),
        ...                torch.tensor([1.0, 2.0], dtype=torch.float64))
        True
    """

    def __init__(self, A: Any, **cg_hyperparameters: Any):
        self._A = square_operator(A)
        super().__init__(
            self._A.shape,
            dtype=self._A.dtype,
            device=self._A.device,
            psd=True,
            in_layout=self._A.out_layout,
            out_layout=self._A.in_layout,
        )
        self.set_cg_hyperparameters(**_scipy_names(cg_hyperparameters))

    def set_cg_hyperparameters(
        self,
        x0: Tensor | numpy.ndarray | None = None,
        tol: float = 1e-5,
        maxiter: int | None = None,
        M: Any = None,
        callback: Callable[[Tensor], Any] | None = None,
        atol: float | None = None,
        progressbar: bool = False,
    ) -> None:
        """Store hyperparameters for CG (the arguments of ``scipy.sparse.linalg.cg``).

        Args:
            x0: Initial guess, ``[n]`` or ``[n, k]`` (tensor or NumPy array). Default: zeros.
            tol: Relative tolerance on the residual norm, ``≥ 0``.
            maxiter: Maximum number of iterations, ``≥ 1``. Default: ``10 · n``.
            M: Preconditioner approximating ``A⁻¹`` (anything with ``@`` and ``.shape``).
            callback: Called with the current iterate (a ``[n, k]`` tensor) after each iteration.
            atol: Absolute tolerance, ``≥ 0``. Default: ``0``.
            progressbar: Show a progress bar per solve (per product with the inverse),
                counting products with ``A``.

        Raises:
            ValueError: If a tolerance is negative, ``maxiter < 1``, ``x0`` / ``M`` has a wrong
                shape, ``M`` is an operator on another device or of another dtype, or
                ``callback`` is not callable.
        """
        n = self.shape[0]
        self._tol = nonnegative_float(tol, "tol")
        self._atol = 0.0 if atol is None else nonnegative_float(atol, "atol")
        self._maxiter = None if maxiter is None else as_integer(maxiter, "maxiter", minimum=1)
        if x0 is not None:
            x0 = as_tensor(x0, self._A.dtype, self._A.device, name="x0")
            if x0.ndim not in (1, 2) or x0.shape[0] != n:
                raise ValueError(f"x0 must have shape [{n}] or [{n}, k], got {list(x0.shape)}.")
            x0 = x0.unsqueeze(1) if x0.ndim == 1 else x0
        self._x0 = x0
        if M is not None:
            M = _preconditioner(M, self._A)
            if M.shape != (n, n):
                raise ValueError(f"M must have shape {(n, n)} like A, got {tuple(M.shape)}.")
        self._M = M
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be callable or None, got {type(callback).__name__}.")
        self._callback = callback
        self._progressbar = progressbar

    def _matmat(self, X: Tensor) -> Tensor:
        x0 = self._x0
        if x0 is not None and x0.shape[1] not in (1, X.shape[1]):
            raise ValueError(f"x0 has {x0.shape[1]} columns, but the right-hand side has {X.shape[1]}.")
        return conjugate_gradient(
            self._A,
            X,
            x0=x0,
            tol=self._tol,
            atol=self._atol,
            maxiter=self._maxiter,
            M=self._M,
            callback=self._callback,
            progressbar=self._progressbar,
        )


GPYTORCH_NAMES = {"max_iter": "maxiter", "tolerance": "tol", "initial_guess": "x0"}
"""GPyTorch ``linear_cg``'s names (curvlinops 3.0.1's keywords) of ``set_cg_hyperparameters``' arguments."""

GPYTORCH_GUARDS = ("eps", "stop_updating_after", "max_tridiag_iter")
"""``linear_cg``'s keywords without a counterpart here (:class:`CGInverseLinearOperator`)."""


def _scipy_names(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """:class:`CGInverseLinearOperator`'s keywords by the names of ``set_cg_hyperparameters``.

    Raises:
        ValueError: If a guard is not a non-negative number.
        TypeError: If a keyword is neither SciPy's nor GPyTorch's, or both name one argument.
    """
    renamed = {}
    for name, value in hyperparameters.items():
        if name in GPYTORCH_GUARDS:
            nonnegative_float(value, name)
            continue
        scipy_name = GPYTORCH_NAMES.get(name, name)
        if scipy_name in renamed:
            raise TypeError(f"CGInverseLinearOperator got {scipy_name!r} twice (also as {name!r}).")
        renamed[scipy_name] = value
    accepted = set(inspect.signature(CGInverseLinearOperator.set_cg_hyperparameters).parameters) - {"self"}
    unknown = sorted(set(renamed) - accepted)
    if unknown:
        raise TypeError(
            f"CGInverseLinearOperator got unexpected keyword argument(s) {unknown}; it takes those of "
            f"set_cg_hyperparameters ({', '.join(sorted(accepted))}) or GPyTorch's "
            f"{', '.join([*GPYTORCH_NAMES, *GPYTORCH_GUARDS])} (for a preconditioner, pass M)."
        )
    return renamed


def _preconditioner(M: Any, A: LinearOperator) -> LinearOperator:
    """``M`` as an operator on ``A``'s device and in its dtype (tensors and arrays are moved once).

    Raises:
        ValueError: If ``M`` is a curvkit operator on another device or of another dtype.
    """
    if isinstance(M, (Tensor, numpy.ndarray)):
        return DenseLinearOperator(as_tensor(M, A.dtype, A.device, name="M"))
    M = as_linear_operator(M)
    for attribute in ("device", "dtype"):
        mine, theirs = getattr(M, attribute), getattr(A, attribute)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"M must have A's {attribute} ({theirs}), got {mine}.")
    return M
