"""Structured operators with cheap products and closed forms.

- :class:`IdentityLinearOperator`, :class:`DiagonalLinearOperator`;
- :class:`KroneckerLinearOperator` (``L ⊗ R`` on row-major flattened matrices: read
  :mod:`curvkit.structured.kronecker` for the order), :class:`EigenKroneckerLinearOperator`
  (``(Q_L ⊗ Q_R) diag(Λ) (Q_L ⊗ Q_R)ᵀ``), :class:`JoinedWeightBiasLinearOperator` (a weight and its
  bias as ``[W b]``), :class:`BlockDiagonalLinearOperator` (blocks of parameters, any order).

Every structured operator has ``trace()``, ``logdet()``, ``det()``, ``slogdet()`` and
``frobenius_norm()`` in closed form.
"""

from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator
from curvkit.structured.diagonal import DiagonalLinearOperator
from curvkit.structured.eigen_kronecker import EigenKroneckerLinearOperator
from curvkit.structured.identity import IdentityLinearOperator
from curvkit.structured.joined import JoinedWeightBiasLinearOperator
from curvkit.structured.kronecker import KroneckerLinearOperator

__all__ = [
    "BlockDiagonalLinearOperator",
    "DiagonalLinearOperator",
    "EigenKroneckerLinearOperator",
    "IdentityLinearOperator",
    "JoinedWeightBiasLinearOperator",
    "KroneckerLinearOperator",
]
