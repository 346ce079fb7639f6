"""Structured operators with cheap products and closed forms.

- :class:`IdentityLinearOperator`, :class:`DiagonalLinearOperator`.

Every structured operator has ``trace()``, ``logdet()``, ``det()``, ``slogdet()`` and
``frobenius_norm()`` in closed form.
"""

from curvkit.structured.diagonal import DiagonalLinearOperator
from curvkit.structured.identity import IdentityLinearOperator

__all__ = ["DiagonalLinearOperator", "IdentityLinearOperator"]
