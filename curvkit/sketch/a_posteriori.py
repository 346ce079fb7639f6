"""skerch's ``a_posteriori`` import path: error estimates and their bounds (thin re-export)."""

from curvkit.sketch.error import apost_error, apost_error_bounds, scree_bounds

__all__ = ["apost_error", "apost_error_bounds", "scree_bounds"]
