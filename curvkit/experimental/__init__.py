"""Experimental features: their API may still change."""

from curvkit.experimental.activation_hessian import ActivationHessianLinearOperator

__all__ = ["ActivationHessianLinearOperator"]
