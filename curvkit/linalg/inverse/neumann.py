"""Inverse-matrix products by a truncated Neumann series (Lorraine, Vicol & Duvenaud, 2020)."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any
from warnings import warn

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._operator import square_operator
from curvkit.linalg._progress import product_progress
from curvkit.linear_operator import LinearOperator

GROWTH_LIMIT = 1e6
"""A term this much larger than the first one counts as divergence for any ``A`` (see ``check_nan``)."""


class NeumannInverseLinearOperator(LinearOperator):
    r"""Class for inverse linear operators via truncated Neumann series.

    Motivated by Lorraine, J., Vicol, P., & Duvenaud, D. (2020). Optimizing millions of
    hyperparameters by implicit differentiation. AISTATS.

    The Neumann series for an invertible linear operator :math:`\mathbf{A}` is

    .. math::
        \mathbf{A}^{-1} = \sum_{k=0}^{\infty} \left(\mathbf{I} - \mathbf{A} \right)^k\,,

    convergent if all eigenvalues satisfy :math:`0 < \lambda(\mathbf{A}) < 2`. Rescaling the
    matrix by ``scale`` (:math:`\alpha`),

    .. math::
        \mathbf{A}^{-1} = \alpha (\alpha \mathbf{A})^{-1}
        = \alpha \sum_{k=0}^{\infty} \left(\mathbf{I} - \alpha \mathbf{A} \right)^k\,,

    which converges if :math:`0 < \lambda(\mathbf{A}) < \frac{2}{\alpha}`. The series is
    truncated after ``num_terms`` (:math:`K`) products,

    .. math::
        \mathbf{A}^{-1} \approx \alpha \sum_{k=0}^{K} \left(\mathbf{I} - \alpha \mathbf{A} \right)^k\,,

    with error :math:`\max_i |1 - \alpha\lambda_i|^{K+1} / \lambda_i` for symmetric
    :math:`\mathbf{A}`. The transpose is the same series with :math:`\mathbf{A}^\top`,
    :math:`(\mathbf{A}^{-1})^\top = (\mathbf{A}^\top)^{-1} \approx \alpha \sum_{k=0}^{K}
    (\mathbf{I} - \alpha\mathbf{A}^\top)^k`.

    Divergence: the terms :math:`\mathbf{t}_k = (\mathbf{I} - \alpha\mathbf{A})^k \mathbf{x}`
    of a symmetric :math:`\mathbf{A}` with all eigenvalues in :math:`(0, 2/\alpha)` satisfy
    :math:`\|\mathbf{t}_{k+1}\| \le \|\mathbf{I} - \alpha\mathbf{A}\|_2 \|\mathbf{t}_k\|
    < \|\mathbf{t}_k\|`, so a term that grows proves an eigenvalue outside that interval, and the
    series diverges. For a non-symmetric :math:`\mathbf{A}` terms may grow for a while even when
    the series converges (non-normal transients), so growth is only a warning there.

    Warning:
        The Neumann series can diverge, and converge slowly. ``check_nan`` turns divergence into an
        error; :class:`~curvkit.linalg.CGInverseLinearOperator` is more accurate per product.

    Args:
        A: Linear operator whose inverse is formed.
        num_terms: Number of terms :math:`K ≥ 0` in the truncated Neumann series.
        scale: Scale :math:`\alpha > 0` applied to the matrix in the Neumann iteration.
        check_nan: Whether to check each term for divergence (per column): raise a
            ``RuntimeError`` when it contains NaN or infinity, or is :data:`GROWTH_LIMIT` times
            larger than the first term, or, for ``A`` tagged symmetric (``A.is_symmetric``), when
            it is larger than the previous term (up to a relative :math:`\sqrt{\epsilon}` for
            rounding); for other ``A``, warn (``UserWarning``) if the last term is larger than the
            first. A plain tensor is not tagged symmetric: wrap it in
            ``DenseLinearOperator(A, symmetric=True)`` for the strict check.

    Raises:
        ValueError: If ``A`` is not square or a hyperparameter is out of range.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
        >>> A_inv = NeumannInverseLinearOperator(A, num_terms=60)
        >>> A_inv @ torch.ones(3, dtype=torch.float64)
        tensor([2.0000, 1.0000, 0.6667], dtype=torch.float64)
    """

    def __init__(
        self,
        A: Any,
        num_terms: int = 100,
        scale: float = 1.0,
        check_nan: bool = True,
        *,
        progressbar: bool = False,
    ):
        self._A = square_operator(A)
        super().__init__(
            self._A.shape,
            dtype=self._A.dtype,
            device=self._A.device,
            symmetric=self._A.is_symmetric,
            in_layout=self._A.out_layout,
            out_layout=self._A.in_layout,
        )
        self.set_neumann_hyperparameters(num_terms, scale, check_nan, progressbar=progressbar)

    def set_neumann_hyperparameters(
        self, num_terms: int = 100, scale: float = 1.0, check_nan: bool = True, *, progressbar: bool = False
    ) -> None:
        """Store hyperparameters for the truncated Neumann series.

        Args:
            num_terms: Number of terms in the truncated Neumann series, ``≥ 0``.
            scale: Scale applied to the matrix in the Neumann iteration, positive and finite.
            check_nan: Whether to raise on divergence while applying the series.
            progressbar: Show a progress bar per product with the inverse, counting the
                ``num_terms`` products with ``A`` per column.

        Raises:
            ValueError: If ``num_terms < 0`` or ``scale`` is not positive and finite.
        """
        self._num_terms = as_integer(num_terms, "num_terms", minimum=0)
        if isinstance(scale, bool) or not isinstance(scale, Real) or not 0 < scale < float("inf"):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
        self._scale = float(scale)
        self._check_nan = bool(check_nan)
        self._progressbar = progressbar

    def _matmat(self, X: Tensor) -> Tensor:
        with product_progress(self._A, self._progressbar, "neumann", self._num_terms * X.shape[1]) as A:
            return self._series(A.matmat, X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        with product_progress(self._A, self._progressbar, "neumann", self._num_terms * X.shape[1]) as A:
            return self._series(A.rmatmat, X)

    def _series(self, product: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
        """``α Σ_{k=0}^{K} (I - α M)^k X`` for the product ``X ↦ M X`` (``M`` is ``A`` or ``Aᵀ``)."""
        term, result = X, X.clone()
        first = last = torch.linalg.vector_norm(X, dim=0)  # per column: each is its own series
        for k in range(1, self._num_terms + 1):
            term = term - self._scale * product(term)
            result = result + term
            if self._check_nan:
                last = self._check_term(torch.linalg.vector_norm(term, dim=0), k, first, last)
        if self._check_nan and not self._A.is_symmetric and bool((last > first).any()):
            self._warn_growth(float((last / first.clamp_min(torch.finfo(first.dtype).tiny)).max()))
        return self._scale * result

    def _check_term(self, norms: Tensor, k: int, first: Tensor, previous: Tensor) -> Tensor:
        """Raise if term ``k`` (column norms ``norms``) shows divergence; return ``norms``."""
        if not bool(torch.isfinite(norms).all()):
            self._diverged(k, "is not finite")
        if bool((norms > GROWTH_LIMIT * first).any()):
            self._diverged(k, f"is {float((norms / first.clamp_min(1e-300)).max()):.3g} times the first")
        rounding = 1 + torch.finfo(norms.dtype).eps ** 0.5
        if self._A.is_symmetric and bool((norms > rounding * previous).any()):
            self._diverged(
                k, "is larger than the one before, impossible for symmetric A if ‖I - scale A‖ < 1"
            )
        return norms

    def _diverged(self, k: int, what: str) -> None:
        raise RuntimeError(
            f"The Neumann series diverges (term {k} of num_terms={self._num_terms} {what}): "
            f"it needs all eigenvalues of A in (0, 2 / scale) = (0, {2 / self._scale:g}). "
            "Decrease scale or use CGInverseLinearOperator."
        )

    def _warn_growth(self, growth: float) -> None:
        warn(
            f"The last term of the Neumann series (num_terms={self._num_terms}) is {growth:.3g} times "
            "larger than the first: the series seems to diverge (for a symmetric A it does: an "
            f"eigenvalue lies outside (0, 2 / scale) = (0, {2 / self._scale:g})). Decrease scale or use "
            "CGInverseLinearOperator; declare A symmetric to turn this into an error.",
            UserWarning,
            stacklevel=7,  # the caller of A_inv @ x (__matmul__, _apply, _product, _matmat, _series)
        )
