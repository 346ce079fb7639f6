"""Structured operators with cheap products and closed forms, and KFAC's / EKFAC's algebra on them.

- :class:`IdentityLinearOperator`, :class:`DiagonalLinearOperator`;
- :class:`KroneckerLinearOperator` (``L ⊗ R`` on row-major flattened matrices: read
  :mod:`curvkit.structured.kronecker` for the order), :class:`EigenKroneckerLinearOperator`
  (``(Q_L ⊗ Q_R) diag(Λ) (Q_L ⊗ Q_R)ᵀ``), :class:`JoinedWeightBiasLinearOperator` (a weight and its
  bias as ``[W b]``), :class:`BlockDiagonalLinearOperator` (blocks of parameters, any order);
- KFAC's algebra on given factors: :class:`KroneckerBlock`,
  :class:`KroneckerFactoredLinearOperator` (products, damped inverses, closed forms, state dicts);
  EKFAC's: :class:`EigenKroneckerBlock`, :class:`EigenCorrectedKroneckerLinearOperator` and
  :class:`EigenvalueCorrections` (corrected eigenvalues from per-example gradients, batch by batch).

Every structured operator has ``trace()``, ``logdet()``, ``det()``, ``slogdet()`` and
``frobenius_norm()`` in closed form.
"""

from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator
from curvkit.structured.blocks import EigenKroneckerBlock, KroneckerBlock
from curvkit.structured.diagonal import DiagonalLinearOperator
from curvkit.structured.eigen_kronecker import EigenKroneckerLinearOperator
from curvkit.structured.ekfac import EigenCorrectedKroneckerLinearOperator
from curvkit.structured.ekfac_corrections import EigenvalueCorrections
from curvkit.structured.identity import IdentityLinearOperator
from curvkit.structured.joined import JoinedWeightBiasLinearOperator
from curvkit.structured.kfac import KroneckerFactoredLinearOperator
from curvkit.structured.kronecker import KroneckerLinearOperator

__all__ = [
    "BlockDiagonalLinearOperator",
    "DiagonalLinearOperator",
    "EigenCorrectedKroneckerLinearOperator",
    "EigenKroneckerBlock",
    "EigenKroneckerLinearOperator",
    "EigenvalueCorrections",
    "IdentityLinearOperator",
    "JoinedWeightBiasLinearOperator",
    "KroneckerBlock",
    "KroneckerFactoredLinearOperator",
    "KroneckerLinearOperator",
]
