"""Spectral density approximations as functions (Papyan, 2020)."""

from __future__ import annotations

from typing import Any

import numpy

from curvkit.linalg._random import Seed
from curvkit.linalg.spectrum.cached import (
    Boundaries,
    LanczosApproximateLogSpectrumCached,
    LanczosApproximateSpectrumCached,
)


def lanczos_approximate_spectrum(
    A: Any,
    ncv: int,
    num_points: int = 1024,
    num_repeats: int = 1,
    kappa: float = 3.0,
    boundaries: Boundaries = None,
    margin: float = 0.05,
    boundaries_tol: float = 1e-2,
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    r"""Approximate the spectral density of a symmetric :math:`\mathbf{A} \in \mathbb{R}^{d\times d}`.

    The density is :math:`p(\lambda) = \frac{1}{d}\sum_i \delta(\lambda - \lambda_i)`.

    Implements Algorithm 2 (LanczosApproxSpec) of Papyan, V. (2020). Traces of class/cross-class
    structure pervade deep learning spectra. JMLR. Each of ``num_repeats`` Lanczos runs of
    ``ncv`` steps from a Gaussian vector gives a quadrature :math:`\sum_k w_k
    \delta(\lambda - \theta_k)` of the density (:mod:`curvkit.linalg.spectrum.quadrature`);
    each delta peak becomes a Gaussian whose width is fixed on the spectrum rescaled to
    :math:`[-1, 1]`, so ``kappa`` needs no tuning across operators. The runs advance in
    lockstep, one product with a block of their vectors per step (as many runs at a time as
    keep their ``ncv + 1`` basis vectors each within 1 GiB), which a curvature operator
    computes for much less than that many separate products.

    Args:
        A: Symmetric linear operator.
        ncv: Number of Lanczos vectors (number of nodes/weights for the quadrature).
        num_points: Resolution.
        num_repeats: Number of Lanczos quadratures to average the density over.
        kappa: Width of the Gaussian used to approximate delta peaks in ``[-1, 1]``. Must be
            greater than 1 (Papyan, 2020, Section D.2).
        boundaries: Estimates of the minimum and maximum eigenvalues of ``A``. Ends left
            unspecified are estimated internally, from the first Lanczos run.
        margin: Relative margin added around the spectral boundary.
        boundaries_tol: (Only if ``boundaries`` are not given.) Relative accuracy used to
            estimate the spectral boundary; ``0`` implies machine precision.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the Lanczos runs, counting products.

    Returns:
        Grid points ``λ`` and approximated spectral density ``p(λ)`` of ``A``, NumPy arrays.

    Raises:
        ValueError: If ``A`` is not square or an argument is out of range (such as ``ncv``
            outside ``[2, d]`` or ``kappa ≤ 1``).

    Example:
        >>> import numpy, torch
        >>> A = torch.diag(torch.cat([torch.zeros(90), torch.ones(10)])).double()
        >>> grid, density = lanczos_approximate_spectrum(A, ncv=20, num_repeats=5, seed=0)
        >>> mass_near_one = density[grid > 0.5].sum() * (grid[1] - grid[0])
        >>> round(float(mass_near_one), 1)
        0.1
    """
    cache = LanczosApproximateSpectrumCached(
        A, ncv, boundaries, boundaries_tol, seed=seed, progressbar=progressbar
    )
    return cache.approximate_spectrum(num_repeats, num_points, kappa, margin)


def lanczos_approximate_log_spectrum(
    A: Any,
    ncv: int,
    num_points: int = 1024,
    num_repeats: int = 1,
    kappa: float = 1.04,
    boundaries: Boundaries = None,
    margin: float = 0.05,
    boundaries_tol: float = 1e-2,
    epsilon: float = 1e-5,
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    r"""Approximate the spectral density of :math:`\log(|\mathbf{A}| + \epsilon\mathbf{I})`.

    Follows Section C.7 of Papyan (2020): the Lanczos quadrature of :math:`\mathbf{A}` with its
    nodes mapped through :math:`\theta \mapsto \log(|\theta| + \epsilon)` (natural logarithm),
    smoothed on the log-scale rescaled to :math:`[-1, 1]`. Suited to spectra spanning orders of
    magnitude, such as a Hessian's bulk and its class outliers.

    Args:
        A: Symmetric linear operator.
        ncv: Number of Lanczos vectors (number of nodes/weights for the quadrature).
        num_points: Resolution.
        num_repeats: Number of Lanczos quadratures to average the density over.
        kappa: Width of the Gaussian used to approximate delta peaks in ``[-1, 1]``, greater than
            1. Default obtained by reproducing Fig. 15b of Papyan (2020).
        boundaries: Estimates of the minimum and maximum eigenvalues of ``|A|``; ends left
            unspecified are estimated internally.
        margin: Relative margin added around the spectral boundary.
        boundaries_tol: (Only if ``boundaries`` are not given.) Relative accuracy used to
            estimate the spectral boundary; ``0`` implies machine precision.
        epsilon: Shift to increase numerical stability.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the Lanczos runs, counting products.

    Returns:
        Grid points and approximated spectral density of ``log(|A| + εI)``, NumPy arrays.

    Raises:
        ValueError: If ``A`` is not square or an argument is out of range.
    """
    cache = LanczosApproximateLogSpectrumCached(
        A, ncv, boundaries, boundaries_tol, seed=seed, progressbar=progressbar
    )
    return cache.approximate_log_spectrum(num_repeats, num_points, kappa, margin, epsilon)
