"""skerch's ``utils`` import path: reproducible noise (thin re-export)."""

from curvkit.sketch.noise import gaussian_noise, rademacher_noise

__all__ = ["gaussian_noise", "rademacher_noise"]
