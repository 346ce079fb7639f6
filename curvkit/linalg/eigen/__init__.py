"""Extreme eigenpairs of symmetric operators: thick-restart Lanczos and power iteration."""

from curvkit.linalg.eigen.lanczos_eigsh import lanczos_eigsh
from curvkit.linalg.eigen.power import power_iteration

__all__ = ["lanczos_eigsh", "power_iteration"]
