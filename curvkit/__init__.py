"""curvkit: curvature matrices of neural networks as PyTorch-native linear operators."""

from curvkit.linear_operator import LinearOperator, as_linear_operator
from curvkit.operators import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    JacobianLinearOperator,
    TransposedJacobianLinearOperator,
)
from curvkit.structured import DiagonalLinearOperator, IdentityLinearOperator

__version__ = "0.1.0"

__all__ = [
    "DiagonalLinearOperator",
    "EFLinearOperator",
    "FisherMCLinearOperator",
    "GGNLinearOperator",
    "HessianLinearOperator",
    "IdentityLinearOperator",
    "JacobianLinearOperator",
    "LinearOperator",
    "TransposedJacobianLinearOperator",
    "as_linear_operator",
]
