"""Helpers for the tutorials: dense ``torch.func`` references, array comparison, small operators."""

from curvkit.examples.operators import (
    IdentityLinearOperator,
    OuterProductLinearOperator,
    TensorLinearOperator,
)

__all__ = ["IdentityLinearOperator", "OuterProductLinearOperator", "TensorLinearOperator"]
