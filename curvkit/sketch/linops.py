"""skerch's ``linops`` import path: composite, diagonal and SSRFT operators (thin re-export)."""

from curvkit.sketch.composite import CompositeLinOp, DiagonalLinOp
from curvkit.sketch.ssrft import SSRFTLinOp

__all__ = ["CompositeLinOp", "DiagonalLinOp", "SSRFTLinOp"]
