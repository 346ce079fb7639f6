"""The inverse of damped KFAC or EKFAC, as curvlinops' ``KFACInverseLinearOperator``."""

from __future__ import annotations

from typing import Any

from curvkit.linear_operator import LinearOperator
from curvkit.operators._closed_forms import HeldClosedForms
from curvkit.operators.kfac import KFACLinearOperator
from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator

OPTIONS = (
    "damping",
    "use_heuristic_damping",
    "min_damping",
    "use_exact_damping",
    "cache",
    "retry_double_precision",
)
"""The damping options, in the constructor's order (and a state dict's keys beside ``"A"``)."""


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

    _STATE_FORMAT = "curvkit.KFACInverseLinearOperator/1"

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
        self._kfac = A
        given = (
            damping,
            use_heuristic_damping,
            min_damping,
            use_exact_damping,
            cache,
            retry_double_precision,
        )
        self._options = dict(zip(OPTIONS, given))
        self._inverse: BlockDiagonalLinearOperator = A.factored.inverse(**self._options)
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

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The KFAC operator's state dict (``"A"``) and the damping options, as curvlinops saves them.

        The inverted factors are not saved: they are formed again from the factors at first use
        (a Cholesky factorization or eigendecomposition per factor, no pass over the data).
        """
        return {"format": self._STATE_FORMAT, "A": self._kfac.state_dict(), **self._options}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the KFAC factors and damping options of ``state_dict`` (into this inverse's ``A`` too).

        Raises:
            ValueError: If it is not such a state dict, or ``A``'s part does not fit ``A``.
        """
        options = self._checked_options(state_dict)
        self._kfac.load_state_dict(state_dict["A"])
        self._options = options
        self._inverse = self._kfac.factored.inverse(**options)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Any], A: KFACLinearOperator) -> KFACInverseLinearOperator:
        """The inverse of ``A`` with the factors and options of ``state_dict`` (curvlinops' signature)."""
        options = cls._checked_options(state_dict)
        A.load_state_dict(state_dict["A"])  # before the inverse asks A for factors: no pass over the data
        return cls(A, **options)

    @classmethod
    def _checked_options(cls, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, dict) or state_dict.get("format") != cls._STATE_FORMAT:
            raise ValueError(f"state_dict must be a {cls.__name__}'s state_dict.")
        return {key: state_dict[key] for key in OPTIONS}
