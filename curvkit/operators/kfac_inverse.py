"""The inverse of damped KFAC or EKFAC, as curvlinops' ``KFACInverseLinearOperator``."""

from __future__ import annotations

from curvkit.linear_operator import LinearOperator
from curvkit.operators._closed_forms import HeldClosedForms
from curvkit.operators.kfac import KFACLinearOperator
from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator


class KFACInverseLinearOperator(HeldClosedForms, LinearOperator):
    r"""The inverse of damped KFAC (or EKFAC), block by block; the same as ``kfac.inverse(...)``.

    See :meth:`curvkit.structured.KroneckerFactoredLinearOperator.inverse` (and
    :mod:`curvkit.structured.kfac_inverse`) for the three kinds of damping and where they
    depart from curvlinops: ``damping`` added to both factors (or a pair ``(δ_A, δ_G)``),
    Martens & Grosse's π split (``use_heuristic_damping``), or exact damping ``(G ⊗ A + δ I)⁻¹``
    through the factors' float64 eigendecompositions (``use_exact_damping``; the only kind for
    EKFAC). Factors are inverted by Cholesky (float64 retry) at first use and kept if ``cache``.

    Raises:
        TypeError: If ``A`` (curvlinops' name for the KFAC or EKFAC operator) is not one.
        ValueError: For a negative or non-finite damping, or incompatible options.
    """

    def __init__(
        self,
        A: KFACLinearOperator,
        damping: float | tuple[float, float] = 0.0,
        use_heuristic_damping: bool = False,
        min_damping: float = 1e-8,
        use_exact_damping: bool = False,
        cache: bool = True,
        retry_double_precision: bool = True,
    ):
        if not isinstance(A, KFACLinearOperator):
            raise TypeError(f"A must be a KFACLinearOperator or EKFACLinearOperator, got {type(A).__name__}.")
        self._inverse: BlockDiagonalLinearOperator = A.factored.inverse(
            damping, use_heuristic_damping, min_damping, use_exact_damping, cache, retry_double_precision
        )
        super().__init__(
            A.shape,
            dtype=A.dtype,
            device=A.device,
            psd=True,
            in_layout=A.in_layout,
            out_layout=A.out_layout,
        )

    @property
    def _held(self) -> LinearOperator:
        return self._inverse
