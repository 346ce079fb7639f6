"""Spectral densities from cached Lanczos quadratures (Papyan, 2020, Algorithm 2 and Section C.7)."""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_integer, nonnegative_float, to_numpy
from curvkit.linalg._operator import finite_float, square_operator
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, as_generator
from curvkit.linalg.spectrum.quadrature import Quadrature, lanczos_quadratures

Boundaries = tuple[float | None, float | None] | None


def check_ncv(ncv: Any, dim: int) -> int:
    """Return ``ncv`` if ``2 ≤ ncv ≤ dim``.

    Raises:
        ValueError: Otherwise.
    """
    if isinstance(ncv, bool) or not isinstance(ncv, Integral) or not 2 <= ncv <= dim:
        raise ValueError(f"ncv must be an integer with 2 ≤ ncv ≤ dim = {dim}, got {ncv!r}.")
    return ncv


def check_boundaries(boundaries: Boundaries) -> tuple[float | None, float | None]:
    """Return ``boundaries`` as a pair ``(low, high)`` with ``None`` for unknown ends.

    Raises:
        ValueError: If it is not a pair, an end is not a finite real number, or ``low ≥ high``.
    """
    if boundaries is None:
        return None, None
    if not isinstance(boundaries, (tuple, list)) or len(boundaries) != 2:
        raise ValueError(f"boundaries must be a pair (low, high) or None, got {boundaries!r}.")
    low, high = (None if b is None else finite_float(b, f"boundaries[{i}]") for i, b in enumerate(boundaries))
    if low is not None and high is not None and not low < high:
        raise ValueError(f"boundaries must satisfy low < high, got {boundaries!r}.")
    return low, high


def check_smoothing(num_points: Any, kappa: Any, margin: Any) -> tuple[int, float, float]:
    """Return the smoothing arguments if ``num_points ≥ 2``, ``1 < kappa < ∞`` and ``0 ≤ margin < ∞``.

    Raises:
        ValueError: Otherwise, naming the argument.
    """
    num_points = as_integer(num_points, "num_points", minimum=2)
    kappa = finite_float(kappa, "kappa")
    if not kappa > 1:
        raise ValueError(f"kappa must be greater than 1, got {kappa!r}.")
    return num_points, kappa, nonnegative_float(margin, "margin")


def gaussian_density(
    quadratures: list[tuple[Tensor, Tensor]],
    low: float,
    high: float,
    ncv: int,
    num_points: int,
    kappa: float,
    margin: float,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    r"""Smooth the quadratures' delta peaks with Gaussians on a grid over ``[low, high]``.

    The interval, padded by ``margin`` times its width on each side, is mapped to
    :math:`[-1, 1]`, where every node carries a Gaussian of width
    :math:`\sigma = 2 / ((\text{ncv} - 1)\sqrt{8 \ln \kappa})` (Papyan, 2020, Section D.2): halfway
    between nodes spaced :math:`2/(\text{ncv}-1)` apart, a bump has decayed by :math:`\kappa`.
    The density is averaged over the quadratures and scaled back to the original axis, every
    Gaussian with unit mass on the whole line: the density integrates to one up to the tails cut
    off at the grid's ends. Nodes at the ends (a null space, the low end of a log spectrum) lose
    up to half their mass that way when the bumps are wide against ``margin`` (e.g. about 0.3
    of the total for a 90 % null space at the log spectrum's ``kappa = 1.04``); a larger
    ``margin`` keeps it. (Papyan's Algorithm 2 and curvlinops have the same grid.) A single-point
    interval (``low = high``, e.g. for a multiple of the
    identity) is widened to ``low ± 5%`` (``± 1`` at zero).

    The arguments are assumed checked by :func:`check_smoothing`.
    """
    if not high > low:
        spread = 0.05 * max(abs(low), abs(high)) or 1.0
        low, high = min(low, high) - spread, max(low, high) + spread
    padding = margin * (high - low)
    low, high = low - padding, high + padding
    center, half_width = (high + low) / 2, (high - low) / 2
    sigma = 2 / ((ncv - 1) * math.sqrt(8 * math.log(kappa)))
    nodes, weights = quadratures[0]
    grid = torch.linspace(-1, 1, num_points, dtype=nodes.dtype, device=nodes.device)
    density = torch.zeros_like(grid)
    for nodes, weights in quadratures:
        scaled = (nodes - center) / half_width
        bumps = torch.exp(-((grid[:, None] - scaled[None, :]) ** 2) / (2 * sigma**2))
        density += bumps @ weights / (sigma * math.sqrt(2 * math.pi))
    density /= len(quadratures) * half_width
    return to_numpy(center + half_width * grid), to_numpy(density)


class _CachedLanczosQuadratures:
    """Lanczos quadratures of ``A`` computed once per repeat and kept (shared by both densities)."""

    def __init__(
        self,
        A: Any,
        ncv: int,
        boundaries: Boundaries = None,
        boundaries_tol: float = 1e-2,
        *,
        seed: Seed = None,
        progressbar: bool = False,
    ):
        self._A = square_operator(A, typed=True)
        self._progressbar = progressbar
        self._ncv = check_ncv(ncv, self._A.shape[0])
        self._given_low, self._given_high = check_boundaries(boundaries)
        self._boundaries_tol = nonnegative_float(boundaries_tol, "boundaries_tol")
        self._generator = as_generator(seed, self._A.device)
        self._quadratures: list[Quadrature] = []
        self._ritz_boundaries: tuple[float, float] | None = None

    def _quadratures_for(self, num_repeats: int) -> list[Quadrature]:
        """The first ``num_repeats`` quadratures, running Lanczos for the missing ones."""
        as_integer(num_repeats, "num_repeats", minimum=1)
        missing = num_repeats - len(self._quadratures)
        if missing > 0:
            need_boundaries = self._ritz_boundaries is None and None in (self._given_low, self._given_high)
            boundaries_tol = self._boundaries_tol if need_boundaries else None
            total = None if need_boundaries else missing * self._ncv  # a boundary may take more
            with product_progress(self._A, self._progressbar, "Lanczos quadratures", total) as A:
                quadratures, ritz = lanczos_quadratures(
                    A, self._ncv, self._generator, missing, boundaries_tol
                )
            self._quadratures.extend(quadratures)
            self._ritz_boundaries = self._ritz_boundaries or ritz
        return self._quadratures[:num_repeats]

    def _eigenvalue_boundaries(self) -> tuple[float, float]:
        """Smallest and largest eigenvalue: given, or estimated by the first Lanczos run."""
        self._quadratures_for(1)
        low, high = self._given_low, self._given_high
        if self._ritz_boundaries is not None:
            low = self._ritz_boundaries[0] if low is None else low
            high = self._ritz_boundaries[1] if high is None else high
        return low, high


class LanczosApproximateSpectrumCached(_CachedLanczosQuadratures):
    r"""Approximate the spectral density of a symmetric :math:`\mathbf{A} \in \mathbb{R}^{d\times d}`.

    The density is :math:`p(\lambda) = \frac{1}{d}\sum_i \delta(\lambda - \lambda_i)`.

    Caches the Lanczos iterations to produce density approximations with different
    hyperparameters cheaply; more repeats run more Lanczos iterations (those missing, in lockstep:
    see :func:`curvkit.linalg.lanczos_approximate_spectrum`; if a product fails, the runs of its
    lockstep group are not kept, and their start vectors are spent). Papyan, V. (2020).
    Traces of class/cross-class structure pervade deep learning spectra. JMLR, Algorithm 2.

    Args:
        A: Symmetric linear operator.
        ncv: Number of Lanczos vectors (nodes of each quadrature), ``2 ≤ ncv ≤ d``.
        boundaries: Estimates ``(λ_min, λ_max)`` of the extreme eigenvalues; an end given as
            ``None`` (or ``boundaries=None``) is estimated from the first Lanczos run
            (:mod:`curvkit.linalg.spectrum.quadrature`).
        boundaries_tol: Relative accuracy of estimated boundaries (``0``: machine precision).
        seed: ``int``, ``torch.Generator`` or ``None`` (drawn from NumPy's global random state).
        progressbar: Show one progress bar for the Lanczos runs of each call that needs new
            ones, counting products.

    Raises:
        ValueError: If ``A`` is not square or ``ncv``, ``boundaries`` or ``boundaries_tol`` is
            out of range.
    """

    def approximate_spectrum(
        self, num_repeats: int = 1, num_points: int = 1024, kappa: float = 3.0, margin: float = 0.05
    ) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Approximate the spectral density of ``A``.

        Args:
            num_repeats: Number of Lanczos quadratures to average the density over.
            num_points: Resolution.
            kappa: Width of the Gaussians approximating the delta peaks in ``[-1, 1]``; ``> 1``.
            margin: Relative margin added around the spectral boundary.

        Returns:
            Grid points ``λ`` and approximated spectral density ``p(λ)`` of ``A`` (NumPy arrays).

        Raises:
            ValueError: If an argument is out of range.
        """
        num_points, kappa, margin = check_smoothing(num_points, kappa, margin)
        quadratures = [(q.nodes, q.weights) for q in self._quadratures_for(num_repeats)]
        low, high = self._eigenvalue_boundaries()
        return gaussian_density(quadratures, low, high, self._ncv, num_points, kappa, margin)


class LanczosApproximateLogSpectrumCached(_CachedLanczosQuadratures):
    r"""Approximate the spectral density of :math:`\log(|\mathbf{A}| + \epsilon\mathbf{I})` (Papyan, 2020).

    The quadrature of :math:`\mathbf{A}` carries over: the nodes become :math:`\log(|\theta_k| +
    \epsilon)` with the same weights. Boundaries refer to :math:`|\mathbf{A}|`; when estimated,
    the smallest :math:`|\lambda|` is taken as 0 if the spectrum's estimated interval contains 0.

    Args:
        A: Symmetric linear operator.
        ncv: Number of Lanczos vectors, ``2 ≤ ncv ≤ d``.
        boundaries: Estimates of the smallest and largest eigenvalue of :math:`|\mathbf{A}|`;
            ``None`` ends are estimated internally.
        boundaries_tol: Relative accuracy of estimated boundaries (``0``: machine precision).
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the Lanczos runs of each call that needs new
            ones, counting products.

    Raises:
        ValueError: If ``A`` is not square or ``ncv``, ``boundaries`` or ``boundaries_tol`` is
            out of range.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        given = (self._given_low, self._given_high)
        if any(b is not None and b < 0 for b in given):
            raise ValueError(f"boundaries of |A| must be non-negative, got {given!r}.")

    def _eigenvalue_boundaries(self) -> tuple[float, float]:
        """Smallest and largest eigenvalue of ``|A|``."""
        given_low, given_high = self._given_low, self._given_high
        if self._ritz_boundaries is None and None in (given_low, given_high):
            self._quadratures_for(1)
        if self._ritz_boundaries is not None:
            lam_min, lam_max = self._ritz_boundaries
            straddles_zero = lam_min <= 0 <= lam_max
            estimated_low = 0.0 if straddles_zero else min(abs(lam_min), abs(lam_max))
            given_low = estimated_low if given_low is None else given_low
            given_high = max(abs(lam_min), abs(lam_max)) if given_high is None else given_high
        return given_low, given_high

    def approximate_log_spectrum(
        self,
        num_repeats: int = 1,
        num_points: int = 1024,
        kappa: float = 1.04,
        margin: float = 0.05,
        epsilon: float = 1e-5,
    ) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Approximate the spectral density of ``log(|A| + εI)``.

        Args:
            num_repeats: Number of Lanczos quadratures to average the density over.
            num_points: Resolution.
            kappa: Width of the Gaussians in ``[-1, 1]``; ``> 1``. Default from reproducing
                Papyan (2020), Fig. 15b.
            margin: Relative margin added around the spectral boundary.
            epsilon: Shift ``ε > 0`` (finite) for numerical stability.

        Returns:
            Grid points and approximated spectral density of ``log(|A| + εI)`` (NumPy arrays).

        Raises:
            ValueError: If an argument is out of range.
        """
        num_points, kappa, margin = check_smoothing(num_points, kappa, margin)
        if not finite_float(epsilon, "epsilon") > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
        epsilon = float(epsilon)
        quadratures = [
            (torch.log(q.nodes.abs() + epsilon), q.weights) for q in self._quadratures_for(num_repeats)
        ]
        low, high = self._eigenvalue_boundaries()
        log_low, log_high = math.log(low + epsilon), math.log(high + epsilon)
        return gaussian_density(quadratures, log_low, log_high, self._ncv, num_points, kappa, margin)
