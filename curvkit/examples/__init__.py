"""Helpers for the tutorials: dense ``torch.func`` references, array comparison, small operators."""

from curvkit.examples.gradients import gradient_and_loss
from curvkit.examples.operators import (
    IdentityLinearOperator,
    OuterProductLinearOperator,
    TensorLinearOperator,
)

__all__ = [
    "IdentityLinearOperator",
    "OuterProductLinearOperator",
    "TensorLinearOperator",
    "gradient_and_loss",
]
