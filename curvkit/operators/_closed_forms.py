"""Products and curvlinops' closed-form properties of an operator that holds a structured one."""

from __future__ import annotations

from torch import Tensor

from curvkit.linear_operator import LinearOperator


class HeldClosedForms:
    """Mixin: products, ``to_dense`` and closed forms (as properties) of a held structured operator.

    :attr:`_held` is the structured operator (KFAC's block diagonal, its inverse); ``trace``,
    ``det``, ``logdet`` and ``frobenius_norm`` come from its structure. curvlinops exposes the
    closed forms of its KFAC classes as properties; the structured operators have them as
    methods (they compute). Put the mixin before ``LinearOperator``.
    """

    @property
    def _held(self) -> LinearOperator:
        raise NotImplementedError

    def _matmat(self, X: Tensor) -> Tensor:
        return self._held._matmat(X)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        return self._held.to_dense(chunk_size)

    @property
    def trace(self) -> Tensor:
        """``tr`` from the structure (``tr G · tr A`` per Kronecker block)."""
        return self._held.trace()

    @property
    def det(self) -> Tensor:
        """``det`` from the structure (float64 inside; 0 for a singular factor)."""
        return self._held.det()

    @property
    def logdet(self) -> Tensor:
        """``log det`` from float64 eigenvalues (``-inf`` where a factor is singular)."""
        return self._held.logdet()

    @property
    def frobenius_norm(self) -> Tensor:
        """``‖·‖_F`` from the structure (``‖G‖_F ‖A‖_F`` per Kronecker block)."""
        return self._held.frobenius_norm()
