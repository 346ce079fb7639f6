"""Curvature operators of a model on a data set (parameter space) and its Jacobians."""

from curvkit.operators.fisher import EFLinearOperator, FisherMCLinearOperator
from curvkit.operators.ggn import GGNLinearOperator
from curvkit.operators.hessian import HessianLinearOperator
from curvkit.operators.jacobian import JacobianLinearOperator, TransposedJacobianLinearOperator

__all__ = [
    "EFLinearOperator",
    "FisherMCLinearOperator",
    "GGNLinearOperator",
    "HessianLinearOperator",
    "JacobianLinearOperator",
    "TransposedJacobianLinearOperator",
]
