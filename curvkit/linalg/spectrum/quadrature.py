r"""Lanczos quadrature: nodes and weights of a spectral density (Golub & Meurant; Papyan, 2020).

For a unit vector :math:`\mathbf{v}` and a symmetric :math:`\mathbf{A} = \sum_i \lambda_i
\mathbf{u}_i\mathbf{u}_i^\top`, the measure :math:`\mu_{\mathbf{v}} = \sum_i (\mathbf{u}_i^\top
\mathbf{v})^2 \delta_{\lambda_i}` has expectation :math:`\frac{1}{d}\sum_i \delta_{\lambda_i}`
over Gaussian :math:`\mathbf{v}`. After :math:`m` Lanczos steps from :math:`\mathbf{v}`, the
eigenvalues :math:`\theta_k` of the tridiagonal matrix :math:`\mathbf{T}_m = \mathbf{S}
\mathrm{diag}(\theta)\mathbf{S}^\top` and the weights :math:`w_k = S_{1k}^2` form the Gauss
quadrature of :math:`\mu_{\mathbf{v}}`, exact for polynomials of degree :math:`2m - 1`.

The same run estimates the spectrum's boundaries for free: extreme Ritz values converge first,
and :math:`[\theta_1 - r_1, \theta_m + r_m]` (with Ritz residual norms :math:`r`) contains an
eigenvalue at each end. If the residuals exceed the tolerance after :math:`m` steps, the Krylov
space of the same :math:`\mathbf{v}` is extended (up to :math:`4m` vectors, checking every
:math:`\max(1, \lfloor m/8 \rfloor)` steps); the quadrature
still uses the first :math:`m` steps only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit.linalg._operator import working_dtype
from curvkit.linalg.lanczos import LanczosProcess
from curvkit.linear_operator import LinearOperator


class Quadrature(NamedTuple):
    """Nodes ``θ_k`` and weights ``w_k`` (summing to one) of one Lanczos quadrature."""

    nodes: Tensor
    weights: Tensor


def lanczos_quadrature(
    A: LinearOperator, ncv: int, generator: torch.Generator, boundaries_tol: float | None = None
) -> tuple[Quadrature, tuple[float, float] | None]:
    """Run ``ncv`` Lanczos steps from a Gaussian start vector.

    Args:
        A: Symmetric operator.
        ncv: Number of Lanczos steps (quadrature nodes).
        generator: Source of the start vector.
        boundaries_tol: If given, also estimate the smallest and largest eigenvalue, with Ritz
            residuals at most ``boundaries_tol`` times the spectral radius (``0``: machine
            precision), extending the Krylov space when needed.

    Returns:
        The quadrature, and ``(λ_min, λ_max)`` estimates (or ``None``).
    """
    n, dtype = A.shape[0], working_dtype(A)
    start = torch.randn(n, generator=generator, device=generator.device, dtype=dtype)
    if A.device is not None:
        start = start.to(A.device)
    process = LanczosProcess(A, start, ncv)
    while process.size < ncv and process.step():
        pass
    values, S, residuals = process.ritz_pairs()
    quadrature = Quadrature(values, S[0] ** 2)
    if boundaries_tol is None:
        return quadrature, None
    tol = max(boundaries_tol, torch.finfo(dtype).eps)
    check_every, max_dim = max(1, ncv // 8), min(n, 4 * ncv)
    while True:
        radius = float(values.abs().max())
        converged = float(residuals[0]) <= tol * radius and float(residuals[-1]) <= tol * radius
        if converged or process.broke_down or process.size == max_dim:
            return quadrature, (float(values[0] - residuals[0]), float(values[-1] + residuals[-1]))
        process.grow(min(max_dim, process.size + 4 * check_every))
        for _ in range(min(check_every, max_dim - process.size)):
            if not process.step():
                break
        values, _, residuals = process.ritz_pairs()
