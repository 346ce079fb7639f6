"""Least-squares (pseudo-)inverse products by LSMR, batched over right-hand sides."""

from __future__ import annotations

from typing import Any
from warnings import warn

import torch
from torch import Tensor

from curvkit._boundary import as_integer, nonnegative_float
from curvkit.linalg._operator import needs_transpose
from curvkit.linalg._progress import product_progress
from curvkit.linear_operator import LinearOperator, as_linear_operator


def _rotation(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Givens rotation ``(c, s, r)`` with ``[c s; -s c] [a; b] = [r; 0]``, ``r ≥ 0`` (columnwise)."""
    r = torch.hypot(a, b)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    return torch.where(r > 0, a / safe, torch.zeros_like(r)), torch.where(r > 0, b / safe, 0 * r), r


def _normalize(X: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of ``X`` scaled to unit norm (zero columns stay zero) and their norms."""
    norms = torch.linalg.vector_norm(X, dim=0)
    return X / torch.where(norms > 0, norms, torch.ones_like(norms)), norms


def lsmr(
    A: LinearOperator,
    B: Tensor,
    *,
    atol: float = 1e-6,
    btol: float = 1e-6,
    conlim: float = 1e8,
    maxiter: int | None = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Minimum-norm least-squares solutions of :math:`\mathbf{A}\mathbf{X} \approx \mathbf{B}`, columnwise.

    LSMR applies MINRES to the normal equations :math:`\mathbf{A}^\top\mathbf{A}\mathbf{x} =
    \mathbf{A}^\top\mathbf{b}` through Golub-Kahan bidiagonalization, so
    :math:`\|\mathbf{A}^\top\mathbf{r}\|` decreases monotonically; started from zero it converges
    to the minimum-norm solution :math:`\mathbf{A}^+\mathbf{b}`, for any shape and rank of
    :math:`\mathbf{A}`. All columns iterate together (one product with :math:`\mathbf{A}` and one
    with :math:`\mathbf{A}^\top` per iteration); each column stops by SciPy's tests: a
    compatible system with :math:`\|\mathbf{r}\| \le \mathrm{btol}\|\mathbf{b}\| +
    \mathrm{atol}\|\mathbf{A}\|\|\mathbf{x}\|`, a least-squares solution with
    :math:`\|\mathbf{A}^\top\mathbf{r}\| \le \mathrm{atol}\|\mathbf{A}\|\|\mathbf{r}\|`, or a
    condition estimate above ``conlim``.

    Fong, D. C.-L., & Saunders, M. (2011). LSMR: An iterative algorithm for sparse
    least-squares problems. SIAM Journal on Scientific Computing.

    Args:
        A: Operator ``[m, n]`` (needs ``A.T``).
        B: Right-hand sides ``[m, k]``.
        atol: Stopping tolerance (see above).
        btol: Stopping tolerance (see above).
        conlim: Stop when the estimated condition number exceeds it.
        maxiter: Maximum iterations. Default: ``2 · min(m, n)``, at least 10.
        progressbar: Show one progress bar for the solve, counting products.

    Returns:
        The solutions ``[n, k]``; with a ``UserWarning`` if ``maxiter`` stopped a column.

    Raises:
        TypeError: If ``A`` provides no products with ``Aᵀ``.
        RuntimeError: If NaN or infinity appears.
    """
    maxiter = max(2 * min(A.shape), 10) if maxiter is None else maxiter
    with product_progress(A, progressbar, "lsmr") as A:
        return _iterate(A, B, atol, btol, conlim, maxiter)


def _iterate(A: LinearOperator, B: Tensor, atol: float, btol: float, conlim: float, maxiter: int) -> Tensor:
    """The iterations of :func:`lsmr`."""
    U, beta = _normalize(B.clone())
    normb = beta
    V, alpha = _normalize(needs_transpose("lsmr", A.rmatmat, U))
    X = torch.zeros(A.shape[1], B.shape[1], dtype=B.dtype, device=B.device)
    ones, zeros = torch.ones_like(beta), torch.zeros_like(beta)
    zetabar, alphabar, rho, rhobar, cbar, sbar = alpha * beta, alpha, ones, ones, ones, zeros
    Hv, Hbar = V.clone(), torch.zeros_like(V)
    betadd, betad, rhodold, tautildeold, thetatilde, zeta, d = beta, zeros, ones, zeros, zeros, zeros, zeros
    normA2 = alpha**2
    maxrbar, minrbar = zeros, torch.full_like(beta, torch.finfo(beta.dtype).max)
    done = alpha * beta == 0
    for itn in range(1, maxiter + 1):
        if bool(done.all()):
            return X
        U, beta = _normalize(needs_transpose("lsmr", A.matmat, V) - alpha * U)
        V, alpha = _normalize(needs_transpose("lsmr", A.rmatmat, U) - beta * V)
        rhoold = rho
        c, s, rho = _rotation(alphabar, beta)
        thetanew, alphabar = s * alpha, c * alpha
        rhobarold, zetaold = rhobar, zeta
        thetabar, rhotemp = sbar * rho, cbar * rho
        cbar, sbar, rhobar = _rotation(cbar * rho, thetanew)
        zeta, zetabar = cbar * zetabar, -sbar * zetabar
        live = ~done
        Hbar = Hv - (thetabar * rho / torch.where(live, rhoold * rhobarold, ones)) * Hbar
        X = X + torch.where(live, zeta / torch.where(live, rho * rhobar, ones), zeros) * Hbar
        Hv = V - (thetanew / torch.where(live, rho, ones)) * Hv
        # norm estimates: ||r|| through the rotations, ||A|| and cond(A) from the bidiagonal
        betahat, betadd = c * betadd, -s * betadd
        thetatildeold = thetatilde
        ctildeold, stildeold, rhotildeold = _rotation(rhodold, thetabar)
        thetatilde, rhodold = stildeold * rhobar, ctildeold * rhobar
        betad = -stildeold * betad + ctildeold * betahat
        tautildeold = (zetaold - thetatildeold * tautildeold) / torch.where(live, rhotildeold, ones)
        taud = (zeta - thetatilde * tautildeold) / torch.where(live, rhodold, ones)
        normr = torch.sqrt(d + (betad - taud) ** 2 + betadd**2)
        normA2 = normA2 + beta**2
        normA = torch.sqrt(normA2)
        normA2 = normA2 + alpha**2
        maxrbar = torch.maximum(maxrbar, rhobarold)
        minrbar = torch.minimum(minrbar, rhobarold) if itn > 1 else minrbar
        condA = torch.maximum(maxrbar, rhotemp) / torch.minimum(minrbar, rhotemp)
        if not bool(torch.isfinite(X).all()):
            raise RuntimeError("LSMR encountered NaN or infinity; check A for non-finite values.")
        normx = torch.linalg.vector_norm(X, dim=0)
        test1 = normr / torch.where(normb > 0, normb, ones)
        test2 = zetabar.abs() / torch.where(normA * normr > 0, normA * normr, ones)
        test2 = torch.where(normA * normr > 0, test2, torch.full_like(test2, float("inf")))
        rtol = btol + atol * normA * normx / torch.where(normb > 0, normb, ones)
        done = done | (test1 <= rtol) | (test2 <= atol) | (condA >= conlim) | (beta == 0) | (alpha == 0)
    if not bool(done.all()):
        warn(f"LSMR did not converge within maxiter={maxiter} iterations.", UserWarning, stacklevel=3)
    return X


class LSMRInverseLinearOperator(LinearOperator):
    r"""The pseudo-inverse :math:`\mathbf{A}^+` via LSMR, for non-square or indefinite operators.

    ``A_pinv @ B`` returns the minimum-norm least-squares solutions of
    :math:`\mathbf{A}\mathbf{X} \approx \mathbf{B}` (:func:`lsmr`), which for an invertible
    :math:`\mathbf{A}` is :math:`\mathbf{A}^{-1}\mathbf{B}`. Unlike CG it needs neither symmetry nor
    definiteness: use it for a Hessian with negative eigenvalues or a Jacobian. Its transpose is
    the pseudo-inverse of :math:`\mathbf{A}^\top`.

    Args:
        A: Operator of shape ``[m, n]``; the result has shape ``[n, m]``. LSMR multiplies with
            ``A`` and ``Aᵀ``: a foreign object needs a ``.T``, a curvkit operator ``_rmatmat``
            (or ``symmetric=True``); else products raise a ``TypeError`` that says so.
        **lsmr_hyperparameters: Set at once: those of :meth:`set_lsmr_hyperparameters` (SciPy's
            names, as curvlinops 3.0.1 takes them here).

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
        >>> x = LSMRInverseLinearOperator(A) @ torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
        >>> x.round(decimals=6).tolist()
        [1.0, 1.0]
    """

    def __init__(self, A: Any, **lsmr_hyperparameters: Any):
        self._A = as_linear_operator(A)
        super().__init__(
            self._A.shape[::-1],
            dtype=self._A.dtype,
            device=self._A.device,
            symmetric=self._A.is_symmetric,
            in_layout=self._A.out_layout,
            out_layout=self._A.in_layout,
        )
        self.set_lsmr_hyperparameters(**lsmr_hyperparameters)

    def set_lsmr_hyperparameters(
        self,
        atol: float = 1e-6,
        btol: float = 1e-6,
        conlim: float = 1e8,
        maxiter: int | None = None,
        progressbar: bool = False,
    ) -> None:
        """Store the stopping criteria of :func:`lsmr` (those of ``scipy.sparse.linalg.lsmr``).

        ``progressbar`` shows a progress bar per solve (per product with the pseudo-inverse),
        counting products with ``A`` and ``Aᵀ``.

        Raises:
            ValueError: If a tolerance is negative, ``conlim`` is not positive or ``maxiter < 1``.
        """
        self._atol = nonnegative_float(atol, "atol")
        self._btol = nonnegative_float(btol, "btol")
        if not nonnegative_float(conlim, "conlim") > 0:
            raise ValueError(f"conlim must be positive, got {conlim!r}.")
        self._conlim = float(conlim)
        self._maxiter = None if maxiter is None else as_integer(maxiter, "maxiter", minimum=1)
        self._progressbar = progressbar

    def _solve(self, A: LinearOperator, B: Tensor) -> Tensor:
        return lsmr(
            A,
            B,
            atol=self._atol,
            btol=self._btol,
            conlim=self._conlim,
            maxiter=self._maxiter,
            progressbar=self._progressbar,
        )

    def _matmat(self, X: Tensor) -> Tensor:
        return self._solve(self._A, X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._solve(self._A.T, X)
