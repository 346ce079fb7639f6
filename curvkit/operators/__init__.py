"""Curvature operators of a model on a data set (parameter space) and its Jacobians."""

from curvkit.operators.ekfac import EKFACLinearOperator
from curvkit.operators.fisher import EFLinearOperator, FisherMCLinearOperator
from curvkit.operators.ggn import GGNLinearOperator
from curvkit.operators.ggn_diagonal import GGNDiagonalLinearOperator, ggn_diagonal
from curvkit.operators.hessian import HessianLinearOperator
from curvkit.operators.jacobian import JacobianLinearOperator, TransposedJacobianLinearOperator
from curvkit.operators.kfac import FisherType, KFACLinearOperator, KFACType
from curvkit.operators.kfac_inverse import KFACInverseLinearOperator

__all__ = [
    "EFLinearOperator",
    "EKFACLinearOperator",
    "FisherMCLinearOperator",
    "FisherType",
    "GGNDiagonalLinearOperator",
    "GGNLinearOperator",
    "HessianLinearOperator",
    "JacobianLinearOperator",
    "KFACInverseLinearOperator",
    "KFACLinearOperator",
    "KFACType",
    "TransposedJacobianLinearOperator",
    "ggn_diagonal",
]
