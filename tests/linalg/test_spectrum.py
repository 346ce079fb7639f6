"""Spectral densities by Lanczos quadrature (Papyan, 2020)."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from linalg_matrices import CountingOperator, generator, with_spectrum
from scipy.signal import find_peaks

from curvkit.linalg import (
    LanczosApproximateLogSpectrumCached,
    LanczosApproximateSpectrumCached,
    lanczos_approximate_log_spectrum,
    lanczos_approximate_spectrum,
)
from curvkit.linalg.spectrum.quadrature import lanczos_quadratures


def mass(grid: numpy.ndarray, density: numpy.ndarray, low: float, high: float) -> float:
    inside = (grid >= low) & (grid <= high)
    return float(density[inside].sum() * (grid[1] - grid[0]))


def two_clusters(n: int = 200) -> torch.Tensor:
    """70% of the eigenvalues near -1, 30% near 2."""
    noise = 0.02 * torch.randn(n, dtype=torch.float64, generator=generator(0))
    eigenvalues = torch.where(torch.arange(n) < 0.7 * n, -1.0, 2.0).double() + noise
    return with_spectrum(eigenvalues)


def papyan_like(n: int = 600) -> torch.Tensor:
    """A bulk around 1e-3 (97%), 12 cross-class outliers around 0.1 and 6 class outliers around 1."""
    g = generator(1)
    bulk = 1e-3 * torch.exp(0.3 * torch.randn(n - 18, dtype=torch.float64, generator=g))
    cross = 0.1 * (1 + 0.05 * torch.randn(12, dtype=torch.float64, generator=g))
    classes = 1.0 * (1 + 0.05 * torch.randn(6, dtype=torch.float64, generator=g))
    return with_spectrum(torch.cat([bulk, cross, classes]))


def test_density_puts_its_mass_where_the_eigenvalues_are():
    grid, density = lanczos_approximate_spectrum(two_clusters(), ncv=30, num_repeats=10, seed=0)
    assert isinstance(grid, numpy.ndarray) and isinstance(density, numpy.ndarray)
    assert grid.shape == density.shape == (1024,)
    assert mass(grid, density, -numpy.inf, numpy.inf) == pytest.approx(1.0, abs=0.02)
    assert mass(grid, density, -1.5, -0.5) == pytest.approx(0.7, abs=0.07)
    assert mass(grid, density, 1.5, 2.5) == pytest.approx(0.3, abs=0.07)
    assert mass(grid, density, -0.4, 1.4) < 0.02


def test_boundaries_are_estimated_to_the_requested_accuracy():
    eigenvalues = torch.cat([torch.tensor([-3.0, 5.0]), torch.linspace(-1.0, 1.0, 98)]).double()
    grid, _ = lanczos_approximate_spectrum(with_spectrum(eigenvalues), ncv=10, boundaries_tol=0, seed=0)
    assert grid[0] == pytest.approx(-3.0 - 0.05 * 8.0, abs=1e-8)
    assert grid[-1] == pytest.approx(5.0 + 0.05 * 8.0, abs=1e-8)
    coarse, _ = lanczos_approximate_spectrum(with_spectrum(eigenvalues), ncv=10, seed=0)
    assert coarse[0] <= -3.0 and coarse[-1] >= 5.0  # widened by the Ritz residuals
    assert coarse[0] == pytest.approx(-3.4, abs=0.1) and coarse[-1] == pytest.approx(5.4, abs=0.1)


def test_given_and_partially_given_boundaries():
    A = with_spectrum(torch.linspace(0.0, 1.0, 50, dtype=torch.float64))
    grid, _ = lanczos_approximate_spectrum(A, ncv=10, boundaries=(-1.0, 3.0), margin=0.0, seed=0)
    assert (grid[0], grid[-1]) == pytest.approx((-1.0, 3.0))
    grid, _ = lanczos_approximate_spectrum(
        A, ncv=10, boundaries=(None, 3.0), margin=0.0, boundaries_tol=0, seed=0
    )
    assert (grid[0], grid[-1]) == pytest.approx((0.0, 3.0), abs=1e-8)


def test_cached_class_reuses_lanczos_runs_and_matches_function():
    A = CountingOperator(two_clusters(100), symmetric=True)
    cache = LanczosApproximateSpectrumCached(A, ncv=20, boundaries=(-2.0, 3.0), seed=3)
    grid, density = cache.approximate_spectrum(num_repeats=3)
    assert A.num_columns == 3 * 20
    cache.approximate_spectrum(num_repeats=2, kappa=2.0, num_points=100)
    assert A.num_columns == 3 * 20
    expected = lanczos_approximate_spectrum(A.matrix, ncv=20, num_repeats=3, boundaries=(-2.0, 3.0), seed=3)
    numpy.testing.assert_allclose(density, expected[1])
    numpy.testing.assert_allclose(grid, expected[0])


class WidthRecorder(CountingOperator):
    """Records the number of columns of each product."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix, symmetric=True)
        self.widths = []

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.widths.append(X.shape[1])
        return super()._matmat(X)


@pytest.mark.parametrize("boundaries_tol", [None, 1e-8])
def test_repeats_run_in_lockstep_and_match_runs_one_after_the_other(boundaries_tol):
    """Each step multiplies the block of the runs' vectors; every quadrature (and the first run's
    boundary estimate) is that of the same run on its own."""
    matrix = two_clusters(100)
    basis_bytes = 13 * 100 * 8  # ncv + 1 float64 vectors
    results = {}
    for name, lockstep_bytes in {"alone": basis_bytes, "pairs": 2 * basis_bytes, "all": 2**30}.items():
        A = WidthRecorder(matrix)
        quadratures, boundaries = lanczos_quadratures(A, 12, generator(5), 4, boundaries_tol, lockstep_bytes)
        results[name] = (A.widths, quadratures, boundaries)
    extension = results["alone"][0][48:]  # the first run's steps beyond ncv, for its boundaries (all 1)
    assert bool(extension) == (boundaries_tol is not None)
    assert set(extension) <= {1}
    assert results["alone"][0][:48] == [1] * 48
    assert results["pairs"][0] == [2] * 12 + extension + [2] * 12
    assert results["all"][0] == [4] * 12 + extension
    for name in ("pairs", "all"):
        if boundaries_tol is None:
            assert results[name][2] is None
        else:
            assert results[name][2] == pytest.approx(results["alone"][2], rel=1e-12)
        for (nodes, weights), (alone_nodes, alone_weights) in zip(results[name][1], results["alone"][1]):
            torch.testing.assert_close(nodes, alone_nodes, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(weights, alone_weights, rtol=1e-10, atol=1e-12)


def test_runs_that_find_an_invariant_subspace_leave_the_lockstep():
    """With three distinct eigenvalues, each run stops after three steps with an exact quadrature."""
    A = WidthRecorder(with_spectrum(torch.tensor([1.0, 2.0, 5.0]).repeat_interleave(20)))
    quadratures, _ = lanczos_quadratures(A, 10, generator(0), 3)
    assert A.widths == [3, 3, 3]
    for nodes, weights in quadratures:
        torch.testing.assert_close(nodes, torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
        assert float(weights.sum()) == pytest.approx(1.0)


def test_log_spectrum_reproduces_papyan_fig_15b_shape():
    """Peaks at the log of the bulk and of both outlier clusters, with their masses."""
    grid, density = lanczos_approximate_log_spectrum(papyan_like(), ncv=64, num_repeats=8, seed=0)
    assert mass(grid, density, -numpy.inf, numpy.inf) == pytest.approx(1.0, abs=0.02)
    peaks, _ = find_peaks(density)
    peak_locations = grid[peaks]
    for cluster in (1e-3, 0.1, 1.0):
        assert numpy.abs(peak_locations - math.log(cluster)).min() < 0.3
    assert mass(grid, density, math.log(1e-3) - 1.5, math.log(1e-3) + 1.5) == pytest.approx(
        582 / 600, abs=0.02
    )
    assert mass(grid, density, math.log(0.1) - 0.7, math.log(0.1) + 0.7) == pytest.approx(12 / 600, abs=0.015)
    assert mass(grid, density, -0.7, 0.7) == pytest.approx(6 / 600, abs=0.01)


def test_log_spectrum_boundaries_and_cache():
    A = with_spectrum(torch.tensor([-4.0, -1.0, 0.5, 2.0] * 10, dtype=torch.float64))
    cache = LanczosApproximateLogSpectrumCached(A, ncv=8, boundaries_tol=0, seed=0)
    grid, _ = cache.approximate_log_spectrum(margin=0.0, epsilon=1e-5)
    assert (grid[0], grid[-1]) == pytest.approx(
        (math.log(1e-5), math.log(4 + 1e-5)), abs=1e-6
    )  # 0 in [-4, 2]
    positive = with_spectrum(torch.tensor([0.5, 2.0] * 10, dtype=torch.float64))
    grid, _ = lanczos_approximate_log_spectrum(positive, ncv=4, boundaries_tol=0, margin=0.0, seed=0)
    assert (grid[0], grid[-1]) == pytest.approx((math.log(0.5 + 1e-5), math.log(2 + 1e-5)), abs=1e-6)
    grid, _ = lanczos_approximate_log_spectrum(positive, ncv=4, boundaries=(0.1, 10.0), margin=0.0, seed=0)
    assert (grid[0], grid[-1]) == pytest.approx((math.log(0.1 + 1e-5), math.log(10 + 1e-5)))


def test_multiple_of_identity_gives_one_peak():
    grid, density = lanczos_approximate_spectrum(3.0 * torch.eye(20, dtype=torch.float64), ncv=5, seed=0)
    assert grid[numpy.argmax(density)] == pytest.approx(3.0, abs=0.01)
    assert mass(grid, density, -numpy.inf, numpy.inf) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("ncv, kappa", [(5, 3.0), (12, 1.5)])
def test_peak_of_a_multiple_of_identity_has_the_documented_width(ncv, kappa):
    """``3 I`` has one quadrature node: the density is one Gaussian of width ``σ = 2 / ((ncv - 1)
    √(8 ln κ))`` on the grid rescaled to ``[-1, 1]`` (Papyan, 2020, Section D.2). Its height and
    variance, not only its mass and position, follow from that width."""
    grid, density = lanczos_approximate_spectrum(
        3.0 * torch.eye(20, dtype=torch.float64), ncv=ncv, kappa=kappa, num_points=2049, seed=0
    )
    half_width = (grid[-1] - grid[0]) / 2
    sigma = half_width * 2 / ((ncv - 1) * math.sqrt(8 * math.log(kappa)))
    step = grid[1] - grid[0]
    assert density.max() == pytest.approx(1 / (sigma * math.sqrt(2 * math.pi)), rel=1e-3)
    assert float((density * (grid - 3.0) ** 2).sum() * step) == pytest.approx(sigma**2, rel=1e-3)


def test_numpy_input():
    grid, density = lanczos_approximate_spectrum(two_clusters(50).numpy(), ncv=10, seed=0)
    assert grid.dtype == density.dtype == numpy.float64


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ncv": 1}, ValueError, "ncv must be an integer with 2 ≤ ncv ≤ dim = 10"),
        ({"ncv": 11}, ValueError, "ncv must be an integer with 2 ≤ ncv ≤ dim = 10"),
        ({"kappa": 1.0}, ValueError, "kappa must be greater than 1"),
        ({"num_points": 1}, ValueError, "num_points must be"),
        ({"num_repeats": 0}, ValueError, "num_repeats must be"),
        ({"margin": -0.1}, ValueError, "margin must be"),
        ({"boundaries": (2.0, 1.0)}, ValueError, "boundaries must satisfy low < high"),
        ({"boundaries": (1.0,)}, ValueError, "boundaries must be a pair"),
        ({"boundaries_tol": -1.0}, ValueError, "boundaries_tol must be"),
        ({"boundaries": (None, math.nan)}, ValueError, r"boundaries\[1\] must be a finite real number"),
        ({"boundaries": (math.nan, None)}, ValueError, r"boundaries\[0\] must be a finite real number"),
        ({"boundaries": (0.0, math.inf)}, ValueError, r"boundaries\[1\] must be a finite real number"),
        ({"boundaries": (-math.inf, 1.0)}, ValueError, r"boundaries\[0\] must be a finite real number"),
        ({"boundaries": ("a", 1.0)}, ValueError, r"boundaries\[0\] must be a finite real number"),
        ({"kappa": math.inf}, ValueError, "kappa must be a finite real number"),
        ({"kappa": math.nan}, ValueError, "kappa must be a finite real number"),
        ({"kappa": "3"}, ValueError, "kappa must be a finite real number"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"ncv": 5, **kwargs}
    with pytest.raises(error, match=match):
        lanczos_approximate_spectrum(torch.eye(10), **arguments)


def test_bad_arguments_log_and_non_square():
    with pytest.raises(ValueError, match="A must be a square operator"):
        lanczos_approximate_spectrum(torch.zeros(4, 5), ncv=3)
    with pytest.raises(ValueError, match="A must be a square operator"):
        LanczosApproximateLogSpectrumCached(torch.zeros(4, 5), ncv=3)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        lanczos_approximate_log_spectrum(torch.eye(10), ncv=3, epsilon=0.0)
    for epsilon in (math.inf, math.nan, "1e-5"):
        with pytest.raises(ValueError, match="epsilon must be a finite real number"):
            lanczos_approximate_log_spectrum(torch.eye(10), ncv=3, epsilon=epsilon)
    with pytest.raises(ValueError, match="kappa must be a finite real number"):
        lanczos_approximate_log_spectrum(torch.eye(10), ncv=3, kappa=math.inf)
    counting = CountingOperator(torch.eye(10, dtype=torch.float64), symmetric=True)
    with pytest.raises(ValueError, match="kappa must be a finite real number"):
        lanczos_approximate_spectrum(counting, ncv=3, kappa=math.inf)
    assert counting.num_calls == 0  # checked before any product
    with pytest.raises(ValueError, match=r"boundaries of \|A\| must be non-negative"):
        lanczos_approximate_log_spectrum(torch.eye(10), ncv=3, boundaries=(-1.0, 2.0))
