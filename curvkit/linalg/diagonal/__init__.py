"""Randomized diagonal estimation: Hutchinson and XDiag."""

from curvkit.linalg.diagonal.hutchinson import HutchinsonDiagonalEstimator, hutchinson_diag
from curvkit.linalg.diagonal.xdiag import xdiag

__all__ = ["HutchinsonDiagonalEstimator", "hutchinson_diag", "xdiag"]
