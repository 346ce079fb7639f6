"""Spectral densities by Lanczos quadrature (Papyan, 2020)."""

from curvkit.linalg.spectrum.cached import (
    LanczosApproximateLogSpectrumCached,
    LanczosApproximateSpectrumCached,
)
from curvkit.linalg.spectrum.density import lanczos_approximate_log_spectrum, lanczos_approximate_spectrum

__all__ = [
    "LanczosApproximateLogSpectrumCached",
    "LanczosApproximateSpectrumCached",
    "lanczos_approximate_log_spectrum",
    "lanczos_approximate_spectrum",
]
