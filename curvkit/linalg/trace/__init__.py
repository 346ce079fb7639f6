"""Randomized trace estimation: Hutchinson, Hutch++ and XTrace."""

from curvkit.linalg.trace.hutchinson import HutchinsonTraceEstimator, hutchinson_trace
from curvkit.linalg.trace.hutchpp import HutchPPTraceEstimator, hutchpp_trace
from curvkit.linalg.trace.xtrace import xtrace

__all__ = ["HutchPPTraceEstimator", "HutchinsonTraceEstimator", "hutchinson_trace", "hutchpp_trace", "xtrace"]
