"""Inverse-matrix products by a truncated Neumann series (Lorraine, Vicol & Duvenaud, 2020)."""

from __future__ import annotations

from numbers import Real
from typing import Any

from torch import Tensor

from curvkit.linalg._operator import positive_int, square_operator
from curvkit.linear_operator import LinearOperator

GROWTH_LIMIT = 1e6
"""A term this much larger than the first one counts as divergence (see ``check_nan``)."""


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
    :math:`\mathbf{A}`.

    Warning:
        The Neumann series can diverge, and converge slowly. ``check_nan`` turns divergence into an
        error; :class:`~curvkit.linalg.CGInverseLinearOperator` is more accurate per product.

    Args:
        A: Linear operator whose inverse is formed.
        num_terms: Number of terms :math:`K ≥ 0` in the truncated Neumann series.
        scale: Scale :math:`\alpha > 0` applied to the matrix in the Neumann iteration.
        check_nan: Whether to raise when the series diverges: when a term contains NaN or
            infinity, or grows :data:`GROWTH_LIMIT` times larger than the first term (for
            symmetric :math:`\mathbf{A}` with :math:`0 < \lambda < 2/\alpha`, terms never grow).

    Raises:
        ValueError: If ``A`` is not square or a hyperparameter is out of range.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
        >>> A_inv = NeumannInverseLinearOperator(A, num_terms=60)
        >>> A_inv @ torch.ones(3, dtype=torch.float64)
        tensor([2.0000, 1.0000, 0.6667], dtype=torch.float64)
    """

    def __init__(self, A: Any, num_terms: int = 100, scale: float = 1.0, check_nan: bool = True):
        self._A = square_operator(A)
        super().__init__(
            self._A.shape,
            dtype=self._A.dtype,
            device=self._A.device,
            symmetric=self._A.is_symmetric,
            in_layout=self._A.out_layout,
            out_layout=self._A.in_layout,
        )
        self.set_neumann_hyperparameters(num_terms, scale, check_nan)

    def set_neumann_hyperparameters(
        self, num_terms: int = 100, scale: float = 1.0, check_nan: bool = True
    ) -> None:
        """Store hyperparameters for the truncated Neumann series.

        Args:
            num_terms: Number of terms in the truncated Neumann series, ``≥ 0``.
            scale: Scale applied to the matrix in the Neumann iteration, positive and finite.
            check_nan: Whether to raise on divergence while applying the series.

        Raises:
            ValueError: If ``num_terms < 0`` or ``scale`` is not positive and finite.
        """
        self._num_terms = positive_int(num_terms, "num_terms", minimum=0)
        if isinstance(scale, bool) or not isinstance(scale, Real) or not 0 < scale < float("inf"):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
        self._scale = float(scale)
        self._check_nan = bool(check_nan)

    def _matmat(self, X: Tensor) -> Tensor:
        term, result = X, X.clone()
        first_norm = float(term.abs().max())
        for k in range(1, self._num_terms + 1):
            term = term - self._scale * self._A.matmat(term)
            result = result + term
            if self._check_nan:
                self._check_term(term, k, first_norm)
        return self._scale * result

    def _check_term(self, term: Tensor, k: int, first_norm: float) -> None:
        size = float(term.abs().max())
        if size != size or size == float("inf") or size > GROWTH_LIMIT * max(first_norm, 1e-300):
            raise RuntimeError(
                f"The Neumann series diverges (term {k} of num_terms={self._num_terms} is "
                f"{'not finite' if size != size or size == float('inf') else f'{size:.3g}'}): "
                f"it needs all eigenvalues of A in (0, 2 / scale) = (0, {2 / self._scale:g}). "
                "Decrease scale or use CGInverseLinearOperator."
            )
