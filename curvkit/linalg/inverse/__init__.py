"""Inverse-matrix products: CG (SPD), truncated Neumann series, LSMR (pseudo-inverse), damping."""

from curvkit.linalg.inverse.cg import CGInverseLinearOperator, conjugate_gradient
from curvkit.linalg.inverse.damping import damped
from curvkit.linalg.inverse.lsmr import LSMRInverseLinearOperator, lsmr
from curvkit.linalg.inverse.neumann import NeumannInverseLinearOperator

__all__ = [
    "CGInverseLinearOperator",
    "LSMRInverseLinearOperator",
    "NeumannInverseLinearOperator",
    "conjugate_gradient",
    "damped",
    "lsmr",
]
