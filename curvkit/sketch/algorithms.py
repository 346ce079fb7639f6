"""skerch's ``algorithms`` import path: :func:`seigh`, :func:`ssvd` (thin re-export)."""

from curvkit.sketch.eigh import seigh
from curvkit.sketch.svd import ssvd

__all__ = ["seigh", "ssvd"]
